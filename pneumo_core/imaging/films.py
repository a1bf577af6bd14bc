"""Read image files into one form: a 2-D uint8 grayscale array (plus, for DICOM, a few safe facts).

One reader per format (PNG and JPEG here, DICOM in `dicom.py`); `read_film` picks the reader from
the file's first bytes, not its name, so a mislabelled file is still read, and a file that is not a
usable chest film gets a message a user can act on (what was wrong, what is accepted).

Hard errors (no call is made): empty, truncated or damaged file; not an image or an unsupported
type (PDF, GIF, TIFF, text…); animated or multi-frame; under 64 px or over `MAX_PIXELS`; a colour
photo; a DICOM that `dicom.py` refuses (no pixels, not a frontal chest radiograph...); a film that
would take a request over its `DecodeBudget`. Everything else that merely looks unusual is scored
and left to the out-of-distribution warning (`ood.py`).

Memory (README "Memory budget", shared limits and reductions in `decoding.py`): every size is checked
from the header before any pixel is decoded; films larger than `WORKING_SIDE` are decoded straight
down to it (JPEG by DCT scaling, others by box reduction, 16-bit in strips).
"""
from __future__ import annotations

import io as _io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumo_core.errors import ImageError
from pneumo_core.imaging.decoding import (
    ACCEPTED,
    DECODE_GATE,
    MAX_PIXELS,
    WORKING_SIDE,
    DecodeBudget,
    Film,
    FilmInfo,
    check_size,
    full_range_to_uint8,
    gray_from_rgb,
    reduce_image,
    reduction_factor,
)
from pneumo_core.imaging.dicom import is_dicom, read_dataset, read_dicom

# The public face of the readers: what the library, the dashboard and the tests import.
__all__ = ["ACCEPTED", "MAX_PIXELS", "WORKING_SIDE", "DecodeBudget", "Film", "FilmInfo", "read_dataset", "read_dicom",
           "read_film", "read_image", "read_png_jpeg"]

Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Bytes per pixel of the full-size buffer a decoder fills before any reduction: Pillow keeps RGB
# as 4 bytes, a palette film is expanded to RGB (1 + 4), 16-bit is 2; JPEG 2000 decodes to int32.
_BUFFER_BYTES = {"1": 2, "L": 1, "P": 5, "I;16": 2, "I;16B": 2, "I;16L": 2, "LA": 4, "CMYK": 8, "YCbCr": 8}


def read_png_jpeg(data: bytes, name: str = "image", *, max_pixels: int = MAX_PIXELS,
                  max_side: int | None = WORKING_SIDE, budget: DecodeBudget | None = None) -> Film:
    """Decode PNG/JPEG bytes (8 or 16 bit, gray, palette, RGB, RGBA or CMYK; EXIF orientation applied).

    Args:
        data: the file's bytes; name: how messages name the file.
        max_pixels: per-film limit, checked from the header before decoding.
        max_side: longest side the film is decoded down to (None: full size).
        budget: the request's `DecodeBudget`, charged the film's header pixels before decoding.

    Returns:
        The `Film` (uint8 grayscale, longest side <= max_side).
    """
    try:
        with Image.open(_io.BytesIO(data)) as image:
            kind = image.format or "image"
            check_size(*image.size, name, max_pixels)
            if getattr(image, "n_frames", 1) > 1:
                raise ImageError(f"{name}: an animated image ({image.n_frames} frames); send one still film "
                                 f"({ACCEPTED}).")
            if budget is not None:
                budget.charge(image.size[0] * image.size[1], name)
            factor = reduction_factor(*image.size, max_side)
            if factor > 1 and kind == "JPEG":  # DCT scaling: the decoder itself outputs 1/2, 1/4 or 1/8 size
                image.draft(image.mode, (-(-image.size[0] // factor), -(-image.size[1] // factor)))
                factor = reduction_factor(*image.size, max_side)
            with DECODE_GATE.hold(image.size[0] * image.size[1] * _BUFFER_BYTES.get(image.mode, 4)):
                reduced = reduce_image(image, factor)
                if reduced is not image:  # a reduced copy lacks the EXIF orientation: carry it over
                    reduced.info.update(image.info)
                    reduced.getexif().update(image.getexif())
                image = ImageOps.exif_transpose(reduced)
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                gray = full_range_to_uint8(np.asarray(image))
            elif image.mode in ("L", "LA", "1"):
                gray = np.asarray(image.convert("L"))
            else:  # RGB, RGBA, P, CMYK, YCbCr: check that it is not a colour photo
                gray = gray_from_rgb(image, name)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: the file is damaged or truncated and cannot be decoded "
                         f"({error}). Accepted: {ACCEPTED}.") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: the image header claims more than {max_pixels / 1_000_000:g} megapixels; "
                         f"refused as too large.") from None
    return Film(np.ascontiguousarray(gray), FilmInfo(kind))



_READERS = [(lambda d: d.startswith(b"\x89PNG\r\n\x1a\n"), read_png_jpeg),
            (lambda d: d.startswith(b"\xff\xd8\xff"), read_png_jpeg),
            (is_dicom, read_dicom)]
# Common files people send by mistake, named so the message can say what the file is.
_KNOWN_OTHERS = {b"%PDF": "a PDF document", b"GIF8": "a GIF image", b"II*\x00": "a TIFF image",
                 b"MM\x00*": "a TIFF image", b"BM": "a BMP image", b"PK\x03\x04": "a ZIP archive (or Office file)",
                 b"RIFF": "a WebP/RIFF file"}


def read_film(source: str | Path | bytes, name: str | None = None, *, max_pixels: int = MAX_PIXELS,
              max_side: int | None = WORKING_SIDE, budget: DecodeBudget | None = None) -> Film:
    """Read a file path or raw bytes into a `Film`.

    Args:
        source: a path, or the file's bytes; name: the file name used in messages (default: the path's).
        max_pixels: per-film limit, checked from the header before any pixel is decoded.
        max_side: films with a longer side are decoded straight down to it (None: full size).
        budget: the request's `DecodeBudget`, charged each film's header pixels before decoding.
    Returns:
        Film: `gray` (H, W) uint8, H and W at most `max_side`, and `info` (format; for DICOM modality,
        view and study date only).
    Raises:
        ImageError: the file is not a usable chest film or is over a limit; the message says why and what
        is accepted.
    """
    if isinstance(source, (str, Path)):
        name = name or Path(source).name
        try:
            data = Path(source).read_bytes()
        except OSError as error:
            raise ImageError(f"{name}: cannot be opened ({error.strerror}).") from None
    else:
        data, name = bytes(source), name or "upload"
    if not data:
        raise ImageError(f"{name}: the file is empty (0 bytes); the upload or export did not complete. "
                         f"Accepted: {ACCEPTED}.")
    reader = next((r for matches, r in _READERS if matches(data)), None)
    if reader is None:
        what = next((w for sig, w in _KNOWN_OTHERS.items() if data.startswith(sig)), None)
        if data[4:8] == b"ftyp":  # ISO media: HEIC phone photos, MP4 videos
            what = "an HEIC photo or video"
        raise ImageError(f"{name}: {'this is ' + what + ', ' if what else ''}not a supported image type. "
                         f"Accepted: {ACCEPTED}.")
    film = reader(data, name, max_pixels=max_pixels, max_side=max_side, budget=budget)
    check_size(film.gray.shape[1], film.gray.shape[0], name, max_pixels)
    return film


def read_each(paths) -> Iterator[tuple[str, Film | None, ImageError | None]]:
    """Read a batch of film files, going on past the ones that cannot be read (a command-line batch
    reports those and scores the rest).

    Args:
        paths: file paths, in the order given.
    Returns:
        An iterator of (path, film, None) or (path, None, the ImageError that says what was wrong).
    """
    for path in paths:
        try:
            yield path, read_film(path), None
        except ImageError as error:
            yield path, None, error


def read_image(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """`read_film(source, name).gray`: an (H, W) uint8 grayscale array."""
    return read_film(source, name).gray
