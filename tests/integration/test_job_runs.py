"""Retraining jobs that really train: queue order, cancel, crash detection, restarts, a full disk."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, make_dataset, run_cli
from helpers import process_gone

from pneumo_core.jobs.process import is_ours, start_time
from pneumo_core.jobs.queue import FINISHED, JobQueue
from pneumo_core.records import registry
from pneumo_core.records.access import Actor
from pneumo_core.settings import load_settings

# The least a job can train (32 px, one trial of one epoch, no augmented or test-time views): these tests are
# about the queue, not the model.
TINY = {"weights": "none", "image_size": 32, "trials": 1, "epochs": 1, "augmented_views": 0, "ensemble": 1,
        "tta_views": 0}
LONG = {**TINY, "trials": 100, "epochs": 100}   # long enough to be stopped mid-run
LEAD = Actor("lead", "ml_lead")


def _queue(home: Path, **env) -> JobQueue:
    return JobQueue(load_settings({"PNEUMO_HOME": str(home), "PNEUMO_MIN_FREE_MB": "1", **env}))


def _alive(pid):
    return is_ours(pid, start_time(pid))


def _submit_in_a_process(home: Path, data: Path, submitter: str, before: str, after: str,
                         timeout: int) -> subprocess.CompletedProcess:
    """Python code run in a fresh process (PNEUMO_HOME=home): `before`, then `q.submit` of a TINY job on `data`
    by `submitter` (ml_lead) whose id is `j`, then `after` (one-line statements; `before` ends in '; ')."""
    code = (f"{before}from pneumo_core.records.access import Actor; from pneumo_core.jobs.queue import JobQueue; "
            "from pneumo_core.settings import load_settings; q = JobQueue(load_settings()); "
            f"j = q.submit({{'data_dir': {str(data)!r}, **{TINY!r}}}, actor=Actor({submitter!r}, 'ml_lead')); {after}")
    env = {**os.environ, "PNEUMO_HOME": str(home), "PNEUMO_MIN_FREE_MB": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _wait_for(predicate, timeout=120, poll=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("jobdata"), {"train": (22, 22)}, shape=(64, 64))
    (root / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(autouse=True)
def home_sharing_the_feature_cache(tmp_path, feature_cache):
    """Each test's home (tmp_path) keeps its features in the module's one cache: the first job embeds the
    films, the later ones find them there and never build or run the backbone up to their tuning stage
    (~4 s of CPU each; these tests are about the queue, not the features)."""
    (tmp_path / "features").symlink_to(feature_cache, target_is_directory=True)


# -- real jobs (subprocesses running `train`) ----------------------------------------------------------

def test_two_jobs_run_one_after_the_other_and_register_candidates(tmp_path, tiny_data):
    queue = _queue(tmp_path, PNEUMO_JOB_LOG_MB="0.001")     # 1 KB: the log rotates
    first = queue.submit({"data_dir": str(tiny_data), **TINY}, actor=Actor("dr test", "ml_lead"))
    second = queue.submit({"data_dir": str(tiny_data), **TINY, "seed": 7}, actor=LEAD)
    assert queue.get(second)["state"] == "queued" and queue.get(first)["state"] == "running"
    seen = []

    def states():   # the second job read first: if it has started by then, the first must be over when read after
        second_state = queue.get(second)["state"]
        seen.append((queue.get(first)["state"], second_state))
        return second_state in FINISHED

    _wait_for(states, timeout=600)
    assert ("running", "queued") in seen
    assert all(a_state in FINISHED for a_state, b_state in seen if b_state != "queued"), seen   # one at a time
    a, b = queue.get(first), queue.get(second)
    assert (a["state"], b["state"]) == ("succeeded", "succeeded"), (a["error"], b["error"])
    assert a["submitted_by"] == "dr test"
    assert a["percent"] == 100 and a["checks"]["unreadable"]
    # A job's log here is ~2.5 KB: at 1 KB parts it rotated, and the two parts kept stay bounded.
    parts = [Path(a["log_path"] + ".1"), Path(a["log_path"])]
    assert all(0 < p.stat().st_size <= 1024 + 300 for p in parts)        # 300: the longest line
    assert queue.log_tail(first, 100)[-1] == a["model_id"]              # the tail reads across both parts
    versions = {v["id"]: v["role"] for v in registry.list_versions(queue.settings.models_dir)}
    # The first model of an empty registry becomes active; a later one waits as a candidate.
    assert versions == {a["model_id"]: "active", b["model_id"]: "candidate"}

    # A new process (the dashboard restarted, or a terminal) sees the same jobs.
    listed = run_cli("jobs", "list", "--json", home=tmp_path)
    assert listed.returncode == 0 and [j["id"] for j in json.loads(listed.stdout)] == [second, first]
    status = json.loads(run_cli("jobs", "status", str(first), "--json", home=tmp_path).stdout)
    assert status["model_id"] == a["model_id"] and status["state"] == "succeeded"
    again = run_cli("jobs", "run", str(first), home=tmp_path)     # a finished job is never run twice
    assert again.returncode == 2 and "job 1 is succeeded" in again.stderr


def test_cancel_stops_the_process_group_and_leaves_no_partial_version(tmp_path, tiny_data):
    queue = _queue(tmp_path)
    job_id = queue.submit({"data_dir": str(tiny_data), **LONG}, actor=LEAD)
    job = _wait_for(lambda: (j := queue.get(job_id))["stage"] and j["stage"].startswith("tuning") and j)
    assert 0 < job["percent"] < 100
    cancelled = queue.cancel(job_id, actor=Actor("night lead", "ml_lead"))
    assert cancelled["state"] == "cancelled" and cancelled["cancelled_by"] == "night lead"
    assert process_gone(job["pid"]) and process_gone(job["child_pid"])
    models = queue.settings.models_dir
    assert not models.exists() or [p.name for p in models.iterdir()] == []
    assert not list(queue.settings.tuner_dir.glob(f"run-*-p{job['child_pid']}"))
    assert queue.cancel(job_id, actor=LEAD)["state"] == "cancelled"      # cancelling twice changes nothing


def test_cancel_stops_a_runner_started_by_hand_in_a_terminal(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(JobQueue, "start_next", lambda self: None)     # no background runner
    queue = _queue(tmp_path)
    job_id = queue.submit({"data_dir": str(tiny_data), **LONG}, actor=LEAD)
    env = {**os.environ, "PNEUMO_HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    # In the test's own process group, as from a shell: the group is not the job's to signal.
    runner = subprocess.Popen([sys.executable, "-m", "pneumo_core", "jobs", "run", str(job_id)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        job = _wait_for(lambda: (j := queue.get(job_id))["child_pid"] and j)
        assert queue.cancel(job_id, actor=LEAD)["state"] == "cancelled"
        assert runner.wait(timeout=30) != 0
        _wait_for(lambda: not _alive(job["child_pid"]), timeout=20)
    finally:
        runner.kill()


def test_a_killed_job_is_reported_failed_with_its_last_log_lines(tmp_path, tiny_data):
    queue = _queue(tmp_path)
    job_id = queue.submit({"data_dir": str(tiny_data), **LONG}, actor=LEAD)
    job = _wait_for(lambda: (j := queue.get(job_id))["stage"] and j["stage"].startswith("tuning") and j)
    os.killpg(job["pid"], signal.SIGKILL)     # runner and training process die without a word
    _wait_for(lambda: process_gone(job["pid"]), timeout=10)
    failed = JobQueue(queue.settings).get(job_id)   # the next status read, from a fresh queue object
    assert failed["state"] == "failed" and "stopped without reporting" in failed["error"]
    assert "progress: tuning trial" in failed["error"]          # the last log lines come along
    assert queue.current() is None


def test_sigkill_of_the_runner_alone_is_detected_and_its_training_process_stopped(tmp_path, tiny_data):
    queue = _queue(tmp_path)
    job_id = queue.submit({"data_dir": str(tiny_data), **LONG}, actor=LEAD)
    job = _wait_for(lambda: (j := queue.get(job_id))["stage"] and j["stage"].startswith("tuning") and j)
    os.kill(job["pid"], signal.SIGKILL)       # only the runner: its training process lives on for now
    _wait_for(lambda: not _alive(job["pid"]), timeout=10)
    failed = JobQueue(queue.settings).get(job_id)
    assert failed["state"] == "failed" and "stopped without reporting" in failed["error"]
    _wait_for(lambda: not _alive(job["child_pid"]), timeout=20)   # stopped: it was ours (pid + start time)
    assert not list(queue.settings.models_dir.glob(".tmp-*"))


def test_a_job_outlives_the_dashboard_that_submitted_it(tmp_path, tiny_data):
    # The "dashboard": a process that submits, then is SIGKILLed at once.
    dashboard = _submit_in_a_process(tmp_path, tiny_data, "dr dash", "import os, signal; ",
                                     "print(j, flush=True); os.kill(os.getpid(), signal.SIGKILL)", timeout=120)
    assert dashboard.returncode == -signal.SIGKILL
    job_id = int(dashboard.stdout.split()[0])
    restarted = _queue(tmp_path)             # the dashboard started again
    job = restarted.wait(job_id, timeout=600)
    assert job["state"] == "succeeded", job["error"]
    assert job["submitted_by"] == "dr dash"
    assert registry.active_version(restarted.settings.models_dir) == job["model_id"]


def test_a_full_disk_while_saving_the_model_fails_the_job_clearly_and_leaves_no_half_version(tmp_path, tiny_data):
    # The whole queue in a process whose files may not exceed 3 MB (RLIMIT_FSIZE, inherited by the runner
    # and training): the features and logs fit, the model file does not, as on a disk that fills up.
    result = _submit_in_a_process(tmp_path, tiny_data, "lead",
                                  "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                                  "resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 2**20, 3 * 2**20)); ",
                                  "print(q.wait(j, timeout=600)['state'])", timeout=700)
    assert result.stdout.strip() == "failed", result.stderr[-2000:]
    (job,) = _queue(tmp_path).list()
    assert "no space left on the disk" in job["error"] and "nothing was registered" in job["error"]
    models = tmp_path / "models"
    assert not models.exists() or [p.name for p in models.iterdir() if p.name != ".lock"] == []
