"""Audit trail: every diagnosis shown and every event that matters, append-only and hash-chained.

`PNEUMO_HOME/audit.sqlite` holds two tables:

- `diagnoses`: one row each time a call is shown to someone: when the call was computed (`time`)
  and shown (`shown`; a cached call shown again later is a new row), which film (its SHA-256, never
  the image, its file name or anything from a DICOM header that could identify the patient), which
  model version, the probability, threshold and call, the out-of-distribution score and flag, the
  heatmap method, where (dashboard or command line) and who, and the site's triage tier of the call
  (`tier`: low / uncertain / high, NULL when the version had no site guarantee; added to older
  databases by a migration, and hashed only when set, so rows written before it still verify).
- `events`: who did what else: job submit and cancel, promotion and rollback, report download,
  audit view and export, sign-in, sign-out, failed sign-in, user changes (`AuditTrail.event`).

Records that changes cannot hide: the database refuses UPDATE and DELETE (triggers that raise), the
library's own connection is not allowed to change or drop rows, tables or triggers (an sqlite3
authorizer), and each row holds `hash` = SHA-256 of the previous row's hash and its own content
(`chain_hash`). Someone who drops the triggers with the `sqlite3` shell and edits or deletes a row
breaks the chain at that row, which `verify` (and `python -m pneumo_core audit verify`) names.
Deleting the newest rows is caught through SQLite's AUTOINCREMENT counter. An attacker who also
rewrites that counter and every later hash, or who puts back an older copy of the whole file, is
caught only by comparing with heads kept elsewhere: `records.anchor` sends them to an append-only
file and/or a syslog server, and `audit verify` checks the chains against them.

WAL mode lets readers browse while sessions write; each append takes the write lock (BEGIN
IMMEDIATE) to read the last hash and insert, so concurrent sessions and processes never fork the chain.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from pneumo_core.records import db as records_db
from pneumo_core.records.access import Actor, require

COLUMNS = ("id", "time", "shown", "sha256", "model", "probability", "threshold", "call", "ood_score", "ood_flag",
           "cam_method", "source", "who", "tier")
# The audit page's order: who, what, when, on which film and model first; the measurements after.
VIEW_COLUMNS = ("who", "call", "time", "sha256", "model", "probability", "threshold", "tier", "ood_score",
                "ood_flag", "cam_method", "source", "shown", "id")
EVENT_COLUMNS = ("id", "time", "kind", "who", "details")
GENESIS = "0" * 64     # the "previous hash" of a chain's first row
BUSY_MS = records_db.BUSY_MS
TABLES = ("diagnoses", "events")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS diagnoses (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, sha256 TEXT NOT NULL, model TEXT NOT NULL,
    probability REAL NOT NULL, threshold REAL NOT NULL, call TEXT NOT NULL, ood_score REAL, ood_flag INTEGER,
    cam_method TEXT, source TEXT, who TEXT, shown TEXT, prev_hash TEXT, hash TEXT, tier TEXT);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, kind TEXT NOT NULL, who TEXT,
    details TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
"""
_TRIGGERS = "".join(f"""
CREATE TRIGGER IF NOT EXISTS {table}_no_{verb} BEFORE {verb.upper()} ON {table}
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: {verb.upper()} refused'); END;"""
                    for table in TABLES for verb in ("update", "delete"))


def now() -> str:
    """The current UTC time as the audit stores it (ISO 8601, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def chain_hash(previous: str, content: dict) -> str:
    """SHA-256 (hex) of the previous link's hash and a row's content (canonical JSON, keys sorted).

    Args:
        previous: the previous row's hash (GENESIS for the first row).
        content: the row's columns (without `hash`), id included.
    Returns:
        64 hex digits.
    """
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(f"{previous}\n{text}".encode()).hexdigest()


# Columns added after rows were chained: hashed only when set, so an older row (NULL there) keeps its hash.
HASHED_WHEN_SET = ("tier",)


def hashed_content(row: dict) -> dict:
    """The part of a row (all columns, as stored) that its hash covers: all but `hash`, and HASHED_WHEN_SET if set."""
    return {k: v for k, v in row.items() if k != "hash" and not (k in HASHED_WHEN_SET and v is None)}


def _setup(db: sqlite3.Connection) -> None:
    """Tables, the seal of rows written before the chain existed (a one-time migration), then triggers."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in filter(str.strip, _SCHEMA.split(";")):
            db.execute(statement)
        have = {r[1] for r in db.execute("PRAGMA table_info(diagnoses)")}
        for column in ("shown", "prev_hash", "hash", "tier"):
            if column not in have:   # an audit.sqlite from before the chain (or before triage tiers)
                db.execute(f"ALTER TABLE diagnoses ADD COLUMN {column} TEXT")
        unsealed = db.execute("SELECT 1 FROM diagnoses WHERE hash IS NULL LIMIT 1").fetchone()
        if unsealed and not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' "
                                       "AND name = 'diagnoses_no_update'").fetchone():
            previous = GENESIS
            for row in db.execute("SELECT * FROM diagnoses ORDER BY id").fetchall():
                row = {**dict(row), "shown": row["shown"] or row["time"], "prev_hash": previous}
                row["hash"] = chain_hash(previous, hashed_content(row))
                db.execute("UPDATE diagnoses SET shown = ?, prev_hash = ?, hash = ? WHERE id = ?",
                           (row["shown"], previous, row["hash"], row["id"]))
                previous = row["hash"]
        for statement in filter(str.strip, _TRIGGERS.split("END;")):
            db.execute(statement + "END;")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _authorize(action, arg1, arg2, dbname, source):
    """The library's own connection may read and append, never change, delete or drop audit records."""
    if action in (sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE) and arg1 in TABLES:
        return sqlite3.SQLITE_DENY
    if action in (sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_ALTER_TABLE,
                  sqlite3.SQLITE_CREATE_TRIGGER):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and arg1 == "writable_schema":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class AuditTrail:
    """The audit database at `path`, created (WAL, tables, triggers) on first use; or the shared
    PostgreSQL database when PNEUMO_DATABASE_URL is set (`records.db`; its triggers come from the migrations).

    Args:
        path: the database file.
        anchors: a `records.anchor.Anchors` told of every appended row (it anchors the chains' heads
            outside the database on promotions and at intervals); None: not anchored.
    """

    def __init__(self, path: Path, anchors=None):
        self.path = Path(path)
        self.database = records_db.Database("audit", self.path, _setup)
        self.anchors = anchors
        self.connection().close()

    def connection(self) -> sqlite3.Connection:
        """A new connection as the library uses it: it can read and append rows, and is refused any
        UPDATE, DELETE, DROP or ALTER on the audit tables (close it when done). On PostgreSQL the
        server's triggers refuse them (and, deployed as docs/scaling.md says, the role's privileges)."""
        db = self.database.connect()
        if self.database.dialect == records_db.SQLITE:
            db.set_authorizer(_authorize)
        return db

    def journal_mode(self) -> str:
        """SQLite's journal mode ("wal"), or "postgresql" for the shared server."""
        if self.database.dialect != records_db.SQLITE:
            return self.database.dialect
        with closing(self.connection()) as db:
            return db.execute("PRAGMA journal_mode").fetchone()[0]

    def _append(self, table: str, row: dict) -> int:
        with closing(self.connection()) as db:
            db.execute("BEGIN IMMEDIATE")     # read the chain's end and append under one lock
            try:
                last = db.execute(f"SELECT id, hash FROM {table} ORDER BY id DESC LIMIT 1").fetchone()
                seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
                row = {"id": max(last["id"] if last else 0, seq[0] if seq else 0) + 1, **row,
                       "prev_hash": last["hash"] if last else GENESIS}
                row["hash"] = chain_hash(row["prev_hash"], hashed_content(row))
                db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                           list(row.values()))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        if self.anchors is not None:
            self.anchors.after_append(row.get("kind"))
        return row["id"]

    def record(self, diagnosis, source: str = "", who: str | None = None, shown: str | None = None) -> int:
        """Append one row for a `Diagnosis` shown to `who` now (or at `shown`); returns its id.

        Args:
            diagnosis: the call (its `when` is when it was computed; a cached call keeps it).
            source: where it was shown: "dashboard", "cli", ...
            who: the acting user's name.
            shown: ISO time it was shown (default: now).
        """
        d = diagnosis
        return self._append("diagnoses", {
            "time": d.when, "shown": shown or now(), "sha256": d.sha256, "model": d.model_id,
            "probability": float(d.probability), "threshold": float(d.threshold), "call": d.label,
            "ood_score": None if d.ood_score is None else float(d.ood_score),
            "ood_flag": None if d.ood_flag is None else int(d.ood_flag), "cam_method": d.method,
            "source": source, "who": who, "tier": getattr(d, "tier", None)})

    def event(self, kind: str, who: str | None, **details) -> int:
        """Append one event to the chain; returns its id.

        Args:
            kind: what happened: "job_submit", "job_cancel", "promotion", "rollback", "report_download",
                "audit_view", "audit_export", "sign_in", "sign_out", "sign_in_failed", "user_change", ...
            who: the acting user's name (for a failed sign-in: the name that was tried).
            **details: anything JSON can hold (never patient data, file names or images).
        """
        return self._append("events", {"time": now(), "kind": kind, "who": who,
                                       "details": json.dumps(details, sort_keys=True, default=str)})

    def rows(self, limit: int | None = None, model: str | None = None, call: str | None = None,
             flagged_only: bool = False) -> list[dict]:
        """Diagnosis rows, newest first, optionally filtered by model version, call, or OOD flag."""
        where, args = [], []
        for column, value in (("model", model), ("call", call)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if flagged_only:
            where.append("ood_flag = 1")
        sql = f"SELECT {', '.join(COLUMNS)} FROM diagnoses" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY id DESC" + (" LIMIT ?" if limit else "")
        with closing(self.connection()) as db:
            result = db.execute(sql, args + ([int(limit)] if limit else [])).fetchall()
        return [{**dict(r), "ood_flag": None if r["ood_flag"] is None else bool(r["ood_flag"])} for r in result]

    def events(self, limit: int | None = None, kind: str | None = None) -> list[dict]:
        """Events, newest first (`details` decoded), optionally of one kind."""
        sql = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events" + (" WHERE kind = ?" if kind else "")
        sql += " ORDER BY id DESC" + (" LIMIT ?" if limit else "")
        args = ([kind] if kind else []) + ([int(limit)] if limit else [])
        with closing(self.connection()) as db:
            return [{**dict(r), "details": json.loads(r["details"])} for r in db.execute(sql, args)]

    def view(self, actor: Actor, **filters) -> list[dict]:
        """`rows(**filters)` for an auditor or admin, recorded as an "audit_view" event.

        Raises PermissionDenied for other roles.
        """
        require(actor, "view_audit")
        rows = self.rows(**filters)
        self.event("audit_view", actor.name, filters={k: v for k, v in filters.items() if v}, rows=len(rows))
        return rows

    def export(self, actor: Actor, **filters) -> str:
        """The rows as CSV for an auditor or admin, recorded as an "audit_export" event.

        Raises PermissionDenied for other roles.
        """
        require(actor, "export_audit")
        rows = self.rows(**filters)
        self.event("audit_export", actor.name, filters={k: v for k, v in filters.items() if v}, rows=len(rows))
        return to_csv(rows)

    def verify(self) -> dict:
        """Check both chains from their first row.

        Returns:
            {"ok": bool, "problem": the first broken link in words or None, "rows": {table: count},
             "last": {table: last hash}}.
        """
        counts, last = {}, {}
        with self.database.snapshot() as db:
            for table in TABLES:
                problem, previous, expected_id = None, GENESIS, None
                rows = db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
                for row in rows:
                    row = dict(row)
                    if expected_id is not None and row["id"] != expected_id:
                        problem = (f"{table}: rows {expected_id}..{row['id'] - 1} are missing (deleted) "
                                   f"before row {row['id']}")
                    elif row["prev_hash"] != previous:
                        problem = (f"{table} row {row['id']}: its link to the previous row is broken (the previous "
                                   f"row was changed, deleted or inserted)")
                    elif row["hash"] != chain_hash(previous, hashed_content(row)):
                        problem = f"{table} row {row['id']}: its content does not match its hash (the row was changed)"
                    if problem:
                        return {"ok": False, "problem": problem, "rows": counts, "last": last}
                    previous, expected_id = row["hash"], row["id"] + 1
                seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
                if seq and seq[0] != (expected_id or 1) - 1:
                    return {"ok": False, "rows": counts, "last": last,
                            "problem": f"{table}: the newest rows after row {(expected_id or 1) - 1} are missing "
                                       f"(deleted; {seq[0]} were written)"}
                counts[table], last[table] = len(rows), previous
        return {"ok": True, "problem": None, "rows": counts, "last": last}


def to_csv(rows: list[dict]) -> str:
    """The rows as CSV text with a header line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
