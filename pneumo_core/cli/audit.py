"""`audit verify`: check that no record of the audit trail or of the promotions was changed or deleted."""
from __future__ import annotations

from pneumo_core.settings import Settings

COMMANDS = {"audit": "the audit trail: check that no record was changed or deleted"}


def add_commands(commands, settings: Settings) -> None:
    """Add `audit` and its subcommands to the command line's subcommands."""
    audit = commands.add_parser("audit", help=COMMANDS["audit"])
    audit.set_defaults(func=cmd_audit)
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check the hash chains of the audit trail and of the promotions; "
                                             "exit 1 naming the first broken link, 0 when intact")


def cmd_audit(args, settings) -> int:
    """Run `audit verify`. Returns 1 naming the first broken link, 0 when every chain is intact."""
    from pneumo_core.records.audit import AuditTrail
    from pneumo_core.records.db import database_url, safe_url
    from pneumo_core.records.registry import verify_promotions
    url = database_url()       # the shared database when set: there is no file to look for
    trail_at = safe_url(url) if url else settings.audit_path
    if not url and not settings.audit_path.is_file():
        print(f"no audit trail yet at {settings.audit_path}")
        trail_result = {"ok": True, "rows": {}, "last": {}}
    else:
        trail_result = AuditTrail(settings.audit_path).verify()
    promotions_result = verify_promotions(settings.models_dir)
    for where, result in ((trail_at, trail_result), (settings.models_dir, promotions_result)):
        if not result["ok"]:
            print(f"BROKEN: {where}: {result['problem']}")
            return 1
    for table, count in trail_result["rows"].items():
        print(f"intact: {count} {table} row(s); last hash {trail_result['last'][table]}")
    print(f"intact: {promotions_result['entries']} promotion(s); last hash {promotions_result['last']}")
    return 0
