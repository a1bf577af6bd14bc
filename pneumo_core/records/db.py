"""The records' database: SQLite files by default, one shared PostgreSQL when PNEUMO_DATABASE_URL is set.

Two engines, one way to use them. A store (audit trail, accounts, job queue, PACS state) opens a
`Database(name, path, setup)` and speaks SQLite's SQL with `?` placeholders through a connection
that behaves like `sqlite3`'s (`execute`, rows readable by index and by column name, `rowcount`,
`lastrowid`, explicit `BEGIN IMMEDIATE` / `COMMIT`). Unset, that connection *is* a `sqlite3` one to
the store's file under PNEUMO_HOME, exactly as before. Set, it is a psycopg 3 connection from a
SQLAlchemy pool to the shared server, and the few differences between the dialects are translated
here, in one place (`postgres_sql`):

- `?` placeholders become `%s`; `INSERT OR IGNORE` / `INSERT OR REPLACE` become `ON CONFLICT`;
- `BEGIN IMMEDIATE` (SQLite: the file's write lock, held to the end of the transaction) becomes
  `BEGIN` plus a transaction-scoped advisory lock named after the store, so a read-then-write (the
  end of the audit chain, the next job, a sign-in's failure counter) is serialised across every
  process on every machine, as the file lock serialises them on one;
- `sqlite_sequence` (the highest id ever given, which the audit chain compares against) is the
  `audit_sequence` table that a trigger keeps on the server;
- an INSERT into a table whose id the database assigns returns it (`lastrowid`).

On PostgreSQL the tables, triggers and functions come from Alembic migrations
(`pneumo_core/records/migrations`), run once per process under an advisory lock (so several
processes starting together migrate once); `python -m pneumo_core db upgrade` runs them by hand.

Secrets: the URL (which may hold a password) comes from PNEUMO_DATABASE_URL, or from the file named
by PNEUMO_DATABASE_URL_FILE (a secret mounted by systemd or the container runtime); libpq's
PGPASSWORD / PGPASSFILE work too. Only `describe()` is ever shown or logged: the URL without its password.
"""
from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pneumo_core.errors import ConfigError

BUSY_MS = 30_000   # a writer waits up to 30 s for another's lock instead of failing at once
URL_VARIABLE = "PNEUMO_DATABASE_URL"
URL_FILE_VARIABLE = "PNEUMO_DATABASE_URL_FILE"
SQLITE, POSTGRESQL = "sqlite", "postgresql"

_ready: set[tuple[str, int, int]] = set()
_ready_lock = threading.Lock()


# -- SQLite (the default: one file per store under PNEUMO_HOME) ------------------------------------------------

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
    with _unit_of_work(connect(path, setup), "BEGIN IMMEDIATE" if write else None) as db:
        yield db


@contextmanager
def _unit_of_work(db, begin: str | None):
    """`db` for one block, closed after it; with `begin`, inside that transaction (committed at the end,
    rolled back on an error)."""
    try:
        if begin:
            db.execute(begin)
        yield db
        if begin:
            db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()


# -- Which engine ------------------------------------------------------------------------------------------------

def database_url(env: dict | None = None) -> str | None:
    """The shared database's URL, or None for the SQLite files.

    Args:
        env: the environment (default `os.environ`): PNEUMO_DATABASE_URL, else the first line of
            the file named by PNEUMO_DATABASE_URL_FILE.
    Returns:
        A `postgresql://...` URL (as given; the driver is chosen here), or None.
    Raises:
        ConfigError: a URL of another kind, or an unreadable URL file.
    """
    env = os.environ if env is None else env
    url = (env.get(URL_VARIABLE) or "").strip()
    if not url and env.get(URL_FILE_VARIABLE):
        try:
            url = Path(env[URL_FILE_VARIABLE]).read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError) as error:
            raise ConfigError(f"{URL_FILE_VARIABLE}={env[URL_FILE_VARIABLE]} cannot be read "
                              f"({type(error).__name__}); it must hold the database URL on its first line") from None
    if not url:
        return None
    if not re.match(r"^postgres(ql)?(\+psycopg)?://", url):
        raise ConfigError(f"{URL_VARIABLE} must be a PostgreSQL URL (postgresql://user@host:5432/pneumo); "
                          f"unset it to keep the records in SQLite files under PNEUMO_HOME")
    return url


def safe_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    return re.sub(r"^(\w[\w+]*://[^:/@]*):[^@]*@", r"\1:***@", url)


# -- PostgreSQL ----------------------------------------------------------------------------------------------------

# Tables whose conflict key an `INSERT OR REPLACE` names (the primary key), and tables whose id the
# database assigns (an INSERT returns it as `lastrowid`).
PRIMARY_KEYS = {"failures": ("key",), "setup_code": ("id",), "meta": ("key",), "films": ("sop_uid", "model"),
                "users": ("name",)}
ASSIGNED_IDS = ("jobs",)
RENAMED = {"sqlite_sequence": "audit_sequence"}

_engines: dict[str, object] = {}
_migrated: set[str] = set()
_engines_lock = threading.Lock()


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (the same in every process and machine)."""
    return int.from_bytes(hashlib.sha256(f"pneumo:{name}".encode()).digest()[:8], "big", signed=True)


def postgres_sql(sql: str) -> str:
    """One statement of the stores' SQLite SQL in PostgreSQL's (see the module docstring).

    Args:
        sql: a statement with `?` placeholders.
    Returns:
        The statement with `%s` placeholders and the dialect's forms.
    """
    text = sql.strip().rstrip(";")
    ignore = re.match(r"(?is)^INSERT\s+OR\s+IGNORE\s+INTO\s+", text)
    replace = re.match(r"(?is)^INSERT\s+OR\s+REPLACE\s+INTO\s+(\w+)\s*\(([^)]*)\)", text)
    if ignore:
        text = "INSERT INTO " + text[ignore.end():] + " ON CONFLICT DO NOTHING"
    elif replace:
        table, columns = replace.group(1), [c.strip() for c in replace.group(2).split(",")]
        keys = PRIMARY_KEYS[table]
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in keys)
        text = ("INSERT INTO " + text[replace.start(1):]
                + f" ON CONFLICT ({', '.join(keys)}) " + (f"DO UPDATE SET {updates}" if updates else "DO NOTHING"))
    insert = re.match(r"(?is)^INSERT\s+INTO\s+(\w+)", text)
    if insert and insert.group(1) in ASSIGNED_IDS and "RETURNING" not in text.upper():
        text += " RETURNING id"
    for old, new in RENAMED.items():
        text = re.sub(rf"\b{old}\b", new, text)
    return text.replace("%", "%%").replace("?", "%s")


class Row(tuple):
    """A result row readable by position and by column name, and convertible with `dict(row)`, like `sqlite3.Row`."""

    def __new__(cls, values, names):
        row = super().__new__(cls, values)
        row._names = names
        return row

    def keys(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)


def _row_factory(cursor):
    names = [column.name for column in cursor.description or ()]
    return lambda values: Row(values, names)


class Cursor:
    """The answer to one statement: rows (by index or name), `rowcount`, `lastrowid`."""

    def __init__(self, cursor, returns_id: bool):
        self._cursor = cursor
        self.rowcount = cursor.rowcount
        self.lastrowid = None
        self._rows = cursor.fetchall() if cursor.description is not None else []
        if returns_id and self._rows:
            self.lastrowid = self._rows[0][0]

    def fetchone(self):
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self):
        return iter(self.fetchall())


class PostgresConnection:
    """A pooled psycopg connection in autocommit mode that speaks the stores' SQLite SQL.

    Close it to give it back to the pool (`Database.transaction` does).
    """

    dialect = POSTGRESQL

    def __init__(self, raw, store: str):
        self._raw = raw                      # SQLAlchemy's pool proxy around a psycopg connection
        self._store = store
        raw.driver_connection.autocommit = True
        raw.driver_connection.row_factory = _row_factory

    @property
    def in_transaction(self) -> bool:
        import psycopg
        return self._raw.driver_connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def execute(self, sql: str, args=()) -> Cursor:
        """Run one statement (SQLite SQL, `?` placeholders); `BEGIN IMMEDIATE` takes the store's lock."""
        cursor = self._raw.driver_connection.cursor()
        if re.match(r"(?i)^\s*BEGIN\s+IMMEDIATE\s*;?\s*$", sql):
            cursor.execute("BEGIN")
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self._store),))
            return Cursor(cursor, False)
        text = postgres_sql(sql)
        cursor.execute(text, tuple(args))
        return Cursor(cursor, text.endswith("RETURNING id"))

    def executemany(self, sql: str, rows) -> int:
        """Run one statement per row of arguments; returns how many rows they changed."""
        return sum(max(0, self.execute(sql, args).rowcount) for args in rows)

    def close(self) -> None:
        if self.in_transaction:
            self._raw.driver_connection.rollback()
        self._raw.close()


def engine(url: str):
    """The SQLAlchemy engine (a connection pool) for `url`, made once per process, migrated to the newest schema."""
    with _engines_lock:
        if url not in _engines:
            from sqlalchemy import create_engine
            driver_url = re.sub(r"^postgres(ql)?(\+psycopg)?://", "postgresql+psycopg://", url)
            _engines[url] = create_engine(driver_url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                                          hide_parameters=True)
        made = _engines[url]
        if url not in _migrated:
            from pneumo_core.records.migrations import upgrade
            upgrade(made)
            _migrated.add(url)
    return made


class Database:
    """One store's database: its SQLite file, or the shared PostgreSQL when PNEUMO_DATABASE_URL is set.

    Args:
        name: the store ("audit", "users", "jobs", "pacs"): its advisory-lock name on PostgreSQL.
        path: the store's SQLite file (used when no URL is given or set).
        setup: the SQLite file's one-time set-up (tables, triggers, its own migrations).
        url: the shared database's URL (default: `database_url()` from the environment).
    """

    def __init__(self, name: str, path: Path, setup: Callable[[sqlite3.Connection], None] | None = None,
                 url: str | None = None):
        self.name, self.path, self.setup = name, Path(path), setup
        self.url = url or database_url()
        self.dialect = POSTGRESQL if self.url else SQLITE

    def describe(self) -> str:
        """Where the records are, for messages: the file, or the server's URL without its password."""
        return safe_url(self.url) if self.url else str(self.path)

    def connect(self):
        """A new autocommit connection: `sqlite3.Connection` (rows are `sqlite3.Row`), or a `PostgresConnection`."""
        if self.url is None:
            return connect(self.path, self.setup)
        return PostgresConnection(engine(self.url).raw_connection(), self.name)

    @contextmanager
    def transaction(self, write: bool = False):
        """A connection for one unit of work, as `transaction` (the module function); on PostgreSQL
        `write=True` serialises the block with every other writer of this store."""
        with _unit_of_work(self.connect(), "BEGIN IMMEDIATE" if write else None) as db:
            yield db

    @property
    def skip_locked(self) -> str:
        """What ends a SELECT of rows to claim: " FOR UPDATE SKIP LOCKED" on PostgreSQL (each claimer
        takes rows no other claimer holds, without waiting), nothing on SQLite (`claiming` holds the file)."""
        return " FOR UPDATE SKIP LOCKED" if self.url else ""

    @contextmanager
    def claiming(self):
        """A transaction for claiming rows (the next job): on PostgreSQL a plain BEGIN, the rows locked
        by the SELECT ... `skip_locked` the caller runs; on SQLite the file's write lock (BEGIN IMMEDIATE)."""
        with _unit_of_work(self.connect(), "BEGIN" if self.url else "BEGIN IMMEDIATE") as db:
            yield db

    @contextmanager
    def snapshot(self):
        """A read-only connection that sees one consistent state for the whole block, however many
        writers append meanwhile (checking a chain reads its rows and its sequence at one instant).
        On SQLite it opens the file read-only, without the set-up (nothing is created or changed)."""
        if self.url is None:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_MS / 1000, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("BEGIN")     # WAL: a read transaction is a snapshot
        else:
            db = self.connect()
            db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield db
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.close()


def integrity_errors() -> tuple[type[Exception], ...]:
    """The exception types of a broken constraint (a duplicate key) on either engine."""
    errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
    try:
        import psycopg
        errors += (psycopg.IntegrityError,)
    except ImportError:
        pass
    return errors
