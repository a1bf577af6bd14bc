"""DICOM output and the PACS client without an archive: structured reports, heatmap captures,
result UIDs, worklist order, settings and authentication (the archive itself: integration/test_pacs_archive.py)."""
import io
import json
import os
import signal
from contextlib import closing
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from conftest import REPO, chest_studies, synthetic_film

from pneumo_core.errors import ConfigError, PacsUnavailable
from pneumo_core.imaging.dicom import read_dataset
from pneumo_core.pacs.client import PacsClient
from pneumo_core.pacs.state import PacsState, worklist
from pneumo_core.serve import dicom_out
from pneumo_core.serve.diagnosis import Diagnosis, certainty, worklist_order
from pneumo_core.settings import load_settings

FRONTAL = [(1, "PA", "CHEST", "CR"), (0, "AP", "CHEST", "DX"), (1, "PA", "CHEST", "CR")]


def _roundtrip(ds):
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _diagnosis(shape, label="PNEUMONIA", p=0.91, ood=(1.4, True)) -> Diagnosis:
    return Diagnosis(name="film", probability=p, label=label, threshold=0.5, certainty=certainty(p, 0.5),
                     heatmap=np.random.default_rng(0).random(shape), method="gradcam", model_id="20260101-000000-test",
                     sha256="0" * 64, ood_score=ood[0], ood_flag=ood[1])


# --- DICOM output, no archive needed -----------------------------------------------------------------

def test_sr_holds_the_call_and_reads_back_with_highdicom():
    import highdicom as hd
    source = _roundtrip(chest_studies([FRONTAL[0]])[0])
    d = _diagnosis((256, 224))
    sr = _roundtrip(dicom_out.structured_report(source, d))
    assert sr.SOPClassUID == hd.sr.ComprehensiveSR.from_dataset(sr).SOPClassUID  # highdicom parses it back
    result = dicom_out.read_result(sr)
    assert result["label"] == "PNEUMONIA" and result["probability"] == pytest.approx(0.91)
    assert result["threshold"] == 0.5 and result["certainty"] == d.certainty
    assert result["ood_score"] == pytest.approx(1.4) and result["ood_flag"] is True
    assert result["model"] == d.model_id and "Pneumo" in result["algorithm"]
    assert result["source_sop_uid"] == source.SOPInstanceUID
    # Same study and patient, a new series and instance, evidence pointing at the source film.
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientName == source.PatientName
    assert sr.PatientID == source.PatientID and sr.AccessionNumber == source.AccessionNumber
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID and sr.SOPInstanceUID != source.SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"


def test_sr_of_a_normal_call_without_ood_detector():
    source = _roundtrip(chest_studies([FRONTAL[1]])[0])
    result = dicom_out.read_result(_roundtrip(dicom_out.structured_report(
        source, _diagnosis((256, 224), "NORMAL", 0.48, (None, None)))))
    assert result["label"] == "NORMAL" and result["certainty"].startswith("borderline")
    assert result["ood_score"] is None and result["ood_flag"] is None


def _written_at_a_fixed_time(ds) -> bytes:
    """`ds` as a file, its creation times (now, when it was made) set to one value."""
    ds.InstanceCreationDate = ds.ContentDate = "20260101"
    ds.InstanceCreationTime = ds.ContentTime = "120000"
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = "20260101120000"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("tier, ood, method", [(None, (1.4, True), "gradcam"), ("high", (0.3, False), None),
                                               ("low", (None, None), "gradcam++")])
def test_sr_is_byte_for_byte_the_document_highdicoms_constructor_writes_for_its_content(tier, ood, method):
    # structured_report lets highdicom write the document around a stand-in root (the constructor re-parsed the
    # whole tree three times) and attaches the tree after: the file must be the one the constructor writes itself.
    import highdicom as hd
    source = _roundtrip(chest_studies([FRONTAL[0]])[0])
    source.SpecificCharacterSet, source.PatientAge, source.InstitutionName = "ISO_IR 100", "007Y", "Synthetic Hospital"
    d = replace(_diagnosis((256, 224), ood=ood), tier=tier, method=method)
    uids = dicom_out.result_uids(source.SOPInstanceUID, d.model_id)
    reference = hd.sr.ComprehensiveSR(
        evidence=[source], content=dicom_out.measurement_report(source, d)[0], series_instance_uid=uids["sr_series"],
        series_number=dicom_out.SR_SERIES_NUMBER, sop_instance_uid=uids["sr_instance"], instance_number=1,
        manufacturer=dicom_out.MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    reference.SeriesDescription = "Pneumo AI result: decision support, not a diagnosis"
    written = _written_at_a_fixed_time(dicom_out.structured_report(source, d))
    assert written == _written_at_a_fixed_time(reference)
    assert dicom_out.read_result(pydicom.dcmread(io.BytesIO(written)))["tier"] == tier


def test_heatmap_capture_is_labelled_and_in_a_new_series_of_the_study():
    source = _roundtrip(chest_studies([FRONTAL[0]])[0])
    film = read_dataset(source, "film")
    d = _diagnosis(film.gray.shape)
    sc = _roundtrip(dicom_out.heatmap_capture(source, film.gray, d))
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and sc.BurnedInAnnotation == "YES"
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientName == source.PatientName
    assert sc.SeriesInstanceUID not in (source.SeriesInstanceUID, dicom_out.structured_report(
        source, d).SeriesInstanceUID)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = sc.pixel_array
    assert pixels.shape == (731, 640, 3)   # a 256 x 224 film, enlarged so that the label reads
    # The label band: a black strip with white text across the top, the heatmap colours below it.
    band = pixels[:20]
    assert (band.max(axis=2) < 10).mean() > 0.5 and (band.min(axis=2) > 200).sum() > 20
    assert "not a diagnosis" in sc.SeriesDescription and "not a diagnosis" in sc.ImageComments


def test_result_uids_are_stable_per_film_and_model_and_differ_otherwise():
    a = dicom_out.result_uids("1.2.3", "model-a")
    assert a == dicom_out.result_uids("1.2.3", "model-a")
    assert not set(a.values()) & set(dicom_out.result_uids("1.2.3", "model-b").values())
    assert len(set(a.values())) == 4


def test_the_pacs_worklist_is_in_the_same_order_as_diagnoses_worklist(tmp_path):
    """One order for every list of calls (issue 24): the PACS Worklist sorts with serve.diagnosis.order_key."""
    state = PacsState(tmp_path / "pacs.sqlite")
    calls = [("NORMAL", 0.02, None), (None, None, None), ("PNEUMONIA", 0.999, None), ("NORMAL", 0.85, None),
             ("PNEUMONIA", 0.97, 1), ("PNEUMONIA", 0.97, None)]
    with closing(state.database.connect()) as db:     # the state's own database, as its methods open it
        db.executemany("INSERT INTO films (sop_uid, model, study_uid, series_uid, status, label, probability, "
                       "threshold, ood_flag, discovered) VALUES (?, 'v1', 's', 'se', ?, ?, ?, 0.874, ?, '2026')",
                       [(f"1.{i}", "stored" if label else "skipped", label, p, flag)
                        for i, (label, p, flag) in enumerate(calls)])
    rows = worklist(state)
    films = [Diagnosis("f", p, label, 0.874, certainty(p, 0.874, flag), None, None, "v1", "0" * 64,
                       ood_flag=None if flag is None else bool(flag)) for label, p, flag in calls if label]
    expected = [f"1.{[i for i, c in enumerate(calls) if c[0]][j]}" for j in worklist_order(films)] + ["1.1"]
    assert [r["sop_uid"] for r in rows] == expected
    assert [r["priority_name"] for r in rows] == ["check", "check", "urgent", "urgent", "routine", "not scored"]
    assert [r["priority_name"] for r in rows[:-1]] == [films[j].priority for j in worklist_order(films)]


def test_pacs_settings_come_from_the_environment_or_a_secrets_file(tmp_path):
    (tmp_path / "pacs.json").write_text(json.dumps({"url": "http://pacs/dicom-web", "token": "t0k"}))
    settings = load_settings({"PNEUMO_HOME": str(tmp_path)})
    assert (settings.pacs_url, settings.pacs_token, settings.pacs_user) == ("http://pacs/dicom-web", "t0k", "")
    assert "t0k" not in repr(settings)
    settings = load_settings({"PNEUMO_HOME": str(tmp_path), "PNEUMO_PACS_URL": "http://other/dicom-web"})
    assert settings.pacs_url == "http://other/dicom-web"
    with pytest.raises(ConfigError, match="PNEUMO_PACS_URL"):
        PacsClient("")


def test_auth_header_is_basic_bearer_or_absent_as_configured():
    import http.server
    import threading
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/dicom-web"
    try:
        for client in (PacsClient(url), PacsClient(url, "ann", "pw"), PacsClient(url, token="abc")):
            assert client.search_films() == []
    finally:
        server.shutdown()
    assert seen[0] is None and seen[1].startswith("Basic ") and seen[2] == "Bearer abc"


def test_a_down_archive_is_reported_as_unavailable():
    with pytest.raises(PacsUnavailable, match="cannot be reached"):
        PacsClient("http://127.0.0.1:9/dicom-web").search_films()   # port 9 (discard): nothing listens


def test_sigterm_stops_pacs_watch_as_ctrl_c_does_and_it_exits_0(tmp_path, monkeypatch, capsys):
    # systemd stops a watcher with SIGTERM; Python's default would end it at once, holding its film's claim.
    from pneumo_core.cli.main import main
    from pneumo_core.pacs.watcher import Watcher
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PNEUMO_DATABASE_URL", raising=False)
    monkeypatch.setattr("pneumo_core.cli.pacs.load_model", lambda settings, version: SimpleNamespace(id="v1"))
    monkeypatch.setattr("pneumo_core.serve.diagnosis.Diagnoser", lambda model: SimpleNamespace(model=model))
    polls = []

    def terminated_while_polling(self, study_uid=None):
        polls.append(self.model)
        os.kill(os.getpid(), signal.SIGTERM)    # Python runs the handler before the next line
        raise AssertionError("SIGTERM did not stop the watcher")
    monkeypatch.setattr(Watcher, "poll", terminated_while_polling)
    outer = []      # this process's own handler: the command must not leave SIGTERM changed
    before = signal.signal(signal.SIGTERM, lambda *_: outer.append("outer handler"))
    try:
        code = main(["pacs", "watch", "--url", "http://127.0.0.1:9/dicom-web", "--interval", "1"])
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code == 0 and polls == ["v1"] and outer == []
    assert "stopped; a restart resumes" in capsys.readouterr().err
    assert after is not signal.default_int_handler and after.__name__ == "<lambda>"


# --- against a real Orthanc --------------------------------------------------------------------------

@pytest.mark.parametrize("width", [640, 1024, 2000])   # heatmap_capture makes every film 640+ wide
def test_the_label_fits_inside_a_film_of_any_width(width):
    gray = synthetic_film(1, np.random.default_rng(0), (300, width))
    rgb = dicom_out.overlay_with_label(gray, _diagnosis(gray.shape))
    band = rgb[: int(rgb.shape[0] * 0.3)]
    text_columns = np.flatnonzero((band.min(axis=2) > 200).any(axis=0))
    assert rgb.shape == (300, width, 3) and (rgb[:3].max(axis=2) < 10).mean() > 0.5
    assert text_columns.size and text_columns.max() < width - 1   # no line runs off the right edge


def test_heatmap_capture_of_a_large_film_is_at_most_1024_px():  # and the label fits (see above)
    source = _roundtrip(chest_studies([FRONTAL[0]], shape=(1400, 1200))[0])
    gray = read_dataset(source, "film").gray
    sc = dicom_out.heatmap_capture(source, gray, _diagnosis(gray.shape))
    assert (sc.Rows, sc.Columns) == (1024, 878)


@pytest.mark.parametrize("role, shown", [("clinician", "pneumo_core pacs watch"), ("auditor", "may not see calls")])
def test_worklist_page_before_any_poll_says_how_to_start_and_checks_the_role(role, shown, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from pneumo_core.records.access import Actor
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    at = AppTest.from_file(str(REPO / "views" / "worklist.py"), default_timeout=120)
    at.session_state["actor"] = Actor("test", role)
    at.run()
    assert not at.exception
    assert any(shown in e.value for e in [*at.code, *at.error])
