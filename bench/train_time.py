"""Full `train` on the shared data with default settings: wall time (cold and warm feature cache),
peak memory, and the internal test split's metrics. Runs the real command line."""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, SHARED_DATA, report

# A fresh home (cold feature cache); PNEUMO_BENCH_HOME keeps it for the browser benchmark.
with tempfile.TemporaryDirectory() as scratch:
    home = os.environ.get("PNEUMO_BENCH_HOME") or scratch
    env = {**os.environ, "PNEUMO_HOME": home}
    for run in ("cold cache", "warm cache"):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pneumo_core", "train", "--data", str(SHARED_DATA)],
                                cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode:
            sys.exit(result.stderr[-3000:])
        report(f"train wall time, {run}", seconds / 60, "min", "<= 10 min" if run == "cold cache" else "")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    report("train peak resident memory", peak_gb, "GB", "< 6 GB")
    version = result.stdout.strip().splitlines()[-1]
    test = json.loads((Path(home) / "models" / version / "metrics.json").read_text())["test"]
    for key in ("roc_auc", "accuracy", "sensitivity", "specificity", "ece"):
        report(f"internal test {key}", test[key], "", ">= 0.98" if key == "roc_auc" else "")
    report("stored threshold", test["threshold"])
