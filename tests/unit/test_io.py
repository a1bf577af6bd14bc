"""A hostile corpus (tests/helpers.py, generated; no patient data committed): every odd or bad input
gets its expected outcome, either a specific message or a film read the right way."""
import ast
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import CASES, FILM, PATIENT, RNG, deflated, dicom, encode, j2k, mono2, with_frame
from PIL import Image
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless

from pneumo_core.imaging import decoding, films
from pneumo_core.imaging import dicom as dicom_reader
from pneumo_core.imaging import films as reader
from pneumo_core.imaging.dicom import frame_size
from pneumo_core.imaging.films import ACCEPTED, DecodeBudget, ImageError, read_film, read_image

READERS = (films, dicom_reader, decoding)   # every module a film passes through on its way to a Film


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


def test_the_corpus_reaches_every_rejection_the_reader_has(tmp_path):
    """Each `raise ImageError` of the reader (the modules of pneumo_core.imaging) is where some case's error (or
    a missing path's) was raised: a new rejection needs a case. Read from each error's traceback (no tracer,
    which would switch coverage off)."""
    package = Path(reader.__file__).parent
    rejections = set()
    for module in sorted(package.glob("*.py")):
        tree = ast.parse(module.read_text())
        rejections |= {(str(module), node.lineno) for node in ast.walk(tree) if isinstance(node, ast.Raise)
                       and isinstance(node.exc, ast.Call) and getattr(node.exc.func, "id", None) == "ImageError"}
    bomb = deflated(extra_zeros=20 * 2 ** 20)
    # (source, keyword arguments): the corpus at the defaults, plus the limits a caller sets
    sources = [(data, {}) for data, _ in CASES.values()] + [(tmp_path / "missing.png", {}),
                                                           (bomb, {"max_pixels": 1_000_000}),
                                                           (encode(FILM), {"budget": DecodeBudget(1)})]
    reached = set()
    for source, limits in sources:
        try:
            read_film(source, "upload.png", **limits)
        except ImageError as error:
            raised = error.__traceback__
            while raised.tb_next is not None:        # the innermost frame: where it was raised
                raised = raised.tb_next
            reached.add((raised.tb_frame.f_code.co_filename, raised.tb_lineno))
    assert len(rejections) >= 10 and not rejections - reached, sorted(rejections - reached)


def test_dicom_info_carries_the_patient_for_the_report_but_never_shows_it():
    info = read_film(dicom()).info
    # The report must say whom it is about (issue 24): name, ID and birth date travel with the film ...
    assert (info.patient_name, info.patient_id, info.birth_date) == ("Doe, Jane", "SECRET-123", "2019-01-01")
    # ... but never into a repr (logs, tracebacks) or the one-line summary the pages show.
    for shown in (repr(info), info.summary()):
        assert "Doe" not in shown and "SECRET" not in shown and "2019" not in shown


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


def test_a_deflated_dicom_is_read_and_a_deflate_bomb_is_refused_before_pydicom_inflates_it():
    assert np.array_equal(read_film(deflated()).gray, mono2(None))
    bomb = deflated(extra_zeros=20 * 2 ** 20)
    assert len(bomb) < 40_000
    with pytest.raises(ImageError, match="inflates to more than 3 MB"):
        read_film(bomb, "bomb.dcm", max_pixels=1_000_000)
