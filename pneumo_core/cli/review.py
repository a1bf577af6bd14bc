"""python -m pneumo_core review | reviewed: readers' verdicts from the command line, and the reviewed films.

`review FILM... --read NORMAL|PNEUMONIA|not-assessable [--zones ...] [--note TEXT]` records the
verdict as the OS user (like every command-line write) on the active model's call; a film the
active model has not scored yet is scored first (and that call recorded in the audit trail).
`reviewed list | delete --older-than DAYS | --film SHA256` manages the de-identified films kept for
`site adapt --reviewed`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from pneumo_core.records.verdicts import READS, ZONES

COMMANDS = {"review": "record a reader's verdict on films (agree/disagree with the active model's call), as the "
                      "OS user",
            "reviewed": "films kept (de-identified) because a reader gave a verdict: list or delete them"}


def add_commands(commands, settings) -> None:
    """Add the `review` and `reviewed` commands to the command line's subcommands."""
    review = commands.add_parser("review", help=COMMANDS["review"],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    review.set_defaults(func=cmd_review)
    review.add_argument("films", nargs="+", metavar="FILM", help="PNG, JPEG or DICOM files")
    review.add_argument("--read", required=True, choices=READS, help="the reader's own read of the films")
    review.add_argument("--zones", nargs="+", default=[], choices=ZONES, metavar="ZONE",
                        help=f"lung zones the read concerns: {', '.join(ZONES)}")
    review.add_argument("--note", default="", help="free text (no patient names or identifiers)")
    review.add_argument("--json", action="store_true")

    reviewed = commands.add_parser("reviewed", help=COMMANDS["reviewed"])
    reviewed.set_defaults(func=cmd_reviewed)
    sub = reviewed.add_subparsers(dest="reviewed_command", required=True)
    sub.add_parser("list", help="kept films: content hash, read, when kept").add_argument("--json", action="store_true")
    delete = sub.add_parser("delete", help="delete kept films by age or by content hash (the verdicts stay in "
                            "the audit trail)")
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("--older-than", type=float, metavar="DAYS", help="films kept more than DAYS days ago")
    which.add_argument("--film", metavar="SHA256", help="one film's content hash")


def cmd_review(args, settings) -> int:
    from pneumo_core.golive.reviewed import review
    from pneumo_core.imaging.films import read_each
    from pneumo_core.records.access import cli_actor
    from pneumo_core.records.anchor import audit_trail
    from pneumo_core.records.registry import resolve
    from pneumo_core.records.verdicts import check_read, latest_diagnosis
    check_read(args.read, args.zones, args.note)   # a bad note fails before any film is scored
    actor, trail = cli_actor(), audit_trail(settings)
    active = resolve(settings.models_dir).name
    diagnoser, results, failed = None, [], False
    for path, film, error in read_each(args.films):
        if error:
            results.append({"film": path, "error": str(error)})
            failed = True
            continue
        data = Path(path).read_bytes()
        row = latest_diagnosis(trail, hashlib.sha256(data).hexdigest(), model=active)
        if row is None:   # not scored by the active model yet: score it, so the verdict judges a call
            if diagnoser is None:
                from pneumo_core.serve.diagnosis import Diagnoser
                from pneumo_core.serve.loading import load_version
                diagnoser = Diagnoser(load_version(settings.models_dir, None, settings.verify_key))
            d = diagnoser.diagnose(film.gray, Path(path).name, method=None, data=data, info=film.info)
            diagnosis_id = trail.record(d, source="cli", who=actor.name)
        else:
            diagnosis_id = row["id"]
        verdict = review(settings, trail, actor, film.gray, diagnosis_id, args.read, args.zones, args.note, "cli")
        results.append({"film": path, "verdict": verdict.id, "sha256": verdict.sha256, "model": verdict.model,
                        "call": verdict.call, "read": verdict.read, "agree": verdict.agree,
                        "supersedes": verdict.supersedes, "who": verdict.who})
    if args.json:
        print(json.dumps(results))
    for r in [] if args.json else results:
        print(f"{r['film']}: " + (f"error: {r['error']}" if "error" in r else
                                  f"read {r['read']}, {_agreement(r['agree'])} the call {r['call']} of model "
                                  f"{r['model']} (verdict {r['verdict']} by {r['who']}"
                                  + (f", supersedes verdict {r['supersedes']})" if r["supersedes"] else ")")))
    return 1 if failed else 0


def cmd_reviewed(args, settings) -> int:
    from pneumo_core.golive import reviewed
    from pneumo_core.records.access import cli_actor
    from pneumo_core.records.anchor import audit_trail
    if args.reviewed_command == "list":
        films = [{"sha256": f["sha256"], "label": f["label"],
                  "kept": datetime.fromtimestamp(f["kept"], UTC).isoformat(timespec="seconds")}
                 for f in reviewed.reviewed_films(settings)]
        if args.json:
            print(json.dumps(films))
        for f in [] if args.json else films:
            print(f"{f['sha256']}  {f['label']:<9}  kept {f['kept']}")
        if not films and not args.json:
            print(f"no reviewed film kept in {settings.reviewed_dir}")
        return 0
    gone = reviewed.delete(settings, older_than_days=args.older_than, sha256=args.film)
    audit_trail(settings).event("reviewed_delete", cli_actor().name, source="cli", films=gone,
                                          older_than_days=args.older_than)
    print(f"deleted {len(gone)} reviewed film(s) from {settings.reviewed_dir}")
    return 0


def _agreement(agree: bool | None) -> str:
    return {True: "agrees with", False: "disagrees with", None: "not assessable; not judged against"}[agree]
