"""Anchors: the heads of the audit and promotion chains, kept where the service cannot rewrite them.

A hash chain inside the database proves that no row was changed *unless* someone rewrites every
later hash too (drop the triggers, edit, recompute, restore), or puts back an older copy of the
database (a rollback): both leave a chain that checks out on its own. So the chains' heads (row
count and last hash of `diagnoses`, `events` and `promotions.jsonl`) are sent outside:

- to `PNEUMO_ANCHOR_FILE`, one JSON line appended each time (opened O_APPEND; the hospital makes it
  append-only for the service: `chattr +a` by root, or a file of another user the service may only
  append to through a group, on a disk the service cannot remount);
- to `PNEUMO_ANCHOR_SYSLOG` (a syslog/SIEM at `HOST:PORT` over UDP, or a local socket such as
  `/dev/log`), where the service cannot take a line back.

Anchors are written on every promotion and rollback, every `ANCHOR_EVERY` appended rows or
`ANCHOR_SECONDS` (whichever first, per process), and by `python -m pneumo_core audit anchor` (a
timer). `audit verify` compares the chains with every anchor in the file: a chain with fewer rows
than anchored was rolled back; one whose row at an anchored position has another hash was
rewritten. Rows written after the newest anchor are not protected until the next one; the syslog
copy is checked by whoever reads the SIEM (the line carries the same numbers).
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from pneumo_core.records import registry
from pneumo_core.records.audit import BUSY_MS, TABLES, AuditTrail, now
from pneumo_core.records.db import Database, database_url

log = logging.getLogger(__name__)

ANCHOR_EVERY = 100      # appended rows between anchors (the PACS watcher writes a row per film)
ANCHOR_SECONDS = 600    # and at least every ten minutes of activity
ALWAYS = ("promotion", "rollback")   # event kinds anchored at once
SYSLOG_TAG = "pneumo-anchor"


@dataclass
class Anchors:
    """Where the chains of one PNEUMO_HOME are anchored, and when.

    Args:
        audit_path: the audit database.
        models_dir: the registry (its promotions chain).
        file: the append-only anchor file, or None.
        syslog: "HOST:PORT" (UDP) or a socket path, or "".
    """
    audit_path: Path
    models_dir: Path
    file: Path | None = None
    syslog: str = ""
    _since: int = field(default=0, repr=False)
    _last: float = field(default_factory=time.monotonic, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_settings(cls, settings) -> Anchors:
        """The anchors `settings` configure (PNEUMO_ANCHOR_FILE, PNEUMO_ANCHOR_SYSLOG)."""
        return cls(settings.audit_path, settings.models_dir, settings.anchor_file, settings.anchor_syslog)

    @property
    def configured(self) -> bool:
        """True when at least one destination is set."""
        return bool(self.file or self.syslog)

    def heads(self) -> dict[str, list]:
        """{chain: [rows, last hash]} for the audit tables and the promotions chain, now."""
        chains = {}
        if _has_trail(self.audit_path):
            with closing(_read_only(self.audit_path)) as db:
                for table in TABLES:   # one statement: the count and the last hash of the same snapshot
                    rows, last = db.execute(f"SELECT count(*), (SELECT hash FROM {table} ORDER BY id DESC LIMIT 1) "
                                            f"FROM {table}").fetchone()
                    chains[table] = [rows, last]
        else:
            chains.update({table: [0, None] for table in TABLES})
        heads = registry.chain_heads(self.models_dir)
        chains["promotions"] = [len(heads), heads[-1] if heads else None]
        return chains

    def write(self, reason: str) -> dict | None:
        """Send the chains' heads to every destination now.

        Args:
            reason: why ("promotion", "interval", "timer", ...), kept in the line.
        Returns:
            The anchor written, or None when none is configured.
        Raises:
            OSError when the anchor file cannot be appended to (a missing anchor must be noticed).
        """
        if not self.configured:
            return None
        anchor = {"time": now(), "home": str(Path(self.audit_path).parent), "reason": reason, "chains": self.heads()}
        line = json.dumps(anchor, sort_keys=True, separators=(",", ":"))
        if self.file:
            fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())   # one write: lines of concurrent writers never interleave
                os.fsync(fd)
            finally:
                os.close(fd)
        if self.syslog:
            _send_syslog(self.syslog, f"{SYSLOG_TAG}: {line}")
        with self._lock:
            self._since, self._last = 0, time.monotonic()
        return anchor

    def after_append(self, kind: str | None) -> None:
        """Called by the audit trail after each row: anchors on a promotion, else at the interval."""
        if not self.configured:
            return
        with self._lock:
            self._since += 1
            due = kind in ALWAYS or self._since >= ANCHOR_EVERY or time.monotonic() - self._last >= ANCHOR_SECONDS
        if due:
            try:
                self.write(kind if kind in ALWAYS else "interval")
            except OSError as error:   # the record itself is written; the gap shows in `audit verify`
                log.error("could not write the audit anchor to %s (%s); the chains are not anchored until it "
                          "can be", self.file, error.strerror or error)

    def read(self) -> list[dict]:
        """The anchors in the anchor file, oldest first ([] without one); an unreadable line is kept as
        {"unreadable": line number}."""
        if not self.file or not Path(self.file).is_file():
            return []
        anchors = []
        for number, line in enumerate(Path(self.file).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                anchor = json.loads(line)
                if not isinstance(anchor.get("chains"), dict):
                    raise ValueError
                anchors.append(anchor)
            except (ValueError, AttributeError):
                anchors.append({"unreadable": number})
        return anchors

    def check(self) -> dict:
        """Compare the chains now with every anchor in the file.

        Returns:
            {"ok": bool, "problem": the first mismatch in words or None, "anchors": how many were checked,
             "newest": the newest anchor's time or None}.
        """
        anchors, problem = self.read(), None
        heads = registry.chain_heads(self.models_dir)
        db = _read_only(self.audit_path) if _has_trail(self.audit_path) else None
        try:
            for anchor in anchors:
                if "unreadable" in anchor:
                    problem = f"{self.file} line {anchor['unreadable']} is not an anchor (the file was written to)"
                    break
                problem = _mismatch(anchor, db, heads)
                if problem:
                    break
        finally:
            if db is not None:
                db.close()
        return {"ok": problem is None, "problem": problem, "anchors": len(anchors),
                "newest": anchors[-1].get("time") if anchors else None}


def _mismatch(anchor: dict, db: sqlite3.Connection | None, heads: list[str]) -> str | None:
    """What in the chains now contradicts one anchor, or None."""
    when = anchor.get("time", "?")
    for chain, (rows, head) in anchor["chains"].items():
        if not rows:
            continue
        if chain == "promotions":
            count, at = len(heads), heads[rows - 1] if len(heads) >= rows else None
        elif chain in TABLES and db is not None:
            count, = db.execute(f"SELECT count(*) FROM {chain}").fetchone()
            found = db.execute(f"SELECT hash FROM {chain} ORDER BY id LIMIT 1 OFFSET ?", (rows - 1,)).fetchone()
            at = found[0] if found else None
        elif chain in TABLES:
            count, at = 0, None
        else:
            continue
        if count < rows:
            return (f"{chain}: {count} row(s) now, but {rows} were anchored at {when}: the records were rolled back "
                    f"(an older copy put in place) or rows were deleted")
        if at != head:
            return (f"{chain}: row {rows} is not the one anchored at {when} (hash {str(at)[:12]}…, anchored "
                    f"{str(head)[:12]}…): the chain was rewritten")
    return None


def _has_trail(path: Path) -> bool:
    """Is there an audit trail to read: its file, or the shared database (PNEUMO_DATABASE_URL)?"""
    return database_url() is not None or Path(path).is_file()


def _read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the audit trail: its file, or the shared database in one snapshot (`records.db`)."""
    if database_url() is None:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_MS / 1000)
    db = Database("audit", path).connect()
    db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")   # rolled back when closed
    return db


def _send_syslog(destination: str, message: str) -> None:
    """One syslog line (facility auth, priority notice) to HOST:PORT over UDP or to a local socket path."""
    host, _, port = destination.rpartition(":")
    address = (host, int(port)) if host and port.isdigit() else destination
    handler = logging.handlers.SysLogHandler(address=address, facility=logging.handlers.SysLogHandler.LOG_AUTH,
                                             socktype=socket.SOCK_DGRAM if isinstance(address, tuple) else None)
    try:
        handler.emit(logging.LogRecord(SYSLOG_TAG, logging.WARNING, __file__, 0, message, None, None))
    finally:
        handler.close()


def audit_trail(settings) -> AuditTrail:
    """The audit trail of `settings`, anchored as they configure (what the command line and dashboard use).

    Args:
        settings: the Settings (audit path, models dir, anchor destinations).
    Returns:
        An `AuditTrail` whose appends write anchors on promotions and at intervals.
    """
    return AuditTrail(settings.audit_path, anchors=Anchors.from_settings(settings))
