"""Retraining jobs: the library's own `train` command in a subprocess, state in SQLite.

A job is a row of `<home>/jobs.sqlite` (queued, running, succeeded, failed, cancelled). One job
runs at a time. A running job has a *runner* (`python -m pneumo_core jobs run ID`, started in a
session of its own) that checks the data, starts `python -m pneumo_core train ...`, copies its
output to `<home>/jobs/ID.log` (rotated at PNEUMO_JOB_LOG_MB) and turns its `progress:` lines into
the row's stage, step and percent (`ProgressTracker`). When training ends the runner records the
outcome and starts the next queued job, so the queue moves on with no dashboard open.

Processes are known by pid *and* start time (psutil): a pid reused after the runner died (or after
a reboot) is never taken for the runner and never signalled, and a runner that died (SIGKILL, out
of memory, reboot) is noticed by the next read whatever happened to its pid: its job is marked
failed with the last lines of its log. The queue protects the machine: submitting needs the
"submit_job" permission, values within `settings.TRAIN_LIMITS`, free disk space, and at most
PNEUMO_MAX_JOBS_PER_USER unfinished jobs per user. The model a job trains is registered as a
*candidate*; it becomes active only when someone promotes it (see `registry`).

Three parts: `ProgressTracker` (pure: progress lines -> stage/step/percent), `JobStore` (the rows,
in SQLite through `db`), and `JobQueue` (submit, cancel, the runner and process control).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path

import psutil

from pneumo_core.errors import ConfigError, JobError
from pneumo_core.learn.store import remove_partial
from pneumo_core.progress import parse_line
from pneumo_core.records import db as sqlite_db
from pneumo_core.records.access import Actor, require
from pneumo_core.settings import REPO_ROOT, TRAIN_LIMITS, Settings, TrainConfig, option_name

log = logging.getLogger(__name__)

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
# The options a job may set: the fields of TrainConfig (the one vocabulary); anything else is refused.
PARAMS = tuple(f.name for f in fields(TrainConfig))

# Overall progress: each stage of `train` fills one band of the bar.
STAGE_BANDS = {"caching": (0, 45), "tuning": (45, 72), "training": (72, 82), "fine-tuning": (82, 87),
               "scoring": (87, 98), "evaluating": (98, 100)}   # scoring: validation and test with TTA, ~1.5 min

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    submitted TEXT NOT NULL,
    started TEXT,
    ended TEXT,
    submitted_by TEXT,
    params TEXT NOT NULL,
    checks TEXT,
    pid INTEGER,
    child_pid INTEGER,
    stage TEXT,
    step TEXT,
    percent REAL NOT NULL DEFAULT 0,
    log_path TEXT,
    model_id TEXT,
    error TEXT,
    pid_started REAL,
    child_started REAL,
    cancelled_by TEXT
);
CREATE TABLE IF NOT EXISTS changes (n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS jobs_inserted AFTER INSERT ON jobs BEGIN UPDATE changes SET n = n + 1; END;
CREATE TRIGGER IF NOT EXISTS jobs_updated AFTER UPDATE ON jobs BEGIN UPDATE changes SET n = n + 1; END;
"""
_ADDED_COLUMNS = {"pid_started": "REAL", "child_started": "REAL", "cancelled_by": "TEXT"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def train_argv(config: TrainConfig) -> list[str]:
    """`train` command-line options that reproduce `config` (fine_tune_epochs=2 -> --fine-tune-epochs 2).

    Raises ConfigError when a field the command line has no option for differs from its default.
    """
    argv, defaults = [], TrainConfig().to_dict()
    for key, value in config.to_dict().items():
        flag = option_name(key)
        if flag is None:
            if value != defaults[key]:
                raise ConfigError(f"{key}={value!r} cannot be passed to `train` (no command-line option)")
        elif isinstance(value, bool):
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def site_adapt_argv(params: dict) -> list[str]:
    """The command line of a site adaptation job: `site adapt --data D --name N [--model M]`."""
    argv = ["site", "adapt", "--data", str(params["data"]), "--name", str(params["name"])]
    return argv + (["--model", str(params["model"])] if params.get("model") else [])


def job_argv(params: dict) -> list[str]:
    """The pneumo_core command line of a job row's params: `site adapt ...` for a site adaptation
    (params["command"] == ["site", "adapt"]), else `train` with the TrainConfig the row holds."""
    if params.get("command") == ["site", "adapt"]:
        return site_adapt_argv(params)
    return ["train", *train_argv(TrainConfig.from_dict(params))]


def params_from_model(metadata: dict, data_dir: str) -> TrainConfig:
    """The training config that reproduces a model version on `data_dir` (the 'current settings')."""
    training = metadata.get("training", {})
    defaults = TrainConfig()
    weights = metadata.get("weights")
    # The card stores the weights file name only; `auto` finds it again in the weights dir.
    weights = "none" if weights is None else weights if weights == "imagenet" else "auto"
    same = ("trials", "epochs", "fine_tune_epochs", "seed", "tuner", "augmented_views", "ensemble")
    return TrainConfig(data_dir=str(data_dir), weights=weights,
                       backbone=metadata.get("backbone", defaults.backbone),
                       image_size=metadata.get("image_size", defaults.image_size),
                       normalisation=metadata.get("normalisation", defaults.normalisation),
                       **{k: training.get(k, getattr(defaults, k)) for k in same})


def overall_percent(stage: str, done: int, total: int | None, caching_stages: int, caching_seen: int) -> float:
    """Where a `progress:` line puts the whole job, 0..100."""
    kind = stage.split()[0]
    low, high = STAGE_BANDS.get(kind, (0, 0))
    fraction = done / total if total else 0.0
    if kind == "caching":   # several caching stages share the caching band, in order
        fraction = (min(caching_seen, caching_stages) - 1 + fraction) / max(caching_stages, 1)
    return round(low + (high - low) * max(0.0, min(1.0, fraction)), 1)


def describe(job: dict) -> str:
    """What a job is doing, in words: 'tuning trial 3/20', 'caching validation (120/400)', 'queued'."""
    if job["state"] == "queued":
        return "queued: starts when the running job ends"
    if job["state"] != "running":
        return job["state"]
    stage, step = job["stage"] or "starting", job["step"]
    if not step or stage in ("starting", "done"):
        return stage
    return f"{stage} {step}" if stage.split()[-1] in ("trial", "head", "epoch") else f"{stage} ({step})"


def check_params(params: dict) -> dict:
    """`params` if every option is one `train` has and every number is within `settings.TRAIN_LIMITS`.

    Raises JobError naming the first value out of range and the range allowed.
    """
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise JobError(f"unknown job option(s) {', '.join(unknown)}; options are {', '.join(PARAMS)}")
    for key, (low, high) in TRAIN_LIMITS.items():
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise JobError(f"{key.replace('_', ' ')} must be a whole number from {low} to {high}, not {value!r}")
        if not low <= value <= high:
            raise JobError(f"{key.replace('_', ' ')} {value} is out of range: a job may use {low} to {high}")
    return params


def clamp_params(params: dict) -> dict:
    """`params` with every bounded number moved into its `settings.TRAIN_LIMITS` range (a form's
    starting values: the active model may have been trained from a shell with more)."""
    return {k: min(max(v, TRAIN_LIMITS[k][0]), TRAIN_LIMITS[k][1])
            if k in TRAIN_LIMITS and isinstance(v, int) and not isinstance(v, bool) else v for k, v in params.items()}


class ProgressTracker:
    """Turns the lines `train` prints into the job's stage, step and overall percent. Pure: no I/O.

    `feed(line, now)` returns the values to store when the line is a progress line and a write is
    due (a new stage, or `every` seconds since the last write), else None.
    """

    def __init__(self, caching_stages: int, every: float = 0.5):
        self.caching_stages, self.every = caching_stages, every
        self.caching_seen, self.stage, self.last_write = 0, None, float("-inf")
        self.last_line = ""

    def feed(self, line: str, now: float) -> dict | None:
        line = line.strip()
        self.last_line = line or self.last_line
        update = parse_line(line)
        if update is None:
            return None
        stage = update.stage
        if stage != self.stage and stage.startswith("caching"):
            self.caching_seen += 1
        if stage == self.stage and now - self.last_write <= self.every:
            return None
        self.stage, self.last_write = stage, now
        return {"stage": stage, "step": update.step,
                "percent": overall_percent(stage, update.done, update.total, self.caching_stages, self.caching_seen)}


# -- processes: known by pid and start time --------------------------------------------------------

def start_time(pid: int | None) -> float | None:
    """When process `pid` started (seconds since the epoch, as psutil reports it), None if there is none."""
    if not pid:
        return None
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def is_ours(pid: int | None, started: float | None) -> bool:
    """Is `pid` still the live process that started at `started`? A reused pid (another program, after
    the runner died or a reboot) has another start time: not ours, never signalled."""
    if not pid or started is None:
        return False
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 0.1 and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _alive(pid: int | None) -> bool:
    """Is `pid` a live (not zombie) process? Only for tests and benchmarks that watch a pid go away."""
    return start_time(pid) is not None and is_ours(pid, start_time(pid))


def _signal_and_wait(send, watched: list[tuple[int, float]], grace: float) -> None:
    """`send(SIGTERM)`, wait up to `grace` s for the watched processes to end, then `send(SIGKILL)`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            send(sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(is_ours(p, s) for p, s in watched):
            time.sleep(0.05)
        if not any(is_ours(p, s) for p, s in watched):
            return


def stop_processes(pid: int | None, pid_started: float | None, child_pid: int | None,
                   child_started: float | None, grace: float) -> None:
    """Stop a job's runner (and its whole process group) and training process, only those that are
    still the processes the job started (pid and start time match); SIGKILL after `grace` s."""
    watched = [(p, s) for p, s in ((pid, pid_started), (child_pid, child_started)) if is_ours(p, s)]
    if not watched:
        return
    try:
        leads_group = is_ours(pid, pid_started) and os.getpgid(pid) == pid
    except ProcessLookupError:
        leads_group = False
    if leads_group:     # a background runner leads its own session: its group is the job's processes
        _signal_and_wait(lambda sig: os.killpg(pid, sig), watched, grace)
    else:               # a runner run by hand in a terminal, or a training process whose runner died
        def send(sig):
            for p, s in watched:
                if is_ours(p, s):
                    os.kill(p, sig)
        _signal_and_wait(send, watched, grace)


# -- the rows ---------------------------------------------------------------------------------------

def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)     # CREATE ... IF NOT EXISTS: harmless when another process did it first
    db.execute("BEGIN IMMEDIATE")
    try:
        have = {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:    # a jobs.sqlite from before these columns
                db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        if db.execute("SELECT COUNT(*) FROM changes").fetchone()[0] == 0:
            db.execute("INSERT INTO changes (n) VALUES (0)")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class JobStore:
    """The job rows of one home dir (`jobs.sqlite`); every call uses its own short connection."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def transaction(self, write: bool = False):
        """A connection (see `db.transaction`); `write=True` holds the write lock throughout."""
        return sqlite_db.transaction(self.path, _setup, write)

    def update(self, job_id: int, only_if_state: str | None = None, **values) -> bool:
        """Set columns of one job (only if it is in `only_if_state`, when given); True if it changed."""
        sets = ", ".join(f"{k} = ?" for k in values)
        where = "id = ?" + (" AND state = ?" if only_if_state else "")
        args = [*values.values(), job_id] + ([only_if_state] if only_if_state else [])
        with self.transaction() as db:
            return db.execute(f"UPDATE jobs SET {sets} WHERE {where}", args).rowcount == 1

    @staticmethod
    def as_dict(row: sqlite3.Row) -> dict:
        job = dict(row)
        job["params"] = json.loads(job["params"])
        job["checks"] = json.loads(job["checks"]) if job["checks"] else None
        end = datetime.fromisoformat(job["ended"]) if job["ended"] else datetime.now(UTC)
        job["seconds"] = (end - datetime.fromisoformat(job["started"])).total_seconds() if job["started"] else None
        return job

    def select(self, where: str = "", args=(), limit: int | None = None, order: str = "id DESC") -> list[dict]:
        sql = "SELECT * FROM jobs" + (f" WHERE {where}" if where else "") + f" ORDER BY {order}"
        sql += f" LIMIT {int(limit)}" if limit else ""
        with self.transaction() as db:
            return [self.as_dict(r) for r in db.execute(sql, args)]

    def changes(self) -> int:
        """A number that grows with every insert or update of a job row (one tiny read)."""
        with self.transaction() as db:
            return int(db.execute("SELECT n FROM changes").fetchone()[0])


class _BoundedLog:
    """A job log that rotates at `max_bytes` (the older part kept as `ID.log.1`), so one chatty job
    cannot fill the disk; every write is flushed, and the file is fsynced at rotation and close."""

    def __init__(self, path: Path, max_bytes: int):
        self.path, self.max_bytes = Path(path), max(1024, max_bytes)
        self.file = open(self.path, "a", buffering=1)

    def write(self, text: str) -> None:
        if self.file.tell() + len(text) > self.max_bytes:
            self.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.file = open(self.path, "a", buffering=1)
        self.file.write(text)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


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
            running = db.execute("SELECT pid, pid_started FROM jobs WHERE state = 'running'").fetchall()
        if any(not is_ours(r["pid"], r["pid_started"]) for r in running):
            self._reap()
            current = self.store.changes()
        return current != token, current

    def log_tail(self, job_id: int, lines: int = 20) -> list[str]:
        """The last `lines` lines of the job's log (both parts of a rotated one); no status read."""
        path = self.log_dir / f"{int(job_id)}.log"
        tail = _tail(path, lines)
        if len(tail) < lines:
            tail = _tail(path.with_name(path.name + ".1"), lines - len(tail)) + tail
        return tail

    def _reap(self) -> None:
        """Mark jobs whose runner died as failed (whoever holds its pid now), stop what is left of them
        (only processes that are still theirs), clean their output, and move the queue on."""
        with self.store.transaction() as db:
            running = db.execute("SELECT id, pid, pid_started, child_pid, child_started, log_path FROM jobs "
                                 "WHERE state = 'running'").fetchall()
            queued = db.execute("SELECT 1 FROM jobs WHERE state = 'queued' LIMIT 1").fetchone()
        dead = [r for r in running if not is_ours(r["pid"], r["pid_started"])]
        for job in dead:
            tail = _tail(Path(job["log_path"]), 10) if job["log_path"] else []
            message = ("the job's process stopped without reporting (killed, out of memory or the machine "
                       "restarted).") + ("\nLast log lines:\n" + "\n".join(tail) if tail else "")
            if self._update(job["id"], "running", state="failed", ended=_now(), error=message):
                log.warning("job %s: runner %s is gone; marked failed", job["id"], job["pid"])
                stop_processes(None, None, job["child_pid"], job["child_started"], grace=5)
                if job["child_pid"]:
                    self._remove_partial(job["child_pid"])
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
        params = {"command": ["site", "adapt"], "data": str(data), "name": str(name), "model": model}
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
                                (_now(), actor.name, json.dumps(params))).lastrowid
            db.execute("UPDATE jobs SET log_path = ? WHERE id = ?", (str(self.log_dir / f"{job_id}.log"), job_id))
        self._event("job_submit", actor.name, job=job_id, params=params)
        self.start_next()
        return job_id

    def start_next(self) -> int | None:
        """Start the oldest queued job unless one is running; returns the started job id."""
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
            db.execute("UPDATE jobs SET state = 'running', started = ?, pid = ?, pid_started = ? WHERE id = ?",
                       (_now(), runner.pid, start_time(runner.pid), row["id"]))
        _reap_when_done(runner)
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
        if self._update(job["id"], job["state"], state="cancelled", ended=_now(), cancelled_by=actor.name,
                        error=f"cancelled by {actor.name}"):
            self._event("job_cancel", actor.name, job=job["id"], was=job["state"])
            if job["state"] == "running":
                stop_processes(job["pid"], job["pid_started"], job["child_pid"], job["child_started"], grace=10)
                if job["child_pid"]:
                    self._remove_partial(job["child_pid"])
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

    def _remove_partial(self, pid: int) -> list[Path]:
        """Half-written output of training process `pid`: a version folder not yet renamed into the
        registry, its tuner folder, and a feature file not yet renamed into the cache."""
        # Imported here: `training` loads TensorFlow (about 5 s), needed only after a job stopped or failed.
        from pneumo_core.learn import features, training
        removed = remove_partial(self.settings.models_dir, pid)
        for path in [*training.partial_paths(self.settings.tuner_dir, pid),
                     *features.partial_paths(self.settings.cache_dir, pid)]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    # -- the runner ---------------------------------------------------------------------------------

    def _claim(self, job_id: int) -> dict:
        """Mark the job as run by this process: a queued one (run by hand in the foreground) or the
        running one this runner was started for. Refuses a job another live process runs."""
        me = (os.getpid(), start_time(os.getpid()))
        with self.store.transaction(write=True) as db:
            row = db.execute("SELECT state, pid, pid_started FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            if row is None:
                raise JobError(f"no job {job_id}")
            others = [r["id"] for r in db.execute("SELECT id, pid, pid_started FROM jobs WHERE state = 'running' "
                                                  "AND id != ?", (int(job_id),)) if is_ours(r["pid"], r["pid_started"])]
            if others:
                raise JobError(f"job {others[0]} is running; job {job_id} starts after it (one job at a time)")
            mine = row["state"] == "queued" or (row["state"] == "running" and (
                row["pid"] == me[0] or not is_ours(row["pid"], row["pid_started"])))
            if not mine:
                raise JobError(f"job {job_id} is {row['state']}" + (f" (process {row['pid']})"
                                                                     if row["state"] == "running" else ""))
            db.execute("UPDATE jobs SET state = 'running', pid = ?, pid_started = ?, started = COALESCE(started, ?) "
                       "WHERE id = ?", (*me, _now(), int(job_id)))
        return self.get(job_id)

    def _check_data(self, job: dict, log_file: _BoundedLog) -> bool:
        """The data check, in the runner: findings into the row; False (job failed) if it blocks training."""
        from pneumo_core.learn.data import check_dataset
        check = check_dataset(job["params"].get("data_dir") or self.settings.data_dir)
        checks = {"counts": check.counts, "unreadable": check.unreadable}
        log_file.write(f"data check: {check.counts}; {len(check.unreadable)} unreadable film(s) will be skipped\n")
        self._update(job["id"], "running", checks=json.dumps(checks), stage="checking data")
        if not check.ok:
            self._update(job["id"], "running", state="failed", ended=_now(),
                         error="the data check failed: " + "; ".join(check.problems))
        return check.ok

    def run(self, job_id: int) -> int:
        """Body of the runner process: check the data, run `train`, follow its progress, record the outcome."""
        job = self._claim(job_id)
        site_job = job["params"].get("command") == ["site", "adapt"]
        tracker = ProgressTracker(1 if site_job else TrainConfig.from_dict(job["params"]).feature_passes)
        # TF_CPP_MIN_LOG_LEVEL 2: TensorFlow's start-up chatter (CPU features, no CUDA) stays out of the
        # log a clinician's engineer reads; its errors still show. Set it in the environment to override.
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ, "PNEUMO_HOME": str(self.settings.home),
               "PYTHONUNBUFFERED": "1"}
        log_path = Path(job["log_path"])
        log_file = _BoundedLog(log_path, self.settings.job_log_mb * 2**20)
        try:
            if not site_job and not self._check_data(job, log_file):   # `site adapt` checks its own films
                self.start_next()
                return 1
            log_file.write(f"job {job_id}: python -m pneumo_core {' '.join(job_argv(job['params']))}\n")
            child = subprocess.Popen([sys.executable, "-m", "pneumo_core", *job_argv(job["params"])],
                                     cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
            self._update(job_id, "running", child_pid=child.pid, child_started=start_time(child.pid),
                         stage="starting")
            for line in child.stdout:
                log_file.write(line)
                if (values := tracker.feed(line, time.monotonic())) is not None:
                    self._update(job_id, "running", **values)
            code = child.wait()
        finally:
            log_file.close()
        if code == 0:
            self._update(job_id, "running", state="succeeded", ended=_now(), percent=100.0, stage="done",
                         model_id=tracker.last_line)
        else:
            why = (f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}")
            tail = "\n".join(self.log_tail(job_id, 10))
            if self._update(job_id, "running", state="failed", ended=_now(),
                            error=f"training {why}.\nLast log lines:\n{tail}"):
                self._remove_partial(child.pid)
        self.start_next()
        return code


def _tail(path: Path, lines: int) -> list[str]:
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            return f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return []


def _reap_when_done(process: subprocess.Popen) -> None:
    """Collect the runner's exit status in the background so it never lingers as a zombie."""
    threading.Thread(target=process.wait, daemon=True).start()
