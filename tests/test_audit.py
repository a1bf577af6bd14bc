"""Audit trail: WAL, rows, CSV, and many threads diagnosing at once without losing a row."""
import csv
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import synthetic_film

from pneumo_core.audit import COLUMNS, AuditTrail, to_csv
from pneumo_core.diagnosis import Diagnosis


def fake(i: int, flag=False, label="NORMAL", model="v1") -> Diagnosis:
    return Diagnosis(name=f"Doe_Jane_{i}.png", probability=0.01 * i, label=label, threshold=0.5,
                     certainty="clear", heatmap=None, method="gradcam", model_id=model, sha256=f"{i:064x}",
                     ood_score=1.5 if flag else 0.5, ood_flag=flag)


def test_wal_mode_rows_filters_and_csv(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite")
    assert trail.journal_mode() == "wal"
    trail.record(fake(1), source="cli", who="alice")
    trail.record(fake(2, flag=True, label="PNEUMONIA", model="v2"), source="dashboard")
    newest, oldest = trail.rows()
    assert newest["sha256"] == f"{2:064x}" and newest["ood_flag"] is True and newest["who"] is None
    assert oldest["who"] == "alice" and oldest["source"] == "cli" and oldest["probability"] == pytest.approx(0.01)
    assert [r["model"] for r in trail.rows(call="PNEUMONIA")] == ["v2"]
    assert [r["model"] for r in trail.rows(flagged_only=True)] == ["v2"]
    assert [r["model"] for r in trail.rows(model="v1")] == ["v1"] and len(trail.rows(limit=1)) == 1
    table = list(csv.DictReader(io.StringIO(to_csv(trail.rows()))))
    assert tuple(table[0]) == COLUMNS and len(table) == 2 and table[1]["call"] == "NORMAL"
    assert "Doe" not in to_csv(trail.rows())  # never the file name (it may name the patient)


def test_a_second_opening_keeps_the_rows(tmp_path):
    AuditTrail(tmp_path / "a.sqlite").record(fake(1))
    assert len(AuditTrail(tmp_path / "a.sqlite").rows()) == 1


def test_concurrent_writers_lose_nothing(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite")
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: trail.record(fake(i)), range(400)))
    assert len(set(ids)) == 400
    assert sorted(r["sha256"] for r in trail.rows()) == sorted(f"{i:064x}" for i in range(400))


@pytest.mark.slow
def test_twelve_threads_diagnose_through_one_model_and_one_trail(trained_home, tmp_path):
    from pneumo_core.diagnosis import Diagnoser
    from pneumo_core.model import PneumoModel
    from pneumo_core.registry import resolve
    diagnoser = Diagnoser(PneumoModel.load(resolve(trained_home / "models")))
    assert diagnoser.ood is not None  # training wrote ood.npz
    trail = AuditTrail(tmp_path / "audit.sqlite")
    films = [synthetic_film(i % 2, np.random.default_rng(i)) for i in range(12)]
    barrier = threading.Barrier(12)

    def work(i):
        barrier.wait()  # all start together
        d = diagnoser.diagnose(films[i], f"f{i}.png", method=("gradcam", "gradcam++", None)[i % 3])
        trail.record(d, source="test", who=f"user{i}")
        return d

    with ThreadPoolExecutor(12) as pool:
        done = list(pool.map(work, range(12)))
    rows = trail.rows()
    assert sorted(r["who"] for r in rows) == sorted(f"user{i}" for i in range(12))
    assert {r["sha256"] for r in rows} == {d.sha256 for d in done} and len({d.sha256 for d in done}) == 12
    assert all(r["ood_score"] is not None and r["ood_flag"] in (True, False) for r in rows)
    # Same film, with and without a heatmap: same probability and OOD score (one embedding per idea).
    with_map, without = diagnoser.diagnose(films[0]), diagnoser.diagnose(films[0], method=None)
    assert with_map.probability == pytest.approx(without.probability, abs=1e-5)
    assert with_map.ood_score == pytest.approx(without.ood_score, rel=1e-4) and without.heatmap is None
