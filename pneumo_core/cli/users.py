"""`users`: the dashboard's local accounts (add, list, disable, enable, set-role, unlock)."""
from __future__ import annotations

import json
import sys

from pneumo_core.settings import Settings

COMMANDS = {"users": "dashboard accounts: add, list, disable, set-role, unlock (stored in PNEUMO_HOME/users.sqlite)"}


def add_commands(commands, settings: Settings) -> None:
    """Add `users` and its subcommands to the command line's subcommands."""
    users = commands.add_parser("users", help=COMMANDS["users"])
    users.set_defaults(func=cmd_users)
    user_commands = users.add_subparsers(dest="users_command", required=True)
    add = user_commands.add_parser("add", help="add an account; the password is asked twice (or read from one or "
                                              "two lines of standard input when it is not a terminal)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["clinician", "ml_lead", "auditor", "admin"])
    user_commands.add_parser("list", help="accounts, their roles and state").add_argument("--json", action="store_true")
    user_commands.add_parser("disable", help="stop an account from signing in (its name stays taken)"
                             ).add_argument("name")
    user_commands.add_parser("enable", help="let a disabled account sign in again").add_argument("name")
    set_role = user_commands.add_parser("set-role", help="give an account another role")
    set_role.add_argument("name")
    set_role.add_argument("role", choices=["clinician", "ml_lead", "auditor", "admin"])
    user_commands.add_parser("unlock", help="end every wait of an account after failed sign-ins (from any address)"
                             ).add_argument("name")
    first = user_commands.add_parser("first-start", help="print the dashboard's address and, while no administrator "
                                                         "exists, a fresh one-time setup code (make run does this)")
    first.add_argument("--url", default="http://localhost:8501", help="the dashboard's address to print")


def _read_new_password() -> str:
    """A new password: asked twice on a terminal; else one line of stdin, or two that must match."""
    from pneumo_core.errors import AccountError
    if sys.stdin.isatty():
        import getpass
        first, second = getpass.getpass("Password: "), getpass.getpass("Password again: ")
    else:
        lines = sys.stdin.read().splitlines()
        if not lines or len(lines) > 2:
            raise AccountError("give the password as one line of standard input (a second, confirming line may "
                               "follow)")
        first, second = lines[0], lines[-1]
    if first != second:
        raise AccountError("the two passwords differ; nothing was changed")
    return first


def cmd_users(args, settings) -> int:
    """Run a `users` subcommand; each change is recorded in the audit trail. Returns the exit status."""
    from pneumo_core.records.access import cli_actor
    from pneumo_core.records.anchor import audit_trail
    from pneumo_core.records.users import UserStore
    store, actor = UserStore(settings.home), cli_actor()
    if args.users_command == "first-start":
        from pneumo_core.records.signin import first_start
        print(first_start(store, args.url), flush=True)
        return 0
    if args.users_command == "list":
        rows = store.list()
        if args.json:
            print(json.dumps(rows))
        elif not rows:
            print("no account yet; add one with: python -m pneumo_core users add NAME --role admin")
        for row in [] if args.json else rows:
            print(f"{row['name']:<24} {row['role']:<10} {'disabled' if row['disabled'] else 'enabled':<9} "
                  f"since {row['created']}")
        return 0
    if args.users_command == "add":
        account = store.add(args.name, args.role, _read_new_password(), by=actor)
        change = {"account": account["name"], "role": account["role"]}
    elif args.users_command == "set-role":
        before = store.get(args.name)["role"]
        account = store.set_role(args.name, args.role, by=actor)
        change = {"account": account["name"], "role": account["role"], "was": before}
    elif args.users_command == "unlock":
        account = store.unlock(args.name, by=actor)
        change = {"account": account["name"], "cleared": account["cleared"]}
    else:
        account = getattr(store, args.users_command)(args.name, by=actor)
        change = {"account": account["name"]}
    audit_trail(settings).event("user_change", actor.name, source="cli",
                                          action=args.users_command.replace("-", "_"), **change)
    print(f"{account['name']}: {account['role']}, {'disabled' if account['disabled'] else 'enabled'} "
          f"(by {actor.name})")
    return 0
