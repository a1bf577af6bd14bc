"""Audit trail: one row per diagnosis made, in SQLite (`PNEUMO_HOME/audit.sqlite`).

A row says when, which film (its SHA-256, never the image, its file name or anything from a
DICOM header that could identify the patient), which model version, the probability, the
threshold and the call, the out-of-distribution score and flag, the heatmap method, where the
call was made (dashboard or command line) and by whom if known.

WAL mode lets readers browse while sessions write; every write opens its own short connection
(sqlite3 connections must not be shared between threads) and waits up to `BUSY_MS` for the lock,
so concurrent sessions and processes write without loss.
"""
from __future__ import annotations

import csv
import io
import sqlite3
from contextlib import closing
from pathlib import Path

COLUMNS = ("id", "time", "sha256", "model", "probability", "threshold", "call", "ood_score", "ood_flag",
           "cam_method", "source", "who")
BUSY_MS = 30_000
_SCHEMA = """CREATE TABLE IF NOT EXISTS diagnoses (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, sha256 TEXT NOT NULL, model TEXT NOT NULL,
    probability REAL NOT NULL, threshold REAL NOT NULL, call TEXT NOT NULL, ood_score REAL, ood_flag INTEGER,
    cam_method TEXT, source TEXT, who TEXT)"""


class AuditTrail:
    """The audit database at `path`, created (in WAL mode) on first use."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={BUSY_MS}")
        return db

    def journal_mode(self) -> str:
        with closing(self._connect()) as db:
            return db.execute("PRAGMA journal_mode").fetchone()[0]

    def record(self, diagnosis, source: str = "", who: str | None = None) -> int:
        """Append one row for a `Diagnosis`; returns its id."""
        d = diagnosis
        values = (d.when, d.sha256, d.model_id, d.probability, d.threshold, d.label, d.ood_score,
                  None if d.ood_flag is None else int(d.ood_flag), d.method, source, who)
        with closing(self._connect()) as db:
            cursor = db.execute(f"INSERT INTO diagnoses ({', '.join(COLUMNS[1:])}) "
                                f"VALUES ({', '.join('?' * len(values))})", values)
            return int(cursor.lastrowid)

    def rows(self, limit: int | None = None, model: str | None = None, call: str | None = None,
             flagged_only: bool = False) -> list[dict]:
        """Rows, newest first, optionally filtered by model version, call, or OOD flag."""
        where, args = [], []
        for column, value in (("model", model), ("call", call)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if flagged_only:
            where.append("ood_flag = 1")
        sql = f"SELECT {', '.join(COLUMNS)} FROM diagnoses" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY id DESC" + (" LIMIT ?" if limit else "")
        with closing(self._connect()) as db:
            result = db.execute(sql, args + ([int(limit)] if limit else [])).fetchall()
        return [{**dict(zip(COLUMNS, r)), "ood_flag": None if r[8] is None else bool(r[8])} for r in result]


def to_csv(rows: list[dict]) -> str:
    """The rows as CSV text with a header line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
