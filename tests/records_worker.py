"""A process of the shared-records concurrency tests (tests/integration/test_shared_records.py).

    python tests/records_worker.py audit N           append N diagnosis rows and N/10 events; prints the
                                                     times (epoch seconds) of the first and last append
    python tests/records_worker.py jobs RUNS_FILE    a `jobs runner` (PNEUMO_JOB_RUNNERS=workers) whose
                                                     job command is a fake: it appends "JOB PID TIME" to
                                                     RUNS_FILE, sleeps 0.2 s and succeeds; ends when the
                                                     queue is empty
    python tests/records_worker.py serve RUNS_FILE N STOP_FILE
                                                     the same fake job under the long-lived runner loop
                                                     (`runner.serve`, as `jobs runner` runs it): serves until
                                                     N jobs of the queue have finished or STOP_FILE exists

The database is the environment's (PNEUMO_DATABASE_URL, else the SQLite files of PNEUMO_HOME).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pneumo_core.records.audit import AuditTrail
from pneumo_core.serve.diagnosis import Diagnosis
from pneumo_core.settings import load_settings

if TYPE_CHECKING:
    from pneumo_core.jobs.queue import JobQueue

# The jobs modules are imported by the job modes only: they bring pandas (~0.5 s of CPU per process), which the
# four audit writers of test_shared_records do not need.


def append_audit(count: int) -> tuple[float, float]:
    trail = AuditTrail(load_settings().audit_path)
    start = time.time()
    for i in range(count):
        trail.record(Diagnosis(name="x.png", probability=i / count, label="NORMAL", threshold=0.5, certainty="clear",
                               heatmap=None, method="gradcam", model_id="v1", sha256=f"{os.getpid():08x}{i:056x}",
                               ood_score=0.5, ood_flag=False), source="test", who=f"p{os.getpid()}")
        if i % 10 == 0:
            trail.event("test", f"p{os.getpid()}", i=i)
    return start, time.time()


def fake_job(runs_file: str):
    """A job body for `runner.serve`: appends "JOB PID TIME" to `runs_file`, sleeps 0.2 s, succeeds."""
    from pneumo_core.jobs import runner
    from pneumo_core.jobs.rows import now

    def run_job(queue: JobQueue, job_id: int) -> int:
        runner.claim(queue, job_id)          # the worker's own claim is accepted as is
        with open(runs_file, "a") as runs:
            runs.write(f"{job_id} {os.getpid()} {time.time()}\n")
        time.sleep(0.2)
        queue.store.update(job_id, "running", state="succeeded", ended=now(), percent=100.0)
        return 0
    return run_job


def run_fake_jobs(runs_file: str) -> int:
    from pneumo_core.jobs import runner
    from pneumo_core.jobs.queue import JobQueue
    return runner.serve(JobQueue(load_settings()), once=True, run_job=fake_job(runs_file))



def serve_fake_jobs(runs_file: str, finished: int, stop_file: str) -> int:
    """The runner loop with the fake job until `finished` jobs of the queue have ended or `stop_file` exists.

    Returns:
        How many jobs this runner ran.
    """
    from pneumo_core.jobs import runner
    from pneumo_core.jobs.queue import JobQueue
    from pneumo_core.jobs.rows import FINISHED
    queue, stop = JobQueue(load_settings()), threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            ended = sum(job["state"] in FINISHED for job in queue.store.select())
            if ended >= finished or Path(stop_file).exists():
                stop.set()
    threading.Thread(target=watch, daemon=True).start()
    # idle_seconds 0.2: a job queued while the runner waits is taken at once (the default is 2 s)
    return runner.serve(queue, stop=stop, idle_seconds=0.2, run_job=fake_job(runs_file))


if __name__ == "__main__":
    if sys.argv[1] == "audit":
        print(*append_audit(int(sys.argv[2])))
    elif sys.argv[1] == "serve":
        print(serve_fake_jobs(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    else:
        print(run_fake_jobs(sys.argv[2]))
