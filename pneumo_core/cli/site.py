"""`site validate` and `site adapt`: go-live at a site (figures on its labelled films; an adapted version)."""
from __future__ import annotations

import json
import time

from pneumo_core.errors import PneumoError
from pneumo_core.settings import Settings

COMMANDS = {"site": "go-live at a site: validate a model on its labelled films, adapt it"}


def add_commands(commands, settings: Settings) -> None:
    """Add `site` and its subcommands to the command line's subcommands."""
    site = commands.add_parser("site", help=COMMANDS["site"])
    site.set_defaults(func=cmd_site)
    site_commands = site.add_subparsers(dest="site_command", required=True)
    data_help = "site folder: NORMAL/ and PNEUMONIA/ (or test/NORMAL and test/PNEUMONIA)"
    validate = site_commands.add_parser("validate", help="figures with 95%% CIs at the model's threshold on a "
                                        "site's films, OOD rate, verdict; stored with the model version")
    adapt = site_commands.add_parser("adapt", help="a candidate version adapted to a site's films; prints its id "
                                     "last (figures by patient-grouped cross-validation)")
    for sub in (validate, adapt):
        sub.add_argument("--data", required=sub is validate, help=data_help)
        sub.add_argument("--model", help="model version id or folder (default: the active model)")
        sub.add_argument("--name", help="site name (default: the folder's name)")
    for sub in (validate, adapt):   # the site's triage promises, stored with its site report
        sub.add_argument("--alpha", type=float, default=settings.triage_alpha,
                         help="triage: largest share of pneumonias in the low tier, 95%% confidence "
                              "(default %(default)s)")
        sub.add_argument("--beta", type=float, default=settings.triage_beta,
                         help="triage: largest share of normals in the high tier, 95%% confidence "
                              "(default %(default)s)")
    validate.add_argument("--json", action="store_true")
    adapt.add_argument("--reviewed", action="store_true", help="adapt to the films readers gave a verdict on "
                       "(PNEUMO_HOME/reviewed) instead of --data")
    adapt.add_argument("--result-file", metavar="PATH",
                       help="also write the new version's id, folder, cross-validated figures, threshold, whether "
                            "it is active and the seconds taken to PATH as JSON (written whole or not at all)")


def cmd_site(args, settings) -> int:
    """Run `site validate` or `site adapt` (the new version's id printed last). Returns the exit status."""
    from pneumo_core.golive import adaptation, validation
    from pneumo_core.jobs.results import write_result
    from pneumo_core.progress import StreamReporter
    from pneumo_core.records.registry import active_version, resolve
    if args.site_command == "validate":
        report = validation.validate(resolve(settings.models_dir, args.model), args.data, args.name,
                                     alpha=args.alpha, beta=args.beta)
        if args.json:
            print(json.dumps(report))
            return 0
        ci = report["ci"]
        for key in ("roc_auc", "sensitivity", "specificity", "ppv", "npv", "ece"):
            interval = f" [{ci[key][0]:.3f}-{ci[key][1]:.3f}]" if ci.get(key) else ""
            print(f"{key:>12}: {report[key]:.3f}{interval}" if report[key] is not None else f"{key:>12}: -")
        ood = report["ood"]
        print(f"{'threshold':>12}: {report['threshold']:.3f} (the model's own)\n{'films':>12}: {report['n']}"
              + (f"\n{'OOD flagged':>12}: {ood['rate']:.1%}" if ood["available"] else ""))
        print(report["verdict"])
        print(report["triage_summary"])
        print(f"site report: {resolve(settings.models_dir, args.model) / 'site_reports' / (report['site'] + '.json')}")
        return 0
    start = time.perf_counter()
    if not (args.data or args.reviewed):
        raise PneumoError("site adapt needs --data DIR (a site folder) or --reviewed (the films readers judged)")
    version_id = adaptation.adapt(settings, settings.reviewed_dir if args.reviewed else args.data,
                                  args.name or ("reviewed" if args.reviewed else None), args.model,
                                  alpha=args.alpha, beta=args.beta, reporter=StreamReporter())
    if settings.signing_key is not None:
        from pneumo_core.records.signing import sign_version
        sign_version(settings.models_dir / version_id, settings.signing_key)
    seconds = time.perf_counter() - start
    card = json.loads((settings.models_dir / version_id / "metadata.json").read_text())
    cv = card["site"]["cross_validated"]
    print(f"site {card['site']['name']} ({card['site']['n']} films, {cv['folds']}-fold by patient): AUC "
          f"{cv['roc_auc']:.3f}, sensitivity {cv['sensitivity']:.3f}, specificity {cv['specificity']:.3f}, "
          f"ECE {cv['ece']:.3f}; threshold {card['threshold']:.3f}")
    print(f"candidate: not active until promoted (python -m pneumo_core promote {version_id})")
    if args.result_file:
        write_result(args.result_file, version_id=version_id, version_path=settings.models_dir / version_id,
                     metrics=cv, threshold=card["threshold"],
                     active=active_version(settings.models_dir) == version_id, seconds=seconds)
    print(version_id, flush=True)   # last, alone on its line: for people and scripts (jobs read the file)
    return 0
