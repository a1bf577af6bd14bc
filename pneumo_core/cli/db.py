"""`db`: where the records are (SQLite files or the shared PostgreSQL), its migrations, the app role's grants."""
from __future__ import annotations

from pneumo_core.settings import Settings

COMMANDS = {"db": "the records' database: status, upgrade (PostgreSQL migrations), grants for the app's role"}


def add_commands(commands, settings: Settings) -> None:
    """Add `db` and its subcommands to the command line's subcommands."""
    db = commands.add_parser("db", help=COMMANDS["db"])
    db.set_defaults(func=cmd_db)
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("status", help="which engine keeps the records, where, and (PostgreSQL) at which "
                                          "schema revision")
    db_commands.add_parser("upgrade", help="migrate the shared PostgreSQL to the newest schema (run as the "
                                           "tables' owner; the other processes then need no DDL rights)")
    grants = db_commands.add_parser("grants", help="print the SQL that lets a role append to the audit trail but "
                                                   "never change it, and use the other tables")
    grants.add_argument("role", help="the role every dashboard, runner and watcher connects as")


def cmd_db(args, settings) -> int:
    """Run a `db` subcommand. Returns 0, or 2 when PostgreSQL is asked for and PNEUMO_DATABASE_URL is unset."""
    from pneumo_core.records import db
    from pneumo_core.records.migrations import app_role_sql, current
    if args.db_command == "grants":
        print(";\n".join(app_role_sql(args.role)) + ";")
        return 0
    url = db.database_url()
    if url is None:
        print(f"the records are SQLite files under {settings.home} (PNEUMO_DATABASE_URL is unset)")
        return 0 if args.db_command == "status" else 2
    engine = db.engine(url)         # migrates to the newest schema on first use
    print(f"PostgreSQL {db.safe_url(url)}: schema revision {current(engine)}")
    return 0
