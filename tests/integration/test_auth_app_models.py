"""Roles and patient names in the dashboard (AppTest) over the session's trained model."""
import io

import numpy as np
import pytest
from conftest import REPO, synthetic_film
from helpers import poisoned_dicom, shown, widget
from PIL import Image
from streamlit.testing.v1 import AppTest

from pneumo_core.records import registry
from pneumo_core.records.access import Actor


def uploader(at):
    """The Diagnose page's file uploader."""
    return widget(at, "file_uploader", "Chest X-rays")


def app() -> AppTest:
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=120)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# With a model --------------------------------------------------------------------------------------

def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_film(1, np.random.default_rng(seed), (90, 120))).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def model_home(trained_home, tmp_path, monkeypatch):
    import json
    import shutil
    copy = tmp_path / "model_home"
    shutil.copytree(trained_home, copy, ignore=shutil.ignore_patterns("audit.sqlite*"))
    (first,) = [d for d in (copy / "models").iterdir() if d.is_dir() and not d.name.startswith(".")]
    older = copy / "models" / "20000101-000000-mobilenet_v2"
    shutil.copytree(first, older)
    meta = json.loads((older / "metadata.json").read_text())
    (older / "metadata.json").write_text(json.dumps({**meta, "created": "2000-01-01T00:00:00+00:00"}))
    monkeypatch.setenv("PNEUMO_HOME", str(copy))
    return copy


def test_a_clinician_sees_the_models_read_only_and_an_ml_lead_rolls_back_in_their_name(model_home):
    at = AppTest.from_file(str(REPO / "views" / "models.py"), default_timeout=120)
    at.session_state["actor"] = Actor("ana", "clinician")
    at.run()
    assert not at.exception and at.dataframe                     # the registry is shown…
    assert not [b for b in at.button if b.label in ("Roll back", "Make active")]   # …with no control
    at.session_state["actor"] = Actor("sam", "ml_lead")
    at.run()
    (button,) = [b for b in at.button if b.label in ("Roll back", "Make active")]
    button.click().run()
    assert not at.exception
    last = registry.promotions(model_home / "models")[-1]
    assert (last["to"], last["who"]) == ("20000101-000000-mobilenet_v2", "sam")


def test_patient_names_stay_on_screen_only(model_home, caplog, capfd):
    caplog.set_level("DEBUG")
    at = AppTest.from_file(str(REPO / "views" / "diagnose.py"), default_timeout=120)
    at.session_state["actor"] = Actor("ana", "clinician")
    at.run()
    uploader(at).set_value([("DOE_JANE_MRN123.png", png(0), "image/png"),
                                   ("scan.dcm", poisoned_dicom("WindowCenter", "DS"), "application/dicom")])
    at.run()
    assert not at.exception
    assert any(shown(s.value).endswith(": DOE_JANE_MRN123.png") for s in at.subheader)   # on screen: yes
    (error,) = at.error                                                      # the bad file did not stop the batch
    assert shown(error.value).startswith("scan.dcm: ") and "DOE" not in error.value
    assert [b.label for b in at.get("download_button")] == ["Download report (PDF)"]
    # (the downloaded files' names are checked in a real browser: tests/test_e2e_auth.py)
    from pneumo_core.records.audit import AuditTrail
    from pneumo_core.settings import load_settings
    rows = AuditTrail(load_settings().audit_path).rows()
    assert rows and rows[0]["who"] == "ana" and "DOE" not in str(rows)
    assert b"DOE" not in load_settings().audit_path.read_bytes()
    out, err = capfd.readouterr()
    assert "DOE" not in caplog.text + out + err
