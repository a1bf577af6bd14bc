"""PACS watcher throughput with 1 and with 2 `pacs watch` processes against one Orthanc and one PostgreSQL
(issue #25): films per minute from the archive to an SR and a heatmap stored back, and the ratio.

Each run starts from an empty archive and a fresh database: the films are stored first, then the
watchers start (`python -m pneumo_core pacs watch --interval 1`, each with a home of its own and the
model store shared). Films/min is counted while every watcher is scoring: from the latest first call
to the earliest last call of the watchers (the audit rows' times, which say which watcher made each
call), so TensorFlow's start-up and a watcher that loads later are left out.

Films: the site films (`../shared/data/site`, real paediatric chest X-rays at their own size) as CR
DICOM with synthetic patient names; synthetic 512 x 448 films where there are fewer than asked. Model: the active
model of PNEUMO_HOME/models if there is one; else, with --untrained-224, an untrained MobileNetV2 at
224 px (the real model's compute, meaningless calls); else a tiny model trained here first on
synthetic films (MobileNetV2 at 64 px, ~30 s). The output says which. Needs Debian's PostgreSQL and
Orthanc, like the tests.

    python bench/pacs_watchers.py [--films 100] [--repeat 1] [--untrained-224]
"""
from common import REPO, SHARED, report  # noqa: I001

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(REPO))             # scripts/ (the Orthanc starter)
sys.path.insert(0, str(REPO / "tests"))   # the test's PostgreSQL starter and synthetic films
from conftest import TINY_TRAIN, make_dataset, synthetic_film  # noqa: E402
from postgres import PostgresServer, binaries  # noqa: E402

from pneumo_core.imaging.films import read_film  # noqa: E402
from pneumo_core.pacs.client import PacsClient  # noqa: E402
from pneumo_core.records import registry  # noqa: E402
from pneumo_core.serve.dicom_out import film_as_cr  # noqa: E402
from pneumo_core.settings import load_settings  # noqa: E402
from scripts.orthanc_dev import OrthancServer, installed  # noqa: E402

SITE = SHARED / "data" / "site"
WAIT_SECONDS = 1800     # the most one run may take before the bench gives up


def cli(*args, home: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pneumo_core ARGS` with PNEUMO_HOME=home; fails the bench when it fails."""
    result = subprocess.run([sys.executable, "-m", "pneumo_core", *map(str, args)], cwd=REPO, text=True,
                            capture_output=True, env={**os.environ, "PNEUMO_HOME": str(home), **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"`{' '.join(map(str, args))}` failed:\n{result.stderr[-3000:]}")
    return result


def model_version(models: Path, scratch: Path, untrained_224: bool) -> tuple[Path, str]:
    """A version folder in `models` (the shared store) to score with, and what it is."""
    home = load_settings().home     # PNEUMO_HOME, else ./.pneumo
    active = registry.active_version(home / "models") if (home / "models").is_dir() else None
    if active:
        (models / active).symlink_to((home / "models" / active).resolve())
        return models / active, f"the active model {active} of {home}"
    if untrained_224:
        from pacs import model_folder  # bench/pacs.py's untrained MobileNetV2@224
        os.environ.pop("PNEUMO_HOME", None)
        path = model_folder(models.parent)
        return path, "an untrained MobileNetV2 at 224 px (the real model's compute; the calls mean nothing)"
    data = make_dataset(scratch / "synthetic", {"train": (60, 60), "test": (20, 20)})
    cli("train", "--data", data, *TINY_TRAIN, home=models.parent)
    version = registry.active_version(models)
    return models / version, f"a tiny model trained here ({version}: random-init MobileNetV2 at 64 px)"


def films(count: int) -> tuple[list, str]:
    """`count` grey films to store as CR, and what they are."""
    paths = sorted(SITE.glob("*/*.jpeg"))[:count]
    if len(paths) == count:
        grays = [read_film(p).gray for p in paths]
        megapixels = sum(g.size for g in grays) / len(grays) / 1e6
        return grays, f"{count} site films (real, {megapixels:.1f} Mpx on average)"
    import numpy as np
    rng = np.random.default_rng(0)
    return [synthetic_film(i % 2, rng, (512, 448)) for i in range(count)], f"{count} synthetic films (512 x 448)"


def run(watchers: int, grays: list, model: Path, models: Path, archive: OrthancServer, url: str,
        scratch: Path) -> dict:
    """Score `grays` with `watchers` processes; films/min while all of them scored, and the calls each made."""
    import requests
    for study in archive.get("/studies"):     # an empty archive: the films get new UIDs each run
        requests.delete(f"{archive.url}/studies/{study}", auth=archive.auth, timeout=60).raise_for_status()
    client = PacsClient(archive.dicomweb, archive.user, archive.password)
    for i, gray in enumerate(grays):
        ds = film_as_cr(gray, f"Synthetic^Bench{i:03d}", f"BENCH{i:03d}")
        client.store([ds], ds.StudyInstanceUID)
    shared = {"PNEUMO_DATABASE_URL": url, "PNEUMO_PACS_USER": archive.user, "PNEUMO_PACS_PASSWORD": archive.password,
              "TF_CPP_MIN_LOG_LEVEL": "2"}
    scratch.mkdir()
    cli("db", "upgrade", home=scratch / "dba", env=shared)
    processes = []
    for k in range(watchers):
        home = scratch / f"watcher{k}"
        home.mkdir()
        (home / "models").symlink_to(models)
        # USER names the watcher in its audit rows (`who`), so each call says which watcher made it.
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "pneumo_core", "pacs", "watch", "--url", archive.dicomweb, "--interval", "1",
             "--model", str(model)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=(home / "watch.err").open("w"),
            env={**os.environ, **shared, "PNEUMO_HOME": str(home), "USER": f"watcher{k}", "LOGNAME": f"watcher{k}"}))
    os.environ["PNEUMO_DATABASE_URL"] = url     # this process reads the shared records
    from pneumo_core.pacs.state import PacsState
    from pneumo_core.records.audit import AuditTrail
    state = PacsState(scratch / "pacs.sqlite")
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while len(state.films(statuses=("stored",))) < len(grays):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise SystemExit(f"the watchers did not store {len(grays)} films: {state.status()}")
            time.sleep(1)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)     # as systemd stops a watcher
        for process in processes:
            process.wait(timeout=60)
    # `shown`: when the watcher recorded the call, to the millisecond (`time`, when it was computed, is to the second)
    calls = [(datetime.fromisoformat(r["shown"]).timestamp(), r["who"]) for r in AuditTrail(scratch / "a").rows()]
    os.environ.pop("PNEUMO_DATABASE_URL")
    by_watcher = {who: sorted(t for t, w in calls if w == who) for who in {w for _, w in calls}}
    start = max(times[0] for times in by_watcher.values())     # every watcher is scoring from here ...
    end = min(times[-1] for times in by_watcher.values())      # ... to here
    within = sum(start < t <= end for t, _ in calls)
    return {"films_per_min": within / (end - start) * 60, "window_s": end - start, "films_in_window": within,
            "calls": Counter(w for _, w in calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each (1 and 2 watchers, in alternating order); the median is reported")
    parser.add_argument("--untrained-224", action="store_true",
                        help="without an active model in PNEUMO_HOME: score with an untrained MobileNetV2@224 "
                             "instead of training a tiny model")
    args = parser.parse_args()
    if not installed() or binaries() is None:
        sys.exit("bench/pacs_watchers.py needs Debian's orthanc, orthanc-dicomweb and postgresql "
                 "(make system-packages)")
    grays, what_films = films(args.films)
    with tempfile.TemporaryDirectory() as tmp, OrthancServer(Path(tmp) / "orthanc") as archive:
        scratch = Path(tmp)
        models = scratch / "store" / "models"     # the shared model store
        models.mkdir(parents=True)
        model, what_model = model_version(models, scratch, args.untrained_224)
        print(f"{what_films}; model: {what_model}; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f} before the runs", flush=True)
        server = PostgresServer(binaries()).start()
        results = {1: [], 2: []}
        try:
            for r in range(args.repeat):
                # alternating order, so a change in the machine's other load falls on both alike
                for k in ((1, 2) if r % 2 == 0 else (2, 1)):
                    result = run(k, grays, model, models, archive, server.new_database(), scratch / f"run{r}-{k}")
                    print(f"run {r + 1}, {k} watcher(s): {result['films_per_min']:.0f} films/min "
                          f"({result['films_in_window']} films in {result['window_s']:.1f} s; "
                          f"calls {dict(result['calls'])})", flush=True)
                    results[k].append(result["films_per_min"])
        finally:
            server.stop()
    for k, rates in results.items():
        report(f"pacs watch, {k} watcher process(es), films/min while all scored, median of {len(rates)} "
               f"(range {min(rates):.0f}-{max(rates):.0f})", float(statistics.median(rates)), "films/min")
    report("pacs watch, 2 watchers / 1 watcher (medians)",
           statistics.median(results[2]) / statistics.median(results[1]), "x")


if __name__ == "__main__":
    main()
