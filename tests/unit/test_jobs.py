"""Retraining jobs without training: form bounds, roles, progress parsing, result files, data checks, dead runners."""
import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import REPO, make_dataset

from pneumo_core.cli.main import main
from pneumo_core.errors import ConfigError, JobError, PermissionDenied
from pneumo_core.jobs import runner
from pneumo_core.jobs.argv import clamp_params, job_argv, params_from_model, train_argv
from pneumo_core.jobs.process import remove_partial_output
from pneumo_core.jobs.progress_lines import ProgressTracker, overall_percent
from pneumo_core.jobs.queue import JobQueue
from pneumo_core.jobs.results import read_result, write_result
from pneumo_core.learn import store
from pneumo_core.learn.data import check_dataset, load_dataset
from pneumo_core.records.access import Actor
from pneumo_core.records.audit import AuditTrail
from pneumo_core.settings import TRAIN_LIMITS, TrainConfig, load_settings

TINY = {"weights": "none", "image_size": 64, "trials": 2, "epochs": 2, "augmented_views": 1, "ensemble": 1}
LEAD = Actor("lead", "ml_lead")


def _queue(home: Path, **env) -> JobQueue:
    return JobQueue(load_settings({"PNEUMO_HOME": str(home), "PNEUMO_MIN_FREE_MB": "1", **env}))


@pytest.fixture
def held_queue(tmp_path, monkeypatch):
    """A queue whose jobs stay queued (no runner starts): for what happens at submit."""
    monkeypatch.setattr(JobQueue, "start_next", lambda self: None)
    return _queue(tmp_path / "home")


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


@pytest.mark.parametrize("line, stage, step", [
    ("progress: caching train augmented view 2/3 120/400 (30%) 5s", "caching train augmented view 2/3", "120/400"),
    ("progress: tuning trial 7/20 (35%) 12s", "tuning trial", "7/20"),
    ("progress: tuning trial 4/? 3s", "tuning trial", "4/?"),
    ("progress: training epoch 14/36 (39%) 2s head 2/3 val_auc=0.9120", "training epoch", "14/36"),
])
def test_progress_lines_are_tracked(line, stage, step):
    values = ProgressTracker(4).feed(line + "\n", 0.0)
    assert values["stage"] == stage and values["step"] == step


def test_progress_tracker_writes_on_a_new_stage_or_after_its_interval():
    tracker = ProgressTracker(caching_stages=1, every=0.5)
    assert tracker.feed("some log line", 0.0) is None
    first = tracker.feed("progress: tuning trial 1/4 (25%) 1s", 0.0)
    assert first == {"stage": "tuning trial", "step": "1/4", "percent": overall_percent("tuning trial", 1, 4, 1, 0)}
    assert tracker.feed("progress: tuning trial 2/4 (50%) 1s", 0.2) is None        # too soon, same stage
    assert tracker.feed("progress: tuning trial 3/4 (75%) 1s", 0.8)["step"] == "3/4"
    new_stage = tracker.feed("progress: fine-tuning epoch 1/3 (33%) 1s", 0.81)   # a new stage: at once
    assert new_stage["stage"] == "fine-tuning epoch"
    assert tracker.feed("20260101-000000-000000-ab12-mobilenet_v2\n", 1.0) is None


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
                         "augmented_views": 2, "ensemble": 2, "tta_views": 1}}
    config = params_from_model(meta, "/data")
    assert config == TrainConfig(data_dir="/data", backbone="resnet50", weights="auto", trials=7, epochs=5,
                                 fine_tune_epochs=1, image_size=160, seed=3, tuner="bayesian", augmented_views=2,
                                 ensemble=2, normalisation="clahe", tta_views=1)
    assert params_from_model({**meta, "weights": None}, "/d").weights == "none"
    # A card written before test-time views were an option: the default number of views.
    assert params_from_model({**meta, "training": {"trials": 7}}, "/d").tta_views == TrainConfig().tta_views


# -- data checks ------------------------------------------------------------------------------------

def test_data_check_lists_unreadable_files_and_training_skips_them(tiny_data):
    check = check_dataset(tiny_data)
    assert check.ok and check.counts == {"NORMAL": 30, "PNEUMONIA": 30}
    assert list(check.unreadable) == [str(tiny_data / "train" / "NORMAL" / "broken.jpeg")]
    dataset = load_dataset(tiny_data, skip_unreadable=True)
    assert "broken.jpeg" not in " ".join(dataset.frame.path) and "skipped 1 unreadable" in dataset.notes[0]


def test_a_missing_data_folder_is_refused_at_submit(tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        _queue(tmp_path / "home").submit({"data_dir": str(tmp_path / "missing"), **TINY}, actor=LEAD)
    assert _queue(tmp_path / "home").list() == []


@pytest.mark.parametrize("layout, message", [
    ({"train": (25, 0)}, "no PNEUMONIA"),
    ({"train": (25, 8)}, "only 8 readable PNEUMONIA"),
])
def test_the_data_check_runs_in_the_job_and_fails_it_with_the_reason(tmp_path, held_queue, layout, message):
    root = make_dataset(tmp_path / "d", layout, shape=(72, 72))
    check = check_dataset(root)
    assert not check.ok and message in check.problems[0]
    job_id = held_queue.submit({"data_dir": str(root), **TINY}, actor=LEAD)     # quick: no film decoded here
    assert held_queue.get(job_id)["checks"] is None
    assert runner.run(held_queue, job_id) == 1            # what the runner does, in the foreground
    job = held_queue.get(job_id)
    assert job["state"] == "failed" and message in job["error"] and job["checks"] is not None


def test_roles_are_enforced_by_the_queue(tmp_path, held_queue, tiny_data):
    for role in ("clinician", "auditor"):
        with pytest.raises(PermissionDenied, match="may not submit job"):
            held_queue.submit({"data_dir": str(tiny_data), **TINY}, actor=Actor("x", role))
    job_id = held_queue.submit({"data_dir": str(tiny_data), **TINY}, actor=LEAD)
    with pytest.raises(PermissionDenied, match="may not cancel job"):
        held_queue.cancel(job_id, actor=Actor("dr c", "clinician"))
    assert held_queue.get(job_id)["state"] == "queued"
    cancelled = held_queue.cancel(job_id, actor=Actor("boss", "admin"))
    assert (cancelled["state"], cancelled["cancelled_by"], cancelled["submitted_by"]) == ("cancelled", "boss", "lead")
    trail = AuditTrail(held_queue.settings.audit_path)
    assert [(e["kind"], e["who"], e["details"]["job"]) for e in trail.events()] == [
        ("job_cancel", "boss", job_id), ("job_submit", "lead", job_id)]
    assert trail.verify()["ok"]


def test_a_third_unfinished_job_of_one_user_is_refused(held_queue, tiny_data):
    params = {"data_dir": str(tiny_data), **TINY}
    held_queue.submit(params, actor=LEAD)
    held_queue.submit(params, actor=LEAD)
    with pytest.raises(JobError, match="lead already has 2 unfinished job\\(s\\), the most one user may have \\(2\\)"):
        held_queue.submit(params, actor=LEAD)
    held_queue.submit(params, actor=Actor("other lead", "ml_lead"))     # the limit is per user
    assert [j["submitted_by"] for j in held_queue.list()] == ["other lead", "lead", "lead"]


@pytest.mark.parametrize("change, message", [
    ({"trials": 500}, "trials 500 is out of range: a job may use 1 to 100"),
    ({"epochs": 0}, "epochs 0 is out of range"),
    ({"image_size": 512}, "image size 512 is out of range"),
    ({"trials": "20; rm -rf /"}, "trials must be a whole number"),
    ({"trials": 2.5}, "trials must be a whole number"),
    ({"evil_option": 1}, "unknown job option"),
])
def test_form_values_are_bounded(held_queue, tiny_data, change, message):
    with pytest.raises(JobError, match=message):
        held_queue.submit({"data_dir": str(tiny_data), **TINY, **change}, actor=LEAD)
    assert held_queue.list() == []
    assert TRAIN_LIMITS["trials"] == (1, 100)      # the form's range comes from the same table


def test_form_starting_values_are_brought_into_range():
    assert clamp_params({"trials": 500, "image_size": 16, "seed": 3, "xla": True, "data_dir": "/d"}) == \
        {"trials": 100, "image_size": 32, "seed": 3, "xla": True, "data_dir": "/d"}


def test_a_job_needs_free_disk_space(tmp_path, tiny_data):
    queue = _queue(tmp_path, PNEUMO_MIN_FREE_MB=str(10**12))
    with pytest.raises(JobError, match="MB free on the disk of .* a job needs at least"):
        queue.submit({"data_dir": str(tiny_data), **TINY}, actor=LEAD)


def test_a_dead_runners_job_fails_and_the_process_now_holding_its_pid_is_left_alone(held_queue, tiny_data, cli):
    job_id = held_queue.submit({"data_dir": str(tiny_data), **TINY}, actor=LEAD)
    squatter = subprocess.Popen(["setsid", "sleep", "60"])     # an unrelated process, its own session
    try:
        pid_started = psutil.Process(squatter.pid).create_time()
        token = held_queue.changed_since(None)[1]
        # As if the runner had that pid before a reboot: the pid matches, the start time does not.
        held_queue.store.update(job_id, state="running", pid=squatter.pid, pid_started=pid_started - 3600,
                                child_pid=squatter.pid, child_started=pid_started - 3599, log_path=None)
        listed = cli("jobs", "list", "--json", home=held_queue.settings.home)
        assert listed.returncode == 0, listed.stderr
        (job,) = json.loads(listed.stdout)
        assert job["state"] == "failed" and "stopped without reporting" in job["error"]
        assert squatter.poll() is None and psutil.Process(squatter.pid).status() != psutil.STATUS_ZOMBIE
        assert held_queue.changed_since(token)[0]
    finally:
        squatter.kill()
        squatter.wait()


def test_changed_since_is_false_until_a_job_changes(held_queue, tiny_data):
    changed, token = held_queue.changed_since(None)
    assert changed and held_queue.changed_since(token) == (False, token)
    job_id = held_queue.submit({"data_dir": str(tiny_data), **TINY}, actor=LEAD)
    changed, token2 = held_queue.changed_since(token)
    assert changed and held_queue.changed_since(token2) == (False, token2)
    held_queue.cancel(job_id, actor=LEAD)
    assert held_queue.changed_since(token2)[0]


def test_the_log_tail_reads_across_a_rotation(tmp_path):
    queue = _queue(tmp_path)
    queue.log_dir.mkdir(parents=True)
    (queue.log_dir / "7.log.1").write_text("".join(f"old {i}\n" for i in range(5)))
    (queue.log_dir / "7.log").write_text("new 0\nnew 1\n")
    assert queue.log_tail(7, 4) == ["old 3", "old 4", "new 0", "new 1"]
    assert queue.log_tail(7, 1) == ["new 1"]


def test_each_writer_finds_only_that_process_partial_output(tmp_path):
    s = _queue(tmp_path).settings
    mine = [s.models_dir / f"{store.partial_prefix(4242)}v1-abc", store.tuner_run_dir(s.tuner_dir, 4242)]
    others = [s.models_dir / f"{store.partial_prefix(999)}v2-abc", store.tuner_run_dir(s.tuner_dir, 999),
              s.models_dir / "v0"]
    for folder in mine + others:
        folder.mkdir(parents=True)
    (s.cache_dir).mkdir()
    (s.cache_dir / "key.0badc0de.4242.tmp.npy").write_bytes(b"half")   # as FeatureCache.get names it
    (s.cache_dir / "key.npy").write_bytes(b"done")
    assert store.partial_tuner_runs(s.tuner_dir, 4242) == [mine[1]]
    assert store.partial_cache_files(s.cache_dir, 4242) == [s.cache_dir / "key.0badc0de.4242.tmp.npy"]
    assert sorted(remove_partial_output(s, 4242)) == sorted([*mine, s.cache_dir / "key.0badc0de.4242.tmp.npy"])
    assert not any(p.exists() for p in mine) and all(p.exists() for p in others)
    assert (s.cache_dir / "key.npy").exists() and not (s.cache_dir / "key.0badc0de.4242.tmp.npy").exists()
    assert store.partial_cache_files(s.cache_dir, 999) == [] and store.partial_tuner_runs(tmp_path / "none", 1) == []


def test_the_jobs_package_imports_no_tensorflow_nor_training():
    code = ("import sys; import pneumo_core.jobs.queue, pneumo_core.jobs.runner, pneumo_core.jobs.confine; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras') "
            "or m in ('pneumo_core.learn.training', 'pneumo_core.learn.model', 'pneumo_core.learn.features')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- the result file: how a job learns the version its command made ------------------------------------------

RESULT = {"version_id": "20260101-000000-000000-ab12-mobilenet_v2", "path": "/models/v", "metrics": {"test": {}},
          "threshold": 0.42, "active": False, "seconds": 12.0}


def test_a_result_file_is_written_whole_and_read_back(tmp_path):
    path = tmp_path / "jobs" / "7.result.json"
    write_result(path, version_id=RESULT["version_id"], version_path=Path("/models/v"), metrics={"test": {}},
                 threshold=0.42, active=False, seconds=12.0)
    assert read_result(path) == RESULT
    assert [p.name for p in path.parent.iterdir()] == [path.name]      # no temporary file left beside it
    path.write_text('{"version_id": "v"}')                               # not a whole result
    assert read_result(path) is None and read_result(tmp_path / "missing.json") is None


def test_a_jobs_command_line_asks_for_the_result_file():
    train = job_argv({"data_dir": "/d", **TINY}, result_file="/h/jobs/3.result.json")
    assert train[0] == "train" and train[-2:] == ["--result-file", "/h/jobs/3.result.json"]
    site = job_argv({"command": ["site", "adapt"], "data": "/s", "name": "north", "model": None}, "/r.json")
    assert site == ["site", "adapt", "--data", "/s", "--name", "north", "--result-file", "/r.json"]
    assert "--result-file" not in job_argv({"data_dir": "/d"})


FAKE_TRAIN = """import json, os, sys
argv = sys.argv[1:]
print("progress: tuning trial 1/2 (50%) 1s", flush=True)
result = argv[argv.index("--result-file") + 1] if "--result-file" in argv else None
if result and os.environ.get("FAKE_WRITES_RESULT") == "1":
    tmp = result + ".tmp"
    with open(tmp, "w") as f:
        json.dump({RESULT}, f)
    os.replace(tmp, result)
print("a stray last line that is not the version id", flush=True)
"""


@pytest.mark.parametrize("writes_result", [True, False])
def test_a_job_takes_the_version_id_from_its_result_file(tmp_path, held_queue, tiny_data, monkeypatch,
                                                          writes_result):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN.replace("{RESULT}", repr(RESULT)))
    monkeypatch.setattr(runner, "COMMAND", [sys.executable, str(fake)])   # instead of `python -m pneumo_core`
    monkeypatch.setenv("FAKE_WRITES_RESULT", "1" if writes_result else "0")
    job_id = held_queue.submit({"data_dir": str(tiny_data), **TINY}, actor=LEAD)
    code = runner.run(held_queue, job_id)
    job = held_queue.get(job_id)
    assert held_queue.log_tail(job_id, 1) == ["a stray last line that is not the version id"]
    if writes_result:
        assert (code, job["state"], job["model_id"], job["percent"]) == (0, "succeeded", RESULT["version_id"], 100)
        assert read_result(held_queue.result_path(job_id)) == RESULT
    else:
        assert (code, job["state"], job["model_id"]) == (1, "failed", None)
        assert "ended without writing its result file" in job["error"] and str(held_queue.result_path(job_id)) \
            in job["error"]


def test_jobs_commands_keep_their_exit_codes(held_queue, tiny_data, monkeypatch, capsys):
    monkeypatch.setenv("PNEUMO_HOME", str(held_queue.settings.home))
    monkeypatch.setenv("PNEUMO_MIN_FREE_MB", "1")
    job_id = held_queue.submit({"data_dir": str(tiny_data), **TINY}, actor=LEAD)
    assert main(["jobs", "wait", str(job_id), "--timeout", "0"]) == 3                 # still queued: timed out
    assert main(["jobs", "status", "99"]) == 2 and "no job 99" in capsys.readouterr().err
    assert main(["jobs", "cancel", str(job_id)]) == 0
    assert main(["jobs", "wait", str(job_id)]) == 1                                   # finished, not succeeded
    assert capsys.readouterr().out.splitlines()[-1] == f"job {job_id}: cancelled"
    assert main(["jobs", "run", str(job_id)]) == 2 and f"job {job_id} is cancelled" in capsys.readouterr().err


# -- real jobs (subprocesses running `train`) ----------------------------------------------------------

