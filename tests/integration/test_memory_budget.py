"""The dashboard's memory budget (README "Memory budget"): what hostile or merely large films cost.

Memory is measured in a fresh subprocess (so nothing this test process holds counts): the peak
resident size while the films are read, from `ru_maxrss` and from a 2 ms psutil sampler (the
larger of the two), minus the resident size just before, after warming the same code path with
a small film. The child runs with a fixed glibc mmap threshold: by default glibc raises it after a
large free, and a warm-up's freed heap then absorbs later allocations unseen (the JPEG 2000 bomb on
the old reader measured 37 MB that way instead of 133 MB).
"""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from conftest import REPO, synthetic_film
from helpers import shown, widget
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from pneumo_core.records.access import Actor

# Runs in the child: `films` (paths) are read by `STEP` (Python code using `data`, `name`) after
# `WARM` ran once; prints one JSON line {"growth_mb": ..., **extra}.
CHILD = r"""
import json, os, resource, sys, threading, time
import psutil
sys.path.insert(0, {repo!r})
films, warm = {films!r}, {warm!r}
extra = {{}}
{setup}
def step(data, name):
{step}
for path in warm:
    try:
        step(open(path, "rb").read(), os.path.basename(path))
    except Exception:
        pass
process, top, done = psutil.Process(), [0], threading.Event()
def sample():
    while not done.is_set():
        top[0] = max(top[0], process.memory_info().rss)
        time.sleep(0.002)
base_rss, base_max = process.memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
outcomes = []
for path in films:
    try:
        step(open(path, "rb").read(), os.path.basename(path))
        outcomes.append("read")
    except Exception as error:
        outcomes.append(str(error))
done.set()
sampler.join()
sampled = max(top[0], process.memory_info().rss) - base_rss
by_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_max
print(json.dumps({{"growth_mb": max(sampled, by_maxrss) / 2 ** 20, "outcomes": outcomes, **extra}}))
"""

READ_FILM = ("from pneumo_core.imaging.films import read_film", "    read_film(data, name)")


def uploader(at):
    """The Diagnose page's file uploader."""
    return widget(at, "file_uploader", "Chest X-rays")


def growth(films, warm, setup, step, env=None) -> dict:
    """Run the child on `films` (after `warm`) and return its JSON line."""
    code = CHILD.format(repo=str(REPO), films=[str(f) for f in films], warm=[str(w) for w in warm],
                        setup=setup, step=step)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MALLOC_MMAP_THRESHOLD_": "131072",
                                 **(env or {})}, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def dicom_with_frame(frame: bytes, rows: int, columns: int) -> bytes:
    """An 8-bit DX chest film whose header says rows x columns around a JPEG 2000 `frame`."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def big_png(path, seed: int, shape=(7000, 7000), dtype=np.uint8):
    """A large film that costs a few hundred KB: constant columns, a few rows of noise make it distinct."""
    rng = np.random.default_rng(seed)
    film = np.full(shape, 90 if dtype == np.uint8 else 20000, dtype)
    film[:, ::9] = 160 if dtype == np.uint8 else 45000
    film[:4] = rng.integers(0, np.iinfo(dtype).max, (4, shape[1]), dtype=dtype)
    Image.fromarray(film).save(path, compress_level=1)
    return path


def test_a_jpeg_2000_bomb_is_refused_with_under_50_mb_growth(tmp_path):
    import openjpeg
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(dicom_with_frame(bytes(openjpeg.encode(np.zeros((6000, 6000), np.uint8))), 512, 512))
    normal = tmp_path / "normal.dcm"  # warms the same reader and decoder
    normal.write_bytes(dicom_with_frame(bytes(openjpeg.encode(np.full((512, 512), 80, np.uint8))), 512, 512))
    assert bomb.stat().st_size < 1000
    out = growth([bomb], [normal], *READ_FILM)
    assert "compressed frame holds 6000x6000" in out["outcomes"][0], out
    # Before: 57-135 MB (the decoder's buffer is sparsely written, so how much of it becomes resident
    # depends on whether the kernel backs it with huge pages).
    assert out["growth_mb"] < 50, out


def test_a_large_16_bit_png_decodes_with_a_bounded_peak(tmp_path):
    film = big_png(tmp_path / "film16.png", 0, dtype=np.uint16)
    small = tmp_path / "small16.png"
    Image.fromarray(np.full((100, 100), 3000, np.uint16)).save(small)
    out = growth([film], [small], *READ_FILM)
    # Pillow's own 16-bit buffer is 98 MB; the whole-film float mapping made it 749 MB.
    assert out["outcomes"] == ["read"] and out["growth_mb"] < 200, out


@pytest.mark.parametrize("step, low, high", [
    ("    np.ones(len(data) * 2 ** 20 // 8).sum()", 270, None),     # a transient peak of len(data) MB
    ("    kept.append(np.ones(len(data) * 2 ** 20 // 8))", 270, None),  # len(data) MB kept
    ("    np.ones(2 ** 20 // 8).sum()", None, 20),                  # 1 MB at a time, whatever the file
], ids=["freed at once", "kept", "small"])
def test_the_measurement_sees_what_a_step_allocates(tmp_path, step, low, high):
    # The thresholds above mean something only if the child's measurement sees memory taken: a known
    # allocation of 300 MB, kept or freed at once, must show; 1 MB at a time must not add up.
    warm, measured = tmp_path / "warm.bin", tmp_path / "measured.bin"
    warm.write_bytes(b"x")              # 1 MB while warming
    measured.write_bytes(b"x" * 300)    # 300 MB measured
    out = growth([measured], [warm], "import numpy as np\nkept = []", step)
    assert out["outcomes"] == ["read"], out
    assert (low is None or out["growth_mb"] >= low) and (high is None or out["growth_mb"] < high), out


def test_distinct_7000_px_pngs_through_the_diagnose_path_keep_only_small_copies(trained_home, tmp_path):
    # 8 measured films are enough: before, ~245 MB were kept per film (full-size film + float heatmap), 2 GB here.
    films = [big_png(tmp_path / f"film{i:02d}.png", i) for i in range(9)]
    setup = ("import ui\nfrom pneumo_core.records import registry\n"
             "version = str(registry.resolve(ui.settings().models_dir, None))")
    step = ("    gray, d = ui.diagnosis(version, data, name, 'gradcam', ui.decode_budget())\n"
            "    assert max(gray.shape) <= ui.BUDGET.display_side and d.heatmap.dtype.name == 'uint8'\n"
            "    extra['cache_mb'] = ui.diagnosis_cache().nbytes / 2 ** 20\n"
            "    extra['cached'] = len(ui.diagnosis_cache())")
    # The first film warms the model, the CAM's traced graph and the cache; 8 more are measured.
    out = growth(films[1:], films[:1], setup, step, env={"PNEUMO_HOME": str(trained_home)})
    assert out["outcomes"] == ["read"] * 8, out["outcomes"][:3]
    assert out["cached"] == 9 and out["cache_mb"] / out["cached"] <= 3, out   # each entry <= ~3 MB (ui.diagnosis)
    assert out["growth_mb"] < 500, out


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_film(seed % 2, np.random.default_rng(seed), (90, 120))).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def home(trained_home, tmp_path, monkeypatch):
    copy = tmp_path / "home"
    shutil.copytree(trained_home, copy, ignore=shutil.ignore_patterns("audit.sqlite*"))
    monkeypatch.setenv("PNEUMO_HOME", str(copy))
    return copy


@pytest.fixture(scope="module")
def module_home(trained_home, tmp_path_factory):
    copy = tmp_path_factory.mktemp("budget") / "home"
    shutil.copytree(trained_home, copy, ignore=shutil.ignore_patterns("audit.sqlite*"))
    return copy


@pytest.fixture
def page_home(module_home, monkeypatch, kept_keras_session):
    """The module's copy of the trained home for the page tests, which add no version: its model is loaded and
    traced once (the page keeps Keras's state across runs, as under app.py)."""
    monkeypatch.setenv("PNEUMO_HOME", str(module_home))
    return module_home


def test_an_upload_of_too_many_files_is_refused_with_the_limit(page_home, monkeypatch):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("PNEUMO_FILES_PER_UPLOAD", "2")
    at = AppTest.from_file(str(REPO / "views" / "diagnose.py"), default_timeout=120)
    at.session_state["actor"] = Actor("tester", "admin")
    at.run()
    uploader(at).set_value([(f"film{i}.png", _png(i), "image/png") for i in range(3)])
    at.run()
    assert not at.exception
    assert any("3 files in one upload; at most 2" in e.value for e in at.error)
    assert not at.metric  # nothing was scored


def test_a_request_over_its_pixel_budget_gets_a_message_for_the_film_that_crossed_it(page_home, monkeypatch):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("PNEUMO_REQUEST_MPX", "0.025")  # two 90 x 120 films fit, the third does not
    at = AppTest.from_file(str(REPO / "views" / "diagnose.py"), default_timeout=120)
    at.session_state["actor"] = Actor("tester", "admin")
    at.run()
    uploader(at).set_value([(f"budget{i}.png", _png(100 + i), "image/png") for i in range(3)])
    at.run()
    assert not at.exception
    errors = [shown(e.value) for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("budget2.png: not read") and "0.025 megapixels" in errors[0]


def test_paging_the_metrics_error_browser_leaves_the_diagnosis_cache_alone(page_home):
    from streamlit.testing.v1 import AppTest

    import ui
    at = AppTest.from_file(str(REPO / "views" / "metrics.py"), default_timeout=120)
    at.session_state["actor"] = Actor("tester", "admin")
    at.run()
    widget(at, "radio", "Show").set_value("true positives").run()
    pages = min(3, int(widget(at, "number_input", "Page").max))
    assert pages >= 2, "the synthetic test split should give more than one page of true positives"
    before = len(ui.diagnosis_cache())
    for number in range(1, pages + 1):
        widget(at, "number_input", "Page").set_value(number).run()
        assert not at.exception and at.get("image")  # the page's films are drawn
    assert len(ui.diagnosis_cache()) == before  # ... from their own small cache, not the diagnoses'


def test_at_most_models_loaded_versions_stay_loaded_least_recently_used_first(home):
    import ui
    (first,) = [d for d in (home / "models").iterdir() if d.is_dir() and not d.name.startswith(".")]
    versions = [str(first)] + [str(shutil.copytree(first, home / "models" / f"2000010{i}-000000-mobilenet_v2"))
                               for i in (1, 2)]
    assert ui.BUDGET.models_loaded == 2
    ui.diagnoser_for.clear()
    a, b = ui.diagnoser_for(versions[0]), ui.diagnoser_for(versions[1])
    assert ui.diagnoser_for(versions[0]) is a  # a hit makes the first version the most recent
    ui.diagnoser_for(versions[2])  # a third version unloads the least recently used: the second
    assert ui.diagnoser_for(versions[0]) is a
    assert ui.diagnoser_for(versions[1]) is not b
