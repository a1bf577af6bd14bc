"""Shared fixtures: synthetic films and datasets (no patient data), tiny models; the tier marks.

Tiers by folder: tests/unit (fast, no subprocess-heavy set-up), tests/integration (the command line,
Orthanc, real trainings, real shared data), tests/e2e (the dashboard in a headless browser).
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Argon2's cheapest profile for every account and setup code the tests make, in this process and the servers and
# commands it starts: the production profile costs ~0.35 s per hash or sign-in, seconds per test that signs in
# (test_users.py keeps one test at the production cost).
os.environ.setdefault("PNEUMO_ARGON2_PROFILE", "CHEAPEST")
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data" / "chest_xray"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"


TIERS = ("unit", "integration", "e2e")


MODEL_FIXTURES = {"trained_run", "trained_home"}     # the fixtures of the session's one trained model


def needs_session_model(item: pytest.Item) -> bool:
    """Whether a test uses the session's trained model (directly or through another fixture)."""
    return bool(MODEL_FIXTURES & set(item.fixturenames))


def pytest_collection_modifyitems(items):
    """Mark each test with its tier, the name of the folder under tests/ that holds it, and order the files
    for two workers (`--dist loadfile` hands out whole files in this order): first the integration and
    browser files that need no trained model (they run while `session_model_in_background` trains it),
    then those that need it, then the unit tier's many small files, which even out the workers' ends (its files
    marked `slow_unit` first: last, one ended the run alone on one worker for ~15 s). Notes the files with a
    test that uses the browser (`shared_chromium`)."""
    root = Path(__file__).resolve().parent
    file_order: dict[Path, int] = {}
    for item in items:
        tier = item.path.resolve().relative_to(root).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit, tests/integration or tests/e2e")
        item.add_marker(tier)
        if tier == "unit":
            rank = 2 if item.get_closest_marker("slow_unit") else 3
        else:
            rank = 1 if needs_session_model(item) else 0
        file_order[item.path] = max(file_order.get(item.path, 0), rank)
        if BROWSER_FIXTURE in item.fixturenames:
            _browser_files.add(item.path)
    items.sort(key=lambda item: file_order[item.path])     # stable: each file keeps its own order


def pytest_unconfigure(config):
    """Freeze the objects left for the interpreter's last garbage collection: with TensorFlow loaded it walks
    them for 2.5-5 s of CPU at the end of each xdist worker (pneumo_core/__main__.py does the same for commands)."""
    import gc
    gc.freeze()


def synthetic_film(label: int, rng: np.random.Generator, shape=(96, 96)) -> np.ndarray:
    """A grey 'chest' with two dark lungs; pneumonia adds bright blotches inside a lung."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    film = 150 + 40 * yy + rng.normal(0, 8, shape)
    for cx in (0.3, 0.7):
        film -= 80 * np.exp(-(((xx - cx) / 0.12) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    if label:
        for _ in range(3):
            cx, cy = rng.choice([0.3, 0.7]) + rng.normal(0, 0.04), 0.5 + rng.normal(0, 0.1)
            film += 70 * np.exp(-(((xx - cx) / 0.06) ** 2 + ((yy - cy) / 0.06) ** 2))
    return np.clip(film, 0, 255).astype(np.uint8)


def make_dataset(root: Path, per_class: dict, seed: int = 0, shape=(96, 96), images_per_patient: int = 2) -> Path:
    """Write a Kermany-style layout: {split: (n_normal, n_pneumonia)} with patient-coded names."""
    rng = np.random.default_rng(seed)
    patient = 0
    for split, counts in per_class.items():
        for label, (cls, n) in enumerate(zip(("NORMAL", "PNEUMONIA"), counts)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                if i % images_per_patient == 0:
                    patient += 1
                name = (f"IM-{patient:04d}-{i % images_per_patient + 1:04d}.jpeg" if label == 0
                        else f"person{patient}_bacteria_{i}.jpeg")
                cv2.imwrite(str(folder / name), synthetic_film(label, rng, shape))
    return root


def run_cli(*args, home: Path, timeout: int = 600, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PNEUMO_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pneumo_core", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    """The command line run in this process, for tests where a subprocess is not the point (no interpreter
    and TensorFlow start per call).

    Returns `cli_here`: call(*args, home, stdin="", env_extra=None) -> CompletedProcess (returncode, stdout,
    stderr), as `run_cli` does; stdin is not a terminal.
    """
    return cli_here


@pytest.fixture
def kept_keras_session(monkeypatch):
    """Keras's global state kept across the AppTest runs of a page run on its own, as app.py keeps it for every
    page (`ui.keep_keras_session`); put back as it was after the test.

    Without it Streamlit clears Keras's session after every run, and the next run's diagnosis traces the
    model's functions again: 2-7 s per run of a Diagnose or Heatmaps page on this machine.
    """
    import keras

    import ui
    monkeypatch.setattr(keras.backend, "clear_session", keras.backend.clear_session)   # to put back afterwards
    ui.keep_keras_session()


def cli_here(*args, home: Path, stdin: str = "", env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """The command line run in this process (no interpreter and TensorFlow start per call); module- and
    session-scoped fixtures call it directly, tests through the `cli` fixture.

    Returns:
        CompletedProcess (returncode, stdout, stderr), as `run_cli` does; stdin is not a terminal.
    """
    from unittest import mock

    from pneumo_core.cli.main import main
    out, err = io.StringIO(), io.StringIO()
    with (mock.patch.dict(os.environ, {"PNEUMO_HOME": str(home), **(env_extra or {})}),
          mock.patch("sys.stdin", io.StringIO(stdin)),
          contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)):
        try:
            code = main([str(a) for a in args]) or 0     # as sys.exit(main()) exits
        except SystemExit as stopped:   # argparse's usage errors
            code = stopped.code or 0
    return subprocess.CompletedProcess(["pneumo_core", *map(str, args)], code, out.getvalue(), err.getvalue())


# The session's one trained model: random-init MobileNetV2 at 64 px, 2 trials x 3 epochs, 2 heads averaged,
# no augmented views in training and one test-time view (the defaults, 3 and 3, cost ~3x the time here).
TINY_TRAIN = ("--weights", "none", "--image-size", 64, "--trials", 2, "--epochs", 3, "--views", 0, "--ensemble", 2,
              "--tta-views", 1)


@contextlib.contextmanager
def made_once(tmp_path_factory, name: str):
    """A folder shared by the whole test run, xdist workers included, and whether it still needs making.

    Yields (folder, missing): the first worker to get here holds a file lock while it makes `folder`
    (missing is True) and marks it done; the others wait for the lock and find it made (missing is False).
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent          # every worker's base folder sits in this run's one folder
    folder, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            missing = not done.exists()
            if missing:
                shutil.rmtree(folder, ignore_errors=True)    # a half-made one from a failed try
                folder.mkdir()
            yield folder, missing
            if missing:
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def synthetic_dataset(tmp_path_factory) -> Path:
    """train 60/60 with a tiny val/ (folded into train) and a test/ of 20/20, one copy per test run."""
    with made_once(tmp_path_factory, "data") as (folder, missing):
        if missing:
            make_dataset(folder, {"train": (60, 60), "val": (4, 4), "test": (20, 20)})
    return folder


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """The synthetic dataset (`synthetic_dataset`), made once per test run."""
    return synthetic_dataset(tmp_path_factory)


def train_session_model(tmp_path_factory) -> Path:
    """The folder of the session's one model (home/ and train.json, the `train` command's outcome): trained
    by the CLI on the synthetic data (TINY_TRAIN) by whichever worker gets here first; the others wait."""
    with made_once(tmp_path_factory, "trained") as (folder, missing):
        if missing:
            result = run_cli("train", "--data", synthetic_dataset(tmp_path_factory), *TINY_TRAIN,
                             home=folder / "home")
            (folder / "train.json").write_text(json.dumps({"args": result.args, "returncode": result.returncode,
                                                           "stdout": result.stdout, "stderr": result.stderr}))
    return folder


@pytest.fixture(scope="session", autouse=True)
def session_model_in_background(request, tmp_path_factory):
    """Start training the session's model in a thread at this worker's first test, when any collected test
    needs it: the files that need no model run first (`pytest_collection_modifyitems`), so no worker sits
    waiting for the model at the start. The worker waits for the thread before it ends."""
    if not any(needs_session_model(item) for item in request.session.items):
        yield
        return
    # The worker's base temporary folder is made here, before the thread starts: pytest makes it on first use (wiping
    # any old one), unguarded, so the thread making it while this worker's first test made its tmp_path could
    # delete that test's folder (a CI run failed so: FileNotFoundError on a file in tmp_path).
    tmp_path_factory.getbasetemp()
    training = threading.Thread(target=train_session_model, args=(tmp_path_factory,), daemon=True)
    training.start()
    yield
    training.join()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_data) -> tuple[Path, subprocess.CompletedProcess]:
    """(home dir, the finished `train` command) of the session's one model, trained by the CLI on synthetic
    data (TINY_TRAIN) once per test run and shared by the xdist workers. Tests copy the home to change it."""
    folder = train_session_model(tmp_path_factory)
    result = subprocess.CompletedProcess(**json.loads((folder / "train.json").read_text()))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder / "home", result


@pytest.fixture(scope="session")
def trained_home(trained_run) -> Path:
    """A home dir with one model trained by the CLI on synthetic data (random-init MobileNetV2)."""
    return trained_run[0]


@pytest.fixture(scope="session")
def dashboard(trained_home, synthetic_data, tmp_path_factory):
    """One `streamlit run app.py` for the browser modules whose home can be shared (they add diagnoses, a
    verdict, a retrained candidate, a site's validation; none needs a home of its own): over a copy of the
    trained home, the synthetic data as its data folder, a labelled site folder under PNEUMO_SITE_DATA
    (sites/clinic, 20 + 20 films), the administrator "tester" to sign in as. Started once per xdist worker that
    runs one of its modules (`--dist loadfile` keeps each module on one worker; xdist_group marks would group
    the modules, but pytest 9.2 ignores them: pytest-xdist issue 1386).

    Returns:
        SimpleNamespace(url, home, log): the dashboard's address, its PNEUMO_HOME and its server log.
    """
    from types import SimpleNamespace

    from helpers import dashboard_with_tester
    root = tmp_path_factory.mktemp("dashboard")
    home = root / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*"))
    make_dataset(root / "sites" / "clinic", {".": (20, 20)}, seed=11)
    log = root / "server.log"
    env = {"PNEUMO_DATA": str(synthetic_data), "PNEUMO_SITE_DATA": str(root / "sites")}
    with dashboard_with_tester(home, log, env=env) as url:
        yield SimpleNamespace(url=url, home=home, log=log)


BROWSER_FIXTURE = "browser"
_browser_files: set[Path] = set()   # the collected files with a test that uses the browser
_chromium: dict = {}                # "playwright", "browser": this worker's Chromium while it runs browser files


def shared_chromium():
    """This worker's one headless Chromium (Playwright, Debian's chromium, helpers.CHROMIUM_FLAGS), started at the
    first browser test and kept while the worker's next test is in a browser file: a driver and a Chromium
    start cost ~2.5 CPU-s, once per worker instead of once per file. `pytest_runtest_teardown` ends it
    before any other file runs: a live sync Playwright marks its event loop as this thread's running one, and
    asyncio.run() refuses to start under it."""
    if "browser" not in _chromium or not _chromium["browser"].is_connected():
        from helpers import CHROMIUM, CHROMIUM_FLAGS, require_chromium
        from playwright.sync_api import sync_playwright
        require_chromium()
        close_chromium()
        _chromium["playwright"] = sync_playwright().start()
        _chromium["browser"] = _chromium["playwright"].chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    return _chromium["browser"]


def close_chromium() -> None:
    """End this worker's Chromium and its Playwright driver, when they run."""
    browser, playwright = _chromium.pop("browser", None), _chromium.pop("playwright", None)
    try:
        if browser is not None and browser.is_connected():
            browser.close()
    finally:
        if playwright is not None:
            playwright.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a test's fixtures are torn down (its file's browser context among them), end the worker's Chromium
    unless its next test is in a browser file too (`shared_chromium`)."""
    try:
        return (yield)
    finally:
        if _chromium and (nextitem is None or nextitem.path not in _browser_files):
            close_chromium()


@pytest.fixture(scope="module")
def browser():
    """The worker's headless Chromium (`shared_chromium`), for a module that makes its own contexts (each
    context is a separate browser profile: its own cookies and sessions). Skips where chromium is missing."""
    return shared_chromium()


@pytest.fixture(scope="module")
def browser_page(browser, request):
    """A page in a browser context of the calling module's own (nothing, cookies or sign-ins, carried over from
    another module), sized by the module's VIEWPORT = (width, height), else 1360 x 1500."""
    width, height = getattr(request.module, "VIEWPORT", (1360, 1500))
    context = browser.new_context(viewport={"width": width, "height": height})
    yield context.new_page()
    context.close()


def start_orthanc(folder: Path, port: int | None = None, password: str | None = None):
    """Start Debian's Orthanc (with DICOMweb) on a free local port, basic auth on, storage in `folder`.

    Skips the calling test where it is not installed, but fails under CI (make test installs it)."""
    from scripts.orthanc_dev import OrthancServer, installed
    if not installed():
        if os.environ.get("CI"):
            pytest.fail("CI needs /usr/sbin/Orthanc and its DICOMweb plugin (make test installs orthanc, "
                        "orthanc-dicomweb)")
        pytest.skip("Debian's orthanc / orthanc-dicomweb are not installed (make test installs them)")
    return OrthancServer(folder, port, password=password).start()


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory):
    """The test session's one Orthanc (see `start_orthanc`), stopped at its end. Its users are put in the
    xdist group "orthanc" (pytest_collection_modifyitems), so one worker runs them all, one at a time; each
    starts from an empty archive (`emptied`)."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_orthanc(tmp_path_factory):
    """An Orthanc of the calling test module's own (`start_orthanc`; it starts in under a second), empty, stopped
    after the module: for browser modules whose dashboard reads the archive all along, so they need not queue
    in the "orthanc" xdist group of the session's Orthanc."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


def emptied(server):
    """`server` with every study deleted: the watcher searches the whole archive, so each user of the
    session's Orthanc starts from an empty one."""
    import requests
    for study in server.get("/studies"):
        requests.delete(f"{server.url}/studies/{study}", auth=server.auth, timeout=60).raise_for_status()
    assert server.get("/statistics")["CountInstances"] == 0
    return server


@pytest.fixture
def orthanc(orthanc_server):
    """The session's Orthanc, emptied for one test."""
    return emptied(orthanc_server)


def chest_studies(specs, seed: int = 0, shape=(256, 224)) -> list:
    """Synthetic films as CR/DX DICOM (synthetic patient names), one study per spec.

    Args:
        specs: (label 0/1, view position, body part, modality) per study.
    Returns:
        The pydicom Datasets, in the order of `specs`.
    """
    from pneumo_core.serve.dicom_out import film_as_cr
    rng = np.random.default_rng(seed)
    return [film_as_cr(synthetic_film(label, rng, shape), f"Synthetic^Patient{i:03d}", f"SYN{seed:02d}{i:03d}",
                       view_position=view, body_part=body, modality=modality, accession=f"ACC{seed:02d}{i:03d}")
            for i, (label, view, body, modality) in enumerate(specs)]


def pacs_env(server) -> dict:
    """Environment variables that point Pneumo at an `OrthancServer`."""
    return {"PNEUMO_PACS_URL": server.dicomweb, "PNEUMO_PACS_USER": server.user,
            "PNEUMO_PACS_PASSWORD": server.password}


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for this test session (per xdist worker; `tests/postgres.py`); skips when
    PostgreSQL is not installed."""
    from postgres import PostgresServer, binaries
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; `make system-packages` does it)")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_url(request, monkeypatch):
    """Each test twice: the records in SQLite files (PNEUMO_DATABASE_URL unset), and in a fresh database
    of the session's PostgreSQL. Returns the URL set in PNEUMO_DATABASE_URL, or None for SQLite."""
    if request.param == "sqlite":
        monkeypatch.delenv("PNEUMO_DATABASE_URL", raising=False)
        return None
    url = request.getfixturevalue("postgres_server").new_database()
    monkeypatch.setenv("PNEUMO_DATABASE_URL", url)
    return url
