"""Shared fixtures: synthetic films and datasets (no patient data), tiny models."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data" / "chest_xray"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"


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


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """train 60/60 with a tiny val/ (folded into train) and a test/ of 20/20."""
    return make_dataset(tmp_path_factory.mktemp("data"), {"train": (60, 60), "val": (4, 4), "test": (20, 20)})


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_data) -> tuple[Path, subprocess.CompletedProcess]:
    """(home dir, the finished `train` command) of one model trained by the CLI on synthetic data
    (random-init MobileNetV2)."""
    home = tmp_path_factory.mktemp("home")
    result = run_cli("train", "--data", synthetic_data, "--weights", "none", "--image-size", 64,
                     "--trials", 2, "--epochs", 3, "--views", 1, "--ensemble", 2, home=home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return home, result


@pytest.fixture(scope="session")
def trained_home(trained_run) -> Path:
    """A home dir with one model trained by the CLI on synthetic data (random-init MobileNetV2)."""
    return trained_run[0]


@pytest.fixture(scope="module")
def browser_page(request):
    """A headless Chromium page (Playwright, Debian's chromium) for a browser test module, sized by the
    module's VIEWPORT = (width, height), else 1360 x 1500."""
    from helpers import CHROMIUM, CHROMIUM_FLAGS
    from playwright.sync_api import sync_playwright
    width, height = getattr(request.module, "VIEWPORT", (1360, 1500))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser.new_page(viewport={"width": width, "height": height})
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where a browser test's screenshots go: PNEUMO_SCREENSHOT_DIR (kept), else a temporary folder."""
    folder = Path(os.environ.get("PNEUMO_SCREENSHOT_DIR") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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


@pytest.fixture
def orthanc(tmp_path_factory):
    """A fresh Orthanc for one test (see `start_orthanc`), stopped after it."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


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
