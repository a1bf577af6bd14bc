"""Triage tiers: cut-offs with a finite-sample guarantee, where they are stored, and how calls carry them."""
import json
import sqlite3
import subprocess
from contextlib import closing

import numpy as np
import pytest
from scipy.stats import beta as beta_distribution

from pneumo_core.evaluation import triage
from pneumo_core.evaluation.triage import TriageTiers, fit_tiers, tiers_for
from pneumo_core.records.audit import AuditTrail
from pneumo_core.serve import diagnosis as dx
from pneumo_core.serve.diagnosis import Diagnosis

SQLITE = "/usr/bin/sqlite3"
# Synthetic site scores: pneumonias ~ Beta(6, 2), normals ~ Beta(2, 5); true tier shares from their CDFs.
PNEUMONIA, NORMAL = (6, 2), (2, 5)


def _site(rng, n_pneumonia=131, n_normal=67):
    p = np.concatenate([rng.beta(*PNEUMONIA, n_pneumonia), rng.beta(*NORMAL, n_normal)])
    return p, np.r_[np.ones(n_pneumonia), np.zeros(n_normal)].astype(int)


def test_the_cuts_keep_their_promise_on_the_films_they_were_set_on():
    p, y = _site(np.random.default_rng(0))
    tiers = fit_tiers(p, y, site="north")
    tier = tiers.tiers(p)
    missed, false_alarms = np.sum((tier == "low") & (y == 1)), np.sum((tier == "high") & (y == 0))
    assert (tiers.missed, tiers.false_alarms) == (missed, false_alarms)
    assert triage.upper_bound(missed, 131) <= 0.05 and triage.upper_bound(false_alarms, 67) <= 0.10
    # The cuts are as wide as the bound allows: one more pneumonia in low would break it.
    assert triage.upper_bound(missed + 1, 131) > 0.05
    assert tiers.low_cut < tiers.high_cut and 0.5 < tiers.definite_share < 1
    assert tiers.tier(0.0) == "low" and tiers.tier(1.0) == "high"
    assert tiers.tier((tiers.low_cut + tiers.high_cut) / 2) == "uncertain"


def test_the_low_tier_miss_bound_holds_in_2000_simulated_site_sets():
    """The guarantee itself: over many site sets, the true miss share exceeds alpha in at most 5 % of them."""
    rng = np.random.default_rng(1)
    violations_low = violations_high = 0
    draws = 2000
    for _ in range(draws):
        tiers = fit_tiers(*_site(rng))
        true_miss = beta_distribution.cdf(tiers.low_cut, *PNEUMONIA) if tiers.low_cut is not None else 0.0
        true_false_alarm = beta_distribution.sf(tiers.high_cut, *NORMAL) if tiers.high_cut is not None else 0.0
        violations_low += true_miss > tiers.alpha
        violations_high += true_false_alarm > tiers.beta
    assert violations_low / draws <= 0.05
    assert violations_high / draws <= 0.05


def test_too_few_films_of_a_class_give_no_tier_and_say_what_they_could_guarantee():
    p, y = _site(np.random.default_rng(2), n_pneumonia=40, n_normal=20)
    tiers = fit_tiers(p, y, site="small")
    assert tiers.low_cut is None and tiers.high_cut is None   # 40 films guarantee 7.2 %, 20 films 13.9 % at best
    assert tiers.smallest_alpha == pytest.approx(1 - 0.05 ** (1 / 40), abs=1e-4)
    assert set(tiers.tiers(p)) == {"uncertain"} and tiers.definite_share == 0
    assert "no low tier" in tiers.summary() and "7.2%" in tiers.summary()


def test_crossing_cuts_leave_the_overlap_uncertain():
    tiers = TriageTiers(low_cut=0.6, high_cut=0.4, alpha=0.05, beta=0.1, confidence=0.95, n_pneumonia=100,
                        n_normal=100, site="s")
    assert [tiers.tier(p) for p in (0.3, 0.5, 0.7)] == ["low", "uncertain", "high"]


def test_larger_sets_tighten_the_guarantee_and_invalid_levels_are_refused():
    tiers = fit_tiers(*_site(np.random.default_rng(3)), site="north")
    alphas = [s["alpha"] for s in tiers.larger_sets]
    assert alphas == sorted(alphas, reverse=True) and alphas[-1] < tiers.alpha
    with pytest.raises(ValueError, match="alpha"):
        fit_tiers([0.1, 0.9], [0, 1], alpha=0)
    with pytest.raises(ValueError, match="labels"):
        fit_tiers([0.1, 0.9], [0])


def test_guarantee_sentences_name_the_site_and_its_films():
    tiers = fit_tiers(*_site(np.random.default_rng(4)), site="north", source="out-of-fold site predictions")
    low, high, middle = (tiers.guarantee(t) for t in ("low", "high", "uncertain"))
    assert "site north" in low and "131 pneumonia films" in low and "5%" in low
    assert "site north" in high and "67 normal films" in high and "10%" in high
    assert "out-of-fold site predictions" in middle and "full read" in middle
    with pytest.raises(ValueError):
        tiers.guarantee("clear")


def test_round_trip_and_tiers_for_reads_the_newest_site_report(tmp_path):
    tiers = fit_tiers(*_site(np.random.default_rng(5)), site="north", created="2026-01-01T00:00:00+00:00")
    assert TriageTiers.from_dict(json.loads(json.dumps(tiers.to_dict()))) == tiers
    version = tmp_path / "v1"
    assert tiers_for(version) is None
    (version / "site_reports").mkdir(parents=True)
    (version / "site_reports" / "old.json").write_text(json.dumps({"site": "old", "created": "2025"}))
    assert tiers_for(version) is None   # a report from before triage tiers: no guarantee
    newer = fit_tiers(*_site(np.random.default_rng(6)), site="south")
    for name, t, created in (("north", tiers, "2026-01-01"), ("south", newer, "2026-02-01")):
        (version / "site_reports" / f"{name}.json").write_text(json.dumps(
            {"site": name, "created": created, "triage": t.to_dict()}))
    found = tiers_for(version)
    assert found.site == "south" and found.low_cut == newer.low_cut


def _diagnosis(p, tier=None):
    return Diagnosis(name="f.png", probability=p, label="PNEUMONIA" if p >= 0.5 else "NORMAL", threshold=0.5,
                     certainty=dx.certainty(p, 0.5, validated=tier is not None), heatmap=None, method=None,
                     model_id="v1", sha256="0" * 64, tier=tier, tier_guarantee=None if tier is None else "…")


def test_no_clear_wording_without_a_site_guarantee():
    assert dx.certainty(0.99, 0.5) == "clear"
    unvalidated = _diagnosis(0.99)
    assert unvalidated.certainty_word == "not validated at this site"
    assert unvalidated.strength == "above the threshold"   # no "well"
    assert _diagnosis(0.55).certainty_word == "borderline"
    assert _diagnosis(0.99, tier="high").strength == "well above the threshold"


def test_worklist_sorts_high_uncertain_low():
    films = [_diagnosis(0.2, "low"), _diagnosis(0.97, "high"), _diagnosis(0.6, "uncertain"), _diagnosis(0.9, "high")]
    assert dx.worklist_order(films) == [1, 3, 2, 0]


def test_an_unlike_film_is_uncertain_whatever_its_probability():
    tiers = fit_tiers(*_site(np.random.default_rng(7)), site="north")
    assert dx.tier_of(tiers, 0.999, ood_flag=True) == ("uncertain", dx.OOD_TIER_TEXT)
    assert dx.tier_of(tiers, 0.999, ood_flag=False)[0] == "high"
    assert dx.tier_of(None, 0.999, ood_flag=False) == (None, None)


def test_the_audit_trail_records_the_tier_and_old_rows_still_verify(tmp_path):
    first, path = tmp_path / "audit.sqlite", tmp_path / "before-tiers.sqlite"
    AuditTrail(first).record(_diagnosis(0.3), source="cli", who="a")
    # The shape of a database from before triage tiers (a valid chain, no tier column), as a new file:
    # the migration runs the first time a process opens a file.
    subprocess.run([SQLITE, str(first), f"ALTER TABLE diagnoses DROP COLUMN tier; VACUUM INTO '{path}'"], check=True)
    with closing(sqlite3.connect(path)) as db:
        assert "tier" not in {r[1] for r in db.execute("PRAGMA table_info(diagnoses)")}
    trail = AuditTrail(path)   # the migration adds the column
    trail.record(_diagnosis(0.97, "high"), source="cli", who="b")
    newest, oldest = trail.rows()
    assert (newest["tier"], oldest["tier"]) == ("high", None)
    assert trail.verify()["ok"]
    subprocess.run([SQLITE, str(path), "DROP TRIGGER diagnoses_no_update; "
                    "UPDATE diagnoses SET tier = 'low' WHERE id = 2"], check=True)
    assert "row 2: its content does not match its hash" in trail.verify()["problem"]


# -- drift that survives a case mix (golive.monitor) ---------------------------------------------------

def _logit(p):
    return np.log(p / (1 - p))


def test_a_normal_heavy_day_is_a_case_mix_finding_not_drift():
    from pneumo_core.golive import monitor
    rng = np.random.default_rng(8)
    reference, labels = _site(rng)                                   # 66 % pneumonia, like the go-live set
    day, day_labels = _site(rng, n_pneumonia=15, n_normal=135)     # a clinic day: 10 % pneumonia
    report = monitor.compare(reference, day, reference_labels=labels)
    assert report["psi_unadjusted"] >= monitor.PSI_WARNING        # what raised the alarm before
    assert not report["drift"] and report["warnings"] == []
    prevalence = report["prevalence"]
    assert prevalence["changed"] and prevalence["ci"][0] <= 0.10 <= prevalence["ci"][1]
    assert "case mix" in report["findings"][0]


def test_an_acquisition_change_is_still_drift_at_a_normal_heavy_case_mix():
    from pneumo_core.golive import monitor
    rng = np.random.default_rng(9)
    reference, labels = _site(rng)
    day, _ = _site(rng, n_pneumonia=15, n_normal=135)
    crushed = 1 / (1 + np.exp(-0.25 * _logit(np.clip(day, 1e-6, 1 - 1e-6)) - 0.5))   # contrast gone: scores bunch
    report = monitor.compare(reference, crushed, reference_labels=labels)
    assert report["drift"] and "re-weighted to the recent case mix" in report["warnings"][0]


def test_em_recovers_the_prevalence_and_predictive_values_follow_it():
    from pneumo_core.golive import monitor
    rng = np.random.default_rng(10)
    reference, labels = _site(rng, 400, 400)
    for share in (0.1, 0.5, 0.8):
        n1 = int(1000 * share)
        recent, _ = _site(rng, n1, 1000 - n1)
        assert monitor.estimate_prevalence(reference, labels, recent)["recent"] == pytest.approx(share, abs=0.05)
    ppv, npv = monitor.predictive_values(0.95, 0.80, 0.10)
    assert ppv == pytest.approx(0.095 / (0.095 + 0.18)) and npv == pytest.approx(0.72 / 0.725)


# -- the tier on the PDF and in the DICOM SR ---------------------------------------------------------------

def test_the_pdf_carries_the_tier_and_its_guarantee_or_says_not_validated(tmp_path):
    import io as bytes_io

    import pypdf

    from pneumo_core.evaluation.track_record import track_record
    from pneumo_core.serve.report import report_pdf
    (tmp_path / "metadata.json").write_text(json.dumps({"id": "v1"}))
    record = track_record(tmp_path)
    film = np.full((64, 64), 128, np.uint8)
    tiers = fit_tiers(*_site(np.random.default_rng(11)), site="north")
    tier, sentence = dx.tier_of(tiers, 0.99, ood_flag=False)
    validated = Diagnosis(name="f.png", probability=0.99, label="PNEUMONIA", threshold=0.5,
                          certainty=dx.certainty(0.99, 0.5), heatmap=None, method=None, model_id="v1",
                          sha256="0" * 64, tier=tier, tier_guarantee=sentence)

    def text(d):
        pdf = pypdf.PdfReader(bytes_io.BytesIO(report_pdf(film, d, record)))
        return " ".join(" ".join(page.extract_text() for page in pdf.pages).split())

    assert "Triage tier High: at site north" in text(validated)
    unvalidated = text(_diagnosis(0.99))
    assert "not validated at this site" in unvalidated and "clear" not in unvalidated.lower().split()


def test_the_structured_report_carries_the_tier():
    import io as bytes_io

    import pydicom
    from conftest import chest_studies

    from pneumo_core.serve import dicom_out

    def roundtrip(ds):
        buffer = bytes_io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return pydicom.dcmread(bytes_io.BytesIO(buffer.getvalue()))

    source = roundtrip(chest_studies([(1, "PA", "CHEST", "CR")])[0])
    high = dicom_out.read_result(roundtrip(dicom_out.structured_report(source, _diagnosis(0.99, "high"))))
    assert high["tier"] == "high" and high["certainty"] == "clear"
    plain = dicom_out.read_result(roundtrip(dicom_out.structured_report(source, _diagnosis(0.99))))
    assert plain["tier"] is None and plain["certainty"].startswith("not validated at this site")


# -- predict --json ------------------------------------------------------------------------------------------
