"""The stores' costs: a hash-chained audit append, `audit verify`, a polling read of the jobs
(`changed_since` against listing every row), and the SHA-256 check of a model at load."""
from common import report, timed  # noqa: I001

import json
import os
import tempfile
from pathlib import Path

from pneumo_core.records.audit import AuditTrail
from pneumo_core.serve.diagnosis import Diagnosis
from pneumo_core.jobs.queue import JobQueue
from pneumo_core.learn.store import file_sha256
from pneumo_core.settings import load_settings

ROWS, JOBS = 10_000, 500

with tempfile.TemporaryDirectory() as scratch:
    trail = AuditTrail(Path(scratch) / "audit.sqlite")
    d = Diagnosis(name="x.png", probability=0.7, label="PNEUMONIA", threshold=0.5, certainty="clear", heatmap=None,
                  method="gradcam", model_id="v1", sha256="ab" * 32, ood_score=0.4, ood_flag=False)
    seconds = timed(lambda: trail.record(d, source="bench", who="bench"), ROWS)
    report("audit append (hash-chained, one transaction each), mean", seconds.mean() * 1000, "ms")
    seconds = timed(trail.verify, 3)
    report(f"audit verify of {ROWS} rows", seconds.min(), "s")

    home = Path(scratch) / "home"
    queue = JobQueue(load_settings({"PNEUMO_HOME": str(home)}))
    with queue.store.transaction(write=True) as db:   # a server's long history of finished jobs
        for i in range(JOBS):
            db.execute("INSERT INTO jobs (state, submitted, submitted_by, params, percent) VALUES "
                       "('succeeded', '2026-01-01T00:00:00+00:00', 'bench', ?, 100)", (json.dumps({"seed": i}),))
    token = queue.changed_since(None)[1]
    report(f"jobs: list() of {JOBS} rows (the old 2 s poll)", timed(queue.list, 50).mean() * 1000, "ms")
    report("jobs: changed_since(token) (the new poll)", timed(lambda: queue.changed_since(token), 200).mean() * 1000,
           "ms")
    report("jobs: current() (running or oldest queued only)", timed(queue.current, 200).mean() * 1000, "ms")

models = Path(os.environ.get("PNEUMO_HOME", ".pneumo")) / "models"
keras_files = sorted(models.glob("*/model.keras"))
if keras_files:
    path = keras_files[-1]
    report(f"SHA-256 of model.keras at load ({path.stat().st_size / 2**20:.0f} MB)",
           timed(lambda: file_sha256(path), 5).min() * 1000, "ms")
