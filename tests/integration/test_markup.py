"""Untrusted text is never Markdown: DICOM headers, PACS fields, file names and errors are shown as they are."""
import re

import pytest
from conftest import REPO
from helpers import dicom

from pneumo_core.errors import ImageError
from pneumo_core.imaging.films import read_film
from pneumo_core.pacs.client import FilmRef
from pneumo_core.pacs.state import PacsState
from ui.text import literal

IMAGE = "![t](http://127.0.0.1:9/x.png)"


@pytest.mark.parametrize("value", [IMAGE, "**bold**", "_i_", ":red[x]", "$x^2$", "# heading", "<b>b</b>",
                                   "a\n- list", "[link](javascript:alert(1))", "`code`", "| a | b |"])
def test_literal_escapes_every_markdown_character_and_keeps_one_line(value):
    text = literal(value)
    assert "\n" not in text
    # Every ASCII punctuation character is escaped; removing the escapes gives the value back (on one line).
    assert re.sub(r"\\(.)", r"\1", text) == value.replace("\n", " ")
    assert not re.search(r"(?<!\\)[!*_\[\]()`$#<>:|]", text)


def test_literal_of_none_and_numbers():
    assert literal(None) == "" and literal(0.95) == "0\\.95"


@pytest.mark.parametrize("field, message", [("Modality", "DICOM (a non-standard value) image"),
                                            ("BodyPartExamined", "body part (a non-standard value)")])
def test_a_refusal_never_quotes_a_header_value(field, message):
    with pytest.raises(ImageError) as caught:
        read_film(dicom(**{field: "**X** " + IMAGE}), "film.dcm")
    assert message in str(caught.value) and "**" not in str(caught.value) and "http" not in str(caught.value)


def test_a_standard_code_is_still_named():
    with pytest.raises(ImageError, match="body part KNEE"):
        read_film(dicom(BodyPartExamined="KNEE"), "film.dcm")


def test_worklist_heading_and_reason_from_the_archive_are_not_markdown(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from pneumo_core.records.access import Actor
    home = tmp_path / "home"
    state = PacsState(home / "pacs.sqlite")
    state.add([FilmRef("1.2.3", "1.2.3.4", "1.2.3.5", accession=f"**ACC** {IMAGE}", study_date="20240301")], "v1")
    state.update("1.2.3.5", "v1", status="skipped", reason=f"body part **{IMAGE}**")
    monkeypatch.setenv("PNEUMO_HOME", str(home))
    at = AppTest.from_file(str(REPO / "views" / "worklist.py"), default_timeout=120)
    at.session_state["actor"] = Actor("test", "clinician")
    at.run()
    assert not at.exception
    # The study date in the reader's locale style (AppTest gives none: ISO 8601), escaped like every archive value.
    assert at.subheader[0].value == f"not scored · accession {literal('**ACC** ' + IMAGE)} · {literal('2024-03-01')}"
    assert at.info[0].value == f"Not scored: {literal('body part **' + IMAGE + '**')}."
