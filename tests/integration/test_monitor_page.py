"""The monitoring page over an audit trail whose recent calls have drifted from the reference."""
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO
from helpers import monitored_home

from pneumo_core.records.audit import AuditTrail

VERSION = "20260101-000000-mobilenet_v2"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    return monitored_home(tmp_path / "home", VERSION)


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
