"""`pacs`: the DICOMweb round trip (watch an archive, score a study, the watcher's status)."""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys

from pneumo_core.cli.models import MODEL_HELP, load_model
from pneumo_core.settings import Settings, os_user

COMMANDS = {"pacs": "score new chest films of a DICOM archive (DICOMweb) and store the results back as DICOM SR "
                     "+ heatmap"}


def add_commands(commands, settings: Settings) -> None:
    """Add `pacs` and its subcommands to the command line's subcommands."""
    pacs = commands.add_parser("pacs", help=COMMANDS["pacs"])
    pacs.set_defaults(func=cmd_pacs)
    sub = pacs.add_subparsers(dest="pacs_command", required=True)
    url_help = "the archive's DICOMweb root, e.g. http://pacs:8042/dicom-web (default: PNEUMO_PACS_URL)"
    watch = sub.add_parser("watch", help="poll the archive for new CR/DX/DR chest films and score them",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    watch.add_argument("--url", default=settings.pacs_url or None, help=url_help)
    watch.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    watch.add_argument("--once", action="store_true", help="one poll, then exit")
    watch.add_argument("--lookback-days", type=int, default=7, help="how far back the first poll looks")
    score = sub.add_parser("score", help="score the chest films of one study now")
    score.add_argument("study", metavar="STUDY_UID")
    score.add_argument("--url", default=settings.pacs_url or None, help=url_help)
    for command in (watch, score):
        command.add_argument("--model", help=MODEL_HELP)
        command.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "scorecam"],
                             help="heatmap method")
    status = sub.add_parser("status", help="last poll, backlog and errors of the watcher")
    status.add_argument("--json", action="store_true")


@contextlib.contextmanager
def sigterm_stops_like_ctrl_c():
    """Inside, SIGTERM (systemd's stop, `kill`) raises KeyboardInterrupt as Ctrl-C does, so a stopped
    watcher unwinds: it releases the film it holds (else the claim would block other watchers for
    `CLAIM_SECONDS`) and exits 0. The handler before is restored after."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_pacs(args, settings) -> int:
    """Run a `pacs` subcommand (watch, score, status). Returns the exit status."""
    from pneumo_core.pacs.client import PacsClient
    from pneumo_core.pacs.state import PacsState
    from pneumo_core.pacs.watcher import Watcher, outbox_dir
    from pneumo_core.records.anchor import audit_trail
    state = PacsState(settings.pacs_state_path)
    if args.pacs_command == "status":
        report = state.status()
        if args.json:
            print(json.dumps(report))
        else:
            print(f"archive {report['url'] or '(never polled)'}, model {report['model']}, last poll "
                  f"{report['last_poll']}, backlog {report['backlog']}, counts {report['counts']}"
                  + (f"\nlast error {report['last_error_time']}: {report['last_error']}"
                     if report["last_error"] else ""))
        return 0
    from pneumo_core.serve.diagnosis import Diagnoser
    client = PacsClient.from_settings(settings, args.url)
    watcher = Watcher(client, Diagnoser(load_model(settings, args.model)), state, audit_trail(settings),
                      outbox_dir(settings), who=os_user(), method=args.method,
                      lookback_days=getattr(args, "lookback_days", 7))
    def show(summary, always=True):   # a quiet archive prints nothing between polls; `pacs status` says when
        if always or any(summary[k] for k in ("new", "stored", "failed")):
            print(json.dumps({"time": state.get_meta("last_poll"), **summary}), flush=True)
    if args.pacs_command == "score":
        show(watcher.poll(study_uid=args.study))
        return 0
    try:
        with sigterm_stops_like_ctrl_c():
            watcher.run(args.interval, once=args.once, on_poll=lambda summary: show(summary, args.once),
                        max_failures=8 if args.once else None)
    except KeyboardInterrupt:
        print("stopped; a restart resumes where this one stopped", file=sys.stderr)
    return 0
