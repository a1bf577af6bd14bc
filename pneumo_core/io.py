"""Read image files into one form: a 2-D uint8 grayscale array.

One reader per format; `read_image` picks the reader from the file's first bytes, not its name,
so a mislabelled file is still read, and a file that is not an image gets a message a user can act on.
"""
from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED = "PNG or JPEG"
MIN_SIDE = 64


class ImageError(ValueError):
    """A file that cannot be used as a chest X-ray; the message says why and what is accepted."""


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)


def read_png_jpeg(data: bytes, name: str = "image") -> np.ndarray:
    """Decode PNG/JPEG bytes (8 or 16 bit, gray, palette, RGB or RGBA; EXIF orientation applied)."""
    try:
        with Image.open(_io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                gray = _to_uint8(np.asarray(image))
            else:
                gray = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageError(f"{name}: the file is damaged or truncated and cannot be decoded "
                         f"({error}). Accepted: {ACCEPTED}.") from None
    return np.ascontiguousarray(gray)


_SIGNATURES = {b"\x89PNG\r\n\x1a\n": read_png_jpeg, b"\xff\xd8\xff": read_png_jpeg}


def read_image(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Read a file path or raw bytes into a 2-D uint8 grayscale array."""
    if isinstance(source, (str, Path)):
        name = name or Path(source).name
        try:
            data = Path(source).read_bytes()
        except OSError as error:
            raise ImageError(f"{name}: cannot be opened ({error.strerror}).") from None
    else:
        data, name = bytes(source), name or "upload"
    if not data:
        raise ImageError(f"{name}: the file is empty. Accepted: {ACCEPTED}.")
    reader = next((r for sig, r in _SIGNATURES.items() if data.startswith(sig)), None)
    if reader is None:
        raise ImageError(f"{name}: not a supported image type. Accepted: {ACCEPTED}.")
    gray = reader(data, name)
    if min(gray.shape) < MIN_SIDE:
        raise ImageError(f"{name}: the image is {gray.shape[1]}x{gray.shape[0]} pixels; "
                         f"at least {MIN_SIDE}x{MIN_SIDE} is needed.")
    return gray
