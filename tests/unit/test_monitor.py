"""Monitoring over the audit trail: PSI / KS drift against the reference, OOD rate, calls per day."""
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import monitored_home, validation_probabilities

from pneumo_core.golive import monitor
from pneumo_core.records.audit import AuditTrail
from pneumo_core.settings import load_settings

VERSION = "20260101-000000-mobilenet_v2"
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    return monitored_home(tmp_path / "home", VERSION)


def _record(trail, probabilities, days_ago=0.0, ood=None):
    for i, p in enumerate(probabilities):
        when = NOW - timedelta(days=days_ago, minutes=i)
        trail.record(SimpleNamespace(when=when.isoformat(timespec="seconds"), sha256=f"{i:064x}", model_id=VERSION,
                                     probability=float(p), threshold=0.5,
                                     label="PNEUMONIA" if p >= 0.5 else "NORMAL",
                                     ood_score=2.0 if ood and ood(i) else 0.5,
                                     ood_flag=bool(ood and ood(i)), method=None), source="dashboard")


def test_psi_and_ks_separate_a_shift_from_a_sample_of_the_same_films():
    reference = validation_probabilities()
    same = np.random.default_rng(7).choice(reference, 200, replace=False)
    shifted = np.clip(reference[:200] * 0.4 + 0.5, 0, 1)
    assert monitor.psi(reference, same) < 0.1
    assert monitor.psi(reference, shifted) > monitor.PSI_WARNING
    assert monitor.ks(reference, same)[1] > monitor.KS_P_WARNING
    assert monitor.ks(reference, shifted)[1] < monitor.KS_P_WARNING


def test_a_sample_of_the_validation_films_raises_no_warning(home):
    trail = AuditTrail(home / "audit.sqlite")
    sample = np.random.default_rng(3).choice(validation_probabilities(), 150, replace=False)
    _record(trail, sample, days_ago=1)
    report = monitor.monitor(load_settings(), days=7, now=NOW, trail=trail)
    assert report["n"] == 150 and not report["drift"] and report["warnings"] == []
    assert report["reference"]["label"] == "internal validation split" and report["reference"]["n"] == 600
    assert sum(d["diagnoses"] for d in report["per_day"]) == 150


def test_an_injected_shift_is_flagged_with_a_warning(home):
    trail = AuditTrail(home / "audit.sqlite")
    shifted = np.random.default_rng(4).uniform(0.35, 0.65, 120)      # a site where everything looks borderline
    _record(trail, shifted, days_ago=2)
    _record(trail, validation_probabilities(80, 9), days_ago=40)     # older than the window: ignored
    report = monitor.monitor(load_settings(), days=7, now=NOW, trail=trail)
    assert report["n"] == 120 and report["drift"]
    assert report["psi"] >= monitor.PSI_WARNING and "shifted" in report["warnings"][0]


def test_a_high_ood_rate_is_flagged_and_few_diagnoses_are_not_judged(home):
    trail = AuditTrail(home / "audit.sqlite")
    sample = np.random.default_rng(5).choice(validation_probabilities(), 60, replace=False)
    _record(trail, sample, days_ago=1, ood=lambda i: i % 3 == 0)
    report = monitor.monitor(load_settings(), days=7, now=NOW, trail=trail)
    assert report["ood_rate"] == pytest.approx(1 / 3) and report["drift"]
    assert any("unlike the training films" in w for w in report["warnings"])
    few = monitor.compare(validation_probabilities(), [0.5] * 5)
    assert not few["drift"] and "only 5 diagnoses" in few["warnings"][0]


def test_monitor_command_prints_json(home, cli):
    trail = AuditTrail(home / "audit.sqlite")
    _record(trail, np.random.default_rng(6).uniform(0.4, 0.6, 50), days_ago=0)
    result = cli("monitor", "--days", "36500", "--json", home=home)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["model"] == VERSION and report["n"] == 50 and report["drift"]
    assert {"psi", "ks", "ks_p", "ood_rate", "per_day", "warnings", "lines"} <= set(report)


