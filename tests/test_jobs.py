"""Retraining jobs: queue, progress, cancel, crash detection, restarts; data checks before a job."""
import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import make_dataset, run_cli
from helpers import process_gone

from pneumo_core import registry
from pneumo_core.data import check_dataset, load_dataset
from pneumo_core.errors import ConfigError
from pneumo_core.jobs import FINISHED, JobError, JobQueue, overall_percent, params_from_model, train_argv
from pneumo_core.settings import TrainConfig, load_settings

TINY = {"weights": "none", "image_size": 64, "trials": 2, "epochs": 2, "augmented_views": 1, "ensemble": 1}
LONG = {**TINY, "trials": 500, "epochs": 40}   # long enough to be stopped mid-run


def _queue(home: Path) -> JobQueue:
    return JobQueue(load_settings({"PNEUMO_HOME": str(home)}))


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
    root = make_dataset(tmp_path_factory.mktemp("jobdata"), {"train": (30, 30)}, shape=(72, 72))
    (root / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


# -- pure parts -------------------------------------------------------------------------------------

def test_train_argv_spells_options_as_the_cli_does():
    argv = train_argv(TrainConfig(data_dir="/d", fine_tune_epochs=2, augmented_views=1, xla=True))
    assert argv[:2] == ["--data", "/d"] and "--mixed-precision" not in argv
    assert {tuple(argv[i:i + 2]) for i in range(len(argv))} >= {("--fine-tune-epochs", "2"), ("--views", "1")}
    assert argv[-1] == "--xla"
    with pytest.raises(ConfigError, match="min_sensitivity"):     # no option: cannot be run as a command line
        train_argv(TrainConfig(min_sensitivity=0.9))


def test_overall_percent_moves_forward_through_the_stages():
    caching = [overall_percent("caching x", d, 10, 4, k) for k in (1, 2, 3, 4) for d in (0, 10)]
    later = [overall_percent("tuning trial", 5, 10, 4, 4), overall_percent("training epoch", 9, 9, 4, 4),
             overall_percent("evaluating", 1, 1, 4, 4)]
    series = caching + later
    assert series == sorted(series) and series[0] == 0 and series[-1] == 100
    assert overall_percent("tuning trial", 3, None, 4, 4) == 45   # unknown total: start of its band


def test_params_from_model_reproduce_the_active_models_options():
    meta = {"backbone": "resnet50", "weights": "resnet50_notop.h5", "image_size": 160, "normalisation": "clahe",
            "training": {"trials": 7, "epochs": 5, "fine_tune_epochs": 1, "seed": 3, "tuner": "bayesian",
                         "augmented_views": 2, "ensemble": 2}}
    config = params_from_model(meta, "/data")
    assert config == TrainConfig(data_dir="/data", backbone="resnet50", weights="auto", trials=7, epochs=5,
                                 fine_tune_epochs=1, image_size=160, seed=3, tuner="bayesian", augmented_views=2,
                                 ensemble=2, normalisation="clahe")
    assert params_from_model({**meta, "weights": None}, "/d").weights == "none"


# -- data checks ------------------------------------------------------------------------------------

def test_data_check_lists_unreadable_files_and_training_skips_them(tiny_data):
    check = check_dataset(tiny_data)
    assert check.ok and check.counts == {"NORMAL": 30, "PNEUMONIA": 30}
    assert list(check.unreadable) == [str(tiny_data / "train" / "NORMAL" / "broken.jpeg")]
    dataset = load_dataset(tiny_data, skip_unreadable=True)
    assert "broken.jpeg" not in " ".join(dataset.frame.path) and "skipped 1 unreadable" in dataset.notes[0]


@pytest.mark.parametrize("layout, message", [
    (None, "does not exist"),
    ({"train": (25, 0)}, "no PNEUMONIA"),
    ({"train": (25, 8)}, "only 8 readable PNEUMONIA"),
])
def test_data_check_blocks_what_cannot_train(tmp_path, layout, message):
    root = make_dataset(tmp_path / "d", layout, shape=(72, 72)) if layout else tmp_path / "missing"
    check = check_dataset(root)
    assert not check.ok and message in check.problems[0]
    with pytest.raises(JobError, match=message):
        _queue(tmp_path / "home").submit({"data_dir": str(root), **TINY})
    assert _queue(tmp_path / "home").list() == []


def test_each_writer_finds_only_that_process_partial_output(tmp_path):
    from pneumo_core import features, training
    s = _queue(tmp_path).settings
    mine = [s.models_dir / f"{registry.partial_prefix(4242)}v1-abc", training.tuner_run_dir(s.tuner_dir, 4242)]
    others = [s.models_dir / f"{registry.partial_prefix(999)}v2-abc", training.tuner_run_dir(s.tuner_dir, 999),
              s.models_dir / "v0"]
    for folder in mine + others:
        folder.mkdir(parents=True)
    (s.cache_dir).mkdir()
    (s.cache_dir / "key.0badc0de.4242.tmp.npy").write_bytes(b"half")   # as FeatureCache.get names it
    (s.cache_dir / "key.npy").write_bytes(b"done")
    assert training.partial_paths(s.tuner_dir, 4242) == [mine[1]]
    assert features.partial_paths(s.cache_dir, 4242) == [s.cache_dir / "key.0badc0de.4242.tmp.npy"]
    assert registry.remove_partial(s.models_dir, 4242) == [mine[0]]
    assert not mine[0].exists() and all(p.exists() for p in others)
    assert features.partial_paths(s.cache_dir, 999) == [] and training.partial_paths(tmp_path / "none", 1) == []


# -- real jobs (subprocesses running `train`) ----------------------------------------------------------

@pytest.mark.slow
def test_two_jobs_run_one_after_the_other_and_register_candidates(tmp_path, tiny_data):
    queue = _queue(tmp_path)
    first = queue.submit({"data_dir": str(tiny_data), **TINY}, who="dr test")
    second = queue.submit({"data_dir": str(tiny_data), **TINY, "seed": 7})
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
    log = Path(a["log_path"]).read_text()
    assert "progress: tuning trial 2/2" in log and "progress: training epoch 2/2" in log
    assert "skipped 1 unreadable" in log
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


@pytest.mark.slow
def test_cancel_stops_the_process_group_and_leaves_no_partial_version(tmp_path, tiny_data):
    queue = _queue(tmp_path)
    job_id = queue.submit({"data_dir": str(tiny_data), **LONG})
    job = _wait_for(lambda: (j := queue.get(job_id))["stage"] and j["stage"].startswith("tuning") and j)
    assert 0 < job["percent"] < 100
    cancelled = queue.cancel(job_id)
    assert cancelled["state"] == "cancelled"
    assert process_gone(job["pid"]) and process_gone(job["child_pid"])
    models = queue.settings.models_dir
    assert not models.exists() or [p.name for p in models.iterdir()] == []
    assert not list(queue.settings.tuner_dir.glob(f"run-*-p{job['child_pid']}"))
    assert queue.cancel(job_id)["state"] == "cancelled"      # cancelling twice changes nothing


@pytest.mark.slow
def test_a_killed_job_is_reported_failed_with_its_last_log_lines(tmp_path, tiny_data):
    queue = _queue(tmp_path)
    job_id = queue.submit({"data_dir": str(tiny_data), **LONG})
    job = _wait_for(lambda: (j := queue.get(job_id))["stage"] and j["stage"].startswith("tuning") and j)
    os.killpg(job["pid"], signal.SIGKILL)     # runner and training process die without a word
    _wait_for(lambda: process_gone(job["pid"]), timeout=10)
    failed = JobQueue(queue.settings).get(job_id)   # the next status read, from a fresh queue object
    assert failed["state"] == "failed" and "stopped without reporting" in failed["error"]
    assert "progress: tuning trial" in failed["error"]          # the last log lines come along
    assert queue.current() is None


@pytest.mark.slow
def test_promotion_and_rollback_change_the_active_model_and_are_recorded(tmp_path, tiny_data):
    queue = _queue(tmp_path)
    ids = [queue.submit({"data_dir": str(tiny_data), **TINY, "seed": s}) for s in (1, 2)]
    first, second = (queue.wait(i, timeout=300)["model_id"] for i in ids)
    models = queue.settings.models_dir
    promoted = run_cli("promote", second, "--who", "lead engineer", home=tmp_path)
    assert promoted.returncode == 0 and "promote" in promoted.stdout
    assert registry.active_version(models) == second
    entry = registry.promote(models, first, who="night shift")
    assert registry.active_version(models) == first
    log = registry.promotions(models)
    assert [(e["action"], e["from"], e["to"], e["who"]) for e in log] == [
        ("first model", None, first, "pneumo"), ("promote", first, second, "lead engineer"),
        ("rollback", second, first, "night shift")]
    assert entry == log[-1] and all(e["when"] for e in log)
    assert {v["id"]: v["role"] for v in registry.list_versions(models)} == {first: "active", second: "previous"}
