"""Go-live at a site on real films: `site validate` / `site adapt` (command line and job), the site pages."""
import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, SHARED, SHARED_DATA, cli_here, make_dataset
from helpers import widget

from pneumo_core.evaluation.track_record import INTERNAL_LABEL, track_record
from pneumo_core.evaluation.triage import tiers_for
from pneumo_core.golive import adaptation, validation
from pneumo_core.golive import sites as site
from pneumo_core.progress import parse_line
from pneumo_core.records.access import Actor

SHARED_SITE = SHARED / "data" / "site"


# -- the command line on real films (slow) ------------------------------------------------------------

def _link_subset(root, source, per_class: dict, seed: int = 0):
    """Whole patients of `source`'s class folders, linked (not copied) under `root`/CLASS/."""
    from pneumo_core.learn.data import patient_id
    rng = np.random.default_rng(seed)
    for cls, n in per_class.items():
        files = sorted((source / cls).glob("*.jpeg"))
        patients = sorted({patient_id(f.name) for f in files})
        rng.shuffle(patients)
        taken = []
        for patient in patients:
            taken += [f for f in files if patient_id(f.name) == patient]
            if len(taken) >= n:
                break
        (root / cls).mkdir(parents=True, exist_ok=True)
        for f in taken:
            (root / cls / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def real_home(tmp_path_factory):
    """A tiny model (random-init MobileNetV2 at 64 px) trained on real training films, and real site films."""
    if not (SHARED_DATA / "train").is_dir() or not SHARED_SITE.is_dir():
        pytest.skip("../shared data not present")
    root = tmp_path_factory.mktemp("site_real")
    train = _link_subset(root / "data" / "train", SHARED_DATA / "train", {"NORMAL": 40, "PNEUMONIA": 40})
    films = _link_subset(root / "data" / "hospital", SHARED_SITE, {"NORMAL": 20, "PNEUMONIA": 20}, seed=1)
    home = root / "home"
    # The least that trains (one trial, one head, no augmented or test-time views): these tests are about the
    # site's figures and the adapted version, which sets its own head, calibration and views. In this process:
    # a subprocess would start TensorFlow once more.
    result = cli_here("train", "--data", train.parent, "--weights", "none", "--image-size", 64, "--trials", 1,
                      "--epochs", 2, "--views", 0, "--ensemble", 1, "--tta-views", 0, home=home)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return home, films, result.stdout.strip().splitlines()[-1]


def test_site_validate_reports_figures_with_intervals_and_a_verdict(real_home, cli):
    home, films, version = real_home
    result = cli("site", "validate", "--data", films, "--name", "hospital", "--json", home=home)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("model", "n", "roc_auc", "sensitivity", "specificity", "precision", "npv", "ece", "threshold",
                "confusion_matrix", "verdict", "ci"):
        assert key in report, key
    assert report["n"] == len(list(films.rglob("*.jpeg"))) and report["model"] == version
    meta = json.loads((home / "models" / version / "metadata.json").read_text())
    assert report["threshold"] == pytest.approx(meta["threshold"])          # the model's own threshold
    for metric in ("roc_auc", "sensitivity", "specificity", "ece"):
        assert len(report["ci"][metric]) == 2, metric
    (tn, fp), (fn, tp) = report["confusion_matrix"]
    for metric, calls in (("ppv", tp + fp), ("npv", tn + fn)):   # undefined (None) only if never called
        assert (report["ci"][metric] is None) == (calls == 0), metric
    assert report["verdict"].startswith("Site hospital, ") and "internal" in report["verdict"]
    assert len(report["calibration"]["count"]) >= 1 and report["ood"]["available"]
    stored = json.loads((home / "models" / version / "site_reports" / "hospital.json").read_text())
    assert stored["verdict"] == report["verdict"]
    triage = stored["triage"]   # tiers set on these very films
    labels = np.asarray(stored["labels"])
    assert (triage["n_pneumonia"], triage["n_normal"]) == (labels.sum(), (labels == 0).sum())
    assert triage["source"] == "site validation"
    assert "Triage tiers at site hospital" in stored["triage_summary"]
    record = track_record(home / "models" / version)
    assert record.source == "site" and record.site == "hospital" and record.label != INTERNAL_LABEL
    assert record.text("specificity").count("[") == 1


# -- pages (AppTest) ----------------------------------------------------------------------------------

def _app(name):
    from streamlit.testing.v1 import AppTest

    from pneumo_core.records.access import Actor
    at = AppTest.from_file(str(REPO / "views" / f"{name}.py"), default_timeout=120)
    at.session_state["actor"] = Actor("test", "admin")
    return at


@pytest.fixture
def page_home(trained_home, tmp_path, monkeypatch):
    """A copy of the tiny trained home; PNEUMO_DATA's parent holds a labelled site folder."""
    home = tmp_path / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*", "jobs*"))
    data_root = tmp_path / "data"
    make_dataset(data_root / "chest_xray", {"train": (2, 2)})
    make_dataset(data_root / "clinic", {".": (20, 20)}, seed=5)
    monkeypatch.setenv("PNEUMO_HOME", str(home))
    monkeypatch.setenv("PNEUMO_DATA", str(data_root / "chest_xray"))
    return home, data_root / "clinic"


def test_site_page_validates_a_folder_and_shows_the_report(page_home):
    home, clinic = page_home
    at = _app("site").run()
    assert not at.exception
    assert str(clinic) in widget(at, "selectbox", "Folder").options
    widget(at, "selectbox", "Folder").set_value(clinic)
    at.run()
    next(b for b in at.button if b.label == "Validate at this site").click()
    at.run()
    assert not at.exception
    verdicts = [m.value for m in [*at.warning, *at.success] if m.value.startswith("Site clinic, 40 films")]
    assert verdicts, [m.value for m in at.warning]
    assert {"AUC", "sensitivity", "specificity", "ECE"} <= {m.label for m in at.metric}
    assert any("Validation at site clinic" in h.value for h in at.subheader)
    (version,) = [d for d in (home / "models").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert (version / "site_reports" / "clinic.json").is_file()


def test_metrics_page_names_site_figures_or_says_not_validated(page_home):
    home, clinic = page_home
    at = _app("metrics").run()
    assert not at.exception
    assert any(INTERNAL_LABEL in m.value for m in at.markdown)
    assert any("Not validated at a site" in w.value for w in at.warning)
    (version,) = [d for d in (home / "models").iterdir() if d.is_dir() and not d.name.startswith(".")]
    validation.validate(version, clinic, "clinic", n_boot=100)
    at = _app("metrics").run()
    assert not at.exception
    shown = " ".join(m.value for m in at.markdown)
    assert "site clinic: 40 labelled films" in shown and INTERNAL_LABEL not in shown
    assert not any("Not validated at a site" in w.value for w in at.warning)


def test_site_adapt_runs_as_a_job_and_registers_a_candidate_with_its_threshold_calibration_and_card(
        real_home, monkeypatch, cli):
    # One adaptation (the job's `site adapt` command line) for the job's progress and the candidate it makes:
    # each adaptation costs ~15 s.
    from pneumo_core.jobs.queue import JobQueue
    from pneumo_core.learn.model import PneumoModel
    from pneumo_core.records import registry
    from pneumo_core.settings import load_settings
    home, films, base = real_home
    monkeypatch.setenv("PNEUMO_HOME", str(home))
    queue = JobQueue(load_settings())
    job_id = queue.submit_site_adapt(films, "hospital", base, actor=Actor("tester", "ml_lead"))
    # The bar moves within 10 s of the job's start, through the adaptation's real stages, never backwards.
    started, seen = None, []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job = queue.get(job_id)
        if job["state"] == "running" and started is None:
            started = time.monotonic()
        if started is not None:
            seen.append((time.monotonic() - started, job["percent"] or 0.0, job["stage"]))
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert job["state"] == "succeeded", job["error"]
    changes = [seen[i] for i in range(len(seen)) if i == 0 or seen[i][2] != seen[i - 1][2]]
    print("site adapt job stages (s since running, %, stage):", [(round(t, 1), p, s) for t, p, s in changes])
    percents = [percent for _, percent, _ in seen]
    # progress shows while the job still has work to do, not only at its end (no wall-clock bound: it flaked
    # at 13 s under load)
    assert any(0 < percent < percents[-1] for percent in percents), changes
    assert percents == sorted(percents) and percents[-1] >= 67
    # every stage is in the job's log (a stage shorter than a poll may never be seen in the row)
    logged = {parse_line(line).stage.split(" (")[0] for line in (home / "jobs" / f"{job_id}.log").read_text()
              .splitlines() if parse_line(line)}
    assert {"scoring site films", "training site fold", "saving the adapted version"} <= logged, logged
    log = (home / "jobs" / f"{job_id}.log").read_text()
    assert "site adapt --data" in log
    version = job["model_id"]
    assert log.strip().splitlines()[-1] == version     # the command printed the new version's id last
    assert version in registry.candidates(home / "models") and registry.active_version(home / "models") == base
    folder = home / "models" / version
    meta = json.loads((folder / "metadata.json").read_text())
    card = meta["site"]
    assert card["name"] == "hospital" and card["n"] == len(list(films.rglob("*.jpeg")))
    assert card["fingerprint"] == site.load_site(films).fingerprint
    cv = card["cross_validated"]
    assert cv["n"] == card["n"] and cv["folds"] >= 2 and set(cv["ci"]) >= {"roc_auc", "sensitivity", "specificity"}
    assert meta["adapted_from"] == base and "site hospital" in meta["calibration"]["fitted_on"]
    assert meta["threshold_rule"].startswith("highest threshold keeping out-of-fold site sensitivity")
    # The saved model carries the site head and calibration: it reproduces the stored predictions.
    model = PneumoModel.load(folder)
    assert model.threshold == pytest.approx(meta["threshold"])
    assert meta["tta"] == {"views": adaptation.TTA_VIEWS, "seed": adaptation.TTA_SEED}      # it serves what CV measured
    assert (model.tta_views, model.tta_seed) == (adaptation.TTA_VIEWS, adaptation.TTA_SEED)
    stored = pd.read_csv(folder / "predictions.csv")
    test = stored[stored["split"] == "test"].head(8)
    assert np.allclose(model.predict_files(test["path"]), test["probability"], atol=2e-3)
    calibration = model.keras.get_layer("classifier").get_layer("calibration").get_weights()
    assert calibration[0].item() == pytest.approx(meta["calibration"]["a"], rel=1e-5)
    assert len(stored[stored["split"] == "site_cv"]) == card["n"]
    record = track_record(folder)
    assert record.source == "site" and "cross-validation" in record.label
    tiers = tiers_for(folder)   # the candidate's own site report carries tiers set on out-of-fold probabilities
    assert tiers.source == "out-of-fold site predictions" and tiers.n_pneumonia + tiers.n_normal == card["n"]
    # Its own training films cannot validate it.
    again = cli("site", "validate", "--data", films, "--model", version, home=home)
    assert again.returncode == 2 and "adapted on these very films" in again.stderr


def test_after_promotion_the_site_page_compares_the_active_version_with_the_one_it_replaced(real_home, monkeypatch,
                                                                                            cli):
    from pneumo_core.records import registry
    home, films, base = real_home
    adapted = [v for v in registry.candidates(home / "models")
               if json.loads((home / "models" / v / "metadata.json").read_text()).get("site")]
    if not adapted:   # this module's adapt test makes one; alone, make it here
        result = cli("site", "adapt", "--data", films, "--name", "hospital", home=home)
        assert result.returncode == 0, result.stderr[-2000:]
        adapted = [result.stdout.strip().splitlines()[-1]]
    registry.promote(home / "models", adapted[0], actor=Actor("lead", "ml_lead"))
    monkeypatch.setenv("PNEUMO_HOME", str(home))
    monkeypatch.setenv("PNEUMO_DATA", str(films.parent / "train"))
    at = _app("site").run()
    widget(at, "selectbox", "Folder").set_value(films)
    at.run()
    widget(at, "selectbox", "Adapted version").set_value(adapted[0])
    at.run()
    assert not at.exception
    shown = " ".join(m.value for m in at.markdown)
    assert "**Replaced**" in shown and "**Active**" not in shown                # not compared with itself
    assert any(f"it replaced {base}" in s.value for s in at.success)
    assert "counting 10 times as much" in shown and "Platt scaling on validation" not in shown
