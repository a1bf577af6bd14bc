"""What every film reader shares: the `Film` it returns, the limits it checks from a header before
decoding, and the memory-bounded reductions and 8-bit mappings (README "Memory budget", limits in
`settings.MemoryBudget`).

Films larger than `WORKING_SIDE` are decoded straight down to it and mapped to 8 bits a megapixel at
a time, so no full-size float copy ever exists; decodes wait at `DECODE_GATE` while others hold
`decode_bytes` of full-size decoder buffers. The readers are `films.py` (PNG, JPEG and the dispatcher)
and `dicom.py`.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from pneumo_core.errors import ImageError
from pneumo_core.settings import MemoryBudget

ACCEPTED = "PNG, JPEG or DICOM"
MIN_SIDE = 64
MAX_PIXELS = MemoryBudget.max_film_pixels  # per film, from the header (the decompression-bomb guard)
WORKING_SIDE = MemoryBudget.working_side   # longest side films are decoded down to
# Rows are mapped to 8 bits (and 16-bit films reduced) about a megapixel at a time: the float32
# temporaries stay ~4-8 MB whatever the film. Measured on a 7000 x 7000 16-bit PNG: the whole-film
# float mapping peaked at 748 MB, now 121 MB (README "Memory budget").
CHUNK_PIXELS = 1 << 20


class DecodeGate:
    """Lets decodes run at once while their full-size buffers fit in `limit` bytes (one always runs)."""

    def __init__(self, limit: int):
        self.limit, self.in_use = limit, 0
        self._free = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int):
        nbytes = min(int(nbytes), self.limit)
        with self._free:
            self._free.wait_for(lambda: self.in_use + nbytes <= self.limit)
            self.in_use += nbytes
        try:
            yield
        finally:
            with self._free:
                self.in_use -= nbytes
                self._free.notify_all()


DECODE_GATE = DecodeGate(MemoryBudget.decode_bytes)
# Mean per-pixel chroma (max - min of R, G, B; 0..255) above which an RGB file is a colour photo;
# a radiograph saved as RGB has R = G = B, a few coloured annotations stay far below this.
MAX_CHROMA = 12.0


@dataclass(frozen=True)
class FilmInfo:
    """What may be shown about a film's source: format, and for DICOM modality, view, study date, the
    study's identifiers (accession number, Study Instance UID) and whom the film is of.

    The patient's name, ID, birth date and age are for the report only (a report for the record must
    say whom it is about): they are left out of `repr` (so out of logs and tracebacks), `summary`,
    the audit trail and every file name.
    """
    format: str
    modality: str | None = None
    view_position: str | None = None
    study_date: str | None = None
    accession_number: str | None = None
    study_instance_uid: str | None = None
    patient_name: str | None = field(default=None, repr=False)
    patient_id: str | None = field(default=None, repr=False)
    birth_date: str | None = field(default=None, repr=False)    # 'YYYY-MM-DD'
    patient_age: str | None = field(default=None, repr=False)   # DICOM age string, e.g. '047Y'

    def summary(self) -> str:
        """One line for the screen, e.g. 'DICOM · DX · PA · 2024-03-01' (never a patient identifier)."""
        return " · ".join(v for v in (self.format, self.modality, self.view_position, self.study_date) if v)


@dataclass(frozen=True)
class Film:
    gray: np.ndarray
    info: FilmInfo


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:,.0f}" if pixels >= 10_000_000 else f"{pixels / 1e6:.3g}"


class DecodeBudget:
    """Source pixels one request (e.g. one Diagnose run over an upload) may decode.

    Each film is charged its header's pixel count before it is decoded; a film that would go over
    the limit is refused with a message naming it and the limit. Thread-safe; one per request.
    """

    def __init__(self, pixels: int = MemoryBudget.request_pixels):
        """Args: pixels: the request's limit (source pixels, summed over its films)."""
        self.limit, self.used = int(pixels), 0
        self._lock = threading.Lock()

    def charge(self, pixels: int, name: str) -> None:
        """Count `pixels` of film `name` against the limit; ImageError (nothing counted) if over it."""
        with self._lock:
            if self.used + pixels > self.limit:
                raise ImageError(
                    f"{name}: not read: with the films before it, this request would decode "
                    f"{_megapixels(self.used + pixels)} megapixels, over its limit of {_megapixels(self.limit)} "
                    f"megapixels; send fewer or smaller films at a time.")
            self.used += pixels


def map_rows(array: np.ndarray, to_uint8) -> np.ndarray:
    """`to_uint8` applied a megapixel of rows at a time (bounded temporaries), into one uint8 array."""
    out = np.empty(array.shape, np.uint8)
    step = max(1, CHUNK_PIXELS // max(1, array[0].size if len(array) else 1))
    for top in range(0, array.shape[0], step):
        out[top:top + step] = to_uint8(array[top:top + step])
    return out


def stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.round((values.astype(np.float32) - low) * (255.0 / (high - low))).astype(np.uint8)


def full_range_to_uint8(array: np.ndarray) -> np.ndarray:
    """Full range to 0..255 (min -> 0, max -> 255); integers stay integers until each row chunk is mapped."""
    if array.dtype == np.uint8:
        return array
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return map_rows(array, lambda chunk: stretch(chunk, low, high))


def check_size(width: int, height: int, name: str, max_pixels: int = MAX_PIXELS) -> None:
    if width * height > max_pixels:
        raise ImageError(f"{name}: the image is {width}x{height} pixels, too large to be a chest film "
                         f"(limit {max_pixels / 1_000_000:g} megapixels); send a smaller export.")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{name}: the image is {width}x{height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed.")


def reduction_factor(width: int, height: int, max_side: int | None) -> int:
    """Integer reduction that brings the longest side to <= max_side, never the shortest under MIN_SIDE."""
    if not max_side or max(width, height) <= max_side:
        return 1
    return max(1, min(-(-max(width, height) // max_side), min(width, height) // MIN_SIDE))


def shrink(pixels: np.ndarray, factor: int) -> np.ndarray:
    """An array (H, W) or (H, W, C) reduced by `factor` with area averaging, in its own integer type."""
    if factor <= 1:
        return pixels
    if pixels.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        pixels = pixels.astype(np.float32)  # OpenCV resizes these types only (32-bit DICOM: rare)
    height, width = pixels.shape[:2]
    return cv2.resize(pixels, (-(-width // factor), -(-height // factor)), interpolation=cv2.INTER_AREA)


def reduce_image(image: Image.Image, factor: int) -> Image.Image:
    """A PIL image reduced by `factor` (box average); 16-bit images in strips of rows, staying uint16."""
    if factor <= 1:
        return image
    if image.mode.startswith("I;16"):  # Pillow cannot reduce these; a whole-film array would double the peak
        image.load()
        width, height = image.size
        step = factor * max(1, CHUNK_PIXELS // (width * factor))
        strips = [shrink(np.asarray(image.crop((0, top, width, min(top + step, height)))).astype(np.uint16),
                          factor) for top in range(0, height, step)]
        return Image.fromarray(np.concatenate(strips))
    if image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):  # palette, 1-bit, CMYK, YCbCr
        image = image.convert("L" if image.mode == "1" else "RGB")
    return image.reduce(factor)


def gray_from_rgb(rgb: np.ndarray | Image.Image, name: str) -> np.ndarray:
    """Grayscale of an RGB image (array (H, W, 3) uint8 or PIL image), refusing colour photos
    (a radiograph has R = G = B)."""
    image = rgb.convert("RGB") if isinstance(rgb, Image.Image) else Image.fromarray(np.ascontiguousarray(rgb))
    sample = image.copy()
    sample.thumbnail((256, 256))  # a 256-px sample is enough to judge colour, and 10x cheaper than the film
    r, g, b = (np.asarray(channel, np.int16) for channel in sample.split())
    # max - min per pixel, channel by channel: numpy's reductions over a length-3 last axis are ~20x slower
    chroma = float((np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)).mean())
    if chroma > MAX_CHROMA:
        raise ImageError(f"{name}: this looks like a colour photo (mean colour saturation {chroma:.0f}/255), "
                         f"not a radiograph. Send the X-ray itself as exported by the imaging system "
                         f"({ACCEPTED}), not a photo or screenshot of it.")
    return np.asarray(image.convert("L"))

