"""`jobs`: retraining jobs run in the background, one at a time (submit, list, status, cancel, wait, run)."""
from __future__ import annotations

import argparse
import json

from pneumo_core.cli.train import add_train_options, default_config, train_config
from pneumo_core.settings import Settings

COMMANDS = {"jobs": "retraining jobs run in the background, one at a time"}


def add_commands(commands, settings: Settings) -> None:
    """Add `jobs` and its subcommands to the command line's subcommands."""
    jobs = commands.add_parser("jobs", help=COMMANDS["jobs"])
    jobs.set_defaults(func=cmd_jobs)
    job_commands = jobs.add_subparsers(dest="job_command", required=True)
    submit = job_commands.add_parser("submit", help="check the data, queue a train job and print its id",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_options(submit, default_config(settings))
    job_list = job_commands.add_parser("list", help="jobs, newest first")
    job_list.add_argument("--json", action="store_true")
    status = job_commands.add_parser("status", help="state and progress of one job")
    status.add_argument("id", type=int)
    status.add_argument("--json", action="store_true")
    job_commands.add_parser("cancel", help="stop a queued or running job").add_argument("id", type=int)
    wait = job_commands.add_parser("wait", help="wait for a job to finish; exit 0 if it succeeded")
    wait.add_argument("id", type=int)
    wait.add_argument("--timeout", type=float, help="give up after this many seconds (exit 3)")
    job_commands.add_parser("run", help="run a queued job in the foreground (what the background runner "
                                        "does)").add_argument("id", type=int)
    runner = job_commands.add_parser("runner", help="a long-lived worker: claim queued jobs and run them, one "
                                                    "at a time (PNEUMO_JOB_RUNNERS=workers, any machine that sees "
                                                    "the database and PNEUMO_HOME/models)")
    runner.add_argument("--once", action="store_true", help="stop when nothing is queued instead of waiting")
    runner.add_argument("--idle", type=float, default=2.0, help="seconds between looks at an empty queue")


def cmd_jobs(args, settings) -> int:
    """Run a `jobs` subcommand. Returns its exit status (`wait`: 0 succeeded, 1 not, 3 timed out; `run`: the job's)."""
    from pneumo_core.jobs.queue import FINISHED, JobQueue
    from pneumo_core.records.access import cli_actor
    queue = JobQueue(settings)
    if args.job_command == "submit":
        job_id = queue.submit(train_config(args), actor=cli_actor())
        print(job_id)   # the data check runs in the job: see `jobs status ID`
        return 0
    if args.job_command == "list":
        jobs = queue.list()
        if args.json:
            print(json.dumps(jobs))
        for job in [] if args.json else jobs:
            print(f"{job['id']:>4}  {job['state']:<9}  {job['submitted']}  {job['percent']:5.1f}%  "
                  f"{job['stage'] or '':<24}  {job['model_id'] or ''}")
        return 0
    if args.job_command == "status":
        job = queue.get(args.id)
        if args.json:
            print(json.dumps(job))
        else:
            print(f"job {job['id']}: {job['state']}, {job['percent']:.0f}% {job['stage'] or ''} {job['step'] or ''}"
                  + (f"\nmodel: {job['model_id']}" if job["model_id"] else "")
                  + (f"\n{job['error']}" if job["error"] else ""))
        return 0
    if args.job_command == "cancel":
        print(f"job {args.id}: {queue.cancel(args.id, actor=cli_actor())['state']}")
        return 0
    if args.job_command == "wait":
        job = queue.wait(args.id, args.timeout)
        print(f"job {job['id']}: {job['state']}" + (f", model {job['model_id']}" if job["model_id"] else "")
              + (f"\n{job['error']}" if job["error"] and job["state"] == "failed" else ""))
        return 0 if job["state"] == "succeeded" else 3 if job["state"] not in FINISHED else 1
    from pneumo_core.jobs import runner  # the data check's film decoders: only a runner needs them
    if args.job_command == "runner":
        ran = runner.serve(queue, idle_seconds=args.idle, once=args.once)
        print(f"ran {ran} job(s)")
        return 0
    return runner.run(queue, args.id)
