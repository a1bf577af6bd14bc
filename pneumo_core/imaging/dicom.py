"""DICOM films: single-frame frontal chest radiographs, from a file's bytes or a pydicom Dataset.

Hard errors (no call is made): no pixel data, a compression no installed decoder reads, a
compressed frame that is not the size its header says, a modality that is not a radiograph, a
body part that is not the chest, a lateral view, several frames. Every size is checked from a
header before any pixel is decoded (for compressed DICOM, the frame's own JPEG / JPEG-LS / JPEG
2000 header, not only Rows/Columns); 16-bit pixels are reduced in their stored type and mapped to
8 bits a megapixel at a time. A deflated DICOM is measured before pydicom inflates it.

Patient privacy: of a DICOM header only modality, view position, study date, the study's
identifiers (accession number, Study Instance UID: what matches a report to its study in the
PACS) and the patient's name, ID, birth date and age leave this module (`FilmInfo`); the patient's
are for the report only (`FilmInfo` keeps them out of its repr and summary; the audit trail and
file names never take them). Body part is checked here and dropped. pydicom is kept from logging
or warning header values (`_pydicom`).
"""
from __future__ import annotations

import io as _io
import logging
import re
import struct
import zlib
from functools import cache

import numpy as np

from pneumo_core.errors import ImageError, PneumoError
from pneumo_core.imaging.decoding import (
    ACCEPTED,
    CHUNK_PIXELS,
    DECODE_GATE,
    MAX_PIXELS,
    WORKING_SIDE,
    DecodeBudget,
    Film,
    FilmInfo,
    check_size,
    full_range_to_uint8,
    gray_from_rgb,
    map_rows,
    reduction_factor,
    shrink,
    stretch,
)

RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG", "OT", "SC", ""}
CHEST_BODY_PARTS = {"", "CHEST", "THORAX", "LUNG", "PORT CHEST", "CHEST_LAT", "TORSO"}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}


def _dicom_text(ds, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


# A Code String (the VR of Modality, BodyPartExamined, ViewPosition): capitals, digits, space and '_', at
# most 16 characters. Only such a value is named in a message; anything else (markup, a patient's name
# typed into the field) is called "a non-standard value" and never quoted.
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")


def _named(value: str) -> str:
    """A header code for a message: itself when it is a well-formed Code String, else a stand-in."""
    return value if _CODE_STRING.fullmatch(value) else "(a non-standard value)"


def _study_date(ds, keyword: str = "StudyDate") -> str | None:
    value = str(ds.get(keyword, "") or "")
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else None


def _patient_name(ds) -> str | None:
    """'Family, Given' from a DICOM Person Name ('DOE^JANE'); None when absent."""
    value = str(ds.get("PatientName", "") or "").split("=")[0]   # the alphabetic group, not ideographic
    parts = [part.strip() for part in value.split("^")]
    family, given = (parts + ["", ""])[:2]
    return ", ".join(v for v in (family, given) if v) or None


def _text(ds, keyword: str) -> str | None:
    return str(ds.get(keyword, "") or "").strip() or None


def _check_dicom_content(ds, name: str, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse what is clearly not a frontal chest radiograph, from the header alone."""
    modality, body, view = (_dicom_text(ds, k) for k in ("Modality", "BodyPartExamined", "ViewPosition"))
    if modality not in RADIOGRAPH_MODALITIES:
        raise ImageError(f"{name}: a DICOM {_named(modality)} image, not a plain radiograph; send a chest X-ray "
                         f"(modality CR or DX).")
    if body not in CHEST_BODY_PARTS:
        raise ImageError(f"{name}: the DICOM header says body part {_named(body)}; the model reads chest films only.")
    if view in LATERAL_VIEWS:
        raise ImageError(f"{name}: a lateral view ({view}); the model reads frontal (PA or AP) chest films only.")
    if "PixelData" not in ds:
        raise ImageError(f"{name}: the DICOM file holds no image (no pixel data); it may be a report or "
                         f"a structured document. Send the image series itself.")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(f"{name}: a multi-frame DICOM ({frames} frames); send a single-frame chest film.")
    check_size(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), name, max_pixels)


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
        step = max(1, CHUNK_PIXELS // max(1, pixels.shape[1]))
        ranges = [(float(v.min()), float(v.max())) for v in
                  (values(pixels[top:top + step]) for top in range(0, pixels.shape[0], step))]
        low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
        if high <= low:
            return np.zeros(pixels.shape, np.uint8)

        def to_uint8(v):
            return stretch(v, low, high)
    return map_rows(pixels, lambda chunk: np.asarray(to_uint8(values(chunk))).astype(np.uint8))


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
        with DECODE_GATE.hold(int(ds.Rows) * int(ds.Columns) * samples * 4):  # decoders output up to int32
            pixels = _dicom_pixels(ds, name)
            # Reduced in the stored integer type, before any float: the LUTs and windows below map values
            # one by one, so applying them after area averaging changes nothing but the resolution.
            pixels = shrink(pixels, reduction_factor(pixels.shape[1], pixels.shape[0], max_side))
        if pixels.ndim == 3:  # colour DICOM (RGB, or YBR decoded to RGB by pydicom)
            gray = gray_from_rgb(full_range_to_uint8(pixels), name)
        else:
            gray = _dicom_gray(pixels, ds)
            if _dicom_text(ds, "PhotometricInterpretation") == "MONOCHROME1":  # low is white: invert
                gray = 255 - gray
        info = FilmInfo("DICOM", _dicom_text(ds, "Modality") or None, _dicom_text(ds, "ViewPosition") or None,
                        _study_date(ds), _text(ds, "AccessionNumber"), _text(ds, "StudyInstanceUID"),
                        patient_name=_patient_name(ds), patient_id=_text(ds, "PatientID"),
                        birth_date=_study_date(ds, "PatientBirthDate"), patient_age=_text(ds, "PatientAge"))
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


def is_dicom(data: bytes) -> bool:
    """Whether `data` is a DICOM file `read_dicom` reads: with the "DICM" preamble, or without it (see
    `_is_bare_dicom`)."""
    return _has_dicm_preamble(data) or _is_bare_dicom(data)
