"""`audit verify` / `audit anchor`: check that no record of the audit trail or of the promotions was
changed, deleted or rolled back; send the chains' heads to the configured anchors."""
from __future__ import annotations

from pneumo_core.settings import Settings

COMMANDS = {"audit": "the audit trail: check that no record was changed, deleted or rolled back; anchor it"}


def add_commands(commands, settings: Settings) -> None:
    """Add `audit` and its subcommands to the command line's subcommands."""
    audit = commands.add_parser("audit", help=COMMANDS["audit"])
    audit.set_defaults(func=cmd_audit)
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check the hash chains of the audit trail and of the promotions, and "
                                             "that they still hold every anchor written (PNEUMO_ANCHOR_FILE); "
                                             "exit 1 naming the first broken link, 0 when intact")
    audit_commands.add_parser("anchor", help="send the chains' heads (row counts, last hashes) to PNEUMO_ANCHOR_FILE "
                                             "and PNEUMO_ANCHOR_SYSLOG now (run it from a timer, e.g. hourly)")


def cmd_audit(args, settings) -> int:
    """Run `audit verify` or `audit anchor`. Returns 1 naming the first broken link or a missing anchor
    destination, 0 when every chain is intact (or the anchor was written)."""
    from pneumo_core.records.anchor import Anchors
    from pneumo_core.records.audit import AuditTrail
    from pneumo_core.records.db import database_url, safe_url
    from pneumo_core.records.registry import verify_promotions
    anchors = Anchors.from_settings(settings)
    if args.audit_command == "anchor":
        if not anchors.configured:
            print("no anchor destination: set PNEUMO_ANCHOR_FILE and/or PNEUMO_ANCHOR_SYSLOG (docs/security.md)")
            return 1
        written = anchors.write("timer")
        print("anchored: " + ", ".join(f"{chain} {rows} row(s)" for chain, (rows, _) in written["chains"].items()))
        return 0
    url = database_url()       # the shared database when set: there is no file to look for
    trail_at = safe_url(url) if url else settings.audit_path
    if not url and not settings.audit_path.is_file():
        print(f"no audit trail yet at {settings.audit_path}")
        trail_result = {"ok": True, "rows": {}, "last": {}}
    else:
        trail_result = AuditTrail(settings.audit_path).verify()
    promotions_result = verify_promotions(settings.models_dir)
    anchor_result = anchors.check()
    for where, result in ((trail_at, trail_result), (settings.models_dir, promotions_result),
                          (settings.anchor_file, anchor_result)):
        if not result["ok"]:
            print(f"BROKEN: {where}: {result['problem']}")
            return 1
    for table, count in trail_result["rows"].items():
        print(f"intact: {count} {table} row(s); last hash {trail_result['last'][table]}")
    print(f"intact: {promotions_result['entries']} promotion(s); last hash {promotions_result['last']}")
    if anchor_result["anchors"]:
        print(f"anchored: the chains hold all {anchor_result['anchors']} anchor(s) of {settings.anchor_file} "
              f"(newest {anchor_result['newest']}); rows after it are checked by the next anchor")
    else:
        print("note: no anchor to check against" + ("" if settings.anchor_file else " (PNEUMO_ANCHOR_FILE unset)")
              + ": a rewrite of a whole chain, or an older copy put back, cannot be detected (docs/security.md)")
    return 0
