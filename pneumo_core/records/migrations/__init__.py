"""Alembic migrations of the shared PostgreSQL database (the SQLite files keep their own set-up).

`upgrade(engine)` brings the database to the newest schema inside one transaction holding an
advisory lock, so processes that start together (dashboards, runners, watchers) migrate it once
and the others wait, then find nothing to do. PostgreSQL's DDL is transactional: a failed
migration leaves the schema as it was.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
AUDIT_TABLES = ("diagnoses", "events")
OTHER_TABLES = ("users", "failures", "setup_code", "jobs", "changes", "films", "meta")


def config():
    """The Alembic configuration of these migrations (no alembic.ini: everything is set here)."""
    from alembic.config import Config
    made = Config()
    made.set_main_option("script_location", str(HERE))
    return made


def upgrade(engine, revision: str = "head") -> None:
    """Migrate the database of `engine` (a SQLAlchemy engine) to `revision`, once across processes.

    Args:
        engine: the shared database's engine.
        revision: the Alembic revision to reach (default: the newest).
    """
    from alembic import command

    from pneumo_core.records.db import lock_key
    made = config()
    with engine.begin() as connection:
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (lock_key("migrations"),))
        made.attributes["connection"] = connection
        command.upgrade(made, revision)


def current(engine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def app_role_sql(role: str) -> list[str]:
    """The GRANTs that make `role` the application's role: it reads and appends the audit trail but
    can never change or delete it (not even with the triggers off), and reads and writes the other tables.

    The owner (who runs the migrations: `python -m pneumo_core db upgrade`) runs these once; every
    dashboard, runner and watcher then connects as `role`.

    Args:
        role: an existing role name (letters, digits, underscores).
    Returns:
        SQL statements, in order.
    """
    if not role.replace("_", "").isalnum():
        raise ValueError(f"role {role!r}: use letters, digits and underscores")
    return [f"GRANT SELECT, INSERT ON {', '.join(AUDIT_TABLES)} TO {role}",
            f"GRANT SELECT ON audit_sequence, alembic_version TO {role}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(OTHER_TABLES)} TO {role}",
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"]
