"""The PACS round trip on one machine (`make pacs-demo`): a local Orthanc, a few site films in it
as CR DICOM with synthetic patient names (plus one lateral, which the watcher skips with a
reason), and the watcher scoring them and storing the SR and the heatmap back.

Needs a trained model in PNEUMO_HOME (`make train`). Writes the archive's address and demo
credentials to PNEUMO_HOME/pacs.json, the secrets file the Worklist page and the CLI read, so in
a second terminal `make run` shows the scored films on the Worklist. Ctrl-C stops both; the
archive's storage stays in PNEUMO_HOME/pacs-demo for the next run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pneumo_core.imaging.films import read_film  # noqa: E402
from pneumo_core.pacs.client import PacsClient  # noqa: E402
from pneumo_core.records import registry  # noqa: E402
from pneumo_core.serve.dicom_out import film_as_cr  # noqa: E402
from pneumo_core.settings import load_settings  # noqa: E402
from scripts.orthanc_dev import OrthancServer, installed  # noqa: E402

SITE = REPO.parent / "shared" / "data" / "site"   # a later split of the training hospital's films


def demo_films(per_class: int) -> list:
    """`per_class` NORMAL and PNEUMONIA site films as frontal CR, plus one marked lateral."""
    paths = [p for label in ("PNEUMONIA", "NORMAL") for p in sorted((SITE / label).glob("*.jpeg"))[:per_class]]
    if not paths:
        sys.exit(f"no site films in {SITE}; the demo needs ../shared/data/site/{{NORMAL,PNEUMONIA}}/*.jpeg")
    films = [film_as_cr(read_film(p).gray, f"Demo^Patient{i:02d}", f"DEMO{i:03d}", accession=f"DEMO{i:03d}")
             for i, p in enumerate(paths)]
    films.append(film_as_cr(read_film(paths[0]).gray, "Demo^Lateral", "DEMO999", view_position="LL",
                            accession="DEMO999"))
    return films


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8042, help="Orthanc's HTTP port (local only)")
    parser.add_argument("--films", type=int, default=4, help="films per class")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between watcher polls")
    args = parser.parse_args()
    settings = load_settings()
    if not installed():
        sys.exit("Debian's orthanc and orthanc-dicomweb are needed: sudo make system-packages")
    if registry.active_version(settings.models_dir) is None:
        sys.exit(f"no trained model in {settings.models_dir}; train one first: make train")
    folder = settings.home / "pacs-demo"
    secrets_file = settings.home / "pacs.json"
    old = json.loads(secrets_file.read_text()) if secrets_file.is_file() else {}
    server = OrthancServer(folder / "orthanc", args.port, password=old.get("password")).start()
    try:
        secrets_file.write_text(json.dumps({"url": server.dicomweb, "user": server.user, "password": server.password}))
        secrets_file.chmod(0o600)
        client = PacsClient(server.dicomweb, server.user, server.password)
        if not client.search_films():
            for ds in demo_films(args.films):
                client.store([ds], ds.StudyInstanceUID)
        print(f"Orthanc: {server.url}/app/explorer.html (user {server.user}, password {server.password})\n"
              f"DICOMweb root: {server.dicomweb} (written to {secrets_file})\n"
              f"Worklist: run `make run` in another terminal and open the Worklist page.\n"
              f"Watcher: python -m pneumo_core pacs watch --interval {args.interval:g} (Ctrl-C stops the demo)",
              flush=True)
        env = {**os.environ, "PNEUMO_HOME": str(settings.home)}
        watcher = subprocess.Popen([sys.executable, "-m", "pneumo_core", "pacs", "watch", "--interval",
                                    str(args.interval)], cwd=REPO, env=env)
        # `kill` (SIGTERM) stops the watcher; its exit ends the wait below and Orthanc is stopped after it.
        # (SystemExit raised from the handler once hung the demo inside subprocess's wait.)
        signal.signal(signal.SIGTERM, lambda *_: watcher.terminate())
        try:
            watcher.wait()
        except KeyboardInterrupt:   # Ctrl-C reaches the watcher too (same process group)
            watcher.wait(timeout=60)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
