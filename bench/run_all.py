"""Run every benchmark in turn (about 15 minutes on 2 cores); each prints `bench:` lines."""
import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
for script in ("embeddings.py", "tuning.py", "latency.py", "train_time.py"):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(here / script)], cwd=here, check=True)
