"""Triage tiers through the command line: predict --json carries the tier once the version has a site guarantee."""
import json

import numpy as np

from pneumo_core.evaluation.triage import fit_tiers
from pneumo_core.records.audit import AuditTrail
from pneumo_core.serve import diagnosis as dx

PNEUMONIA, NORMAL = (6, 2), (2, 5)   # beta distributions of the scores (as in tests/unit/test_triage.py)


def _site(rng, n_pneumonia=131, n_normal=67):
    p = np.concatenate([rng.beta(*PNEUMONIA, n_pneumonia), rng.beta(*NORMAL, n_normal)])
    return p, np.r_[np.ones(n_pneumonia), np.zeros(n_normal)].astype(int)


def test_predict_json_carries_the_tier_once_the_version_has_a_site_guarantee(trained_home, synthetic_data, tmp_path,
                                                                             cli):
    import shutil

    from pneumo_core.records.registry import resolve
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)    # the session's model stays without a site report
    film = next((synthetic_data / "test" / "PNEUMONIA").iterdir())

    def predict():
        result = cli("predict", "--json", film, home=home)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)[0]

    plain = predict()
    assert plain["tier"] is None and plain["tier_guarantee"] is None
    tiers = fit_tiers(*_site(np.random.default_rng(12)), site="north")
    reports = resolve(home / "models", None) / "site_reports"
    reports.mkdir()
    (reports / "north.json").write_text(json.dumps({"site": "north", "created": "2026-01-01T00:00:00+00:00",
                                                    "triage": tiers.to_dict()}))
    tiered = predict()
    assert (tiered["tier"], tiered["tier_guarantee"]) == dx.tier_of(tiers, tiered["probability"], tiered["ood_flag"])
    assert "site north" in tiered["tier_guarantee"] or tiered["ood_flag"]
    recorded = AuditTrail(home / "audit.sqlite").rows(limit=1)[0]
    assert recorded["tier"] == tiered["tier"]
