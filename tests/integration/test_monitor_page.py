"""The monitoring page over an audit trail whose recent calls have drifted from the reference."""
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from pneumo_core.records.audit import AuditTrail

VERSION = "20260101-000000-mobilenet_v2"


def _validation_probabilities(n=600, seed=0):
    """A bimodal distribution like a calibrated model's on a mixed validation split."""
    rng = np.random.default_rng(seed)
    return np.clip(np.concatenate([rng.beta(1.5, 12, n // 3), rng.beta(12, 1.5, n - n // 3)]), 0, 1)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A registry with one version (card and predictions only: monitoring needs no model weights)."""
    folder = tmp_path / "home" / "models" / VERSION
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"id": VERSION, "created": "2026-01-01T00:00:00+00:00",
                                                      "threshold": 0.5, "backbone": "mobilenet_v2"}))
    val = _validation_probabilities()
    pd.DataFrame({"path": [f"v{i}.jpeg" for i in range(len(val))], "label": (val > 0.5).astype(int),
                  "probability": val, "split": "val"}).to_csv(folder / "predictions.csv", index=False)
    (folder.parent / "ACTIVE").write_text(VERSION + "\n")   # the registry's pointer: this version is active
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_monitor_page_shows_the_warning(home):
    from streamlit.testing.v1 import AppTest

    from pneumo_core.records.access import Actor
    trail = AuditTrail(home / "audit.sqlite")
    recent = datetime.now(UTC)
    for i, p in enumerate(np.random.default_rng(8).uniform(0.4, 0.6, 60)):
        trail.record(SimpleNamespace(when=(recent - timedelta(hours=i)).isoformat(timespec="seconds"),
                                     sha256=f"{i:064x}", model_id=VERSION, probability=float(p), threshold=0.5,
                                     label="NORMAL", ood_score=0.5, ood_flag=False, method=None), source="cli")
    at = AppTest.from_file(str(REPO / "views" / "monitor.py"), default_timeout=120)
    at.session_state["actor"] = Actor("test", "admin")
    at.run()
    assert not at.exception
    assert any("shifted from the reference" in e.value for e in at.error)
    assert {m.label for m in at.metric} >= {"PSI", "KS statistic", "Diagnoses in the window"}
