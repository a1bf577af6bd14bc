"""Dashboard pages under Streamlit's AppTest, with a small model trained on synthetic films."""
import io
import json
import shutil

import numpy as np
import pytest
from conftest import REPO, synthetic_film
from PIL import Image
from streamlit.testing.v1 import AppTest

from pneumo_core import registry
from pneumo_core.jobs import JobQueue
from pneumo_core.settings import load_settings

pytestmark = pytest.mark.slow
PAGES = ["diagnose", "heatmaps", "metrics", "models"]


def page(name: str) -> AppTest:
    return AppTest.from_file(str(REPO / "views" / f"{name}.py"), default_timeout=60)


def png(label: int, seed: int, shape=(90, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_film(label, np.random.default_rng(seed), shape)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def home(trained_home, tmp_path, monkeypatch):
    """A copy of the trained home with a second, older version beside the first."""
    copy = tmp_path / "home"
    shutil.copytree(trained_home, copy, ignore=shutil.ignore_patterns("audit.sqlite*"))  # a fresh trail
    (first,) = [d for d in (copy / "models").iterdir() if d.is_dir() and not d.name.startswith(".")]
    older = copy / "models" / "20000101-000000-mobilenet_v2"
    shutil.copytree(first, older)
    meta = json.loads((older / "metadata.json").read_text())
    (older / "metadata.json").write_text(json.dumps({**meta, "created": "2000-01-01T00:00:00+00:00",
                                                     "threshold": 0.2}))
    monkeypatch.setenv("PNEUMO_HOME", str(copy))
    return copy


@pytest.mark.parametrize("name", PAGES)
def test_first_run_state_shows_how_to_train(name, tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "empty"))
    at = page(name).run()
    assert not at.exception
    assert any("No model has been trained yet" in i.value for i in at.info)
    assert any("pneumo_core train" in c.value for c in at.code)


def test_upload_yields_a_call_a_heatmap_and_reports(home):
    at = page("diagnose").run()
    at.file_uploader[0].set_value([("film.png", png(1, 0), "image/png")])
    at.run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Call"] in ("NORMAL", "PNEUMONIA")
    assert 0.0 <= float(metrics["Probability of pneumonia"]) <= 1.0
    assert len(at.get("image")) == 2  # the film and its heatmap overlay
    assert [b.label for b in at.get("download_button")] == ["Download report (PNG)", "Download report (PDF)"]


def test_many_files_make_a_worklist_and_bad_files_get_their_own_message(home):
    from helpers import CASES
    bad = {"broken.png": "damaged", "empty.jpg": "the file is empty", "scan.pdf": "PDF document",
           "holiday.jpg": "colour photo", "cine.dcm": "multi-frame DICOM", "side.dcm": "lateral view",
           "bomb.png": "megapixels", "tiny.png": "at least 64x64"}
    data = {"broken.png": b"\x89PNG\r\n\x1a\n garbage", "empty.jpg": b"", "scan.pdf": CASES["PDF"][0],
            "holiday.jpg": CASES["colour photo JPEG"][0], "cine.dcm": CASES["DICOM multi-frame"][0],
            "side.dcm": CASES["DICOM lateral view"][0], "bomb.png": CASES["20000x20000 header bomb"][0],
            "tiny.png": CASES["1x1 px PNG"][0]}
    good = [("a.png", png(0, 1), "image/png"), ("b.png", png(1, 2), "image/png"),
            ("c.dcm", CASES["DICOM MONOCHROME1 (inverted)"][0], "application/dicom")]
    at = page("diagnose").run()
    at.file_uploader[0].set_value(good[:2] + [(n, d, "application/octet-stream") for n, d in data.items()]
                                  + good[2:])
    at.run()
    assert not at.exception
    for name, message in bad.items():  # one message per bad file, naming it
        assert sum(e.value.startswith(name + ": ") and message in e.value for e in at.error) == 1, name
    assert any("8 of 11 files could not be scored" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table["file"]) and set(table["file"]) == {"a.png", "b.png", "c.dcm"}
    assert table["probability"].is_monotonic_decreasing  # highest probability first
    at.selectbox[1].set_value("c.dcm").run()
    assert any("DICOM · DX · PA · 2024-03-01" in c.value for c in at.caption)
    assert not any("Doe" in c.value for c in at.caption)


def test_a_film_unlike_the_training_data_keeps_its_call_and_gets_the_warning(home):
    from pneumo_core.ood import OOD_FILE, WARNING, OODDetector
    for version in (home / "models").iterdir():
        if (version / OOD_FILE).is_file():  # move the flag line so that every film is flagged
            detector = OODDetector.load(version)
            detector.threshold = 1e-6
            detector.save(version / OOD_FILE)
    at = page("diagnose").run()
    at.file_uploader[0].set_value([("a.png", png(0, 1), "image/png"), ("b.png", png(1, 2), "image/png")]).run()
    assert not at.exception
    assert {m.label for m in at.metric} >= {"Call", "Probability of pneumonia"}  # the call is still there
    assert any(WARNING in w.value for w in at.warning)
    assert set(at.dataframe[0].value["caution"]) == {"unlike the training films"}


def test_audit_page_lists_each_diagnosis_once_and_exports_csv(home):
    at = page("audit").run()
    assert not at.exception and any("No diagnosis has been recorded yet" in i.value for i in at.info)
    diagnose = page("diagnose").run()
    diagnose.file_uploader[0].set_value([("a.png", png(0, 1), "image/png"), ("b.png", png(1, 2), "image/png")])
    diagnose.run()
    diagnose.slider[0].set_value(0.7).run()  # a rerun shows the same calls: no new rows
    at = page("audit").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["source"]) == {"dashboard"} and set(table["cam_method"]) == {"gradcam"}
    assert {"sha256", "model", "probability", "threshold", "call", "ood_score", "ood_flag"} <= set(table.columns)
    assert [b.label for b in at.get("download_button")] == ["Download CSV"]
    at.selectbox[1].set_value("PNEUMONIA").run()
    assert len(at.dataframe[0].value) == (table["call"] == "PNEUMONIA").sum()


def _confusion(at) -> list:
    """[[tn, fp], [fn, tp]] as drawn: read from the cell labels of the confusion-matrix chart."""
    spec = json.loads(next(c for c in at.get("plotly_chart") if "Confusion" in c.proto.spec).proto.spec)
    return [[int(cell.split("<br>")[0]) for cell in row] for row in spec["data"][0]["text"]]


def test_threshold_slider_changes_the_confusion_matrix(home):
    at = page("metrics").run()
    assert not at.exception
    stored = _confusion(at)
    assert sum(map(sum, stored)) == 40  # the 40 films of the synthetic test/ folder
    at.slider[0].set_value(0.0).run()
    assert _confusion(at) == [[0, 20], [0, 20]]  # threshold 0: every film is called PNEUMONIA
    at.slider[0].set_value(1.0).run()
    everything_normal = _confusion(at)
    assert everything_normal[0][1] == 0 and everything_normal[1][1] <= 1  # only p == 1.0 stays PNEUMONIA
    at.button[0].click().run()  # reset to the stored threshold
    assert _confusion(at) == stored


def test_version_comparison_draws_both_roc_curves(home):
    at = page("models").run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 2
    roc = json.loads(next(c for c in at.get("plotly_chart") if "ROC" in c.proto.spec).proto.spec)
    names = [trace["name"] for trace in roc["data"]]
    assert sum("AUC" in n for n in names) == 2 and any("@ 0.200" in n for n in names)


def test_heatmaps_compare_the_three_methods(home):
    at = page("heatmaps").run()
    assert not at.exception
    assert len(at.get("image")) == 3
    assert sum("p = " in m.value for m in at.markdown) == 3


def test_rollback_is_one_click_and_recorded(home):
    at = page("models").run()
    (button,) = [b for b in at.button if b.label in ("Roll back", "Make active")]
    assert button.label == "Roll back"        # the other version is older than the active one
    button.click().run()
    assert not at.exception
    assert registry.active_version(home / "models") == "20000101-000000-mobilenet_v2"
    last = registry.promotions(home / "models")[-1]
    assert (last["action"], last["to"], last["who"]) == ("rollback", "20000101-000000-mobilenet_v2", "dashboard user")


def test_retrain_before_any_model_offers_default_options(tmp_path, monkeypatch, synthetic_data):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("PNEUMO_DATA", str(synthetic_data))
    at = page("retrain").run()
    assert not at.exception
    assert "default options (no model yet)" in at.caption[0].value and str(synthetic_data) in at.caption[0].value
    assert any(b.label == "Retrain with current settings" for b in at.button)


def test_retrain_page_submits_shows_progress_and_promotes(home, synthetic_data, monkeypatch):
    monkeypatch.setenv("PNEUMO_DATA", str(synthetic_data))
    at = page("retrain")
    at.session_state["user_name"] = "lead engineer"
    at.run()
    active = registry.active_version(home / "models")
    assert f"options of the active model {active}" in at.caption[0].value
    assert at.number_input[0].value == 2      # the active model's 2 tuner trials, under Advanced
    next(b for b in at.button if b.label == "Retrain with current settings").click().run()
    assert not at.exception
    assert any("Job 1 submitted" in m.value for m in at.success)
    progress = at.get("progress")
    assert progress and "Job 1" in progress[0].proto.text

    job = JobQueue(load_settings()).wait(1, timeout=300)
    assert job["state"] == "succeeded", job["error"]
    at.run()
    assert not at.exception
    metrics = [m.label for m in at.metric]
    assert metrics == ["AUC", "Sensitivity", "Specificity"] * 2     # active | candidate side by side
    roc = json.loads(next(c for c in at.get("plotly_chart") if "ROC" in c.proto.spec).proto.spec)
    assert sum("AUC" in trace["name"] for trace in roc["data"]) == 2
    assert registry.active_version(home / "models") == active        # a finished job does not take over
    next(b for b in at.button if b.label.startswith("Promote")).click().run()
    assert registry.active_version(home / "models") == job["model_id"]
    last = registry.promotions(home / "models")[-1]
    assert (last["from"], last["to"], last["who"]) == (active, job["model_id"], "lead engineer")
    history = at.dataframe[-1].value
    assert list(history["job"]) == [1] and list(history["state"]) == ["succeeded"]


def test_retrain_log_follows_the_newest_job(tmp_path, monkeypatch, synthetic_data):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PNEUMO_DATA", str(synthetic_data))
    monkeypatch.setattr(JobQueue, "start_next", lambda self: None)   # jobs stay queued: no training here
    queue = JobQueue(load_settings())
    queue.submit({"data_dir": str(synthetic_data)})
    at = page("retrain").run()
    log_of = lambda: next(s for s in at.selectbox if s.label == "Log of job").value  # noqa: E731
    assert log_of() == 1
    queue.submit({"data_dir": str(synthetic_data)})
    at.run()
    assert not at.exception
    assert log_of() == 2        # the new job, not the earlier choice kept by its widget key
