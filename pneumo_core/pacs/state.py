"""What the PACS watcher knows, in SQLite (`PNEUMO_HOME/pacs.sqlite`) or the shared PostgreSQL
(PNEUMO_DATABASE_URL, through `records.db`), and the worklist read from it.

One row per (film SOP Instance UID, model version) with its status (new, scored, stored, skipped,
failed), the call and where the results went; plus the last poll and the last error. No patient
name is kept: films are named by their UIDs. `worklist` orders the films most urgent first, in the
one order every list of calls uses (`serve.diagnosis.order_key`, site tiers included).

Watchers on several machines share the rows: a watcher works on a film only after `claim` marked
the row its own for `CLAIM_SECONDS` (one conditional UPDATE, atomic on both engines), so each film
is scored once however many watchers poll; a claim left by a watcher that died lapses.
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from pneumo_core.evaluation.triage import tiers_for
from pneumo_core.pacs.client import FilmRef
from pneumo_core.records.db import SQLITE, Database
from pneumo_core.serve.diagnosis import call_priority, order_key, tier_of

BUSY_MS = 30_000
CLAIM_SECONDS = 600   # a film's scoring and storing take seconds; a claim this old is a dead watcher's


_SCHEMA = """
CREATE TABLE IF NOT EXISTS films (
    sop_uid TEXT NOT NULL, model TEXT NOT NULL, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
    modality TEXT, view TEXT, study_date TEXT, accession TEXT, status TEXT NOT NULL, reason TEXT,
    label TEXT, probability REAL, threshold REAL, certainty TEXT, ood_score REAL, ood_flag INTEGER,
    sr_uid TEXT, sc_uid TEXT, sc_series TEXT, audit_id INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
    discovered TEXT, scored TEXT, stored TEXT, PRIMARY KEY (sop_uid, model));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
_ADDED_COLUMNS = {"claimed_by": "TEXT", "claimed_until": "REAL"}


def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    have = {r[1] for r in db.execute("PRAGMA table_info(films)")}
    for column, kind in _ADDED_COLUMNS.items():
        if column not in have:    # a pacs.sqlite from before watchers claimed films
            db.execute(f"ALTER TABLE films ADD COLUMN {column} {kind}")


def timestamp() -> str:
    """Now, as the state stores times: UTC, ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class PacsState:
    """The watcher's state at `path` (SQLite, WAL), or in the shared database; one short connection per
    call, safe across processes and machines."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.database = Database("pacs", self.path, _setup)
        if self.database.dialect == SQLITE:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connect().close()

    def _connect(self) -> sqlite3.Connection:
        return self.database.connect()

    def _execute(self, sql: str, args=()) -> list[dict]:
        with closing(self._connect()) as db:
            return [dict(r) for r in db.execute(sql, args).fetchall()]

    def add(self, films: list[FilmRef], model: str) -> int:
        """Record films not yet known for `model`; returns how many were new."""
        with closing(self._connect()) as db:
            # Each poll finds the films of the last days again: one SELECT per 500 instead of an INSERT per film.
            known = set()
            for start in range(0, len(films), 500):
                chunk = [f.sop_uid for f in films[start:start + 500]]
                known.update(r[0] for r in db.execute(f"SELECT sop_uid FROM films WHERE model = ? AND sop_uid IN "
                                                      f"({', '.join('?' * len(chunk))})", (model, *chunk)))
            return sum(db.execute("INSERT OR IGNORE INTO films (sop_uid, model, study_uid, series_uid, modality, "
                                  "view, study_date, accession, status, discovered) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'new', ?)",
                                  (f.sop_uid, model, f.study_uid, f.series_uid, f.modality, f.view, f.study_date,
                                   f.accession, timestamp())).rowcount for f in films if f.sop_uid not in known)

    def update(self, sop_uid: str, model: str, **values) -> None:
        names = ", ".join(f"{k} = ?" for k in values)
        self._execute(f"UPDATE films SET {names} WHERE sop_uid = ? AND model = ?", [*values.values(), sop_uid, model])

    def claim(self, sop_uid: str, model: str, owner: str, statuses: tuple[str, ...],
              seconds: float = CLAIM_SECONDS) -> dict | None:
        """Make a film's row `owner`'s for `seconds`, if it is still in one of `statuses` and nobody else holds it.

        Args:
            sop_uid, model: the row.
            owner: the watcher (unique per process).
            statuses: what the row must still be (another watcher may have finished it meanwhile).
            seconds: how long the claim holds unless released.
        Returns:
            The row as it is now, or None when another watcher has it or it moved on.
        """
        now = time.time()
        with closing(self._connect()) as db:
            taken = db.execute(f"UPDATE films SET claimed_by = ?, claimed_until = ? WHERE sop_uid = ? AND model = ? "
                               f"AND status IN ({', '.join('?' * len(statuses))}) AND (claimed_until IS NULL "
                               f"OR claimed_until < ? OR claimed_by = ?)",
                               (owner, now + seconds, sop_uid, model, *statuses, now, owner)).rowcount
            row = db.execute("SELECT * FROM films WHERE sop_uid = ? AND model = ?", (sop_uid, model)).fetchone()
        return dict(row) if taken == 1 and row is not None else None

    def release(self, sop_uid: str, model: str, owner: str) -> None:
        """End `owner`'s claim on a film's row (other watchers may take it, e.g. to retry)."""
        self._execute("UPDATE films SET claimed_by = NULL, claimed_until = NULL WHERE sop_uid = ? AND model = ? "
                      "AND claimed_by = ?", (sop_uid, model, owner))

    def films(self, model: str | None = None, statuses: tuple[str, ...] | None = None,
              study_uid: str | None = None) -> list[dict]:
        """Rows, oldest discovered first, optionally of one model, some statuses, one study."""
        where, args = [], []
        if model:
            where.append("model = ?")
            args.append(model)
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        if study_uid:
            where.append("study_uid = ?")
            args.append(study_uid)
        return self._execute("SELECT * FROM films" + (f" WHERE {' AND '.join(where)}" if where else "")
                             + " ORDER BY discovered, rowid", args)

    def get_meta(self, key: str) -> str | None:
        rows = self._execute("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, **values) -> None:
        with closing(self._connect()) as db:
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           [(k, None if v is None else str(v)) for k, v in values.items()])

    def status(self) -> dict:
        """Last poll, backlog (films found but not yet in the archive with a result), counts, recent errors."""
        counts = {r["status"]: r["n"] for r in self._execute("SELECT status, COUNT(*) n FROM films GROUP BY status")}
        errors = self._execute("SELECT sop_uid, study_uid, model, status, reason, attempts FROM films "
                               "WHERE status = 'failed' ORDER BY discovered DESC LIMIT 20")
        return {"url": self.get_meta("url"), "model": self.get_meta("model"), "last_poll": self.get_meta("last_poll"),
                "last_error": self.get_meta("last_error"), "last_error_time": self.get_meta("last_error_time"),
                "backlog": counts.get("new", 0) + counts.get("scored", 0), "counts": counts, "errors": errors}


def worklist(state: PacsState, limit: int = 500, models_dir: Path | None = None) -> list[dict]:
    """The watcher's films, most urgent first, in the order of Diagnose's worklist (`order_key`): site
    tiers high, uncertain, low; calls without a tier check, urgent, routine (each by probability,
    highest first); then films not scored, with the reason.

    Args:
        state: the watcher's state; limit: how many recent films.
        models_dir: where the model versions are; with it, each call gets its version's site tier.
    Returns:
        Rows of the state plus `tier` and `tier_guarantee` (None without a site guarantee), `priority`
        (the sort group, 0 first), `priority_name` (`call_priority`'s word) and `in_archive` (the SR was stored).
    """
    rows = state._execute("SELECT * FROM films ORDER BY discovered DESC, rowid DESC LIMIT ?", (int(limit),))
    tiers = {m: tiers_for(Path(models_dir) / m) for m in {r["model"] for r in rows if r["label"]}} if models_dir else {}
    for row in rows:
        row["ood_flag"] = None if row["ood_flag"] is None else bool(row["ood_flag"])
        row["tier"], row["tier_guarantee"] = (tier_of(tiers.get(row["model"]), row["probability"], row["ood_flag"])
                                              if row["label"] is not None else (None, None))
        facts = (row["label"], row["probability"], row["threshold"], row["ood_flag"], row["tier"])
        row["priority"], row["priority_name"] = order_key(*facts)[0], call_priority(*facts)
        row["in_archive"] = row["status"] == "stored"
    return sorted(rows, key=lambda r: order_key(r["label"], r["probability"], r["threshold"], r["ood_flag"], r["tier"],
                                                r["study_uid"]))
