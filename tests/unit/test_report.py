"""The PDF report: text on A4, fonts embedded, study identifiers (never the file name), the figures that apply."""
import io
import json
from datetime import UTC, datetime

import numpy as np
import pypdf
import pytest
from helpers import PATIENT, chest_film, dicom_film

from pneumo_core.evaluation.track_record import INTERNAL_LABEL, track_record
from pneumo_core.imaging.films import FilmInfo, read_film
from pneumo_core.records.verdicts import Verdict
from pneumo_core.serve.diagnosis import Diagnosis, certainty, local_time
from pneumo_core.serve.report import (
    missing_glyphs,
    report_filename,
    report_pdf,
    study_reference,
    track_record_lines,
)

A4 = (595.28, 841.89)   # points


def diagnosis(p=0.93, flag=False, info=None, name="image.jpeg"):
    heat = np.zeros((64, 64), np.uint8)
    heat[10:20, 10:20] = 255
    return Diagnosis(name, p, "PNEUMONIA" if p >= 0.874 else "NORMAL", 0.874, certainty(p, 0.874, flag), heat,
                     "gradcam", "20261126-060059-mobilenet_v2", "ab12" * 16, ood_score=1.4 if flag else 0.5,
                     ood_flag=flag, info=info)


@pytest.fixture
def internal(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"id": "v"}))
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"sensitivity": 0.955, "specificity": 0.975,
                                                                "roc_auc": 0.99, "n": 785}}))
    return track_record(tmp_path)


@pytest.fixture
def site(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"id": "v"}))
    (tmp_path / "site_reports").mkdir()
    (tmp_path / "site_reports" / "north.json").write_text(json.dumps({
        "site": "north", "n": 198, "created": "2026-11-26T06:00:00+00:00", "prevalence": 0.38, "sensitivity": 0.97,
        "specificity": 0.63, "roc_auc": 0.93, "precision": 0.62, "npv": 0.97,
        "ci": {"sensitivity": [0.93, 0.99], "specificity": [0.55, 0.71], "ppv": [0.54, 0.7], "npv": [0.93, 0.99]}}))
    return track_record(tmp_path)


def text_of(pdf: bytes) -> tuple[str, list]:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages), reader.pages


def test_the_report_is_searchable_text_on_one_a4_page_with_its_fonts_embedded(internal):
    pdf = report_pdf(chest_film((300, 240)), diagnosis(), internal, reference="REQ-77")
    text, pages = text_of(pdf)
    assert len(pages) == 1
    assert (float(pages[0].mediabox.width), float(pages[0].mediabox.height)) == pytest.approx(A4, abs=0.5)
    for words in ("Pneumo – chest X-ray report", "Call: PNEUMONIA", "0.93, just above the threshold (0.87)",
                  "Reference", "REQ-77", "Read by", "Signature", "Scored by the model", "Report made",
                  "Reader's findings", "Decision support, not a diagnosis"):
        assert words in text, words
    assert "1.000" not in text and "image.jpeg" not in text        # no false certainty, no file name
    assert not missing_glyphs(text)                                 # every character has a glyph: no boxes
    assert b"/FontFile2" in pdf                                     # TrueType fonts embedded
    assert len(pdf) < 600_000


def test_internal_figures_are_never_shown_without_saying_where_they_come_from(internal):
    lines = track_record_lines(internal)
    assert any(INTERNAL_LABEL in line and "Sensitivity 0.95" in line for line in lines)
    assert not any("test-set sensitivity" in line.lower() for line in lines)
    assert not any("PPV" in line for line in lines)                 # no prevalence known: no PPV/NPV
    text, _ = text_of(report_pdf(chest_film(), diagnosis(), internal))
    assert "not validated at this site" in text


def test_site_figures_come_with_intervals_and_predictive_values_at_the_sites_prevalence(site):
    lines = track_record_lines(site)
    assert "Sensitivity 0.97 [0.93–0.99], specificity 0.63 [0.55–0.71]" in lines[0] and "site north" in lines[0]
    assert any("prevalence of 38 %" in line and "PPV 0.62 [0.54–0.70]" in line and "NPV 0.97" in line
               for line in lines)


def test_the_report_names_the_dicoms_patient_and_study_and_its_file_name_names_neither():
    film = read_film(dicom_film(chest_film()), "1.dcm")
    assert (film.info.accession_number, film.info.study_instance_uid) == ("ACC-2024-0042",
                                                                           "1.2.826.0.1.3680043.2.1125.1")
    d = diagnosis(info=film.info, name="1.dcm")
    text, _ = text_of(report_pdf(film.gray, d, None, locale="de-DE"))
    assert "ACC-2024-0042" in text and "1.2.826.0.1.3680043.2.1125.1" in text and "DICOM · DX · AP" in text
    # Whom the report is about, from the DICOM; dates in the reader's locale style (de: day.month.year).
    for words in ("Patient name", "Doe, Jane", "Patient ID", "SECRET-123", "Birth date", "01.01.2019",
                  "Study date", "01.03.2024"):
        assert words in text, words
    assert "1.dcm" not in text and PATIENT not in text             # the file name never; the name in words
    when = datetime(2026, 12, 6, 12, tzinfo=UTC)
    name = report_filename(d, when)
    assert name == "pneumo-report-1.2.826.0.1.3680043.2.1125.1-20261206.pdf"
    assert "Doe" not in name and "SECRET" not in name and "ACC" not in name


def test_without_dicom_patient_fields_the_report_says_not_given_and_the_name_is_the_films_hash():
    d = diagnosis(name="Jane_Doe_chest.jpeg", info=FilmInfo("JPEG"))
    text, _ = text_of(report_pdf(chest_film(), d, None, reference="Jane Doe REQ 77/b"))
    assert text.count("not given") == 4                             # name, ID, birth date, study date
    name = report_filename(d, datetime(2026, 12, 6, 12, tzinfo=UTC))
    assert name == f"pneumo-report-{d.sha256[:16]}-20261206.pdf"   # never the typed reference, never the file
    assert "Jane" not in name and "77" not in name
    assert study_reference(d)[0][1].startswith("none given")


def test_the_scoring_time_and_the_report_time_are_both_named(internal):
    d = diagnosis()
    d.when = "2026-12-01T08:00:00+00:00"
    text, _ = text_of(report_pdf(chest_film(), d, internal, made="2026-12-06T15:30:00+00:00"))
    scored = text[text.index("Scored by the model"):text.index("Report made")]
    made = text[text.index("Report made"):]
    assert local_time(d.when)[:16] in scored and local_time("2026-12-06T15:30:00+00:00")[:16] in made


def test_the_readers_verdict_fills_the_findings_and_agreement():
    d = diagnosis()
    verdict = Verdict(1, "2026-12-06T10:00:00+00:00", "a.lopez", d.sha256, 1, d.model_id, "PNEUMONIA", 0.93, None,
                      "NORMAL", (), "old scar, no consolidation")
    text, _ = text_of(report_pdf(chest_film(), d, None, reader=verdict))
    assert "NORMAL (disagrees with the call PNEUMONIA)" in text
    assert "Agrees with the call\nno\n" in text
    assert "old scar, no consolidation" in text and "circle one" not in text
    blank, _ = text_of(report_pdf(chest_film(), d, None))
    assert "circle one" in blank


def test_a_flagged_film_reads_not_assessable_with_its_caution(internal):
    text, _ = text_of(report_pdf(chest_film(), diagnosis(p=0.982, flag=True), internal))
    assert "not assessable" in text and "Caution: This image differs" in text
    assert "Out-of-distribution score" in text and "1.40" in text


def test_a_normal_calls_report_says_why_there_is_no_heatmap(internal):
    text, _ = text_of(report_pdf(chest_film(), diagnosis(p=0.2), internal))
    assert "Heatmap not drawn" in text and "Call: NORMAL" in text
    text, _ = text_of(report_pdf(chest_film(), diagnosis(p=0.2), internal, heatmap=True))
    assert "Heatmap not drawn" not in text and "evidence for pneumonia" in text
