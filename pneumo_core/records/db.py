"""SQLite for the library's stores (job queue, audit trail): one way to connect, set up once.

Every call opens its own short connection (sqlite3 connections must not be shared between threads,
and dashboard sessions, runners and the command line share the files). What is stored in the
database file (WAL journal mode, tables, triggers) is set up once per process and file, not on
every 2-second poll of a dashboard page; what belongs to a connection (busy timeout) is set on each.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_MS = 30_000   # a writer waits up to 30 s for another's lock instead of failing at once

_ready: set[tuple[str, int, int]] = set()
_ready_lock = threading.Lock()


def _identity(path: Path) -> tuple[str, int, int] | None:
    """(path, device, inode) of an existing file: a file deleted and made again is set up again."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return str(path), stat.st_dev, stat.st_ino


def connect(path: Path, setup: Callable[[sqlite3.Connection], None] | None = None) -> sqlite3.Connection:
    """A new autocommit connection to `path` with WAL and the busy timeout; `setup(db)` runs once per file.

    Args:
        path: the database file (its folder is created).
        setup: creates tables, triggers, migrations; run with the connection the first time this
            process opens this file (and again if the file was replaced).
    Returns:
        An open connection (close it; `transaction` does).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_MS / 1000, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout={BUSY_MS}")
    key = _identity(path)
    if key is None or key not in _ready:
        with _ready_lock:
            if key is None or key not in _ready:   # another thread may have set it up meanwhile
                db.execute("PRAGMA journal_mode=WAL")   # persistent: stored in the database file
                if setup is not None:
                    setup(db)
                _ready.add(_identity(path))
    return db


@contextmanager
def transaction(path: Path, setup: Callable[[sqlite3.Connection], None] | None = None,
                write: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection for one unit of work; `write=True` holds the write lock (BEGIN IMMEDIATE) from the
    start, so a read-then-write (next job to run, last hash of a chain) is never interleaved.

    Args:
        path: the database file.
        setup: as for `connect`.
        write: take the write lock for the whole block and commit at its end (rolled back on error).
    """
    db = connect(path, setup)
    try:
        if write:
            db.execute("BEGIN IMMEDIATE")
        yield db
        if write:
            db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()

