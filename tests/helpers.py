"""Helpers shared by test modules (test modules never import each other).

- A hostile corpus of image files, generated here (no patient data committed): CASES maps a case
  name to its bytes and either the message (part) expected or a check of the film read.
- A tiny model whose evidence is known (bright_spot_model), for CAM and OOD tests.
- process_gone: a process has ended (or is a zombie).
- Films for the Diagnose page and reports: chest_film (body, lungs, diaphragm), dicom_film (with
  study identifiers), png_bytes.
- Browser tests: require_chromium, a dashboard server (start_dashboard, stop, free_port, dashboard_with_tester),
  screenshots kept for the documentation (screenshot); the browser and its page are conftest fixtures
  (browser, browser_page).
- Sign-in: accounts made with the command line (add_user),
  browser sign-in (sign_in), a PDF's text (pdf_text), a DICOM with a patient's name in a numeric
  field (poisoned_dicom).
"""
import contextlib
import gzip
import io
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from pneumo_core.imaging.films import read_film

RNG = np.random.default_rng(0)
RAMP = np.tile(np.linspace(0, 4095, 96).astype(np.uint16), (80, 1))  # 12-bit, dark left to bright right
FILM = (np.tile(np.linspace(20, 230, 100), (90, 1)) + RNG.normal(0, 5, (90, 100))).clip(0, 255).astype(np.uint8)
PATIENT = "Doe^Jane"


def shown(markdown: str) -> str:
    """What a reader sees of a Markdown element whose untrusted parts were escaped (`ui.literal`): the text
    without its backslash escapes. AppTest gives an element's Markdown source."""
    return re.sub(r"\\(.)", r"\1", markdown)


def validation_probabilities(n=600, seed=0) -> np.ndarray:
    """A bimodal distribution like a calibrated model's on a mixed validation split."""
    rng = np.random.default_rng(seed)
    return np.clip(np.concatenate([rng.beta(1.5, 12, n // 3), rng.beta(12, 1.5, n - n // 3)]), 0, 1)


def monitored_home(home: Path, version: str) -> Path:
    """A registry under `home` with one active version: its card and validation predictions only
    (monitoring needs no model weights). Returns `home`."""
    import json

    import pandas as pd
    folder = home / "models" / version
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"id": version, "created": "2026-01-01T00:00:00+00:00",
                                                      "threshold": 0.5, "backbone": "mobilenet_v2"}))
    val = validation_probabilities()
    pd.DataFrame({"path": [f"v{i}.jpeg" for i in range(len(val))], "label": (val > 0.5).astype(int),
                  "probability": val, "split": "val"}).to_csv(folder / "predictions.csv", index=False)
    (folder.parent / "ACTIVE").write_text(version + "\n")   # the registry's pointer: this version is active
    return home


def encode(array, fmt="PNG", mode=None, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_bomb(width=20000, height=20000) -> bytes:
    """A valid PNG signature and IHDR claiming a huge image, with a tiny IDAT."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def animated(fmt) -> bytes:
    frames = [Image.fromarray(np.full((80, 80), v, np.uint8)) for v in (0, 128, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def exif_rotated() -> bytes:
    """A 100 wide x 90 high JPEG whose EXIF says 'rotate 90°': it must be read 90 wide x 100 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(FILM, "JPEG", exif=exif.tobytes())


def colour_photo(fmt="JPEG") -> bytes:
    yy, xx = np.mgrid[0:120, 0:160]
    rgb = np.stack([xx * 255 // 160, yy * 255 // 120, 255 - xx * 255 // 160], axis=2).astype(np.uint8)
    return encode(rgb, fmt)


def dicom(pixels=RAMP, photometric="MONOCHROME2", syntax=ExplicitVRLittleEndian, preamble=True,
          pixel_data=True, bits=12, **tags) -> bytes:
    """A DX chest film as DICOM, with patient-identifying tags that must never come out.

    `bits` stored; up to 8 the pixels are stored in 8-bit cells (BitsAllocated 8), else in 16-bit ones.
    """
    allocated, dtype = (8, np.uint8) if bits <= 8 else (16, np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT, "SECRET-123", "20190101"
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined, ds.StudyDate = "DX", "PA", "CHEST", "20240301"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits, bits - 1, 0
    if pixel_data:
        ds.PixelData = pixels.astype(dtype).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    if syntax.is_compressed and syntax in (RLELossless, JPEG2000Lossless):
        ds.compress(syntax)
    elif syntax.is_compressed:  # no encoder: fake an encapsulated stream under that syntax
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(200)])
        ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:  # a bare data set: no preamble, no 'DICM', no file meta
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def deflated_garbage() -> bytes:
    """A DICOM whose file meta says 'deflated' but whose body is not deflate data: pydicom cannot parse it."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta)
    return b"\0" * 128 + b"DICM" + buffer.getvalue() + b"not deflate data " * 10


def voi_lut() -> Sequence:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.add_new(0x00283006, "US", [255 - i // 16 for i in range(4096)])  # LUTData: inverting, 12 -> 8 bits
    return Sequence([item])


def mono2(film):
    return read_film(dicom()).gray


def wide_open(film):
    return read_film(dicom(WindowCenter=2048, WindowWidth=4096)).gray


# Each case: file bytes, and either the message (part) expected or a check of the film read.
def with_frame(frame: bytes, syntax, rows: int, columns: int) -> bytes:
    """An 8-bit DX chest DICOM whose header says rows x columns around an encapsulated `frame`."""
    ds = pydicom.dcmread(io.BytesIO(dicom(np.zeros((rows, columns), np.uint8), bits=8)))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def j2k(pixels) -> bytes:
    import openjpeg
    return bytes(openjpeg.encode(pixels))


def deflated(extra_zeros: int = 0) -> bytes:
    """The DX film as a deflated DICOM, its deflated data set followed by `extra_zeros` zero bytes."""
    ds = pydicom.dcmread(io.BytesIO(dicom()))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    start = 144 + struct.unpack("<I", data[140:144])[0]  # after the file meta group
    body = zlib.decompress(data[start:], -zlib.MAX_WBITS) + bytes(extra_zeros)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return data[:start] + packer.compress(body) + packer.flush()


CASES = {
    "zero-byte": (b"", "the file is empty"),
    "truncated PNG": (encode(FILM)[:300], "damaged or truncated"),
    "truncated JPEG": (encode(FILM, "JPEG")[:600], "damaged or truncated"),
    "PNG signature then garbage": (b"\x89PNG\r\n\x1a\n" + RNG.bytes(500), "damaged or truncated"),
    "random bytes named .png": (RNG.bytes(2000), "not a supported image type"),
    "text file": (b"patient notes: cough, fever\n" * 20, "not a supported image type"),
    "PDF": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\n", "this is a PDF document"),
    "GIF": (encode(FILM, "GIF"), "this is a GIF image"),
    "animated GIF": (animated("GIF"), "this is a GIF image"),
    "animated PNG": (animated("PNG"), "animated image (3 frames)"),
    "BMP": (encode(FILM, "BMP"), "this is a BMP image"),
    "TIFF": (encode(FILM, "TIFF"), "this is a TIFF image"),
    "HEIC phone photo": (b"\x00\x00\x00\x18ftypheic" + bytes(100), "HEIC photo"),
    "gzip": (gzip.compress(encode(FILM)), "not a supported image type"),
    "1x1 px PNG": (encode(np.zeros((1, 1), np.uint8)), "1x1 pixels; at least 64x64"),
    "63 px JPEG": (encode(np.zeros((63, 200), np.uint8), "JPEG"), "200x63 pixels"),
    "20000x20000 header bomb": (png_header_bomb(), "megapixels"),
    "colour photo JPEG": (colour_photo(), "colour photo"),
    "colour photo PNG": (colour_photo("PNG"), "colour photo"),
    "16-bit PNG": (encode(RAMP.astype(np.uint16) * 16, mode="I;16"),
                   lambda f: f.gray.dtype == np.uint8 and f.gray[:, 0].max() == 0 and f.gray[:, -1].min() == 255),
    "RGBA PNG": (encode(np.dstack([FILM] * 3 + [np.full_like(FILM, 200)])),
                 lambda f: f.gray.shape == (90, 100) and np.abs(f.gray.astype(int) - FILM).max() <= 1),
    "palette PNG": (encode(FILM, mode="P"), lambda f: f.gray.shape == (90, 100)),
    "1-bit PNG": (encode(FILM > 128), lambda f: set(np.unique(f.gray)) <= {0, 255}),
    "gray film saved as RGB JPEG": (encode(np.dstack([FILM] * 3), "JPEG", quality=95),
                                    lambda f: f.info.format == "JPEG" and np.abs(f.gray.astype(int) - FILM).mean() < 3),
    "CMYK JPEG": (encode(np.dstack([FILM] * 3), "JPEG", mode="CMYK", quality=95),
                  lambda f: np.abs(f.gray.astype(int) - FILM).mean() < 3),
    "EXIF rotated JPEG": (exif_rotated(), lambda f: f.gray.shape == (100, 90)),
    "DICOM MONOCHROME2": (dicom(), lambda f: f.gray[:, 0].max() == 0 and f.gray[:, -1].min() == 255
                          and f.info.summary() == "DICOM · DX · PA · 2024-03-01"),
    "DICOM MONOCHROME1 (inverted)": (dicom(photometric="MONOCHROME1"),
                                     lambda f: np.array_equal(f.gray, 255 - mono2(f))),
    "DICOM with window": (dicom(WindowCenter=1024, WindowWidth=1024),
                          lambda f: f.gray[:, :12].max() == 0 and f.gray[:, 36:].min() == 255),
    "DICOM with VOI LUT": (dicom(VOILUTSequence=voi_lut(), WindowCenter=1024, WindowWidth=1024),  # LUT wins
                           lambda f: f.gray[:, 0].min() == 255 and f.gray[:, -1].max() == 0),
    "DICOM rescale slope/intercept": (dicom(RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=3096,
                                            WindowWidth=8192),
                                      lambda f: np.abs(f.gray.astype(int) - wide_open(f)).max() <= 1),
    "DICOM RLE compressed": (dicom(syntax=RLELossless), lambda f: np.array_equal(f.gray, mono2(f))),
    "DICOM JPEG 2000 compressed": (dicom(syntax=JPEG2000Lossless), lambda f: np.array_equal(f.gray, mono2(f))),
    "DICOM without preamble": (dicom(preamble=False), lambda f: np.array_equal(f.gray, mono2(f))),
    "DICOM MPEG-2 (no decoder)": (dicom(syntax=MPEG2MPML), "compressed DICOM (MPEG2"),
    "DICOM multi-frame": (dicom(np.stack([RAMP] * 3), NumberOfFrames=3), "multi-frame DICOM (3 frames)"),
    "DICOM no pixel data": (dicom(pixel_data=False), "no pixel data"),
    "DICOM truncated": (dicom()[:-4000], "damaged or truncated"),
    "DICOM deflated garbage": (deflated_garbage(), "the deflated DICOM data is damaged"),
    "DICOM header not parseable": (b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\x10\x00\x00\x00"
                                   + b"\x02\x00\x10\x00ZZ\xff\xff" + b"x" * 40,
                                   "the DICOM file is damaged or truncated"),
    "DICOM deflated without meta length": (deflated()[:134] + b"\x01\x00" + deflated()[136:],
                                           "without a file meta group length"),
    "DICOM frame larger than its header": (with_frame(j2k(np.zeros((400, 300), np.uint8)), JPEG2000Lossless, 80, 96),
                                           "its compressed frame holds 300x400"),
    "DICOM frame without a header": (with_frame(b"\0" * 64, JPEG2000Lossless, 80, 96), "no readable"),
    "DICOM CT": (dicom(Modality="CT"), "DICOM CT image, not a plain radiograph"),
    "DICOM lateral view": (dicom(ViewPosition="LL"), "lateral view (LL)"),
    "DICOM knee": (dicom(BodyPartExamined="KNEE"), "body part KNEE"),
    "DICOM header bomb": (dicom(Rows=20000, Columns=20000), "megapixels"),
}


# -- a model with known evidence ---------------------------------------------------------------------

SPOT_SIZE = 32


def bright_spot_model():
    """Nested backbone whose only channel fires on bright pixels; the logit grows with them (SPOT_SIZE px input)."""
    import keras

    from pneumo_core.learn.model import assemble, build_classifier, build_head
    inputs = keras.Input((SPOT_SIZE, SPOT_SIZE, 3))
    x = keras.layers.Conv2D(1, 1, activation="relu", name="bright")(inputs)
    backbone = keras.Model(inputs, x, name="backbone")
    backbone.get_layer("bright").set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32), np.array([-0.5], np.float32)])
    head = build_head(1, units=1, dropout=0.0)
    dense, out = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
    dense.set_weights([np.ones((1, 1), np.float32), np.zeros(1, np.float32)])
    out.set_weights([np.full((1, 1), 5.0, np.float32), np.array([-1.0], np.float32)])
    return assemble("mobilenet_v2", backbone, build_classifier((SPOT_SIZE, SPOT_SIZE, 1), [head]))


# -- processes ---------------------------------------------------------------------------------------

def process_gone(pid: int | None) -> bool:
    """True when `pid` is not running (never started, exited, or a zombie waiting to be reaped)."""
    import psutil
    if not pid:
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def png_bytes(gray: np.ndarray) -> bytes:
    return encode(gray)


def chest_film(shape=(200, 160), diaphragm: float = 0.55, seed: int = 0) -> np.ndarray:
    """A synthetic frontal film: dark air around a bright body (an ellipse), two dark lungs above
    `diaphragm` (a fraction of the height) and a bright, evenly grey abdomen below it."""
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    body = ((xx - 0.5) / 0.38) ** 2 + ((yy - 0.55) / 0.5) ** 2 <= 1
    film = np.where(body, 190.0, 15.0)
    for cx in (0.33, 0.67):
        lung = ((xx - cx) / 0.11) ** 2 + ((yy - (diaphragm - 0.2)) / 0.19) ** 2 <= 1
        film[lung & body & (yy < diaphragm)] = 70
    return np.clip(film + rng.normal(0, 4, shape), 0, 255).astype(np.uint8)


def dicom_film(pixels: np.ndarray, accession: str = "ACC-2024-0042", study_uid: str = "1.2.826.0.1.3680043.2.1125.1",
               **tags) -> bytes:
    """An 8-bit AP chest film as DICOM with study identifiers (`dicom`'s patient tags come along)."""
    return dicom(pixels, bits=8, **{"AccessionNumber": accession, "StudyInstanceUID": study_uid, "ViewPosition": "AP",
                                    **tags})


REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]
PASSWORD = "correct horse battery staple"


def require_chromium() -> None:
    """Skip the calling test module where Debian's chromium is missing (an error on CI, which installs it)."""
    import pytest
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI needs /usr/bin/chromium for the browser test (make test installs it)")
        pytest.skip("Debian's chromium is not installed (make test installs it)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def users_cli(home: Path, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`python -m pneumo_core users ARGS` with PNEUMO_HOME=home; stdin is not a terminal."""
    return subprocess.run([sys.executable, "-m", "pneumo_core", "users", *map(str, args)], cwd=REPO, input=stdin or "",
                          env={**os.environ, "PNEUMO_HOME": str(home)}, capture_output=True, text=True, timeout=120)


def add_user(home: Path, name: str, role: str, password: str = PASSWORD, exist_ok: bool = False) -> None:
    """Create an account with the command line (run in this process: no interpreter start per account), the
    password given twice on standard input."""
    from conftest import cli_here
    result = cli_here("users", "add", name, "--role", role, home=home, stdin=f"{password}\n{password}\n")
    assert result.returncode == 0 or (exist_ok and "already exists" in result.stderr), result.stderr


def start_dashboard(home: Path, log: Path, port: int | None = None, extra_args=(), env=None,
                    address: str | None = "127.0.0.1"):
    """`streamlit run app.py` as a subprocess; returns (process, url) once /_stcore/health answers.

    `address=None` leaves the address to .streamlit/config.toml, as `make run` does.
    """
    port = port or free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.headless", "true", *(["--server.address", address] if address else []), *extra_args]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PNEUMO_HOME": str(home), **(env or {})},
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError("streamlit exited:\n" + log.read_text()[-2000:])
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("streamlit did not start:\n" + log.read_text()[-2000:])


def stop(process: subprocess.Popen) -> None:
    """End a test's dashboard server at once (SIGKILL): its home is thrown away, and Streamlit's orderly exit
    (SIGTERM) took 2-5 s once TensorFlow was loaded."""
    process.kill()
    process.wait(timeout=30)


@contextlib.contextmanager
def dashboard_with_tester(home: Path, log: Path, env=None):
    """The dashboard over `home` (start_dashboard, extra environment `env`) with the administrator account
    "tester" to sign in as (the dashboard opens on its sign-in page); yields its url and stops it after."""
    add_user(home, "tester", "admin", exist_ok=True)
    process, url = start_dashboard(home, log, env=env)
    try:
        yield url
    finally:
        stop(process)


def sign_in(page, url: str, name: str, password: str = PASSWORD, timeout: int = 120_000) -> None:
    """Open `url` (any page's address: a new browser session starts signed out), sign in with a local
    account and wait for the signed-in sidebar; the page of `url` is then shown if the role allows it."""
    page.goto(url)
    field, signed_in = page.get_by_label("Account name", exact=True), page.get_by_text(re.compile("^Signed in as "))
    field.or_(signed_in).first.wait_for(timeout=timeout)
    if signed_in.count():   # Streamlit kept this tab's session across the reload
        if signed_in.first.inner_text().split("\n")[0] == f"Signed in as {name}":
            return
        sign_out(page, timeout)
    field.fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_text(f"Signed in as {name}").wait_for(timeout=timeout)


# How often a browser test's page.wait_for_function looks again (ms). Playwright's default, every animation frame,
# keeps headless Chromium drawing frames for the whole wait: 0.068 CPU-s per second waited against 0.004 every
# 100 ms (tests/e2e, a bare page, this 2-core machine), and the browser tier waits minutes in all.
POLL_MS = 100


def open_page(page, server: str, title: str, name: str = "tester", afresh: bool = True,
              timeout: int = 120_000) -> None:
    """Show the page `title` of the dashboard at `server` to `name` as a reader goes: by its sidebar link when
    this tab already shows that dashboard signed in as `name` (a rerun in the same session), else by its
    address and a sign-in (`sign_in`). A page load and its sign-in cost ~2.4 CPU-s, mostly Chromium's, against
    ~0.35 s for a click (8 pages each way, measured on this 2-core machine).

    Args:
        afresh: when the tab shows `title` already, go by another page first, so that its widgets (an upload,
            a selection) start empty as on a new page load; else leave it as it is.
    """
    links = page.locator("[data-testid=stSidebarNavLink]")
    signed_in = page.get_by_text(re.compile("^Signed in as "))
    if not (page.url.startswith(server) and links.count() and signed_in.count()
            and signed_in.first.inner_text().split("\n")[0] == f"Signed in as {name}"):
        sign_in(page, f"{server}/{title.lower()}", name, timeout=timeout)
        return
    current = page.locator("[data-testid=stSidebarNavLink][aria-current=page]")
    titled = re.compile(rf"{re.escape(title)}$")      # the title, after its icon's name ("monitoring", "Metrics")
    if current.filter(has_text=titled).count():
        if not afresh:
            return
        other = links.filter(has_not_text=titled).last
        other.click()
        other.and_(current).wait_for(timeout=timeout)    # the other page's run has begun ...
        idle(page, timeout)                              # ... and ended: its widgets replaced the page's
    links.filter(has_text=titled).click()
    links.filter(has_text=titled).and_(current).wait_for(timeout=timeout)


def screenshot(target, name: str) -> None:
    """Keep a screenshot of a page (the whole page) or of one element (a Locator) as `name` in PNEUMO_SCREENSHOT_DIR,
    where the documentation's come from (docs/clinician.md says how); without it none is taken: nobody would look
    at it, and each costs Chromium a capture and a PNG encoding."""
    folder = os.environ.get("PNEUMO_SCREENSHOT_DIR")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    whole = {"full_page": True} if hasattr(target, "goto") else {}    # a Page has goto, a Locator has not
    target.screenshot(path=str(Path(folder) / name), **whole)


def idle(page, timeout: int = 120_000) -> None:
    """Wait until no script or fragment run is in progress (Streamlit's own marker on the app)."""
    page.wait_for_function("() => document.querySelector('.stApp')?.getAttribute('data-test-script-state') "
                           "=== 'notRunning'", timeout=timeout, polling=POLL_MS)


def audit_events(home: Path, kind: str) -> int:
    """How many events of `kind` the audit trail under `home` holds (read-only)."""
    import sqlite3
    with sqlite3.connect(f"file:{home / 'audit.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0]


def sign_out(page, timeout: int = 60_000) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Account name", exact=True).wait_for(timeout=timeout)


def pdf_text(data: bytes) -> str:
    """Every page's text of a PDF (its streams are usually compressed, so a byte search would miss it)."""
    from pypdf import PdfReader
    return "\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages)


def poisoned_dicom(keyword: str, vr: str) -> bytes:
    """A chest DICOM whose numeric header field `keyword` holds a patient's name instead of a number."""
    ds = pydicom.dcmread(io.BytesIO(dicom(PatientName="DOE^JANE", WindowCenter=2048, WindowWidth=4096)))
    tag = Tag(tag_for_keyword(keyword))
    ds._dict[tag] = RawDataElement(tag, vr, 8, b"DOE^JANE", 0, False, True)  # as a broken exporter writes it
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# Joins the hostile corpus: the reader's message for a malformed header value names no value.
CASES["DICOM with a patient's name in a numeric field"] = (poisoned_dicom("WindowCenter", "DS"), "malformed value")


def widget(at, kind: str, label: str):
    """The one widget of `kind` on an AppTest page (an AppTest attribute: "slider", "selectbox", "file_uploader",
    ...) whose label is `label` or starts with it: found by what the user reads, not by its position."""
    found = [w for w in getattr(at, kind) if w.label == label or w.label.startswith(label)]
    assert len(found) == 1, f"{len(found)} {kind}(s) labelled {label!r} among {[w.label for w in getattr(at, kind)]}"
    return found[0]


def adult_chest_film(seed: int = 0, shape=(430, 350)) -> tuple[np.ndarray, np.ndarray]:
    """(film, lung mask) of a synthetic adult-like frontal chest film, for measuring the chest mask.

    Adult proportions, unlike the paediatric films of the shared data: a portrait 14 x 17 in frame with air
    beside the trunk, lungs from the apices (~15 % of the height) to costophrenic angles low on the flanks
    (84-90 %), domes of the diaphragm higher medially (66-74 %), bases brightening over their lowest 16 % of
    the height (breast shadows, posterior recesses), a bright abdomen below them and a gastric air bubble
    under the left dome. The lung mask is exact (the film is drawn from it).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    film = np.full(shape, 25.0)                                      # air beside the body
    trunk = np.abs(xx - 0.5) < 0.44 - 0.08 * np.clip(0.25 - yy, 0, 1) * 4
    film[trunk] = 175 + 30 * yy[trunk]
    lungs = np.zeros(shape, bool)
    for side, centre in ((-1, 0.29), (1, 0.71)):
        dome, angle = rng.uniform(0.66, 0.74), rng.uniform(0.84, 0.90)
        half = rng.uniform(0.15, 0.17)
        across = np.clip((xx - centre) * side / half, -1, 1)         # -1 medial .. +1 lateral
        base = dome + (angle - dome) * ((across + 1) / 2) ** 2       # the lowest point is the lateral angle
        apex = 0.15 + 0.05 * np.abs(across)
        lung = (np.abs(xx - centre) < half) & (yy > apex) & (yy < base)
        lungs |= lung
        # Bases overlapped by the breasts and the posterior recesses: brighter towards the diaphragm.
        fade = np.clip(1 - (base - yy) / 0.16, 0, 1)
        film[lung] = (70 + 25 * yy + 75 * fade)[lung]
    bubble = ((xx - 0.66) / 0.05) ** 2 + ((yy - 0.80) / 0.03) ** 2 < 1
    film[bubble & ~lungs] = 60
    film += rng.normal(0, 6, shape)
    return np.clip(cv2.GaussianBlur(film, (0, 0), 2), 0, 255).astype(np.uint8), lungs
