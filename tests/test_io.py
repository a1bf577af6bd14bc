"""A hostile corpus, generated here (no patient data committed): every odd or bad input gets its
expected outcome, either a specific message or a film read the right way."""
import gzip
import io
import struct
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from pneumo_core.io import ACCEPTED, DecodeBudget, ImageError, frame_size, read_film, read_image

RNG = np.random.default_rng(0)
RAMP = np.tile(np.linspace(0, 4095, 96).astype(np.uint16), (80, 1))  # 12-bit, dark left to bright right
FILM = (np.tile(np.linspace(20, 230, 100), (90, 1)) + RNG.normal(0, 5, (90, 100))).clip(0, 255).astype(np.uint8)
PATIENT = "Doe^Jane"


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
    """A DX chest film as DICOM, with patient-identifying tags that must never come out."""
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
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if pixel_data:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
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
    "DICOM CT": (dicom(Modality="CT"), "DICOM CT image, not a plain radiograph"),
    "DICOM lateral view": (dicom(ViewPosition="LL"), "lateral view (LL)"),
    "DICOM knee": (dicom(BodyPartExamined="KNEE"), "body part KNEE"),
    "DICOM header bomb": (dicom(Rows=20000, Columns=20000), "megapixels"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_corpus(case):
    data, expected = CASES[case]
    if isinstance(expected, str):
        with pytest.raises(ImageError) as caught:
            read_film(data, name="upload.png")
        message = str(caught.value)
        assert expected in message, message
        assert message.startswith("upload.png: ")  # says which file
        assert PATIENT not in message and "SECRET" not in message
    else:
        film = read_film(data, name="upload.png")
        assert film.gray.ndim == 2 and film.gray.dtype == np.uint8
        assert expected(film), case


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 30 and sum(isinstance(e, str) for _, e in CASES.values()) >= 20


def test_dicom_info_carries_no_patient_identifiers():
    info = read_film(dicom()).info
    assert PATIENT not in repr(info) and "SECRET" not in repr(info) and "2019" not in repr(info)
    assert set(vars(info)) == {"format", "modality", "view_position", "study_date"}


def test_reading_a_dicom_with_invalid_header_values_logs_and_warns_nothing_about_the_patient(caplog, recwarn):
    caplog.set_level("DEBUG")
    data = dicom(PatientName=PATIENT * 20, PatientBirthDate="1980-13-45", PatientID="SECRET\\x" * 20)
    assert read_film(data).info.modality == "DX"
    said = caplog.text + " ".join(str(w.message) for w in recwarn)
    assert "Doe" not in said and "SECRET" not in said and "1980" not in said


def test_messages_say_what_is_accepted():
    with pytest.raises(ImageError, match=ACCEPTED):
        read_image(b"plain text", "notes.txt")


def test_a_missing_path_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="cannot be opened"):
        read_image(tmp_path / "nope.png")


# --- Memory budget: sizes measured before decoding, large films decoded down, per-request budget.

def with_frame(frame: bytes, syntax, rows: int, columns: int) -> bytes:
    """An 8-bit DX chest DICOM whose header says rows x columns around an encapsulated `frame`."""
    ds = pydicom.dcmread(io.BytesIO(dicom(np.zeros((rows, columns), np.uint16), bits=8)))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def j2k(pixels) -> bytes:
    import openjpeg
    return bytes(openjpeg.encode(pixels))


def test_frame_size_reads_jpeg_jpeg_ls_and_jpeg_2000_headers_without_decoding():
    import jpeg_ls
    pixels = np.zeros((80, 96), np.uint8)
    assert frame_size(encode(pixels, "JPEG")) == (96, 80, 1)
    assert frame_size(encode(pixels, "JPEG", progressive=True)) == (96, 80, 1)
    assert frame_size(encode(np.dstack([pixels] * 3), "JPEG")) == (96, 80, 3)
    assert frame_size(bytes(jpeg_ls.encode_array(pixels))) == (96, 80, 1)
    assert frame_size(j2k(pixels)) == (96, 80, 1)
    assert frame_size(b"\x00\x00\x00\x0cjP  " + bytes(40) + j2k(pixels)) == (96, 80, 1)  # inside a JP2 box
    assert frame_size(b"not a codestream") is None


@pytest.mark.parametrize("syntax, frame", [
    (JPEG2000Lossless, lambda shape: j2k(np.zeros(shape, np.uint8))),
    (JPEGBaseline8Bit, lambda shape: encode(np.zeros(shape, np.uint8), "JPEG")),
    (JPEGLSLossless, lambda shape: bytes(__import__("jpeg_ls").encode_array(np.zeros(shape, np.uint8))))])
def test_a_compressed_frame_larger_than_its_header_says_is_refused_before_decoding(syntax, frame):
    data = with_frame(frame((400, 300)), syntax, 80, 96)
    with pytest.raises(ImageError, match=r"header says 96x80 pixels but its compressed frame holds 300x400"):
        read_film(data, "bomb.dcm")
    assert read_film(with_frame(frame((80, 96)), syntax, 80, 96)).gray.shape == (80, 96)  # consistent: read


def test_a_compressed_frame_without_a_readable_header_is_damaged():
    with pytest.raises(ImageError, match="no readable"):
        read_film(with_frame(b"\x00" * 64, JPEG2000Lossless, 80, 96), "odd.dcm")


def big_film(shape=(3000, 2400)) -> np.ndarray:
    """Left half dark, right half bright, a bright square top left: survives any area reduction."""
    film = np.full(shape, 40, np.uint8)
    film[:, shape[1] // 2:] = 200
    film[: shape[0] // 4, : shape[1] // 4] = 250
    return film


@pytest.mark.parametrize("fmt, mode", [("PNG", None), ("JPEG", None), ("PNG", "RGB"), ("PNG", "P"),
                                       ("JPEG", "CMYK")])
def test_large_films_are_decoded_down_to_the_working_side(fmt, mode):
    film = big_film()
    gray = read_film(encode(film, fmt, mode), max_side=600).gray
    assert max(gray.shape) <= 600 and max(gray.shape) > 300
    assert abs(gray.shape[0] / gray.shape[1] - 3000 / 2400) < 0.02
    expected = cv2.resize(film, gray.shape[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(gray.astype(int) - expected).mean() < 4
    assert read_film(encode(film, fmt, mode), max_side=None).gray.shape == film.shape  # full size on request


def test_a_large_16_bit_film_is_reduced_and_mapped_without_losing_its_range():
    ramp = np.tile(np.linspace(0, 60000, 2600).astype(np.uint16), (2100, 1))
    gray = read_film(encode(ramp, mode="I;16"), max_side=650).gray
    assert gray.shape == (525, 650) and gray.dtype == np.uint8
    assert gray[:, 0].max() <= 1 and gray[:, -1].min() >= 254 and np.all(np.diff(gray[0].astype(int)) >= 0)


def test_16_bit_mapping_by_row_chunks_equals_the_whole_film_formula():
    values = RNG.integers(100, 50000, (1100, 1000)).astype(np.uint16)  # > 1 Mpx: several chunks
    expected = np.round((values.astype(np.float32) - values.min()) * (255.0 / (values.max() - values.min())))
    gray = read_film(encode(values, mode="I;16"), max_side=None).gray
    assert np.array_equal(gray, expected.astype(np.uint8))


def test_a_large_dicom_is_reduced_before_its_window_is_applied():
    ramp = np.tile(np.linspace(0, 4095, 1800).astype(np.uint16), (1500, 1))
    data = dicom(ramp, WindowCenter=2048, WindowWidth=4096)
    full, small = read_film(data, max_side=None).gray, read_film(data, max_side=450).gray
    assert full.shape == (1500, 1800) and small.shape == (375, 450)
    assert np.abs(small.astype(int) - cv2.resize(full, (450, 375), interpolation=cv2.INTER_AREA)).max() <= 2


def test_the_per_film_limit_is_checked_from_the_header():
    with pytest.raises(ImageError, match=r"3000x2400|2400x3000"):
        read_film(encode(big_film(), "PNG"), "huge.png", max_pixels=5_000_000)


def test_a_request_over_its_pixel_budget_refuses_the_film_that_crosses_it_by_name():
    budget = DecodeBudget(25_000)
    for i in range(2):
        read_film(encode(FILM), f"film{i}.png", budget=budget)  # 9000 px each
    with pytest.raises(ImageError) as caught:
        read_film(dicom(), "third.dcm", budget=budget)  # 7680 px: 25680 > 25000
    message = str(caught.value)
    assert message.startswith("third.dcm: ") and "limit of 0.025 megapixels" in message and "fewer" in message
    assert budget.used == 18_000  # the refused film was not counted
    read_film(encode(FILM[:70, :100]), "small.png", budget=budget)  # 7000 px still fit
    assert budget.used == 25_000


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_large_exif_rotated_film_is_still_rotated_after_reduction(fmt):
    film = np.zeros((3000, 2000), np.uint8)
    film[:100] = 255  # a bright top edge: after 'rotate 90°' it is the right edge
    exif = Image.Exif()
    exif[0x0112] = 6
    gray = read_film(encode(film, fmt, exif=exif.tobytes()), max_side=500).gray
    assert gray.shape[1] > gray.shape[0] and max(gray.shape) <= 500
    assert gray[:, -3:].mean() > 200 and gray[:, :3].mean() < 50


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


def test_a_deflated_dicom_is_read_and_a_deflate_bomb_is_refused_before_pydicom_inflates_it():
    assert np.array_equal(read_film(deflated()).gray, mono2(None))
    bomb = deflated(extra_zeros=20 * 2 ** 20)
    assert len(bomb) < 40_000
    with pytest.raises(ImageError, match="inflates to more than 3 MB"):
        read_film(bomb, "bomb.dcm", max_pixels=1_000_000)
