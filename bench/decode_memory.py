"""Peak memory of reading one large or hostile film (README "Memory budget").

Each film is read in a fresh process after a small warm-up film of the same kind; the number is
the peak resident size during `read_film` (psutil, sampled every millisecond: `ru_maxrss` would
carry over the parent's peak through exec) minus the size just before, with glibc's mmap
threshold fixed so freed warm-up memory cannot hide an allocation. Pass another checkout's path
to measure its reader instead (e.g. the commit before the memory budget).

    .venv/bin/python bench/decode_memory.py [REPO]
"""
from common import REPO, report  # noqa: I001

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

CHILD = r"""
import sys, threading, time
import psutil
sys.path.insert(0, sys.argv[1])
from pneumo_core.imaging.films import ImageError, read_film
read_film(open(sys.argv[3], "rb").read())
data = open(sys.argv[2], "rb").read()
process, top, done = psutil.Process(), [0], threading.Event()
def sample():
    while not done.is_set():
        top[0] = max(top[0], process.memory_info().rss)
        time.sleep(0.001)
before = process.memory_info().rss
sampler = threading.Thread(target=sample)
sampler.start()
start = time.perf_counter()
try:
    outcome = "x".join(map(str, read_film(data).gray.shape[::-1]))
except ImageError:
    outcome = "refused"
seconds = time.perf_counter() - start
done.set()
sampler.join()
print((top[0] - before) / 2 ** 20, seconds, outcome)
"""


def j2k_film(path: Path, bomb_side: int | None = None) -> Path:
    """pydicom's own JPEG 2000 test film, made a DX chest film; with `bomb_side`, its frame replaced
    by a bomb_side x bomb_side one while the header still says 512 x 512."""
    import openjpeg
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    if bomb_side:
        ds.Rows = ds.Columns = 512
        frame = openjpeg.encode(np.zeros((bomb_side, bomb_side), np.uint16), bits_stored=int(ds.BitsStored))
        ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(path, enforce_file_format=True)
    return path


def image(path: Path, side: int, mode: str, **save) -> Path:
    """A side x side film in `mode` that compresses well: constant columns and four rows of noise."""
    rng = np.random.default_rng(0)
    sixteen = mode == "I;16"
    film = np.full((side, side), 20000 if sixteen else 90, np.uint16 if sixteen else np.uint8)
    film[:, ::9] = 45000 if sixteen else 160
    film[:4] = rng.integers(0, 60000 if sixteen else 255, (4, side))
    picture = Image.fromarray(film)
    (picture if mode in ("L", "I;16") else picture.convert(mode)).save(path, **save)
    return path


def main() -> None:
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = {
            "7000 x 7000 8-bit PNG": (image(tmp / "l.png", 7000, "L", compress_level=1),
                                      image(tmp / "l-small.png", 300, "L")),
            "7000 x 7000 16-bit PNG": (image(tmp / "i16.png", 7000, "I;16", compress_level=1),
                                       image(tmp / "i16-small.png", 300, "I;16")),
            "7000 x 7000 RGB PNG": (image(tmp / "rgb.png", 7000, "RGB", compress_level=1),
                                    image(tmp / "rgb-small.png", 300, "RGB")),
            "7000 x 7000 RGB JPEG": (image(tmp / "rgb.jpg", 7000, "RGB", quality=90),
                                     image(tmp / "rgb-small.jpg", 300, "RGB")),
            "DICOM saying 512 x 512 around a 6000 x 6000 JPEG 2000 frame": (
                j2k_film(tmp / "bomb.dcm", 6000), j2k_film(tmp / "ok.dcm")),
        }
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        for name, (film, warm) in cases.items():
            out = subprocess.run([sys.executable, "-c", CHILD, str(repo), str(film), str(warm)], env=env,
                                 capture_output=True, text=True, check=True).stdout.split()
            report(f"decode peak: {name} ({film.stat().st_size / 1024:,.0f} KB) -> {out[2]}", float(out[0]), "MB")
            report(f"decode time: {name}", float(out[1]), "s")


if __name__ == "__main__":
    main()
