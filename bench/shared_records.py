"""The records on one shared PostgreSQL against the SQLite files: an audit append, audit appends/s
with 1, 2 and 4 writer processes (one chain), and job throughput with 1 and 2 `jobs runner`
workers (a fake 0.2 s job, so the ratio shows what the claims cost, not what training costs).

All on this one machine, the server started from Debian's packages like the tests do: read the
ratios, not the absolute figures. Needs PostgreSQL (/usr/lib/postgresql/*/bin).
"""
from common import REPO, report, timed  # noqa: I001

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(REPO / "tests"))
from postgres import PostgresServer, binaries  # noqa: E402

from pneumo_core.records.audit import AuditTrail  # noqa: E402
from pneumo_core.serve.diagnosis import Diagnosis  # noqa: E402

ROWS, PER_WRITER, JOBS = 2000, 500, 20
WORKER = REPO / "tests" / "records_worker.py"


def appends(home: Path, url: str | None) -> float:
    if url:
        os.environ["PNEUMO_DATABASE_URL"] = url
    else:
        os.environ.pop("PNEUMO_DATABASE_URL", None)
    trail = AuditTrail(home / "audit.sqlite")
    d = Diagnosis(name="x.png", probability=0.7, label="PNEUMONIA", threshold=0.5, certainty="clear", heatmap=None,
                  method="gradcam", model_id="v1", sha256="ab" * 32, ood_score=0.4, ood_flag=False)
    seconds = timed(lambda: trail.record(d, source="bench", who="bench"), ROWS).mean()
    os.environ.pop("PNEUMO_DATABASE_URL", None)
    return seconds


def processes(argv: list[str], count: int, env: dict) -> list[str]:
    """Run `count` worker processes at once; their outputs."""
    running = [subprocess.Popen([sys.executable, str(WORKER), *argv], env=env, cwd=REPO, text=True,
                                stdout=subprocess.PIPE) for _ in range(count)]
    outputs = [p.communicate()[0] for p in running]
    if any(p.returncode != 0 for p in running):
        raise SystemExit("a worker failed")
    return outputs


server = PostgresServer(binaries()).start()
try:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        report("audit append on SQLite (one transaction each), mean", appends(scratch / "a", None) * 1000, "ms")
        report("audit append on PostgreSQL (advisory lock, one transaction each), mean",
               appends(scratch / "b", server.new_database()) * 1000, "ms")
        for writers in (1, 2, 4):
            url = server.new_database()
            env = {**os.environ, "PYTHONPATH": str(REPO), "PNEUMO_HOME": str(scratch / f"w{writers}"),
                   "PNEUMO_DATABASE_URL": url}
            spans = [tuple(map(float, out.split())) for out in processes(["audit", str(PER_WRITER)], writers, env)]
            seconds = max(end for _, end in spans) - min(start for start, _ in spans)   # start-up left out
            report(f"audit appends/s on PostgreSQL, {writers} writer process(es) x {PER_WRITER} rows + events",
                   writers * PER_WRITER * 1.1 / seconds, "rows/s")
        from pneumo_core.jobs.queue import JobQueue
        from pneumo_core.records.access import Actor
        from pneumo_core.settings import TrainConfig, load_settings
        for runners in (1, 2):
            url = server.new_database()
            home = scratch / f"r{runners}"
            (scratch / "data" / "NORMAL").mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PYTHONPATH": str(REPO), "PNEUMO_HOME": str(home), "PNEUMO_DATABASE_URL": url,
                   "PNEUMO_JOB_RUNNERS": "workers", "PNEUMO_MIN_FREE_MB": "1"}
            os.environ["PNEUMO_DATABASE_URL"] = url     # before the queue: its store reads it
            queue = JobQueue(load_settings(env))
            for i in range(JOBS):
                queue.submit(TrainConfig(data_dir=str(scratch / "data")), actor=Actor(f"u{i}", "ml_lead"))
            os.environ.pop("PNEUMO_DATABASE_URL")
            processes(["jobs", str(home / "runs.txt")], runners, env)
            starts = sorted(float(line.split()[2]) for line in (home / "runs.txt").read_text().splitlines())
            assert len(starts) == JOBS, "each job runs once"
            report(f"jobs/min, {runners} runner(s), {JOBS} fake 0.2 s jobs (first start to last end)",
                   JOBS * 60 / (starts[-1] - starts[0] + 0.2), "jobs/min")
finally:
    server.stop()
