"""The job rows: `<home>/jobs.sqlite`, or the shared PostgreSQL (PNEUMO_DATABASE_URL), through `records.db`.

A row holds the job's state (queued, running, succeeded, failed, cancelled), who submitted and
cancelled it, its options (`params`, JSON), the data check's findings (`checks`, JSON), its
processes (pid and start time of the runner and of the training process), its progress (stage,
step, percent), its log, the model version it made and its error, and the machine of its runner
with the runner's last heartbeat (`runner_host`, `heartbeat`: a runner on another machine is known
alive by its heartbeat, since its pid means nothing here). Every insert and update bumps a
counter (`changes`), so a page that polls reads one number to know whether anything changed.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from pneumo_core.records.db import Database

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    submitted TEXT NOT NULL,
    started TEXT,
    ended TEXT,
    submitted_by TEXT,
    params TEXT NOT NULL,
    checks TEXT,
    pid INTEGER,
    child_pid INTEGER,
    stage TEXT,
    step TEXT,
    percent REAL NOT NULL DEFAULT 0,
    log_path TEXT,
    model_id TEXT,
    error TEXT,
    pid_started REAL,
    child_started REAL,
    cancelled_by TEXT
);
CREATE TABLE IF NOT EXISTS changes (n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS jobs_inserted AFTER INSERT ON jobs BEGIN UPDATE changes SET n = n + 1; END;
CREATE TRIGGER IF NOT EXISTS jobs_updated AFTER UPDATE ON jobs BEGIN UPDATE changes SET n = n + 1; END;
"""
_ADDED_COLUMNS = {"pid_started": "REAL", "child_started": "REAL", "cancelled_by": "TEXT", "runner_host": "TEXT",
                  "heartbeat": "REAL"}


def now() -> str:
    """The time now, as the rows store it (UTC, ISO 8601, whole seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)     # CREATE ... IF NOT EXISTS: harmless when another process did it first
    db.execute("BEGIN IMMEDIATE")
    try:
        have = {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:    # a jobs.sqlite from before these columns
                db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        if db.execute("SELECT COUNT(*) FROM changes").fetchone()[0] == 0:
            db.execute("INSERT INTO changes (n) VALUES (0)")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class JobStore:
    """The job rows of one home dir (`jobs.sqlite`, or the shared database); each call has its own short connection."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.database = Database("jobs", self.path, _setup)

    @property
    def dialect(self) -> str:
        """"sqlite" or "postgresql"."""
        return self.database.dialect

    def transaction(self, write: bool = False):
        """A connection (see `Database.transaction`); `write=True` holds the store's write lock throughout."""
        return self.database.transaction(write)

    def update(self, job_id: int, only_if_state: str | None = None, **values) -> bool:
        """Set columns of one job (only if it is in `only_if_state`, when given); True if it changed."""
        sets = ", ".join(f"{k} = ?" for k in values)
        where = "id = ?" + (" AND state = ?" if only_if_state else "")
        args = [*values.values(), job_id] + ([only_if_state] if only_if_state else [])
        with self.transaction() as db:
            return db.execute(f"UPDATE jobs SET {sets} WHERE {where}", args).rowcount == 1

    @staticmethod
    def as_dict(row: sqlite3.Row) -> dict:
        """A row as a dict: `params` and `checks` decoded, `seconds` it has run (so far, if running)."""
        job = dict(row)
        job["params"] = json.loads(job["params"])
        job["checks"] = json.loads(job["checks"]) if job["checks"] else None
        end = datetime.fromisoformat(job["ended"]) if job["ended"] else datetime.now(UTC)
        job["seconds"] = (end - datetime.fromisoformat(job["started"])).total_seconds() if job["started"] else None
        return job

    def select(self, where: str = "", args=(), limit: int | None = None, order: str = "id DESC") -> list[dict]:
        """The rows matching `where` (SQL with `?` placeholders filled from `args`), as dicts, in `order`."""
        sql = "SELECT * FROM jobs" + (f" WHERE {where}" if where else "") + f" ORDER BY {order}"
        sql += f" LIMIT {int(limit)}" if limit else ""
        with self.transaction() as db:
            return [self.as_dict(r) for r in db.execute(sql, args)]

    def claim_next(self, host: str, pid: int, pid_started: float | None, heartbeat: float) -> int | None:
        """Take the oldest queued job for the runner (host, pid): it becomes running and its runner's.

        On PostgreSQL, `FOR UPDATE SKIP LOCKED`: runners on several machines claim at once and never
        the same job; on SQLite the file's write lock makes the claims one at a time.
        Returns:
            The claimed job's id, or None when nothing is queued.
        """
        with self.database.claiming() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1"
                             + self.database.skip_locked).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', started = ?, pid = ?, pid_started = ?, runner_host = ?, "
                       "heartbeat = ? WHERE id = ?", (now(), pid, pid_started, host, heartbeat, row["id"]))
        return int(row["id"])

    def changes(self) -> int:
        """A number that grows with every insert or update of a job row (one tiny read)."""
        with self.transaction() as db:
            return int(db.execute("SELECT n FROM changes").fetchone()[0])
