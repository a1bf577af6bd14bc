"""Reader verdicts: recorded in the audit chain, superseded by appending, role-checked; reviewed films;
the monitor's reader figures; the model change notice."""
import json
import os
import sqlite3
import time
from statistics import NormalDist
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from pneumo_core.errors import PermissionDenied
from pneumo_core.golive import reviewed
from pneumo_core.golive.monitor import reader_figures
from pneumo_core.records import notices, registry
from pneumo_core.records.access import Actor
from pneumo_core.records.audit import AuditTrail
from pneumo_core.records.verdicts import (
    VerdictError,
    history,
    latest_verdicts,
    record_verdict,
    verdicts,
)
from pneumo_core.settings import load_settings

READER = Actor("dr-ana", "clinician")
MODEL = "20260101-000000-mobilenet_v2"


@pytest.fixture
def trail(tmp_path):
    return AuditTrail(tmp_path / "audit.sqlite")


def _diagnosis(trail, sha_number: int, probability: float, model: str = MODEL) -> int:
    """One audit diagnosis row of film `sha_number` (threshold 0.5); returns its id."""
    return trail.record(SimpleNamespace(
        when="2026-03-01T10:00:00+00:00", sha256=f"{sha_number:064x}", model_id=model, probability=probability,
        threshold=0.5, label="PNEUMONIA" if probability >= 0.5 else "NORMAL", ood_score=None, ood_flag=None,
        method=None), source="cli", who="scanner")


def test_a_later_verdict_supersedes_an_earlier_one_by_appending(trail):
    row = _diagnosis(trail, 1, 0.9)
    first = record_verdict(trail, READER, row, "NORMAL", note="looks clear")
    second = record_verdict(trail, Actor("dr-ben", "ml_lead"), row, "PNEUMONIA", zones=["right-lower", "lingula"])
    assert (first.agree, second.agree) == (False, True)
    assert second.supersedes == first.id
    assert [v.read for v in history(trail, f"{1:064x}")] == ["NORMAL", "PNEUMONIA"]   # nothing rewritten
    latest = latest_verdicts(trail)
    assert list(latest) == [f"{1:064x}"] and latest[f"{1:064x}"].read == "PNEUMONIA"
    assert latest[f"{1:064x}"].zones == ("right-lower", "lingula") and latest[f"{1:064x}"].who == "dr-ben"
    assert trail.verify()["ok"] and trail.verify()["rows"]["events"] == 2


def test_not_assessable_is_neither_agreement_nor_disagreement(trail):
    verdict = record_verdict(trail, READER, _diagnosis(trail, 2, 0.2), "not assessable")
    assert verdict.read == "not-assessable" and verdict.agree is None


def test_audit_verify_names_an_edited_verdict(trail):
    record_verdict(trail, READER, _diagnosis(trail, 3, 0.8), "PNEUMONIA")
    verdict = record_verdict(trail, READER, _diagnosis(trail, 4, 0.8), "PNEUMONIA")
    with sqlite3.connect(trail.path) as db:   # someone with the sqlite3 shell, around the library's guards
        db.execute("DROP TRIGGER events_no_update")
        db.execute("UPDATE events SET details = replace(details, '\"PNEUMONIA\"', '\"NORMAL\"') WHERE id = ?",
                   (verdict.id,))
    result = trail.verify()
    assert not result["ok"] and f"events row {verdict.id}" in result["problem"]


def test_an_auditor_or_nobody_may_not_record_a_verdict(trail):
    row = _diagnosis(trail, 5, 0.7)
    for actor in (Actor("aud", "auditor"), None):
        with pytest.raises(PermissionDenied, match="record verdict"):
            record_verdict(trail, actor, row, "NORMAL")
    assert verdicts(trail) == []


@pytest.mark.parametrize("read, zones, note, message", [
    ("maybe", (), "", "unknown read"), ("NORMAL", ("apex",), "", "unknown zone"),
    ("NORMAL", (), "x" * 1001, "keep it under")])
def test_a_bad_read_zone_or_note_is_refused(trail, read, zones, note, message):
    with pytest.raises(VerdictError, match=message):
        record_verdict(trail, READER, _diagnosis(trail, 6, 0.7), read, zones, note)


def test_a_verdict_on_a_diagnosis_that_does_not_exist_is_refused(trail):
    with pytest.raises(VerdictError, match="no diagnosis 99"):
        record_verdict(trail, READER, 99, "NORMAL")


def test_a_reviewed_film_is_kept_as_a_png_named_by_its_hash_and_follows_the_latest_read(tmp_path, trail):
    settings = load_settings({"PNEUMO_HOME": str(tmp_path / "home")})
    gray = np.random.default_rng(0).integers(0, 255, (40, 30), dtype=np.uint8)
    row = _diagnosis(trail, 7, 0.9)
    sha = f"{7:064x}"
    reviewed.review(settings, trail, READER, gray, row, "PNEUMONIA")
    kept = settings.reviewed_dir / "PNEUMONIA" / f"{sha}.png"
    assert np.array_equal(cv2.imread(str(kept), cv2.IMREAD_UNCHANGED), gray)
    assert b"tEXt" not in kept.read_bytes()    # pixels only: no text chunk, nothing from a header
    reviewed.review(settings, trail, READER, gray, row, "NORMAL")
    assert not kept.exists() and (settings.reviewed_dir / "NORMAL" / f"{sha}.png").is_file()
    reviewed.review(settings, trail, READER, gray, row, "not-assessable")   # no label to learn from
    assert reviewed.counts(settings) == {"NORMAL": 0, "PNEUMONIA": 0}


def test_reviewed_films_are_deleted_by_hash_by_age_and_by_the_retention_setting(tmp_path, trail):
    settings = load_settings({"PNEUMO_HOME": str(tmp_path / "home"), "PNEUMO_REVIEWED_RETENTION_DAYS": "30"})
    gray = np.full((20, 20), 128, np.uint8)
    for n in (10, 11, 12):
        reviewed.keep_film(settings, gray, f"{n:064x}", "NORMAL")
    old = settings.reviewed_dir / "NORMAL" / f"{10:064x}.png"
    forty_days_ago = time.time() - 40 * 86400
    os.utime(old, (forty_days_ago, forty_days_ago))
    assert reviewed.delete(settings, sha256=f"{11:064x}") == [f"{11:064x}"]
    reviewed.keep_film(settings, gray, f"{13:064x}", "PNEUMONIA")   # keeping a film applies the retention
    assert {f["sha256"] for f in reviewed.reviewed_films(settings)} == {f"{12:064x}", f"{13:064x}"}
    assert reviewed.delete(settings, older_than_days=0) and reviewed.reviewed_films(settings) == []
    none_kept = load_settings({"PNEUMO_HOME": str(tmp_path / "home"), "PNEUMO_REVIEWED_RETENTION_DAYS": "0"})
    assert reviewed.keep_film(none_kept, gray, f"{14:064x}", "NORMAL") is None


def _wilson(k, n):
    """The textbook Wilson score interval (Wilson 1927), written out separately from the library's."""
    z = NormalDist().inv_cdf(0.975)
    p = k / n
    centre, half = p + z * z / (2 * n), z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def test_reader_figures_count_the_2x2_per_tier_and_raise_an_alarm_only_beyond_chance(trail):
    # (probability, read, tier): 4 true positives, 1 missed in the low tier, 3 true negatives, 2 false alarms
    # (one in the high tier), 1 not assessable.
    films = [(0.9, "PNEUMONIA", "high")] * 3 + [(0.6, "PNEUMONIA", "uncertain"), (0.1, "PNEUMONIA", "low"),
             (0.1, "NORMAL", "low"), (0.2, "NORMAL", "low"), (0.4, "NORMAL", None), (0.95, "NORMAL", "high"),
             (0.7, "NORMAL", "uncertain"), (0.3, "not-assessable", "low")]
    latest = []
    for i, (p, read, tier) in enumerate(films):
        row = _diagnosis(trail, 100 + i, p)
        verdict = record_verdict(trail, READER, row, read)
        latest.append(SimpleNamespace(**{**verdict.__dict__, "tier": tier, "agree": verdict.agree}))
    figures = reader_figures(latest, {"low": 0.05, "high": 0.10})
    assert (figures["films"], figures["n"], figures["not_assessable"]) == (11, 10, 1)
    assert (figures["tp"], figures["fn"], figures["tn"], figures["fp"]) == (4, 1, 3, 2)
    assert figures["sensitivity"]["value"] == pytest.approx(4 / 5)
    assert figures["sensitivity"]["ci"] == pytest.approx(_wilson(4, 5))
    assert figures["specificity"]["ci"] == pytest.approx(_wilson(3, 5))
    assert figures["ppv"]["value"] == pytest.approx(4 / 6) and figures["npv"]["value"] == pytest.approx(3 / 4)
    low, high = figures["by_tier"]["low"], figures["by_tier"]["high"]
    assert (low["n"], low["pneumonia"], low["normal"]) == (3, 1, 2)
    assert low["miss_rate"]["value"] == pytest.approx(1 / 5)
    assert high["false_alarm_rate"]["value"] == pytest.approx(1 / 5)
    assert figures["by_tier"]["none"]["n"] == 1
    # 1 of 5 pneumonias missed against 5 %: P(>= 1) = 0.23, chance; 1 of 5 normals against 10 %: 0.41.
    assert not low["alarm"] and low["p_value"] == pytest.approx(1 - 0.95 ** 5)
    assert not high["alarm"]
    assert reader_figures(latest, {"low": 0.01})["by_tier"]["low"]["alarm"]   # P(>= 1 of 5 | 1 %) = 0.049
    assert sorted(d["probability"] for d in figures["disagreements"]) == [0.1, 0.7, 0.95]


def test_a_tier_that_misses_far_more_than_its_guarantee_is_in_alarm(trail):
    latest = []
    for i in range(10):   # 4 of 10 pneumonias in the low tier against a 5 % guarantee
        verdict = record_verdict(trail, READER, _diagnosis(trail, 200 + i, 0.1 if i < 4 else 0.9), "PNEUMONIA")
        latest.append(SimpleNamespace(**{**verdict.__dict__, "tier": "low" if i < 4 else "high",
                                         "agree": verdict.agree}))
    low = reader_figures(latest, {"low": 0.05, "high": 0.10})["by_tier"]["low"]
    assert low["alarm"] and low["p_value"] < 0.01 and low["miss_rate"]["k"] == 4


def test_a_promotion_is_named_once_to_each_reader(tmp_path, trail):
    models = tmp_path / "models"
    models.mkdir()
    entries = [{"when": "2026-03-01T09:00:00+00:00", "who": "lead", "action": "register", "from": None, "to": "A"},
               {"when": "2026-03-02T09:00:00+00:00", "who": "lead", "action": "promotion", "from": "A", "to": "B"}]
    (models / registry.LOG_FILE).write_text(json.dumps(entries[0]) + "\n")
    assert notices.unseen_change(models, trail, "dr-ana") is None   # a first version is no change
    (models / registry.LOG_FILE).write_text("".join(json.dumps(e) + "\n" for e in entries))
    change = notices.unseen_change(models, trail, "dr-ana")
    assert change["to"] == "B" and "version B replaces A" in notices.change_sentence(change)
    notices.mark_seen(trail, "dr-ana", change)
    assert notices.unseen_change(models, trail, "dr-ana") is None
    assert notices.unseen_change(models, trail, "dr-ben")["to"] == "B"
