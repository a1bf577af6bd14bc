"""Run every benchmark in turn (about 20 minutes on 2 cores); each prints `bench:` lines.

The browser benchmark runs last, on the model that train_time.py leaves in PNEUMO_HOME."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
home = here / "out" / "home"
shutil.rmtree(home, ignore_errors=True)  # train_time.py must start from a cold cache
env = {**os.environ, "PNEUMO_BENCH_HOME": str(home), "PNEUMO_HOME": str(home)}
for script in ("embeddings.py", "tuning.py", "latency.py", "train_time.py", "jobs.py", "diagnose_browser.py",
               "load.py", "decode_memory.py", "naive_vs_pneumo.py", "fine_tune_step.py"):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(here / script)], cwd=here, env=env, check=True)
