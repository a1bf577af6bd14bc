"""Dashboard pages under Streamlit's AppTest, with a small model trained on synthetic films."""
import hashlib
import io
import json
import shutil

import numpy as np
import pytest
from conftest import REPO, synthetic_film
from helpers import chest_film, dicom_film, png_bytes, shown, widget
from PIL import Image
from streamlit.testing.v1 import AppTest

import ui
from pneumo_core import Diagnoser, read_film, resolve
from pneumo_core.jobs.queue import JobQueue
from pneumo_core.learn import store
from pneumo_core.records import registry
from pneumo_core.records.access import Actor
from pneumo_core.serve.diagnosis import format_probability
from pneumo_core.settings import load_settings

PAGES = ["diagnose", "heatmaps", "metrics", "models"]
# Pages run on their own keep Keras's state across their runs, as under app.py (one trace of the model per test).
pytestmark = pytest.mark.usefixtures("kept_keras_session")


def uploader(at):
    """The Diagnose page's file uploader."""
    return widget(at, "file_uploader", "Chest X-rays")


def page(name: str, actor: Actor = Actor("tester", "admin")) -> AppTest:
    """A page run on its own, signed in as `actor` (app.py's sign-in sets the same key)."""
    at = AppTest.from_file(str(REPO / "views" / f"{name}.py"), default_timeout=120)
    at.session_state["actor"] = actor
    return at


def png(label: int, seed: int, shape=(90, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_film(label, np.random.default_rng(seed), shape)).save(buffer, format="PNG")
    return buffer.getvalue()


def two_version_home(trained_home, copy):
    """`copy`: the trained home with a fresh audit trail and a second, older version beside the first."""
    shutil.copytree(trained_home, copy, ignore=shutil.ignore_patterns("audit.sqlite*"))  # a fresh trail
    (first,) = [d for d in (copy / "models").iterdir() if d.is_dir() and not d.name.startswith(".")]
    older = copy / "models" / "20000101-000000-mobilenet_v2"
    shutil.copytree(first, older)
    meta = json.loads((older / "metadata.json").read_text())
    (older / "metadata.json").write_text(json.dumps({**meta, "created": "2000-01-01T00:00:00+00:00",
                                                     "threshold": 0.2}))
    return copy


@pytest.fixture
def home(trained_home, tmp_path, monkeypatch):
    """A two-version home of this test's own, for tests that change the models or need an empty audit trail."""
    monkeypatch.setenv("PNEUMO_HOME", str(two_version_home(trained_home, tmp_path / "home")))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def module_home(trained_home, tmp_path_factory):
    return two_version_home(trained_home, tmp_path_factory.mktemp("app") / "home")


@pytest.fixture
def shared_home(module_home, monkeypatch):
    """The module's two-version home, for tests that leave its models as they found them: its active model is
    loaded and traced once (the dashboard's model cache is keyed by the version's folder), not per test."""
    monkeypatch.setenv("PNEUMO_HOME", str(module_home))
    return module_home


@pytest.mark.parametrize("name", PAGES)
def test_first_run_state_shows_how_to_train(name, tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "empty"))
    at = page(name).run()
    assert not at.exception
    assert any("No model has been trained yet" in i.value for i in at.info)
    # one wording, with this server's data folder filled in (not a DATA_DIR placeholder)
    assert [c.value for c in at.code if "pneumo_core train" in c.value] == [load_settings().train_command]


def shown_text(at) -> str:
    """Every text the page shows (markdown, captions, metrics, alerts, table cells but thumbnails)."""
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "subheader")
             for e in at.get(kind)]
    parts += [f"{m.label} {m.value} {m.proto.delta}" for m in at.metric]
    parts += [frame.value.drop(columns=["film"], errors="ignore").to_csv() for frame in at.dataframe]
    return "\n".join(map(str, parts))


def film_keys(at) -> dict:
    """{label: film key} of the 'Open film' box (a film's key is its content hash, shown at the label's end)."""
    box = next(s for s in at.selectbox if s.label == "Open film")
    return {label: label.rsplit("SHA-256 ", 1)[1] for label in box.options}


def open_film(at, name_part: str):
    """Open the film whose worklist label contains `name_part` (the 'Open film' box)."""
    key = next(k for label, k in film_keys(at).items() if name_part in label)
    next(s for s in at.selectbox if s.label == "Open film").set_value(key).run()


def test_upload_yields_a_call_its_strength_a_heatmap_and_a_report(shared_home):
    at = page("diagnose").run()
    uploader(at).set_value([("film.png", png(1, 0), "image/png")])
    at.run()
    assert not at.exception
    call = next(m.value for m in at.markdown if m.value.startswith("#### Call:"))
    # The page shows the call and probability the library gives the same file with the active model (the model
    # the page loaded: a second load of it would cost a load and a trace, ~4.5 s of CPU, and check nothing more).
    film = read_film(png(1, 0), "film.png")
    active = ui.diagnoser_for(str(resolve(shared_home / "models"))).model
    assert active.path == resolve(shared_home / "models")
    expected = Diagnoser(active).diagnose(film.gray, "film.png", "gradcam", png(1, 0), film.info)
    other = ({"PNEUMONIA", "NORMAL"} - {expected.label}).pop()
    assert expected.label in call and other not in call
    metrics = {m.label: m for m in at.metric}
    probability = metrics["Probability of pneumonia"]
    assert probability.value == format_probability(expected.probability)
    assert "the threshold" in probability.proto.delta          # 'well above the threshold (0.50)' and the like
    above = "above" in probability.proto.delta
    assert ("PNEUMONIA" in call) == above                     # the badge agrees with the call
    assert metrics["Certainty"].value in ("clear", "probable", "borderline", "not assessable")
    assert "1.000" not in shown_text(at)
    assert len(at.get("image")) >= 1
    assert [b.label for b in at.get("download_button")] == ["Download report (PDF)"]
    assert any("not validated at this site" in c.value for c in at.caption)   # figures name their data


def test_many_files_make_a_triaged_worklist_and_bad_files_get_their_own_message(shared_home):
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
    uploader(at).set_value(good[:2] + [(n, d, "application/octet-stream") for n, d in data.items()]
                                  + good[2:])
    at.run()
    assert not at.exception
    for name, message in bad.items():  # one message per bad file, naming it
        assert sum(shown(e.value).startswith(name + ": ") and message in shown(e.value) for e in at.error) == 1, name
    assert any("8 of 11 files could not be scored" in shown(m.value) for m in at.markdown)
    table = at.dataframe[0].value
    assert {f.split(": ", 1)[1] for f in table["file"]} == {"a.png", "b.png", "c.dcm"}
    ranks = [["check", "urgent", "routine"].index(p) for p in table["priority"]]
    assert ranks == sorted(ranks)                            # check, then urgent, then routine
    open_film(at, "c.dcm")
    assert any("DICOM · DX · PA · 2024-03-01" in shown(c.value) for c in at.caption)
    assert "Doe" not in shown_text(at)


def test_two_different_films_with_the_same_name_are_both_reachable_and_a_new_upload_opens_itself(shared_home):
    first, second, third = png(0, 11), png(1, 12), png(1, 13)
    at = page("diagnose").run()
    uploader(at).set_value([("image.jpeg", first, "image/png"), ("image.jpeg", second, "image/png")]).run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 2
    keys = list(film_keys(at).values())
    assert len(keys) == 2
    seen = set()
    for key in keys:
        next(s for s in at.selectbox if s.label == "Open film").set_value(key).run()
        identity = next(shown(c.value) for c in at.caption if "SHA-256" in c.value)
        seen.add(identity.split("SHA-256 ")[1][:16])
    assert seen == {hashlib.sha256(f).hexdigest()[:16] for f in (first, second)}   # each opens its own film
    uploader(at).set_value([("image.jpeg", first, "image/png"), ("image.jpeg", second, "image/png"),
                                   ("image.jpeg", third, "image/png")]).run()
    identity = next(shown(c.value) for c in at.caption if "SHA-256" in c.value)
    assert hashlib.sha256(third).hexdigest()[:16] in identity                      # the new film is open


def test_a_dicom_film_shows_its_study_identifiers_and_png_gets_a_typed_reference(shared_home):
    at = page("diagnose").run()
    uploader(at).set_value([("1.dcm", dicom_film(chest_film((200, 160))), "application/dicom")]).run()
    assert not at.exception
    identity = next(shown(c.value) for c in at.caption if "SHA-256" in c.value)
    assert "Accession number: ACC-2024-0042" in identity and "Study Instance UID: 1.2.826.0.1.3680043.2.1125.1" \
        in identity
    assert not [t for t in at.text_input if t.label.startswith("Study reference")]   # DICOM has its own
    assert "Doe" not in shown_text(at)
    uploader(at).set_value([("x.png", png_bytes(chest_film((200, 160))), "image/png")]).run()
    assert [t for t in at.text_input if t.label.startswith("Study reference")]


def test_a_film_unlike_the_training_data_keeps_its_call_but_is_not_assessable_and_pinned_to_the_top(shared_home,
                                                                                                   monkeypatch):
    from pneumo_core.imaging.ood import WARNING
    # Move the flag line of the loaded active model's detector so that every film is flagged (for this test
    # only: a copy of the home would cost a model load and trace); films no other test uploads, so that no
    # diagnosis cached before the move is shown.
    detector = ui.diagnoser_for(str(resolve(shared_home / "models"))).ood
    monkeypatch.setattr(detector, "threshold", 1e-6)
    at = page("diagnose").run()
    uploader(at).set_value([("a.png", png(0, 41), "image/png"), ("b.png", png(1, 42), "image/png")]).run()
    assert not at.exception
    assert any(m.value.startswith("#### Call:") for m in at.markdown)     # the call is still there
    assert {m.label: m.value for m in at.metric}["Certainty"] == "not assessable"
    assert any(WARNING in shown(w.value) for w in at.warning)
    assert any(w.value.startswith("Not assessable: ") for w in at.warning)
    table = at.dataframe[0].value
    assert set(table["priority"]) == {"check"} and set(table["certainty"]) == {"not assessable"}
    assert any("*Not assessable*: the film is unlike the training films" in c.value for c in at.caption)


@pytest.fixture
def site_report(shared_home):
    """A site report in the shared home's active version, removed after the test (the other tests show the
    figures of a version not validated at any site)."""
    reports = registry.resolve(shared_home / "models", None) / "site_reports"
    reports.mkdir()
    (reports / "north.json").write_text(json.dumps({
        "site": "north", "n": 198, "created": "2026-11-26T06:00:00+00:00", "prevalence": 0.38, "sensitivity": 0.97,
        "specificity": 0.63, "roc_auc": 0.93, "precision": 0.62, "npv": 0.97,
        "ci": {"sensitivity": [0.93, 0.99], "specificity": [0.55, 0.71], "ppv": [0.54, 0.70], "npv": [0.93, 0.99]}}))
    yield reports / "north.json"
    shutil.rmtree(reports)


def test_a_site_report_puts_its_figures_and_ppv_npv_at_the_sites_prevalence_under_the_call(site_report):
    at = page("diagnose").run()
    uploader(at).set_value([("a.png", png(1, 3), "image/png")]).run()
    assert not at.exception
    text = shown_text(at)
    assert "Sensitivity 0.97 [0.93–0.99], specificity 0.63 [0.55–0.71]" in text and "site north" in text
    assert "prevalence of 38 %: PPV 0.62 [0.54–0.70], NPV 0.97 [0.93–0.99]" in text
    assert "not validated at this site" not in text


def test_audit_page_before_any_diagnosis_says_where_rows_come_from(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    at = page("audit").run()
    assert not at.exception and any("No diagnosis has been recorded yet" in i.value for i in at.info)


def test_audit_page_lists_each_diagnosis_once_and_exports_csv(shared_home):
    # The shared home's trail holds the other tests' diagnoses too: these two films are this test's alone.
    films = {"a.png": png(0, 31), "b.png": png(1, 32)}
    diagnose = page("diagnose").run()
    uploader(diagnose).set_value([(name, data, "image/png") for name, data in films.items()])
    diagnose.run()
    widget(diagnose, "slider", "Heatmap opacity").set_value(0.7).run()  # a rerun shows the same calls: no new rows
    at = page("audit").run()
    assert not at.exception
    table = at.dataframe[0].value
    mine = table[table["sha256"].isin({hashlib.sha256(data).hexdigest() for data in films.values()})]
    assert len(mine) == 2 and set(mine["source"]) == {"dashboard"} and set(mine["cam_method"]) == {"gradcam"}
    assert {"sha256", "model", "probability", "threshold", "call", "ood_score", "ood_flag"} <= set(table.columns)
    assert [b.label for b in at.get("download_button")] == ["Download CSV"]
    widget(at, "selectbox", "Call").set_value("PNEUMONIA").run()
    assert len(at.dataframe[0].value) == (table["call"] == "PNEUMONIA").sum()


def _confusion(at) -> list:
    """[[tn, fp], [fn, tp]] as drawn: read from the cell labels of the confusion-matrix chart."""
    spec = json.loads(next(c for c in at.get("plotly_chart") if "Confusion" in c.proto.spec).proto.spec)
    return [[int(cell.split("<br>")[0]) for cell in row] for row in spec["data"][0]["text"]]


def test_threshold_slider_changes_the_confusion_matrix(shared_home):
    at = page("metrics").run()
    assert not at.exception
    stored = _confusion(at)
    assert sum(map(sum, stored)) == 40  # the 40 films of the synthetic test/ folder
    widget(at, "slider", "Threshold").set_value(0.0).run()
    assert _confusion(at) == [[0, 20], [0, 20]]  # threshold 0: every film is called PNEUMONIA
    widget(at, "slider", "Threshold").set_value(1.0).run()
    everything_normal = _confusion(at)
    assert everything_normal[0][1] == 0 and everything_normal[1][1] <= 1  # only p == 1.0 stays PNEUMONIA
    widget(at, "button", "Reset to the stored threshold").click().run()  # reset to the stored threshold
    assert _confusion(at) == stored


def test_version_comparison_draws_both_roc_curves(shared_home):
    at = page("models").run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 2
    roc = json.loads(next(c for c in at.get("plotly_chart") if "ROC" in c.proto.spec).proto.spec)
    names = [trace["name"] for trace in roc["data"]]
    assert sum("AUC" in n for n in names) == 2 and any("@ 0.200" in n for n in names)


def test_heatmaps_compare_the_three_methods_on_several_films_with_their_faithfulness(shared_home):
    at = page("heatmaps").run()
    assert not at.exception
    panels = [m.value for m in at.markdown if "p = " in m.value or "p < " in m.value or "p > " in m.value]
    assert [p.split("**")[1] for p in panels] == ["Grad-CAM", "Grad-CAM++", "Score-CAM"]
    assert all("truth: " in p and ", call: " in p for p in panels)
    assert sum(c.value.startswith("Deletion area") for c in at.caption) == 3
    assert len(at.get("image")) == 4                         # the colour bar and three panels
    paths = list(store.test_predictions(registry.resolve(shared_home / "models", None))["path"])
    widget(at, "multiselect", "Test-split films").select(paths[1]).run()
    assert not at.exception
    assert len(at.get("image")) == 7                         # two films x three methods, and the colour bar


@pytest.fixture
def one_version_home(shared_home, tmp_path):
    """The shared home with its older version moved out for the test (its active model stays loaded)."""
    older = shared_home / "models" / "20000101-000000-mobilenet_v2"
    shutil.move(older, tmp_path / older.name)
    yield shared_home
    shutil.move(tmp_path / older.name, older)


def test_heatmaps_with_one_model_version_say_there_is_nothing_to_compare(one_version_home):
    assert [v["id"] for v in registry.list_versions(one_version_home / "models")] == [
        registry.active_version(one_version_home / "models")]
    at = page("heatmaps").run()
    widget(at, "radio", "Compare").set_value("Two model versions").run()
    assert not at.exception
    assert any("Only one model version exists" in i.value for i in at.info)


def test_rollback_is_one_click_and_recorded(home):
    at = page("models").run()
    (button,) = [b for b in at.button if b.label in ("Roll back", "Make active")]
    assert button.label == "Roll back"        # the other version is older than the active one
    button.click().run()
    assert not at.exception
    assert registry.active_version(home / "models") == "20000101-000000-mobilenet_v2"
    last = registry.promotions(home / "models")[-1]
    assert (last["action"], last["to"], last["who"]) == ("rollback", "20000101-000000-mobilenet_v2", "tester")


def test_retrain_before_any_model_offers_default_options(tmp_path, monkeypatch, synthetic_data):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("PNEUMO_DATA", str(synthetic_data))
    at = page("retrain").run()
    assert not at.exception
    assert any("default options (no model yet)" in c.value and str(synthetic_data) in c.value for c in at.caption)
    assert any(b.label == "Retrain with current settings" for b in at.button)


def test_retrain_page_submits_shows_progress_and_promotes(home, synthetic_data, monkeypatch):
    monkeypatch.setenv("PNEUMO_DATA", str(synthetic_data))
    at = page("retrain", Actor("lead engineer", "ml_lead"))
    at.run()
    active = registry.active_version(home / "models")
    assert any(f"options of the active model {active}" in c.value for c in at.caption)
    assert widget(at, "number_input", "Tuner trials").value == 2      # the active model's 2 trials, under Advanced
    # The smallest job the form makes (1 trial of 1 epoch; the copied home's feature cache has the films).
    widget(at, "number_input", "Tuner trials").set_value(1)
    widget(at, "number_input", "Epochs per head").set_value(1)
    next(b for b in at.button if b.label == "Retrain with current settings").click().run()
    assert not at.exception
    assert any("Job 1 submitted" in m.value for m in at.success)
    progress = at.get("progress")
    assert progress and "Job 1" in progress[0].proto.text

    job = JobQueue(load_settings()).wait(1, timeout=300)
    assert job["state"] == "succeeded", job["error"]
    assert (job["params"]["trials"], job["params"]["epochs"]) == (1, 1)     # the form's values, not the model's
    assert job["params"]["tta_views"] == 1                                  # ... and the model's test-time views
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


def test_a_cancelled_job_is_reported_as_information_not_as_an_error(tmp_path, monkeypatch, synthetic_data):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PNEUMO_DATA", str(synthetic_data))
    monkeypatch.setattr(JobQueue, "start_next", lambda self: None)   # the job stays queued: no training here
    queue = JobQueue(load_settings())
    lead = Actor("lead engineer", "ml_lead")
    queue.cancel(queue.submit({"data_dir": str(synthetic_data)}, actor=lead), actor=lead)
    at = page("retrain").run()
    assert not at.exception
    assert any("cancelled by lead engineer" in i.value for i in at.info)
    assert not any("cancelled" in e.value for e in at.error)


def test_retrain_log_follows_the_newest_job(tmp_path, monkeypatch, synthetic_data):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PNEUMO_DATA", str(synthetic_data))
    monkeypatch.setattr(JobQueue, "start_next", lambda self: None)   # jobs stay queued: no training here
    queue = JobQueue(load_settings())
    queue.submit({"data_dir": str(synthetic_data)}, actor=Actor("lead engineer", "ml_lead"))
    at = page("retrain").run()
    log_of = lambda: next(s for s in at.selectbox if s.label == "Log of job").value  # noqa: E731
    assert log_of() == 1
    queue.submit({"data_dir": str(synthetic_data)}, actor=Actor("lead engineer", "ml_lead"))
    at.run()
    assert not at.exception
    assert log_of() == 2        # the new job, not the earlier choice kept by its widget key


def test_the_dashboard_keeps_keras_state_across_runs(shared_home, monkeypatch):
    # Streamlit ends every run with keras.backend.clear_session(): a full garbage collection and a fresh
    # Keras state (40 % of the dashboard's busy time under bench/load.py). app.py keeps the state.
    import keras

    # Keras's own clear (keras.utils holds it too), not the no-op this module's other tests run with.
    monkeypatch.setattr(keras.backend, "clear_session", keras.utils.clear_session)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["actor"] = Actor("tester", "admin")
    at.run()                                  # Diagnose, the first page: loads the model (imports Keras)
    assert not at.exception and "Diagnose" in [t.value for t in at.title]
    # Keras's name counters live in its global state: a cleared session would start them again at 1.
    before = keras.backend.get_uid("pneumo_probe")
    at.run()
    assert not at.exception
    assert keras.backend.get_uid("pneumo_probe") == before + 1
