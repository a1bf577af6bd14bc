"""The audit trail under many threads diagnosing at once through one model: no row is lost."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import synthetic_film

from pneumo_core.records.audit import AuditTrail


def test_twelve_threads_diagnose_through_one_model_and_one_trail(trained_home, tmp_path):
    from pneumo_core.learn.model import PneumoModel
    from pneumo_core.records.registry import resolve
    from pneumo_core.serve.diagnosis import Diagnoser
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


