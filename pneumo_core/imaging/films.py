"""Read image files into one form: a 2-D uint8 grayscale array (plus, for DICOM, a few safe facts).

One reader per format; `read_film` picks the reader from the file's first bytes, not its name,
so a mislabelled file is still read, and a file that is not a usable chest film gets a message
a user can act on (what was wrong, what is accepted).

Hard errors (no call is made): empty, truncated or damaged file; not an image or an unsupported
type (PDF, GIF, TIFF, text…); animated or multi-frame; under 64 px or over `MAX_PIXELS`; a colour
photo; DICOM without pixel data, with a compression no installed decoder reads, whose compressed
frame is not the size its header says, of a modality that is not a radiograph, of a body part
that is not the chest, or a lateral view; a film that would take a request over its
`DecodeBudget`. Everything else that merely looks unusual is scored and left to the
out-of-distribution warning (`ood.py`).

Memory (README "Memory budget", limits in `settings.MemoryBudget`): every size is checked from a
header before any pixel is decoded (for compressed DICOM, the frame's own JPEG / JPEG-LS / JPEG
2000 header, not only Rows/Columns); films larger than `WORKING_SIDE` are decoded straight down
to it (JPEG by DCT scaling, others by box reduction, 16-bit in strips) and mapped to 8 bits a
megapixel at a time, so no full-size float copy ever exists; films wait while other decodes hold
`decode_bytes` of full-size decoder buffers. A deflated DICOM is measured before pydicom inflates it.

Patient privacy: of a DICOM header only modality, view position, study date and the study's
identifiers (accession number, Study Instance UID: what matches a report to its study in the
PACS, never a patient's name or id) leave this module (`FilmInfo`); body part is checked here
and dropped. pydicom is kept from logging or
warning header values (`_pydicom`).
"""
from __future__ import annotations

import io as _io
import logging
import struct
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumo_core.errors import ImageError, PneumoError
from pneumo_core.settings import MemoryBudget

ACCEPTED = "PNG, JPEG or DICOM"
MIN_SIDE = 64
MAX_PIXELS = MemoryBudget.max_film_pixels  # per film, from the header (the decompression-bomb guard)
WORKING_SIDE = MemoryBudget.working_side   # longest side films are decoded down to
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Rows are mapped to 8 bits (and 16-bit films reduced) about a megapixel at a time: the float32
# temporaries stay ~4-8 MB whatever the film. Measured on a 7000 x 7000 16-bit PNG: the whole-film
# float mapping peaked at 748 MB, now 121 MB (README "Memory budget").
_CHUNK_PIXELS = 1 << 20
# Bytes per pixel of the full-size buffer a decoder fills before any reduction: Pillow keeps RGB
# as 4 bytes, a palette film is expanded to RGB (1 + 4), 16-bit is 2; JPEG 2000 decodes to int32.
_BUFFER_BYTES = {"1": 2, "L": 1, "P": 5, "I;16": 2, "I;16B": 2, "I;16L": 2, "LA": 4, "CMYK": 8, "YCbCr": 8}


class _DecodeGate:
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


_DECODE_GATE = _DecodeGate(MemoryBudget.decode_bytes)
# Mean per-pixel chroma (max - min of R, G, B; 0..255) above which an RGB file is a colour photo;
# a radiograph saved as RGB has R = G = B, a few coloured annotations stay far below this.
MAX_CHROMA = 12.0
RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG", "OT", "SC", ""}
CHEST_BODY_PARTS = {"", "CHEST", "THORAX", "LUNG", "PORT CHEST", "CHEST_LAT", "TORSO"}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}


@dataclass(frozen=True)
class FilmInfo:
    """What may be shown about a film's source: format, and for DICOM modality, view, study date and
    the study's identifiers (accession number, Study Instance UID; no patient identifiers)."""
    format: str
    modality: str | None = None
    view_position: str | None = None
    study_date: str | None = None
    accession_number: str | None = None
    study_instance_uid: str | None = None

    def summary(self) -> str:
        """One line for the screen, e.g. 'DICOM · DX · PA · 2024-03-01'."""
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


def _map_rows(array: np.ndarray, to_uint8) -> np.ndarray:
    """`to_uint8` applied a megapixel of rows at a time (bounded temporaries), into one uint8 array."""
    out = np.empty(array.shape, np.uint8)
    step = max(1, _CHUNK_PIXELS // max(1, array[0].size if len(array) else 1))
    for top in range(0, array.shape[0], step):
        out[top:top + step] = to_uint8(array[top:top + step])
    return out


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.round((values.astype(np.float32) - low) * (255.0 / (high - low))).astype(np.uint8)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Full range to 0..255 (min -> 0, max -> 255); integers stay integers until each row chunk is mapped."""
    if array.dtype == np.uint8:
        return array
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return _map_rows(array, lambda chunk: _stretch(chunk, low, high))


def _check_size(width: int, height: int, name: str, max_pixels: int = MAX_PIXELS) -> None:
    if width * height > max_pixels:
        raise ImageError(f"{name}: the image is {width}x{height} pixels, too large to be a chest film "
                         f"(limit {max_pixels / 1_000_000:g} megapixels); send a smaller export.")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{name}: the image is {width}x{height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed.")


def _factor(width: int, height: int, max_side: int | None) -> int:
    """Integer reduction that brings the longest side to <= max_side, never the shortest under MIN_SIDE."""
    if not max_side or max(width, height) <= max_side:
        return 1
    return max(1, min(-(-max(width, height) // max_side), min(width, height) // MIN_SIDE))


def _shrink(pixels: np.ndarray, factor: int) -> np.ndarray:
    """An array (H, W) or (H, W, C) reduced by `factor` with area averaging, in its own integer type."""
    if factor <= 1:
        return pixels
    if pixels.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        pixels = pixels.astype(np.float32)  # OpenCV resizes these types only (32-bit DICOM: rare)
    height, width = pixels.shape[:2]
    return cv2.resize(pixels, (-(-width // factor), -(-height // factor)), interpolation=cv2.INTER_AREA)


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """A PIL image reduced by `factor` (box average); 16-bit images in strips of rows, staying uint16."""
    if factor <= 1:
        return image
    if image.mode.startswith("I;16"):  # Pillow cannot reduce these; a whole-film array would double the peak
        image.load()
        width, height = image.size
        step = factor * max(1, _CHUNK_PIXELS // (width * factor))
        strips = [_shrink(np.asarray(image.crop((0, top, width, min(top + step, height)))).astype(np.uint16),
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
            _check_size(*image.size, name, max_pixels)
            if getattr(image, "n_frames", 1) > 1:
                raise ImageError(f"{name}: an animated image ({image.n_frames} frames); send one still film "
                                 f"({ACCEPTED}).")
            if budget is not None:
                budget.charge(image.size[0] * image.size[1], name)
            factor = _factor(*image.size, max_side)
            if factor > 1 and kind == "JPEG":  # DCT scaling: the decoder itself outputs 1/2, 1/4 or 1/8 size
                image.draft(image.mode, (-(-image.size[0] // factor), -(-image.size[1] // factor)))
                factor = _factor(*image.size, max_side)
            with _DECODE_GATE.hold(image.size[0] * image.size[1] * _BUFFER_BYTES.get(image.mode, 4)):
                reduced = _reduce(image, factor)
                if reduced is not image:  # a reduced copy lacks the EXIF orientation: carry it over
                    reduced.info.update(image.info)
                    reduced.getexif().update(image.getexif())
                image = ImageOps.exif_transpose(reduced)
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
        raise ImageError(f"{name}: the image header claims more than {max_pixels / 1_000_000:g} megapixels; "
                         f"refused as too large.") from None
    return Film(np.ascontiguousarray(gray), FilmInfo(kind))


def _dicom_text(ds, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def _study_date(ds) -> str | None:
    value = str(ds.get("StudyDate", "") or "")
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else None


def _check_dicom_content(ds, name: str, max_pixels: int = MAX_PIXELS) -> None:
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
    _check_size(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), name, max_pixels)


# Start-of-frame markers whose segment gives the frame's size: JPEG baseline, extended, progressive
# and lossless (C0-CF less the DHT, JPG and DAC markers C4, C8, CC) and JPEG-LS (F7).
_SOF_MARKERS = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)} | {0xF7}


def frame_size(frame: bytes) -> tuple[int, int, int] | None:
    """(columns, rows, components) of a compressed frame, from its own header, without decoding it.

    Reads the SIZ marker of a JPEG 2000 codestream (bare or inside a JP2 file) or the start-of-frame
    segment of JPEG (baseline, extended, lossless) and JPEG-LS. None when neither is found.

    Args:
        frame: the frame's bytes, as encapsulated in the DICOM Pixel Data.
    Returns:
        The size the decoder would allocate for, or None.
    """
    if not frame.startswith(b"\xff\xd8"):  # not JPEG / JPEG-LS: a JPEG 2000 codestream, SOC then SIZ
        siz = frame.find(b"\xff\x4f\xff\x51")
        if siz < 0 or len(frame) < siz + 42:
            return None
        # Lsiz Rsiz (2 bytes each), Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz (4 each), Csiz (2)
        _, _, xsiz, ysiz, xoffset, yoffset, *_, components = struct.unpack(">HHIIIIIIIIH", frame[siz + 4:siz + 42])
        return max(0, xsiz - xoffset), max(0, ysiz - yoffset), components
    position = 2
    while position + 9 < len(frame):
        if frame[position] != 0xFF:
            return None
        marker = frame[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker in _SOF_MARKERS:
            height, width, components = struct.unpack(">HHB", frame[position + 5:position + 10])
            return width, height, components
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
        else:
            position += 2 + struct.unpack(">H", frame[position + 2:position + 4])[0]
    return None


def _check_compressed_frame(ds, name: str) -> None:
    """Refuse a JPEG / JPEG-LS / JPEG 2000 frame whose own header disagrees with Rows/Columns.

    The decoder allocates for the frame's size, not the DICOM header's: a 900-byte file saying
    512 x 512 around a 6000 x 6000 JPEG 2000 frame cost ~176 MB before pydicom noticed.
    """
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax not in (*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes):
        return
    try:
        size = frame_size(next(generate_frames(ds.PixelData, number_of_frames=1)))
    except Exception:  # pydicom raises several types for a broken encapsulation
        size = None
    if size is None:
        raise ImageError(f"{name}: the DICOM pixel data is damaged: its compressed frame has no readable "
                         f"{syntax.name} header.")
    width, height, components = size
    rows, columns = int(ds.Rows), int(ds.Columns)
    if (width, height) != (columns, rows) or not 1 <= components <= 4:
        raise ImageError(f"{name}: the DICOM file is inconsistent: its header says {columns}x{rows} pixels but "
                         f"its compressed frame holds {width}x{height} pixels in {components} components; "
                         f"not decoded. Export the film again.")


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


def _dicom_gray(pixels: np.ndarray, ds) -> np.ndarray:
    """Stored values -> uint8: modality LUT (rescale), then the VOI LUT if present, else the first
    window (PS3.3 C.11.2.1.2), else the full range; a megapixel of rows at a time."""
    from pydicom.pixels import apply_modality_lut

    def values(chunk: np.ndarray) -> np.ndarray:
        return apply_modality_lut(chunk, ds).astype(np.float32, copy=False)

    if ds.get("VOILUTSequence"):
        # Looked up here: pydicom 3.0's apply_voi_lut indexes in the LUT's output type, so an
        # 8-bit LUT over 12-bit pixels wraps around.
        item = ds.VOILUTSequence[0]
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        lut = item.LUTData
        lut = np.frombuffer(lut, "<u2") if isinstance(lut, bytes) else np.asarray(lut, np.float32)

        def to_uint8(v):
            index = np.clip(np.round(v) - first, 0, (entries or 65536) - 1).astype(np.int64)
            return np.clip(lut[np.minimum(index, len(lut) - 1)] * (255.0 / (2 ** bits - 1)), 0, 255).round()
    elif "WindowCenter" in ds and "WindowWidth" in ds and _first(ds.WindowWidth) >= 1:
        centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)

        def to_uint8(v):
            scaled = ((v - (centre - 0.5)) / (width - 1) + 0.5) if width > 1 else (v > centre - 0.5)
            return (np.clip(scaled, 0, 1) * 255).round()
    else:
        step = max(1, _CHUNK_PIXELS // max(1, pixels.shape[1]))
        ranges = [(float(v.min()), float(v.max())) for v in
                  (values(pixels[top:top + step]) for top in range(0, pixels.shape[0], step))]
        low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
        if high <= low:
            return np.zeros(pixels.shape, np.uint8)

        def to_uint8(v):
            return _stretch(v, low, high)
    return _map_rows(pixels, lambda chunk: np.asarray(to_uint8(values(chunk))).astype(np.uint8))


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


_DEFLATED = b"1.2.840.10008.1.2.1.99"


def _check_deflated(data: bytes, name: str, max_pixels: int) -> None:
    """Refuse a deflated DICOM that inflates to more than a film at the pixel limit can hold.

    pydicom inflates the whole data set in memory before reading a tag (a 50 MB upload could
    become ~50 GB): it is inflated here first, a megabyte at a time and thrown away, up to the
    limit of 2 bytes a pixel plus 1 MB of header.
    """
    if _DEFLATED not in data[:1024] or not _has_dicm_preamble(data):  # the meta group is never deflated
        return
    group, element, vr, _, length = struct.unpack("<HH2sHI", data[132:144])
    if (group, element, vr) != (2, 0, b"UL"):
        raise ImageError(f"{name}: a deflated DICOM without a file meta group length; export it uncompressed.")
    limit, size = 2 * max_pixels + 2 ** 20, 0
    inflater, rest = zlib.decompressobj(-zlib.MAX_WBITS), data[144 + length:]
    try:
        while rest and size <= limit:
            size += len(inflater.decompress(rest, 2 ** 20))
            rest = inflater.unconsumed_tail
    except zlib.error:
        raise ImageError(f"{name}: the deflated DICOM data is damaged and cannot be inflated.") from None
    if size > limit:
        raise ImageError(f"{name}: the deflated DICOM inflates to more than {limit / 2 ** 20:.0f} MB, more than a "
                         f"film of {max_pixels / 1e6:g} megapixels holds; refused as a decompression bomb.")


def read_dicom(data: bytes, name: str = "image", *, max_pixels: int = MAX_PIXELS,
               max_side: int | None = WORKING_SIDE, budget: DecodeBudget | None = None) -> Film:
    """Decode a single-frame DICOM: rescale slope/intercept, VOI LUT or window, MONOCHROME1 inverted.

    Args and Returns: as `read_png_jpeg`; a compressed frame is also measured before decoding.
    """
    pydicom = _pydicom()
    _check_deflated(data, name, max_pixels)
    try:
        ds = pydicom.dcmread(_io.BytesIO(data), force=not _has_dicm_preamble(data))
    except Exception as error:
        raise ImageError(f"{name}: the DICOM file is damaged or truncated ({type(error).__name__}). "
                         f"Accepted: {ACCEPTED}.") from None
    return read_dataset(ds, name, max_pixels=max_pixels, max_side=max_side, budget=budget)


def read_dataset(ds, name: str = "image", *, max_pixels: int = MAX_PIXELS, max_side: int | None = WORKING_SIDE,
                 budget: DecodeBudget | None = None) -> Film:
    """A `Film` from a pydicom Dataset already in memory (e.g. retrieved from a PACS), with the same
    checks and limits as a DICOM file: frontal chest radiographs only.

    Args:
        ds: the pydicom Dataset, with its pixel data.
        name: what messages call it (never a patient's name; e.g. the SOP Instance UID).
        max_pixels, max_side, budget: as `read_dicom`.
    Returns:
        The film; raises ImageError with the reason when it is not a usable frontal chest film.
    """
    _pydicom()
    try:
        _check_dicom_content(ds, name, max_pixels)
        _check_compressed_frame(ds, name)
        if budget is not None:
            budget.charge(int(ds.Rows) * int(ds.Columns), name)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        with _DECODE_GATE.hold(int(ds.Rows) * int(ds.Columns) * samples * 4):  # decoders output up to int32
            pixels = _dicom_pixels(ds, name)
            # Reduced in the stored integer type, before any float: the LUTs and windows below map values
            # one by one, so applying them after area averaging changes nothing but the resolution.
            pixels = _shrink(pixels, _factor(pixels.shape[1], pixels.shape[0], max_side))
        if pixels.ndim == 3:  # colour DICOM (RGB, or YBR decoded to RGB by pydicom)
            gray = gray_from_rgb(_to_uint8(pixels), name)
        else:
            gray = _dicom_gray(pixels, ds)
            if _dicom_text(ds, "PhotometricInterpretation") == "MONOCHROME1":  # low is white: invert
                gray = 255 - gray
        info = FilmInfo("DICOM", _dicom_text(ds, "Modality") or None, _dicom_text(ds, "ViewPosition") or None,
                        _study_date(ds), str(ds.get("AccessionNumber", "") or "").strip() or None,
                        str(ds.get("StudyInstanceUID", "") or "").strip() or None)
    except PneumoError:
        raise
    except Exception as error:  # a malformed header value: Python's message would quote it (a patient's name)
        raise ImageError(f"{name}: the DICOM header holds a malformed value ({type(error).__name__}) in a field "
                         f"needed to read the image (size, frames, window or rescale); export the film again. "
                         f"Accepted: {ACCEPTED}.") from None
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
    _check_size(film.gray.shape[1], film.gray.shape[0], name, max_pixels)
    return film


def read_image(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """`read_film(source, name).gray`: an (H, W) uint8 grayscale array."""
    return read_film(source, name).gray
