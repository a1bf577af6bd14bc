"""The prior film (issue 24, item 20): local history under a de-identified key, and the comparison's words."""
import sqlite3
from datetime import date

import numpy as np
from helpers import chest_film, dicom_film, png_bytes

from pneumo_core.imaging.films import FilmInfo
from pneumo_core.serve.diagnosis import Diagnosis
from pneumo_core.serve.prior import PriorIndex, ScoredFilm, compare, patient_id_of, patient_key, study_day


def scored(probability: float, label: str, sha: str, when: str) -> Diagnosis:
    heat = np.zeros((32, 32), np.uint8)
    heat[8:16, 8:16] = 200
    return Diagnosis(name="", probability=probability, label=label, threshold=0.5, certainty="clear", heatmap=heat,
                     method="gradcam", model_id="v1", sha256=sha, info=FilmInfo("DICOM", study_date=when))


def test_the_local_history_finds_the_patients_latest_earlier_film_and_never_keeps_the_id(tmp_path):
    index = PriorIndex(tmp_path)
    key = patient_key(tmp_path, "MRN-004711")
    assert key == patient_key(tmp_path, "MRN-004711") != patient_key(tmp_path, "MRN-004712")
    film = chest_film((200, 160))
    index.remember(key, scored(0.2, "NORMAL", "a" * 64, "2026-09-01"), film)
    index.remember(key, scored(0.3, "NORMAL", "b" * 64, "2026-10-01"), film)
    index.remember(key, scored(0.9, "PNEUMONIA", "c" * 64, "2026-12-01"), film)   # the current film itself
    prior = index.earlier(key, date(2026, 12, 1), "c" * 64, "v1")
    assert prior.study_date == date(2026, 10, 1) and prior.probability == 0.3 and prior.label == "NORMAL"
    assert prior.gray.shape == film.shape and prior.heatmap.max() == 200
    assert index.earlier(key, date(2026, 9, 1), "x" * 64) is None            # nothing before the first film
    assert index.earlier(patient_key(tmp_path, "other"), date(2026, 12, 1), "c" * 64) is None
    stored = b"".join(bytes(str(v), "utf8") for row in sqlite3.connect(tmp_path / "priors.sqlite").execute(
        "SELECT patient, study_date, sha256, model, label FROM priors") for v in row)
    assert b"MRN-004711" not in stored and b"004711" not in (tmp_path / "priors.sqlite").read_bytes()
    assert (tmp_path / "prior.key").stat().st_mode & 0o077 == 0               # the secret is the owner's only


def test_the_patient_id_is_read_from_dicom_only():
    assert patient_id_of(dicom_film(chest_film())) not in (None, "")
    assert patient_id_of(png_bytes(chest_film())) is None
    assert study_day("20261206") == date(2026, 12, 6) == study_day("2026-12-06") and study_day("") is None


def test_words_only_where_the_change_is_beyond_the_test_retest_spread():
    def prior(p, label):
        return ScoredFilm(date(2026, 10, 1), p, 0.5, label, "v1", np.zeros((8, 8), np.uint8), None)
    today = date(2026, 12, 1)
    new = compare(prior(0.1, "NORMAL"), 0.8, "PNEUMONIA", today, "v1", spread=0.1)
    assert new.word == "new" and new.days == 61 and new.change == 0.8 - 0.1
    assert "61 days earlier" in new.sentence() and "+0.70" in new.sentence() and "new" in new.sentence()
    assert compare(prior(0.9, "PNEUMONIA"), 0.3, "NORMAL", today, "v1", 0.1).word == "resolving"
    assert compare(prior(0.9, "PNEUMONIA"), 0.85, "PNEUMONIA", today, "v1", 0.1).word == "unchanged"
    assert compare(prior(0.1, "NORMAL"), 0.8, "PNEUMONIA", today, "v1", spread=0.75).word == "unchanged"
    assert compare(prior(0.1, "NORMAL"), 0.8, "PNEUMONIA", today, "v1", spread=None).word is None
    assert compare(prior(0.1, "NORMAL"), 0.8, "PNEUMONIA", today, "v2", spread=0.1).word is None   # other version
    assert "not assessed" in compare(prior(0.1, "NORMAL"), 0.8, "PNEUMONIA", today, "v2", 0.1).sentence()
