"""`monitor`: drift of recent diagnoses against the model's validation distribution."""
from __future__ import annotations

import json

from pneumo_core.settings import Settings

COMMANDS = {"monitor": "drift of recent diagnoses (audit trail) against the model's validation distribution: PSI, KS, "
                       "OOD rate, calls per day"}


def add_commands(commands, settings: Settings) -> None:
    """Add `monitor` to the command line's subcommands."""
    monitor = commands.add_parser("monitor", help=COMMANDS["monitor"])
    monitor.set_defaults(func=cmd_monitor)
    monitor.add_argument("--days", type=int, default=30, help="recent window in days")
    monitor.add_argument("--model", help="model version id (default: the active model)")
    monitor.add_argument("--json", action="store_true")


def cmd_monitor(args, settings) -> int:
    """Run `monitor`: drift of the recent diagnoses. Returns the exit status."""
    from pneumo_core.golive.monitor import monitor
    report = monitor(settings, args.days, args.model)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"model {report['model']}: {report['n']} diagnoses in the last {report['days']} days; reference: "
          f"{report['reference']['label']} ({report['reference']['n']} films)")
    if report["psi"] is not None:
        print(f"PSI {report['psi']:.3f}, KS {report['ks']:.3f} (p {report['ks_p']:.3g}), OOD flagged "
              + (f"{report['ood_rate']:.1%}" if report["ood_rate"] is not None else "-"))
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    return 0
