"""PACS round trip throughput: films per minute through retrieve (WADO-RS), score + Grad-CAM,
SR + heatmap SC encoding, and two STOW-RS, against a local Orthanc; and each step's share.

Films: the site films (`../shared/data/site`, real paediatric chest X-rays at their own size),
converted to CR DICOM with synthetic patient names and stored before the clock starts. Model:
PNEUMO_BENCH_MODEL (a version folder), else the active model of PNEUMO_HOME if there is one, else
an untrained MobileNetV2@224 (same compute, meaningless calls). It is copied into a temporary
home, so the bench writes nothing outside it.

    python bench/pacs.py [--films 60]
"""
from common import REPO, SHARED, report  # noqa: I001

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(REPO))   # scripts/ (the Orthanc starter) is not installed with pneumo_core
from pneumo_core.imaging.films import read_film  # noqa: E402
from pneumo_core.learn import store  # noqa: E402
from pneumo_core.pacs.client import PacsClient  # noqa: E402
from pneumo_core.pacs.state import PacsState  # noqa: E402
from pneumo_core.pacs.watcher import Watcher  # noqa: E402
from pneumo_core.records import registry  # noqa: E402
from pneumo_core.records.audit import AuditTrail  # noqa: E402
from pneumo_core.serve.dicom_out import film_as_cr  # noqa: E402
from scripts.orthanc_dev import OrthancServer, installed  # noqa: E402

SITE = SHARED / "data" / "site"


def model_folder(home: Path) -> Path:
    """A version folder in `home/models` to bench with (see the module docstring)."""
    wanted = os.environ.get("PNEUMO_BENCH_MODEL")
    source = Path(wanted) if wanted else None
    if source is None and os.environ.get("PNEUMO_HOME"):
        active = registry.active_version(Path(os.environ["PNEUMO_HOME"]) / "models")
        source = Path(os.environ["PNEUMO_HOME"]) / "models" / active if active else None
    if source is not None:
        shutil.copytree(source, home / "models" / source.name)
        return home / "models" / source.name
    import pandas as pd

    from pneumo_core.learn.model import assemble, build_classifier, build_embedder, build_head
    base = build_embedder("mobilenet_v2", 224, None).get_layer("backbone")
    model = assemble("mobilenet_v2", base, build_classifier(base.output_shape[1:], [build_head(base.output_shape[-1])]))
    empty = pd.DataFrame()
    path = store.save_version(home / "models", "00000000-000000-untrained", model,
                              {"backbone": "mobilenet_v2", "image_size": 224, "normalisation": "equalize",
                               "threshold": 0.5, "created": "2000-01-01"}, {}, empty, empty, {})
    registry.register(home / "models", path.name)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=int, default=60)
    parser.add_argument("--size", type=int, help="resize each film to SIZE x SIZE*0.8 (e.g. 2048, a typical CR); "
                                                 "default: the site films' own size")
    args = parser.parse_args()
    if not installed():
        sys.exit("bench/pacs.py needs Debian's orthanc and orthanc-dicomweb (make system-packages)")
    from pneumo_core.learn.model import PneumoModel
    from pneumo_core.serve.diagnosis import Diagnoser
    paths = sorted(SITE.glob("*/*.jpeg"))[: args.films + 1]
    with tempfile.TemporaryDirectory() as tmp, OrthancServer(Path(tmp) / "orthanc") as server:
        home = Path(tmp) / "home"
        diagnoser = Diagnoser(PneumoModel.load(model_folder(home)))
        client = PacsClient(server.dicomweb, server.user, server.password)
        grays = [read_film(p).gray for p in paths]
        if args.size:
            grays = [cv2.resize(g, (int(args.size * 0.8), args.size), interpolation=cv2.INTER_CUBIC) for g in grays]
        films = [film_as_cr(g, f"Synthetic^Bench{i:03d}", f"BENCH{i:03d}") for i, g in enumerate(grays)]
        for ds in films:
            client.store([ds], ds.StudyInstanceUID)
        watcher = Watcher(client, diagnoser, PacsState(home / "pacs.sqlite"), AuditTrail(home / "audit.sqlite"),
                          home / "outbox", who="bench")
        watcher.poll(study_uid=films[0].StudyInstanceUID)   # warm-up: graph tracing, first requests
        watcher.timings.clear()
        start = time.perf_counter()
        summary = watcher.poll()
        seconds = time.perf_counter() - start
        n = summary["stored"]
        pixels = sum(ds.Rows * ds.Columns for ds in films[1:]) / max(1, len(films) - 1) / 1e6
        print(f"{n} site films ({pixels:.1f} Mpx on average), model {diagnoser.model.id}, "
              f"{os.cpu_count()} CPUs", flush=True)
        report("pacs round trip", n / seconds * 60, "films/min", ">= 60 films/min")
        report("pacs round trip per film", seconds / max(n, 1) * 1000, "ms")
        steps = dict(watcher.timings)
        steps["other (search, state, audit)"] = seconds - sum(steps.values())
        for step, spent in steps.items():
            report(f"pacs share: {step}", 100 * spent / seconds, "%")


if __name__ == "__main__":
    main()
