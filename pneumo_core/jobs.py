"""Retraining jobs: the library's own `train` command in a subprocess, state in SQLite.

A job is a row of `<home>/jobs.sqlite` (queued, running, succeeded, failed, cancelled). One job
runs at a time. A running job has a *runner* (`python -m pneumo_core jobs run ID`, started in a
session of its own so cancel can stop the whole process group) that starts
`python -m pneumo_core train ...`, copies its output to `<home>/jobs/ID.log` and turns its
`progress:` lines into the row's stage, step and percent. When training ends the runner records
the outcome and starts the next queued job, so the queue moves on with no dashboard open.
A runner that died (SIGKILL, out of memory, reboot) is noticed by the next read: its job is marked
failed with the last lines of its log. The model a job trains is registered as a *candidate*;
it becomes active only when someone promotes it (see `registry`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from .errors import JobError
from .registry import remove_partial
from .settings import REPO_ROOT, Settings, TrainConfig, os_user

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")

# Overall progress: each stage of `train` fills one band of the bar.
STAGE_BANDS = {"caching": (0, 45), "tuning": (45, 75), "training": (75, 90), "fine-tuning": (90, 97),
               "evaluating": (97, 100)}
# progress.Progress lines: "progress: STAGE DONE/TOTAL (PCT%) 12s [detail]"; a stage name may hold a k/N itself
# ("caching train augmented view 1/3 120/400 (30%) 5s"), so DONE/TOTAL is the first one followed by (PCT%) or Ns.
_PROGRESS = re.compile(r"^progress: (?P<stage>.+?) (?P<done>\d+)/(?P<total>\d+|\?)(?= \(\d+%\)| \d+s|$)")
_EPOCH = re.compile(r"^Epoch (?P<done>\d+)/(?P<total>\d+)\s*$")   # Keras' fit, used by fine-tuning

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
    error TEXT
)"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def train_argv(params: dict) -> list[str]:
    """`train` command-line options from a job's parameters ({"fine_tune_epochs": 2} -> --fine-tune-epochs 2)."""
    argv = []
    for key, value in params.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def job_argv(params: dict) -> list[str]:
    """The pneumo_core command line of a job: `train` and its options, or the command named in
    params["command"] (e.g. ["site", "adapt"], for a site adaptation) with the other params as options."""
    options = {k: v for k, v in params.items() if k != "command"}
    return [*(params.get("command") or ["train"]), *train_argv(options)]


def params_from_model(metadata: dict, data_dir: str) -> dict:
    """Train options that reproduce a model version on `data_dir` (the 'current settings')."""
    training = metadata.get("training", {})
    defaults = TrainConfig()
    weights = metadata.get("weights")
    # The card stores the weights file name only; `auto` finds it again in the weights dir.
    weights = "none" if weights is None else weights if weights == "imagenet" else "auto"
    return {"data": str(data_dir), "backbone": metadata.get("backbone", defaults.backbone), "weights": weights,
            "trials": training.get("trials", defaults.trials), "epochs": training.get("epochs", defaults.epochs),
            "fine_tune_epochs": training.get("fine_tune_epochs", defaults.fine_tune_epochs),
            "image_size": metadata.get("image_size", defaults.image_size),
            "seed": training.get("seed", defaults.seed), "tuner": training.get("tuner", defaults.tuner),
            "views": training.get("augmented_views", defaults.augmented_views),
            "ensemble": training.get("ensemble", defaults.ensemble),
            "normalisation": metadata.get("normalisation", defaults.normalisation)}


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


def _alive(pid: int | None) -> bool:
    """Is `pid` a live (not zombie) Pneumo process? Guards against a pid reused after a reboot."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            return b"pneumo_core" in (proc / "cmdline").read_bytes()
        except OSError:
            return False
    return True


class JobQueue:
    """The jobs of one home dir. Cheap to create: every call opens its own SQLite connection, so
    dashboard sessions, the command line and runners can share it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = Path(settings.home) / "jobs.sqlite"
        self.log_dir = Path(settings.home) / "jobs"

    @contextmanager
    def _db(self, write: bool = False):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            if write:
                db.execute("BEGIN IMMEDIATE")   # one writer at a time decides what runs next
            yield db
            if write:
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _update(self, job_id: int, only_if_state: str | None = None, **values) -> bool:
        sets = ", ".join(f"{k} = ?" for k in values)
        where = "id = ?" + (" AND state = ?" if only_if_state else "")
        args = [*values.values(), job_id] + ([only_if_state] if only_if_state else [])
        with self._db() as db:
            return db.execute(f"UPDATE jobs SET {sets} WHERE {where}", args).rowcount == 1

    @staticmethod
    def _row(row: sqlite3.Row) -> dict:
        job = dict(row)
        job["params"] = json.loads(job["params"])
        job["checks"] = json.loads(job["checks"]) if job["checks"] else None
        end = datetime.fromisoformat(job["ended"]) if job["ended"] else datetime.now(UTC)
        job["seconds"] = (end - datetime.fromisoformat(job["started"])).total_seconds() if job["started"] else None
        return job

    # -- reading ---------------------------------------------------------------------------------

    def list(self, limit: int | None = None) -> list[dict]:
        """Jobs newest first (a dead runner's job is marked failed first)."""
        self._reap()
        with self._db() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else ""))
            return [self._row(r) for r in rows]

    def get(self, job_id: int) -> dict:
        """One job as a dict (state, stage, step, percent, params, log_path, model_id, error, ...)."""
        self._reap()
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise JobError(f"no job {job_id} (list them with: python -m pneumo_core jobs list)")
        return self._row(row)

    def current(self) -> dict | None:
        """The running job, else the oldest queued one, else None."""
        jobs = [j for j in self.list() if j["state"] in ("running", "queued")]
        return next((j for j in jobs if j["state"] == "running"), jobs[-1] if jobs else None)

    def log_tail(self, job_id: int, lines: int = 20) -> list[str]:
        return _tail(self.log_dir / f"{int(job_id)}.log", lines)   # no status read: polled every 2 s

    def _reap(self) -> None:
        """Mark jobs whose runner died as failed, clean their output, and move the queue on."""
        with self._db() as db:
            running = db.execute("SELECT id, pid, child_pid, log_path FROM jobs WHERE state = 'running'").fetchall()
            queued = db.execute("SELECT 1 FROM jobs WHERE state = 'queued'").fetchone()
        dead = [r for r in running if not _alive(r["pid"])]
        for job in dead:
            tail = _tail(Path(job["log_path"]), 10) if job["log_path"] else []
            message = ("the job's process stopped without reporting (killed, out of memory or the machine "
                       "restarted).") + ("\nLast log lines:\n" + "\n".join(tail) if tail else "")
            if self._update(job["id"], "running", state="failed", ended=_now(), error=message):
                self._stop_group(job["pid"], job["child_pid"], grace=0)
        if queued and (dead or not running):
            self.start_next()

    # -- changing ---------------------------------------------------------------------------------

    def submit(self, params: dict, who: str | None = None) -> int:
        """Check the data, queue a `train` job with these options and start it if nothing runs.

        Raises JobError when the data check finds a blocking problem; unreadable films are listed in
        the job's `checks` and skipped by training.
        """
        from .data import check_dataset
        check = check_dataset(params.get("data") or self.settings.data_dir)
        if not check.ok:
            raise JobError("the data check failed: " + "; ".join(check.problems))
        checks = {"counts": check.counts, "unreadable": check.unreadable}
        with self._db() as db:
            job_id = db.execute("INSERT INTO jobs (state, submitted, submitted_by, params, checks) "
                                "VALUES ('queued', ?, ?, ?, ?)",
                                (_now(), who or os_user() or "unknown", json.dumps(params),
                                 json.dumps(checks))).lastrowid
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._update(job_id, log_path=str(self.log_dir / f"{job_id}.log"))
        self.start_next()
        return job_id

    def start_next(self) -> int | None:
        """Start the oldest queued job unless one is running; returns the started job id."""
        with self._db(write=True) as db:
            if db.execute("SELECT 1 FROM jobs WHERE state = 'running'").fetchone():
                return None
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            env = {**os.environ, "PNEUMO_HOME": str(self.settings.home), "PYTHONUNBUFFERED": "1"}
            runner = subprocess.Popen([sys.executable, "-m", "pneumo_core", "jobs", "run", str(row["id"])],
                                      cwd=REPO_ROOT, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            db.execute("UPDATE jobs SET state = 'running', started = ?, pid = ? WHERE id = ?",
                       (_now(), runner.pid, row["id"]))
        _reap_when_done(runner)
        return row["id"]

    def cancel(self, job_id: int) -> dict:
        """Stop a queued or running job; a running one's process group is stopped and its half-written
        output removed. Finished jobs are left as they are."""
        job = self.get(job_id)
        if job["state"] in FINISHED:
            return job
        if self._update(job["id"], job["state"], state="cancelled", ended=_now(),
                        error="cancelled by the user") and job["state"] == "running":
            self._stop_group(job["pid"], job["child_pid"], grace=10)
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

    def _stop_group(self, pid: int | None, child_pid: int | None, grace: float) -> None:
        """SIGTERM the runner's process group, SIGKILL after `grace` s, then remove partial output."""
        if pid:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
                try:
                    os.killpg(pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and (_alive(pid) or _alive(child_pid)):
                    time.sleep(0.1)
                if not (_alive(pid) or _alive(child_pid)):
                    break
        if child_pid:
            self._remove_partial(child_pid)

    def _remove_partial(self, pid: int) -> list[Path]:
        """Half-written output of training process `pid`: a version folder not yet renamed into the
        registry, its tuner folder, and a feature file not yet renamed into the cache."""
        removed = remove_partial(self.settings.models_dir, pid)
        for path in [*Path(self.settings.tuner_dir).glob(f"run-*-p{pid}"),
                     *Path(self.settings.cache_dir).glob(f"*.{pid}.tmp.npy")]:
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
        with self._db(write=True) as db:
            row = db.execute("SELECT state, pid FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
            if row is None:
                raise JobError(f"no job {job_id}")
            others = [r["id"] for r in db.execute("SELECT id, pid FROM jobs WHERE state = 'running' AND id != ?",
                                                  (int(job_id),)) if _alive(r["pid"])]
            if others:
                raise JobError(f"job {others[0]} is running; job {job_id} starts after it (one job at a time)")
            mine = row["state"] == "queued" or (row["state"] == "running" and
                                                (row["pid"] == os.getpid() or not _alive(row["pid"])))
            if not mine:
                raise JobError(f"job {job_id} is {row['state']}" + (f" (process {row['pid']})"
                                                                     if row["state"] == "running" else ""))
            db.execute("UPDATE jobs SET state = 'running', pid = ?, started = COALESCE(started, ?) WHERE id = ?",
                       (os.getpid(), _now(), int(job_id)))
        return self.get(job_id)

    def run(self, job_id: int) -> int:
        """Body of the runner process: run `train` for the job, follow its progress, record the outcome."""
        job = self._claim(job_id)
        caching_stages = int(job["params"].get("views", TrainConfig().augmented_views)) + 3
        # TF_CPP_MIN_LOG_LEVEL 2: TensorFlow's start-up chatter (CPU features, no CUDA) stays out of the
        # log a clinician's engineer reads; its errors still show. Set it in the environment to override.
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ, "PNEUMO_HOME": str(self.settings.home),
               "PYTHONUNBUFFERED": "1"}
        log_path = Path(job["log_path"])
        with open(log_path, "a", buffering=1) as log:
            log.write(f"job {job_id}: python -m pneumo_core {' '.join(job_argv(job['params']))}\n")
            child = subprocess.Popen([sys.executable, "-m", "pneumo_core", *job_argv(job["params"])],
                                     cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
            self._update(job_id, "running", child_pid=child.pid, stage="starting")
            caching_seen, last_stage, last_write, last_line = 0, None, 0.0, ""
            for line in child.stdout:
                log.write(line)
                line = line.strip()
                last_line = line or last_line
                match = _PROGRESS.match(line) or _EPOCH.match(line)
                if not match:
                    continue
                stage = match.groupdict().get("stage") or "fine-tuning epoch"
                total = None if match["total"] == "?" else int(match["total"])
                if stage != last_stage and stage.startswith("caching"):
                    caching_seen += 1
                now = time.monotonic()
                if stage != last_stage or now - last_write > 0.5:
                    self._update(job_id, "running", stage=stage, step=f"{match['done']}/{match['total']}",
                                 percent=overall_percent(stage, int(match["done"]), total, caching_stages,
                                                         caching_seen))
                    last_stage, last_write = stage, now
            code = child.wait()
        if code == 0:
            self._update(job_id, "running", state="succeeded", ended=_now(), percent=100.0, stage="done",
                         model_id=last_line)
        else:
            why = (f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}")
            tail = "\n".join(_tail(log_path, 10))
            if self._update(job_id, "running", state="failed", ended=_now(),
                            error=f"training {why}.\nLast log lines:\n{tail}"):
                self._remove_partial(child.pid)
        self.start_next()
        return code


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            return f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return []


def _reap_when_done(process: subprocess.Popen) -> None:
    """Collect the runner's exit status in the background so it never lingers as a zombie."""
    threading.Thread(target=process.wait, daemon=True).start()
