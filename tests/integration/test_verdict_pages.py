"""Reader verdicts on the pages: the Monitor names the verdicts it measures; the Worklist records one (AppTest runs)."""
import json
from types import SimpleNamespace

import cv2
import numpy as np

from pneumo_core.records.access import Actor
from pneumo_core.records.audit import AuditTrail
from pneumo_core.records.verdicts import (
    record_verdict,
    verdicts,
)
from pneumo_core.settings import load_settings

READER = Actor("dr-ana", "clinician")
MODEL = "20260101-000000-mobilenet_v2"


def _diagnosis(trail, sha_number: int, probability: float, model: str = MODEL) -> int:
    """One audit diagnosis row of film `sha_number` (threshold 0.5); returns its id."""
    return trail.record(SimpleNamespace(
        when="2026-03-01T10:00:00+00:00", sha256=f"{sha_number:064x}", model_id=model, probability=probability,
        threshold=0.5, label="PNEUMONIA" if probability >= 0.5 else "NORMAL", ood_score=None, ood_flag=None,
        method=None), source="cli", who="scanner")


def test_the_monitor_page_names_the_verdicts_it_measures_and_lists_the_disagreements(tmp_path, monkeypatch):
    from conftest import REPO
    from streamlit.testing.v1 import AppTest
    folder = tmp_path / "home" / "models" / MODEL
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"id": MODEL, "created": "2026-01-01T00:00:00+00:00",
                                                      "threshold": 0.5, "backbone": "mobilenet_v2"}))
    (folder / "predictions.csv").write_text("path,label,probability,split\n" + "".join(
        f"v{i}.jpeg,{i % 2},{0.1 + 0.8 * (i % 2)},val\n" for i in range(40)))
    (folder.parent / "ACTIVE").write_text(MODEL + "\n")
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    trail = AuditTrail(tmp_path / "home" / "audit.sqlite")
    for n, (p, read) in enumerate([(0.9, "PNEUMONIA"), (0.2, "NORMAL"), (0.8, "NORMAL")]):
        record_verdict(trail, READER, _diagnosis(trail, 300 + n, p), read)
    at = AppTest.from_file(str(REPO / "views" / "monitor.py"), default_timeout=120)
    at.session_state["actor"] = Actor("lead", "ml_lead")
    at.run()
    assert not at.exception
    assert any("Readers' verdicts on 3 films" in c.value for c in at.caption)
    assert {m.label for m in at.metric} >= {"Sensitivity", "Specificity", "PPV", "NPV"}
    assert any("Disagreements to re-read** (1)" in m.value for m in at.markdown)


def test_the_worklist_offers_re_scoring_and_records_a_verdict_on_the_archive_film(tmp_path, monkeypatch):
    from conftest import REPO
    from streamlit.testing.v1 import AppTest

    from pneumo_core.pacs import watcher as pacs
    home = tmp_path / "home"
    active = "20260201-000000-mobilenet_v2"   # the film below was scored by MODEL, an earlier version
    (home / "models" / active).mkdir(parents=True)
    (home / "models" / active / "metadata.json").write_text(json.dumps({"id": active, "threshold": 0.5}))
    (home / "models" / "ACTIVE").write_text(active + "\n")
    monkeypatch.setenv("PNEUMO_HOME", str(home))
    gray = np.random.default_rng(1).integers(0, 255, (64, 48), dtype=np.uint8)
    trail = AuditTrail(home / "audit.sqlite")
    row = _diagnosis(trail, 400, 0.8)
    state = pacs.PacsState(home / "pacs.sqlite")
    state.add([pacs.FilmRef("1.2.3", "1.2.3.4", "1.2.3.4.5", "DX", "PA", "20260301", "ACC-1")], MODEL)
    state.update("1.2.3.4.5", MODEL, status="scored", label="PNEUMONIA", probability=0.8, threshold=0.5,
                 certainty="probable", audit_id=row, scored="2026-03-01T10:00:00+00:00")
    archive = SimpleNamespace(patient_of=lambda study_uid: None)   # an archive that knows no earlier study
    monkeypatch.setattr(pacs.PacsClient, "from_settings", classmethod(lambda cls, *args: archive))
    monkeypatch.setattr(pacs, "film_and_heatmap", lambda client, film_row, outbox: (gray, None))
    at = AppTest.from_file(str(REPO / "views" / "worklist.py"), default_timeout=120)
    at.session_state["actor"] = READER
    at.run()
    assert not at.exception
    assert any("Scored by an earlier model version" in w.value for w in at.warning)
    at.radio(key="verdict_read_1.2.3.4.5").set_value("NORMAL")
    next(b for b in at.button if b.label == "Record verdict").click()
    at.run()
    assert not at.exception and any("Recorded: NORMAL" in s.value for s in at.success)
    (verdict,) = verdicts(trail)
    assert (verdict.diagnosis_id, verdict.source, verdict.who, verdict.agree) == (row, "worklist", "dr-ana", False)
    kept = load_settings({"PNEUMO_HOME": str(home)}).reviewed_dir / "NORMAL" / f"{400:064x}.png"
    assert np.array_equal(cv2.imread(str(kept), cv2.IMREAD_UNCHANGED), gray)
