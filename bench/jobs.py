"""Retraining jobs on the shared data: the data check, submit latency, a whole job through the queue
(runner + `train` subprocess) and how fast cancel frees the machine.

Run after train_time.py (run_all.py does) so the feature cache in PNEUMO_BENCH_HOME is warm; on a
cold home the job also caches features (about 5 minutes more)."""
import os
import tempfile
import time

from common import SHARED_DATA, report
from psutil import pid_exists

from pneumo_core.jobs.queue import JobQueue
from pneumo_core.learn.data import check_dataset
from pneumo_core.records.access import cli_actor
from pneumo_core.settings import load_settings

start = time.perf_counter()
check = check_dataset(SHARED_DATA)
seconds = time.perf_counter() - start
films = sum(check.counts.values()) + len(check.unreadable)
report("data check before a job (decode every film)", seconds, f"s for {films} films", "< 10 s")

with tempfile.TemporaryDirectory() as scratch:
    queue = JobQueue(load_settings({**os.environ, "PNEUMO_HOME": os.environ.get("PNEUMO_BENCH_HOME") or scratch}))
    params = {"data_dir": str(SHARED_DATA)}
    start = time.perf_counter()
    job_id = queue.submit(params, actor=cli_actor())
    report("submit (queue + runner start; the data check runs in the job)", time.perf_counter() - start, "s")
    job = queue.wait(job_id, poll=0.5)
    report(f"retraining job, default settings, {job['state']}", job["seconds"] / 60, "min")

    job_id = queue.submit(params, actor=cli_actor())
    while (job := queue.get(job_id))["state"] == "running" and not (job["stage"] or "").startswith("tuning"):
        time.sleep(0.2)
    start = time.perf_counter()
    queue.cancel(job_id, actor=cli_actor())
    while any(pid and pid_exists(pid) for pid in (job["pid"], job["child_pid"])):
        time.sleep(0.05)
    report("cancel during tuning until every process is gone", time.perf_counter() - start, "s", "< 10 s")
