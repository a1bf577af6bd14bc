"""The runner of one job: the body of `python -m pneumo_core jobs run ID`.

`JobQueue.start_next` starts it in a session of its own; it can also be run by hand in a terminal
(a queued job, in the foreground). It claims the job, checks the data (a `train` job), starts the
job's command with `--result-file`, copies the command's output to the job's log (rotated at
PNEUMO_JOB_LOG_MB), turns its `progress:` lines into the row's stage, step and percent, and records
the outcome: the new version's id comes from the result file (`jobs.results`). Then it starts the
next queued job. While the job runs, a heartbeat thread writes the time into the row every
`HEARTBEAT_SECONDS` (so other machines know the runner lives) and stops the job's command when
the row says it was cancelled (from a dashboard on another machine).

`serve` is `python -m pneumo_core jobs runner`: a long-lived worker for PNEUMO_JOB_RUNNERS=workers
on any machine that sees the database and the model store (PNEUMO_HOME/models). It claims the oldest queued job
(`JobStore.claim_next`: FOR UPDATE SKIP LOCKED on PostgreSQL, so two workers never take the same
job), runs it as above, and claims the next; with nothing queued it waits and looks again.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pneumo_core.errors import JobError
from pneumo_core.files import keep_private
from pneumo_core.jobs.argv import is_site_adapt, job_argv
from pneumo_core.jobs.process import is_ours, remove_partial_output, start_time, stop_processes, this_host
from pneumo_core.jobs.progress_lines import SITE_ADAPT_BANDS, ProgressTracker
from pneumo_core.jobs.queue import HEARTBEAT_SECONDS, JobQueue
from pneumo_core.jobs.results import read_result
from pneumo_core.jobs.rows import now
from pneumo_core.learn.data import check_dataset
from pneumo_core.settings import REPO_ROOT, TrainConfig

COMMAND = [sys.executable, "-m", "pneumo_core"]     # what runs a job's argv (`job_argv`)


class BoundedLog:
    """A job log that rotates at `max_bytes` (the older part kept as `ID.log.1`), so one chatty job
    cannot fill the disk; every write is flushed, and the file is fsynced at rotation and close."""

    def __init__(self, path: Path, max_bytes: int):
        self.path, self.max_bytes = Path(path), max(1024, max_bytes)
        self.file = open(self.path, "a", buffering=1)

    def write(self, text: str) -> None:
        """Append `text`, first moving the log to `ID.log.1` if `text` would take it past `max_bytes`."""
        if self.file.tell() + len(text) > self.max_bytes:
            self.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.file = open(self.path, "a", buffering=1)
        self.file.write(text)

    def close(self) -> None:
        """Flush the log to disk and close it."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def claim(queue: JobQueue, job_id: int) -> dict:
    """Mark the job as run by this process: a queued one (run by hand in the foreground) or the
    running one this runner was started for.

    Raises:
        JobError for an unknown job, a finished one, one another live process runs, or while another job runs.
    """
    me = (os.getpid(), start_time(os.getpid()))
    with queue.store.transaction(write=True) as db:
        row = db.execute("SELECT state, pid, pid_started, runner_host FROM jobs WHERE id = ?",
                         (int(job_id),)).fetchone()
        if row is None:
            raise JobError(f"no job {job_id}")
        if row["state"] == "running" and (row["pid"], row["runner_host"]) == (me[0], this_host()) \
                and queue.settings.job_runners == "workers":
            return queue.get(job_id)       # claimed by this worker (`serve`): other jobs may run beside it
        others = [r["id"] for r in db.execute("SELECT id, pid, pid_started FROM jobs WHERE state = 'running' "
                                              "AND id != ?", (int(job_id),)) if is_ours(r["pid"], r["pid_started"])]
        if others:
            raise JobError(f"job {others[0]} is running; job {job_id} starts after it (one job at a time)")
        mine = row["state"] == "queued" or (row["state"] == "running" and (
            row["pid"] == me[0] or not is_ours(row["pid"], row["pid_started"])))
        if not mine:
            raise JobError(f"job {job_id} is {row['state']}" + (f" (process {row['pid']})"
                                                                 if row["state"] == "running" else ""))
        db.execute("UPDATE jobs SET state = 'running', pid = ?, pid_started = ?, started = COALESCE(started, ?), "
                   "runner_host = ?, heartbeat = ? WHERE id = ?", (*me, now(), this_host(), time.time(), int(job_id)))
    return queue.get(job_id)


def check_data(queue: JobQueue, job: dict, log_file: BoundedLog) -> bool:
    """The data check, in the runner: findings into the row; False (job failed) if it blocks training."""
    check = check_dataset(job["params"].get("data_dir") or queue.settings.data_dir)
    checks = {"counts": check.counts, "unreadable": check.unreadable}
    log_file.write(f"data check: {check.counts}; {len(check.unreadable)} unreadable film(s) will be skipped\n")
    queue.store.update(job["id"], "running", checks=json.dumps(checks), stage="checking data")
    if not check.ok:
        queue.store.update(job["id"], "running", state="failed", ended=now(),
                           error="the data check failed: " + "; ".join(check.problems))
    return check.ok


class Heartbeat:
    """Writes the runner's heartbeat into its job's row every `interval` seconds until stopped, and stops
    the job's command (once started) when the row is no longer running (cancelled elsewhere)."""

    def __init__(self, queue: JobQueue, job_id: int, interval: float = HEARTBEAT_SECONDS):
        self.queue, self.job_id, self.interval = queue, int(job_id), interval
        self.child: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"job-{job_id}-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.queue.store.update(self.job_id, "running", heartbeat=time.time()) and self.child:
                    stop_processes(None, None, self.child.pid, start_time(self.child.pid), grace=10)
            except Exception:   # noqa: BLE001 - a database hiccup must not kill the job; the next beat tries again
                continue


def run(queue: JobQueue, job_id: int) -> int:
    """Run one job in this process: check the data, run its command, follow its progress, record the outcome.

    Args:
        queue: the jobs of this home dir.
        job_id: a queued job, or the running one this runner was started for.
    Returns:
        The command's exit status (0: the job succeeded); 1 when the data check failed it or the
        command wrote no result.
    Raises:
        JobError when the job is not this process's to run (see `claim`).
    """
    keep_private(queue.settings.home)   # an entry point too (started by the dashboard, or by hand)
    job = claim(queue, job_id)
    site_job = is_site_adapt(job["params"])
    tracker = (ProgressTracker(1, bands=SITE_ADAPT_BANDS) if site_job
               else ProgressTracker(TrainConfig.from_dict(job["params"]).feature_passes))
    # TF_CPP_MIN_LOG_LEVEL 2: TensorFlow's start-up chatter (CPU features, no CUDA) stays out of the
    # log a clinician's engineer reads; its errors still show. Set it in the environment to override.
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ, "PNEUMO_HOME": str(queue.settings.home),
           "PYTHONUNBUFFERED": "1"}
    result_path = queue.result_path(job_id)
    result_path.unlink(missing_ok=True)      # a result left by an earlier try of this job is not this one's
    argv = job_argv(job["params"], result_file=str(result_path))
    log_path = Path(job["log_path"])
    if not log_path.parent.is_dir():    # queued on another machine: the log is kept here, and the row says where
        queue.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = queue.log_dir / f"{int(job_id)}.log"
        queue.store.update(job_id, "running", log_path=str(log_path))
    log_file = BoundedLog(log_path, queue.settings.job_log_mb * 2**20)
    with Heartbeat(queue, job_id) as heartbeat:
        return _follow(queue, job_id, job, site_job, tracker, env, result_path, argv, log_file, heartbeat)


def _follow(queue, job_id, job, site_job, tracker, env, result_path, argv, log_file, heartbeat) -> int:
    """The body of `run` once the job is claimed: data check, the command, its progress, the outcome."""
    try:
        if not site_job and not check_data(queue, job, log_file):   # `site adapt` checks its own films
            queue.start_next()
            return 1
        log_file.write(f"job {job_id}: python -m pneumo_core {' '.join(argv)}\n")
        child = subprocess.Popen([*COMMAND, *argv],
                                 cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1)
        heartbeat.child = child
        queue.store.update(job_id, "running", child_pid=child.pid, child_started=start_time(child.pid),
                           stage="starting")
        for line in child.stdout:
            log_file.write(line)
            if (values := tracker.feed(line, time.monotonic())) is not None:
                queue.store.update(job_id, "running", **values)
        code = child.wait()
    finally:
        log_file.close()
    result = read_result(result_path) if code == 0 else None
    if result is not None:
        queue.store.update(job_id, "running", state="succeeded", ended=now(), percent=100.0, stage="done",
                           model_id=result["version_id"])
    elif code == 0:
        queue.store.update(job_id, "running", state="failed", ended=now(),
                           error=f"the {argv[0]} command ended without writing its result file {result_path}; "
                                 f"see the job's log, and `python -m pneumo_core models` for any version it saved")
        code = 1
    else:
        why = (f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}")
        tail = "\n".join(queue.log_tail(job_id, 10))
        if queue.store.update(job_id, "running", state="failed", ended=now(),
                              error=f"training {why}.\nLast log lines:\n{tail}"):
            remove_partial_output(queue.settings, child.pid)
    queue.start_next()
    return code


def serve(queue: JobQueue, *, stop: threading.Event | None = None, idle_seconds: float = 2.0,
          once: bool = False, run_job=run) -> int:
    """A long-lived runner (`python -m pneumo_core jobs runner`): claim the oldest queued job, run it, repeat.

    Args:
        queue: the jobs (the shared database when PNEUMO_DATABASE_URL is set).
        stop: set it to end the loop after the current job.
        idle_seconds: how long to wait before looking again when nothing is queued.
        once: return when nothing is queued instead of waiting.
        run_job: runs one claimed job (`run`; tests pass a fake).
    Returns:
        How many jobs this runner ran.
    """
    stop = stop or threading.Event()
    me = os.getpid()
    ran = 0
    while not stop.is_set():
        job_id = queue.store.claim_next(this_host(), me, start_time(me), time.time())
        if job_id is None:
            if once:
                break
            queue.list()    # the reaper: a dead runner's job is failed with the reason
            stop.wait(idle_seconds)
            continue
        try:
            run_job(queue, job_id)
        except JobError as error:    # cancelled between the claim and the start: the next one
            print(f"job {job_id}: {error}", file=sys.stderr)
        ran += 1
    return ran
