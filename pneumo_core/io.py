"""Read image files into one form: a 2-D uint8 grayscale array (plus, for DICOM, a few safe facts).

One reader per format; `read_film` picks the reader from the file's first bytes, not its name,
so a mislabelled file is still read, and a file that is not a usable chest film gets a message
a user can act on (what was wrong, what is accepted).

Hard errors (no call is made): empty, truncated or damaged file; not an image or an unsupported
type (PDF, GIF, TIFF, text…); animated or multi-frame; under 64 px or over `MAX_PIXELS`; a colour
photo; DICOM without pixel data, with a compression no installed decoder reads, of a modality
that is not a radiograph, of a body part that is not the chest, or a lateral view. Everything
else that merely looks unusual is scored and left to the out-of-distribution warning (`ood.py`).

Patient privacy: of a DICOM header only modality, view position and study date leave this
module (`FilmInfo`); body part is checked here and dropped. pydicom is kept from logging or
warning header values (`_pydicom`).
"""
from __future__ import annotations

import io as _io
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

ACCEPTED = "PNG, JPEG or DICOM"
MIN_SIDE = 64
# Decompression-bomb guard: a 43x43 cm detector at 0.1 mm is ~18 Mpx, so 50 Mpx leaves room
# while a crafted 20000x20000 header is refused before any pixel is decoded.
MAX_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Mean per-pixel chroma (max - min of R, G, B; 0..255) above which an RGB file is a colour photo;
# a radiograph saved as RGB has R = G = B, a few coloured annotations stay far below this.
MAX_CHROMA = 12.0
RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG", "OT", "SC", ""}
CHEST_BODY_PARTS = {"", "CHEST", "THORAX", "LUNG", "PORT CHEST", "CHEST_LAT", "TORSO"}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}


@dataclass(frozen=True)
class FilmInfo:
    """What may be shown about a film's source: format, and for DICOM modality, view and study date."""
    format: str
    modality: str | None = None
    view_position: str | None = None
    study_date: str | None = None

    def summary(self) -> str:
        """One line for the screen, e.g. 'DICOM · DX · PA · 2024-03-01'."""
        return " · ".join(v for v in (self.format, self.modality, self.view_position, self.study_date) if v)


@dataclass(frozen=True)
class Film:
    gray: np.ndarray
    info: FilmInfo


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)


def _check_size(width: int, height: int, name: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: the image is {width}x{height} pixels, too large to be a chest film "
                         f"(limit {MAX_PIXELS // 1_000_000} megapixels); send a smaller export.")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{name}: the image is {width}x{height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed.")


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


def read_png_jpeg(data: bytes, name: str = "image") -> Film:
    """Decode PNG/JPEG bytes (8 or 16 bit, gray, palette, RGB, RGBA or CMYK; EXIF orientation applied)."""
    try:
        with Image.open(_io.BytesIO(data)) as image:
            kind = image.format or "image"
            _check_size(*image.size, name)
            if getattr(image, "n_frames", 1) > 1:
                raise ImageError(f"{name}: an animated image ({image.n_frames} frames); send one still film "
                                 f"({ACCEPTED}).")
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                gray = _to_uint8(np.asarray(image))
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
        raise ImageError(f"{name}: the image header claims more than {MAX_PIXELS // 1_000_000} megapixels; "
                         f"refused as too large.") from None
    return Film(np.ascontiguousarray(gray), FilmInfo(kind))


def _dicom_text(ds, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def _study_date(ds) -> str | None:
    value = str(ds.get("StudyDate", "") or "")
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else None


def _check_dicom_content(ds, name: str) -> None:
    """Refuse what is clearly not a frontal chest radiograph, from the header alone."""
    modality, body, view = (_dicom_text(ds, k) for k in ("Modality", "BodyPartExamined", "ViewPosition"))
    if modality not in RADIOGRAPH_MODALITIES:
        raise ImageError(f"{name}: a DICOM {modality} image, not a plain radiograph; send a chest X-ray "
                         f"(modality CR or DX).")
    if body not in CHEST_BODY_PARTS:
        raise ImageError(f"{name}: the DICOM header says body part {body}; the model reads chest films only.")
    if view in LATERAL_VIEWS:
        raise ImageError(f"{name}: a lateral view ({view}); the model reads frontal (PA or AP) chest films only.")
    if "PixelData" not in ds:
        raise ImageError(f"{name}: the DICOM file holds no image (no pixel data); it may be a report or "
                         f"a structured document. Send the image series itself.")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(f"{name}: a multi-frame DICOM ({frames} frames); send a single-frame chest film.")
    _check_size(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), name)


def _dicom_pixels(ds, name: str) -> np.ndarray:
    from pydicom.pixels import get_decoder
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    try:
        return ds.pixel_array
    except Exception as error:  # pydicom raises many types for undecodable data
        if syntax is not None and syntax.is_compressed:
            try:
                available = get_decoder(syntax).is_available
            except NotImplementedError:
                available = False
            if not available:
                raise ImageError(f"{name}: compressed DICOM ({syntax.name}, {syntax}) is not supported; "
                                 f"export it uncompressed, or as JPEG, JPEG Lossless, JPEG-LS, JPEG 2000 "
                                 f"or RLE.") from None
        raise ImageError(f"{name}: the DICOM pixel data is damaged or truncated and cannot be decoded "
                         f"({type(error).__name__}).") from None


def _first(value) -> float:
    """The first of a possibly multi-valued number (WindowCenter may hold several windows)."""
    return float(np.ravel(np.asarray(value, dtype=np.float64))[0])


def _voi(values: np.ndarray, ds) -> np.ndarray:
    """Apply the VOI LUT if present, else the first window (PS3.3 C.11.2.1.2), else the full range."""
    if ds.get("VOILUTSequence"):
        # Looked up here: pydicom 3.0's apply_voi_lut indexes in the LUT's output type, so an
        # 8-bit LUT over 12-bit pixels wraps around.
        item = ds.VOILUTSequence[0]
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        lut = item.LUTData
        lut = np.frombuffer(lut, "<u2") if isinstance(lut, bytes) else np.asarray(lut, np.float32)
        index = np.clip(np.round(values) - first, 0, (entries or 65536) - 1).astype(np.int64)
        mapped = lut[np.minimum(index, len(lut) - 1)] * (255.0 / (2 ** bits - 1))
        return np.clip(mapped, 0, 255).round().astype(np.uint8)
    if "WindowCenter" in ds and "WindowWidth" in ds and _first(ds.WindowWidth) >= 1:
        centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        scaled = ((values - (centre - 0.5)) / (width - 1) + 0.5) if width > 1 else (values > centre - 0.5)
        return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)
    return _to_uint8(values)


@cache
def _pydicom():
    """pydicom, configured once so that it never writes header values anywhere.

    Its value-validation warnings quote the offending value (a patient's name, a birth date) and
    go to both `warnings` and the 'pydicom' logger: validation is off on reading, and the logger
    does not propagate to the application's handlers.
    """
    import pydicom
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").propagate = False
    return pydicom


def read_dicom(data: bytes, name: str = "image") -> Film:
    """Decode a single-frame DICOM: rescale slope/intercept, VOI LUT or window, MONOCHROME1 inverted."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(_io.BytesIO(data), force=not _has_dicm_preamble(data))
    except Exception as error:
        raise ImageError(f"{name}: the DICOM file is damaged or truncated ({type(error).__name__}). "
                         f"Accepted: {ACCEPTED}.") from None
    return read_dataset(ds, name)


def read_dataset(ds, name: str = "image") -> Film:
    """A `Film` from a pydicom Dataset already in memory (e.g. retrieved from a PACS), with the same
    checks as a DICOM file: frontal chest radiographs only.

    Args:
        ds: the pydicom Dataset, with its pixel data.
        name: what messages call it (never a patient's name; e.g. the SOP Instance UID).
    Returns:
        The film; raises ImageError with the reason when it is not a usable frontal chest film.
    """
    from pydicom.pixels import apply_modality_lut
    _pydicom()
    _check_dicom_content(ds, name)
    pixels = _dicom_pixels(ds, name)
    if pixels.ndim == 3:  # colour DICOM (RGB, or YBR decoded to RGB by pydicom)
        gray = gray_from_rgb(_to_uint8(pixels), name)
    else:
        gray = _voi(apply_modality_lut(pixels, ds).astype(np.float32), ds)
        if _dicom_text(ds, "PhotometricInterpretation") == "MONOCHROME1":  # low is white: invert
            gray = 255 - gray
    info = FilmInfo("DICOM", _dicom_text(ds, "Modality") or None, _dicom_text(ds, "ViewPosition") or None,
                    _study_date(ds))
    return Film(np.ascontiguousarray(gray), info)


def _has_dicm_preamble(data: bytes) -> bool:
    return data[128:132] == b"DICM"


def _is_bare_dicom(data: bytes) -> bool:
    """A DICOM without the 128-byte preamble: accepted only if it starts with a group 0002/0008
    tag and pydicom parses a header with image dimensions from it."""
    if data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    try:
        ds = _pydicom().dcmread(_io.BytesIO(data), force=True, stop_before_pixels=True)
        return int(ds.Rows) > 0 and int(ds.Columns) > 0
    except Exception:
        return False


_READERS = [(lambda d: d.startswith(b"\x89PNG\r\n\x1a\n"), read_png_jpeg),
            (lambda d: d.startswith(b"\xff\xd8\xff"), read_png_jpeg),
            (_has_dicm_preamble, read_dicom),
            (_is_bare_dicom, read_dicom)]
# Common files people send by mistake, named so the message can say what the file is.
_KNOWN_OTHERS = {b"%PDF": "a PDF document", b"GIF8": "a GIF image", b"II*\x00": "a TIFF image",
                 b"MM\x00*": "a TIFF image", b"BM": "a BMP image", b"PK\x03\x04": "a ZIP archive (or Office file)",
                 b"RIFF": "a WebP/RIFF file"}


def read_film(source: str | Path | bytes, name: str | None = None) -> Film:
    """Read a file path or raw bytes into a `Film` (2-D uint8 grayscale + safe source facts)."""
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
    film = reader(data, name)
    _check_size(film.gray.shape[1], film.gray.shape[0], name)
    return film


def read_image(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Read a file path or raw bytes into a 2-D uint8 grayscale array."""
    return read_film(source, name).gray
