"""Retraining jobs: the library's own `train` command in a subprocess, state in SQLite.

A job is a row of `<home>/jobs.sqlite` (`rows`). One job runs at a time. A running job has a
*runner* (`python -m pneumo_core jobs run ID`, started in a session of its own; see `runner`) that
checks the data, starts `python -m pneumo_core train ... --result-file <home>/jobs/ID.result.json`,
copies its output to `<home>/jobs/ID.log` and turns its `progress:` lines into the row's stage,
step and percent (`progress_lines`). When training ends the runner records the outcome (the new
version's id from the result file) and starts the next queued job, so the queue moves on with no
dashboard open.

Processes are known by pid *and* start time (`process`): a runner that died (SIGKILL, out of
memory, reboot) is noticed by the next read whatever happened to its pid: its job is marked failed
with the last lines of its log. A runner on another machine (PNEUMO_JOB_RUNNERS=workers, `jobs
runner`, the rows in a shared PostgreSQL) is known alive by its heartbeat instead: silent for
`STALE_SECONDS`, its job is marked failed with the reason the same way.

The queue protects the machine: submitting needs the "submit_job"
permission, values within `settings.TRAIN_LIMITS`, free disk space, and at most
PNEUMO_MAX_JOBS_PER_USER unfinished jobs per user. The model a job trains is registered as a
*candidate*; it becomes active only when someone promotes it (see `records.registry`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from pneumo_core.errors import JobError
from pneumo_core.jobs.argv import SITE_ADAPT, check_params, train_argv
from pneumo_core.jobs.process import (
    is_ours,
    reap_when_done,
    remove_partial_output,
    start_time,
    stop_processes,
    this_host,
)
from pneumo_core.jobs.rows import FINISHED, JobStore, now
from pneumo_core.records.access import Actor, require
from pneumo_core.settings import REPO_ROOT, Settings, TrainConfig

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10   # how often a runner writes its heartbeat into its job's row
STALE_SECONDS = 60       # a runner on another machine silent this long (6 beats missed) is taken for dead


def runner_alive(row, now_s: float | None = None) -> bool:
    """Is the runner of a running job's row alive? Here: its pid and start time; elsewhere: its heartbeat.

    Args:
        row: a job row with pid, pid_started, runner_host, heartbeat.
        now_s: the time now (seconds since the epoch).
    """
    if row["runner_host"] in (None, this_host()):
        return is_ours(row["pid"], row["pid_started"])
    return (row["heartbeat"] or 0.0) > (time.time() if now_s is None else now_s) - STALE_SECONDS


class JobQueue:
    """The jobs of one home dir. Cheap to create: every call opens its own SQLite connection, so
    dashboard sessions, the command line and runners can share it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = Path(settings.home) / "jobs.sqlite"
        self.log_dir = Path(settings.home) / "jobs"
        self.store = JobStore(self.path)

    def _update(self, job_id: int, only_if_state: str | None = None, **values) -> bool:
        return self.store.update(job_id, only_if_state, **values)

    def _event(self, kind: str, who: str, **details) -> None:
        from pneumo_core.records.audit import AuditTrail
        AuditTrail(self.settings.audit_path).event(kind, who, **details)

    # -- reading ---------------------------------------------------------------------------------

    def list(self, limit: int | None = None) -> list[dict]:
        """Jobs newest first (a dead runner's job is marked failed first)."""
        self._reap()
        return self.store.select(limit=limit)

    def get(self, job_id: int) -> dict:
        """One job as a dict (state, stage, step, percent, params, log_path, model_id, error, ...)."""
        self._reap()
        rows = self.store.select("id = ?", (int(job_id),))
        if not rows:
            raise JobError(f"no job {job_id} (list them with: python -m pneumo_core jobs list)")
        return rows[0]

    def current(self) -> dict | None:
        """The running job, else the oldest queued one, else None (reads only those rows)."""
        self._reap()
        rows = self.store.select("state IN ('running', 'queued')", order="state = 'running' DESC, id", limit=1)
        return rows[0] if rows else None

    def changed_since(self, token: int | None) -> tuple[bool, int]:
        """A cheap 'anything changed?' for pages that poll: (changed, new token).

        One read of a counter that every insert and update of a job bumps (and a start-time check of
        the running job's processes, so a runner that died counts as a change). Pass the token back next time.
        """
        with self.store.transaction() as db:
            current = int(db.execute("SELECT n FROM changes").fetchone()[0])
            running = db.execute("SELECT pid, pid_started, runner_host, heartbeat FROM jobs "
                                 "WHERE state = 'running'").fetchall()
        if any(not runner_alive(r) for r in running):
            self._reap()
            current = self.store.changes()
        return current != token, current

    def log_tail(self, job_id: int, lines: int = 20) -> list[str]:
        """The last `lines` lines of the job's log (both parts of a rotated one); no status read."""
        path = self.log_dir / f"{int(job_id)}.log"
        tail = tail_lines(path, lines)
        if len(tail) < lines:
            tail = tail_lines(path.with_name(path.name + ".1"), lines - len(tail)) + tail
        return tail

    def _reap(self) -> None:
        """Mark jobs whose runner died as failed (whoever holds its pid now), stop what is left of them
        (only processes that are still theirs), clean their output, and move the queue on."""
        with self.store.transaction() as db:
            running = db.execute("SELECT id, pid, pid_started, child_pid, child_started, log_path, runner_host, "
                                 "heartbeat FROM jobs WHERE state = 'running'").fetchall()
            queued = db.execute("SELECT 1 FROM jobs WHERE state = 'queued' LIMIT 1").fetchone()
        dead = [r for r in running if not runner_alive(r)]
        for job in dead:
            here = job["runner_host"] in (None, this_host())
            tail = tail_lines(Path(job["log_path"]), 10) if job["log_path"] else []
            message = ("the job's process stopped without reporting (killed, out of memory or the machine "
                       "restarted)." if here else
                       f"the job's runner on {job['runner_host']} sent no heartbeat for {STALE_SECONDS} s (killed, "
                       f"out of memory, the machine restarted or lost the database).")
            message += "\nLast log lines:\n" + "\n".join(tail) if tail else ""
            if self._update(job["id"], "running", state="failed", ended=now(), error=message):
                log.warning("job %s: runner %s on %s is gone; marked failed", job["id"], job["pid"],
                            job["runner_host"] or "this machine")
                if here:    # its processes are on this machine: stop what is left, remove its output
                    stop_processes(None, None, job["child_pid"], job["child_started"], grace=5)
                    if job["child_pid"]:
                        remove_partial_output(self.settings, job["child_pid"])
        if queued and (dead or not running):
            self.start_next()

    # -- changing ---------------------------------------------------------------------------------

    def submit(self, config: TrainConfig | dict, *, actor: Actor) -> int:
        """Queue a `train` job with this config and start it if nothing runs; returns its id.

        The row stores the whole config (`params`); an empty data_dir means the settings' data folder.

        The data check (every film decoded) runs in the job's runner, not here: its findings are in
        the job's `checks`, and a blocking problem fails the job with the reason.

        Args:
            config: a TrainConfig or a dict of its fields, numbers within `settings.TRAIN_LIMITS`.
            actor: who submits; needs the "submit_job" permission.
        Raises:
            PermissionDenied for other roles; JobError for a value out of range, a missing data folder,
            too little free disk space, or when the user already has the most unfinished jobs allowed.
        """
        require(actor, "submit_job")
        config = TrainConfig.from_dict(check_params(config)) if isinstance(config, dict) else config
        config = replace(config, data_dir=str(config.data_dir or self.settings.data_dir))
        check_params(config.to_dict())
        train_argv(config)   # fails now, not in the runner, if the command line cannot express it
        return self._enqueue(config.to_dict(), Path(config.data_dir), actor)

    def submit_site_adapt(self, data: str | Path, name: str, model: str | None = None, *, actor: Actor) -> int:
        """Queue a site adaptation (`site adapt --data DATA --name NAME [--model MODEL]`); returns its id.

        Args:
            data: the site's labelled folder (NORMAL/ and PNEUMONIA/, or test/NORMAL and test/PNEUMONIA).
            name: the site's name, recorded in the adapted version's card.
            model: the version to adapt (default: the active one).
            actor: who submits; needs the "site_adapt" permission.
        Raises:
            PermissionDenied for other roles; JobError as for `submit`.
        """
        require(actor, "site_adapt")
        params = {"command": SITE_ADAPT, "data": str(data), "name": str(name), "model": model}
        return self._enqueue(params, Path(data), actor)

    def _enqueue(self, params: dict, data: Path, actor: Actor) -> int:
        """Checks shared by every kind of job, then the row and its log path in one transaction."""
        if not data.is_dir():
            raise JobError(f"the data folder {data} does not exist (give a folder with NORMAL/ and PNEUMONIA/ "
                           f"films, or train/NORMAL and train/PNEUMONIA)")
        Path(self.settings.home).mkdir(parents=True, exist_ok=True)
        free_mb = shutil.disk_usage(self.settings.home).free / 2**20
        if free_mb < self.settings.min_free_mb:
            raise JobError(f"only {free_mb:.0f} MB free on the disk of {self.settings.home}; a job needs at least "
                           f"{self.settings.min_free_mb} MB (PNEUMO_MIN_FREE_MB). Free some space first")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        limit = self.settings.max_jobs_per_user
        with self.store.transaction(write=True) as db:     # the row and its log path together, or nothing
            waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running') AND "
                                 "submitted_by = ?", (actor.name,)).fetchone()[0]
            if waiting >= limit:
                raise JobError(f"{actor.name} already has {waiting} unfinished job(s), the most one user may have "
                               f"({limit}); wait for one to finish or cancel one")
            job_id = db.execute("INSERT INTO jobs (state, submitted, submitted_by, params) VALUES ('queued', ?, ?, ?)",
                                (now(), actor.name, json.dumps(params))).lastrowid
            db.execute("UPDATE jobs SET log_path = ? WHERE id = ?", (str(self.log_dir / f"{job_id}.log"), job_id))
        self._event("job_submit", actor.name, job=job_id, params=params)
        self.start_next()
        return job_id

    def start_next(self) -> int | None:
        """Start the oldest queued job unless one is running; returns the started job id.

        With PNEUMO_JOB_RUNNERS=workers nothing is started here: `jobs runner` processes claim the jobs.
        """
        if self.settings.job_runners == "workers":
            return None
        with self.store.transaction(write=True) as db:
            if db.execute("SELECT 1 FROM jobs WHERE state = 'running'").fetchone():
                return None
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            # The runner reads its settings from the environment: these are this queue's.
            env = {**os.environ, "PNEUMO_HOME": str(self.settings.home), "PYTHONUNBUFFERED": "1",
                   "PNEUMO_JOB_LOG_MB": str(self.settings.job_log_mb),
                   "PNEUMO_FEATURE_CACHE_MB": str(self.settings.feature_cache_mb)}
            runner = subprocess.Popen([sys.executable, "-m", "pneumo_core", "jobs", "run", str(row["id"])],
                                      cwd=REPO_ROOT, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            db.execute("UPDATE jobs SET state = 'running', started = ?, pid = ?, pid_started = ?, runner_host = ?, "
                       "heartbeat = ? WHERE id = ?",
                       (now(), runner.pid, start_time(runner.pid), this_host(), time.time(), row["id"]))
        reap_when_done(runner)
        return row["id"]

    def cancel(self, job_id: int, *, actor: Actor) -> dict:
        """Stop a queued or running job; a running one's processes are stopped and its half-written
        output removed. Finished jobs are left as they are.

        Args:
            job_id: the job.
            actor: who cancels; needs the "cancel_job" permission (recorded as `cancelled_by`).
        Raises:
            PermissionDenied for other roles; JobError for an unknown job.
        """
        require(actor, "cancel_job")
        job = self.get(job_id)
        if job["state"] in FINISHED:
            return job
        if self._update(job["id"], job["state"], state="cancelled", ended=now(), cancelled_by=actor.name,
                        error=f"cancelled by {actor.name}"):
            self._event("job_cancel", actor.name, job=job["id"], was=job["state"])
            if job["state"] == "running" and job["runner_host"] not in (None, this_host()):
                log.info("job %s runs on %s: its runner stops it at its next heartbeat", job["id"], job["runner_host"])
            elif job["state"] == "running":
                stop_processes(job["pid"], job["pid_started"], job["child_pid"], job["child_started"], grace=10)
                if job["child_pid"]:
                    remove_partial_output(self.settings, job["child_pid"])
                self.start_next()
        return self.get(job_id)

    def wait(self, job_id: int, timeout: float | None = None, poll: float = 1.0) -> dict:
        """Block until the job has finished (or `timeout` seconds passed); returns the job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (job := self.get(job_id))["state"] not in FINISHED:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(poll)
        return job

    def result_path(self, job_id: int) -> Path:
        """Where the job's command writes its result (`jobs.results`): beside its log."""
        return self.log_dir / f"{int(job_id)}.result.json"


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file (read from its last 64 KB); [] when there is no such file."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            return f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return []
