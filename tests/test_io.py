"""A hostile corpus (tests/helpers.py, generated; no patient data committed): every odd or bad input
gets its expected outcome, either a specific message or a film read the right way."""
import ast
import inspect
import sys

import numpy as np
import pytest
from helpers import CASES, PATIENT, dicom

from pneumo_core import io as reader
from pneumo_core.io import ACCEPTED, ImageError, read_film, read_image


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
    """Each `raise ImageError` in io.py runs for some case (or a missing path): a new rejection needs a case."""
    tree = ast.parse(inspect.getsource(reader))
    rejections = {node.lineno for node in ast.walk(tree) if isinstance(node, ast.Raise)
                  and isinstance(node.exc, ast.Call) and getattr(node.exc.func, "id", None) == "ImageError"}
    reached = set()

    def trace(frame, event, arg):
        if frame.f_code.co_filename != reader.__file__:
            return None
        def lines(frame, event, arg):
            if event == "line":
                reached.add(frame.f_lineno)
            return lines
        return lines

    sources = [data for data, _ in CASES.values()] + [tmp_path / "missing.png"]
    sys.settrace(trace)
    try:
        for source in sources:
            try:
                read_film(source, "upload.png")
            except ImageError:
                pass
    finally:
        sys.settrace(None)
    assert len(rejections) >= 10 and not rejections - reached, sorted(rejections - reached)


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
