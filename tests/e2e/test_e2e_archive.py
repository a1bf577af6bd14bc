"""The dashboard reading a real archive, in a real browser: Playwright drives Debian's Chromium against
`streamlit run app.py`, whose Worklist shows the films a real Orthanc holds as the PACS watcher scored them.

- The Worklist in priority order (five studies: four frontal films scored, a lateral one skipped), the most
  urgent opening with the heatmap fetched from the archive.
- The prior film (issue 24, item 20): a patient's earlier film, which only the archive knows, shows beside the
  current one on the Worklist and on Diagnose, both calls, both heatmaps, the date gap and the change.
- The reading room at 1024 px (issue 24): the Worklist (ten films, scored by the watcher) and Diagnose (the same
  ten films uploaded) show every column, no "1.000", and the films in the same order; the PDF report names the
  DICOM's patient, its file name does not.

One dashboard, one Orthanc and one PACS watcher serve the three (a dashboard's start, TensorFlow and the model,
costs ~5 CPU-s here; each `pacs watch --once` in this process loaded and traced the model again, ~2.5 CPU-s).
Each test has the archive and the watcher's state hold its own studies and nothing else (`hold`), so what it
counts is what it stored, whichever test ran before it. Set PNEUMO_SCREENSHOT_DIR to take and keep the
screenshots (docs/screenshots/worklist.png).
"""
import io
import re
import shutil
from datetime import date, timedelta
from types import SimpleNamespace

import numpy as np
import pypdf
import pytest
from conftest import chest_studies, emptied, pacs_env, synthetic_film
from helpers import POLL_MS, dashboard_with_tester, idle, open_page, require_chromium, screenshot, sign_in

from pneumo_core.pacs.client import PacsClient
from pneumo_core.pacs.state import PacsState, worklist
from pneumo_core.pacs.watcher import Watcher, outbox_dir
from pneumo_core.records.anchor import audit_trail
from pneumo_core.serve.diagnosis import Diagnoser
from pneumo_core.serve.dicom_out import film_as_cr
from pneumo_core.serve.loading import load_version
from pneumo_core.settings import load_settings, os_user

require_chromium()
VIEWPORT = (1024, 900)     # each test sets its own size (`page.set_viewport_size`): no page load for it
PRIORITIES = ["high", "uncertain", "low", "check", "urgent", "routine", "not scored"]
PATIENT = "SYNPRIOR01"
GAP_DAYS = 60
FILMS = 10
ROWS = "[data-testid=stDataFrame] table tbody tr"


@pytest.fixture(scope="module")
def reading(trained_home, tmp_path_factory, module_orthanc):
    """The dashboard over a copy of the trained home, reading an Orthanc of this module's own, and the PACS watcher
    that scores what the archive holds (`pneumo_core.pacs.watcher.Watcher` in this process, as `pacs watch` runs it).

    Returns:
        SimpleNamespace(url, home, server, watcher, held): `held` names the set of studies the archive holds (`hold`).
    """
    root = tmp_path_factory.mktemp("e2e-archive")
    home = root / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*"))
    settings = load_settings({"PNEUMO_HOME": str(home), **pacs_env(module_orthanc)})
    watcher = Watcher(PacsClient.from_settings(settings), Diagnoser(load_version(settings.models_dir)),
                      PacsState(settings.pacs_state_path), audit_trail(settings), outbox_dir(settings), who=os_user())
    with dashboard_with_tester(home, root / "server.log", env=pacs_env(module_orthanc)) as url:
        yield SimpleNamespace(url=url, home=home, server=module_orthanc, watcher=watcher, held=None)


def hold(reading, name: str, studies: list) -> None:
    """Make the archive hold `studies` (the set called `name`) and nothing else, scored by the watcher: unless it
    holds them already, every study in it is deleted and the watcher's state emptied (so the Worklist shows these
    films alone), the studies are stored and one poll of the watcher scores them."""
    if reading.held == name:
        return
    reading.held = None
    emptied(reading.server)
    # The watcher's state emptied, not deleted: the dashboard's process (and this one) set up each SQLite file once,
    # known by its inode, and a file made again may get the deleted one's inode.
    with reading.watcher.state.database.transaction(write=True) as db:
        db.execute("DELETE FROM films")
        db.execute("DELETE FROM meta")
    for ds in studies:
        reading.watcher.client.store([ds], ds.StudyInstanceUID)
    summary = reading.watcher.poll()
    assert summary["failed"] == 0, summary
    reading.held = name


# -- the Worklist in priority order -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def five_studies() -> list:
    """Four frontal films and a lateral one (CR/DX, PA/AP)."""
    return chest_studies([(1, "PA", "CHEST", "CR"), (0, "PA", "CHEST", "CR"), (1, "AP", "CHEST", "DX"),
                          (1, "LL", "CHEST", "CR"), (0, "PA", "CHEST", "DX")], seed=7)


@pytest.fixture
def scored(reading, five_studies):
    """(home, server): the archive holds the five studies; the watcher has scored the four frontal films and
    skipped the lateral."""
    hold(reading, "five", five_studies)
    return reading.home, reading.server


def test_worklist_shows_the_scored_studies_in_priority_order(reading, scored, browser_page):
    home, _ = scored
    expected = worklist(PacsState(home / "pacs.sqlite"))
    page = browser_page
    page.set_viewport_size({"width": 1500, "height": 1500})
    open_page(page, reading.url, "Worklist")      # afresh: the most urgent film opens, as on a new page load
    page.get_by_text("Order: the site's triage tiers first").wait_for(timeout=120_000)
    # Glide's data grid draws on a canvas and keeps an accessible copy of the cells in a <table>.
    page.wait_for_function("() => document.querySelectorAll('[data-testid=stDataFrame] table tbody tr').length >= 5",
                           timeout=60_000, polling=POLL_MS)
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('[data-testid=stDataFrame] table tbody tr'))
        .map(r => Array.from(r.querySelectorAll('td')).map(c => c.innerText.trim()))""")
    header = page.evaluate("""() => Array.from(document.querySelectorAll('[data-testid=stDataFrame] table thead th'))
        .map(c => c.innerText.trim())""")
    assert {"priority", "accession", "certainty", "study date"} <= set(header), header
    accession = [row[header.index("accession")] for row in rows]
    priority = [row[header.index("priority")] for row in rows]
    assert accession == [r["accession"] for r in expected] and len(rows) == 5
    assert [PRIORITIES.index(p) for p in priority] == sorted(PRIORITIES.index(p) for p in priority)
    assert priority[-1] == "not scored" and "lateral view" in rows[-1][header.index("certainty")]
    assert sum(r["in_archive"] for r in expected) == 4
    # The most urgent film opens with its heatmap, fetched from the archive.
    page.locator("[data-testid=stImage] img").nth(1).wait_for(timeout=60_000)
    assert page.get_by_text("Heatmap as stored in the archive").is_visible()
    assert not page.locator("[data-testid=stException]").count()
    screenshot(page, "worklist.png")


# -- the prior film -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prior_and_current() -> tuple:
    """(prior, current) DICOM datasets of one synthetic patient: the prior 60 days old (older than the watcher
    looks back, so only the archive knows it), the current of today."""
    rng = np.random.default_rng(3)
    prior = film_as_cr(synthetic_film(0, rng, (256, 224)), "Synthetic^Prior", PATIENT, accession="ACCPRIOR1",
                       study_date=f"{date.today() - timedelta(days=GAP_DAYS):%Y%m%d}")
    current = film_as_cr(synthetic_film(1, rng, (256, 224)), "Synthetic^Prior", PATIENT, accession="ACCPRIOR2")
    return prior, current


@pytest.fixture
def archive(reading, prior_and_current) -> bytes:
    """The current film's DICOM bytes: the archive holds the prior study and today's study of the same synthetic
    patient; the watcher scored today's."""
    hold(reading, "prior", prior_and_current)
    assert [f.accession for f in reading.watcher.client.prior_studies(PATIENT, date.today())] == ["ACCPRIOR1"]
    buffer = io.BytesIO()
    prior_and_current[1].save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _prior_panel_shows_both_films(page, name: str) -> None:
    panel = page.locator(".st-key-prior-film")
    panel.wait_for(timeout=180_000)
    panel.locator("[data-testid=stImage] img").nth(1).wait_for(timeout=60_000)
    assert panel.locator("[data-testid=stImage] img").count() == 2          # side by side: prior and current
    text = panel.inner_text()
    assert f"{GAP_DAYS} days earlier" in text and "change in probability" in text
    assert "Prior (" in text and "archive" in text and "Current:" in text
    boxes = [panel.locator("[data-testid=stImage]").nth(i).bounding_box() for i in range(2)]
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 5 and boxes[0]["x"] < boxes[1]["x"]   # beside, not below
    assert PATIENT not in page.content()                                       # the ID is never shown
    assert not page.locator("[data-testid=stException]").count()
    screenshot(panel, f"prior-{name}.png")


def test_the_worklist_shows_the_prior_film_from_the_archive_beside_the_current_one(reading, archive, browser_page):
    browser_page.set_viewport_size({"width": 1440, "height": 1600})
    open_page(browser_page, reading.url, "Worklist")
    _prior_panel_shows_both_films(browser_page, "worklist")


def test_diagnose_shows_the_prior_film_of_an_uploaded_dicom(reading, archive, browser_page):
    page = browser_page
    page.set_viewport_size({"width": 1440, "height": 1600})
    sign_in(page, f"{reading.url}/diagnose", "tester")   # a new session: the Worklist's prior is not in its memo
    page.get_by_text("Upload one or more frontal chest films").wait_for(timeout=120_000)
    page.locator("input[type=file]").set_input_files({"name": "current.dcm", "mimeType": "application/dicom",
                                                      "buffer": archive})
    page.locator(".st-key-diagnose-ready button").wait_for(timeout=180_000)
    _prior_panel_shows_both_films(page, "diagnose")


# -- the reading room at 1024 px ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ten_films() -> tuple[list, list]:
    """(studies, files): ten frontal films as DICOM datasets, and as files (named by accession) to upload on
    Diagnose."""
    studies = chest_studies([(i % 2, "PA", "CHEST", "DX") for i in range(FILMS)], seed=24, shape=(320, 288))
    files = []
    for ds in studies:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append({"name": f"{ds.AccessionNumber}.dcm", "mimeType": "application/dicom",
                      "buffer": buffer.getvalue()})
    return studies, files


@pytest.fixture
def room(reading, ten_films, browser_page):
    """(url, studies, files): the archive holds the ten films, scored by the watcher; the tab is 1024 x 900."""
    studies, files = ten_films
    hold(reading, "ten", studies)
    browser_page.set_viewport_size({"width": 1024, "height": 900})
    return reading.url, studies, files


def _table(page) -> tuple[list[str], list[list[str]]]:
    """The first data grid's header and rows, from the accessible copy Glide keeps beside its canvas."""
    header = page.evaluate("""() => Array.from(document.querySelectorAll('[data-testid=stDataFrame] table thead th'))
        .map(c => c.innerText.trim())""")
    rows = page.evaluate(f"""() => Array.from(document.querySelectorAll('{ROWS}'))
        .map(r => Array.from(r.querySelectorAll('td')).map(c => c.innerText.trim()))""")
    return header, rows


def _fits(page) -> None:
    """No horizontal overflow: not the page, not a data grid (every column in view), not a metric."""
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
    for grid in page.locator("[data-testid=stDataFrame]").all():
        scroll, client = grid.evaluate("e => { const s = e.querySelector('.dvn-scroller'); "
                                       "return [s.scrollWidth, s.clientWidth]; }")
        assert scroll <= client + 1, f"a grid scrolls sideways: {scroll} px of columns in {client} px"
    for value in page.locator("[data-testid=stMetricValue]").all():
        assert value.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), value.inner_text()


def test_worklist_and_diagnose_at_1024_px_fit_show_no_1000_and_agree_on_the_order(room, browser_page):
    url, _, files = room
    page = browser_page
    open_page(page, url, "Worklist")
    page.get_by_text("Order: the site's triage tiers first").first.wait_for(timeout=120_000)
    page.wait_for_function(f"() => document.querySelectorAll('{ROWS}').length >= {FILMS}",
                           timeout=60_000, polling=POLL_MS)
    page.locator("[data-testid=stImage] img").first.wait_for(timeout=60_000)
    idle(page)
    header, rows = _table(page)
    worklist_order = [row[header.index("accession")] for row in rows]
    worklist_priority = [row[header.index("priority")] for row in rows]
    assert len(worklist_order) == FILMS and "study date" in header and "certainty" in header
    assert not any(re.fullmatch(r"\d{8}", cell) for row in rows for cell in row)     # no raw DICOM dates
    assert "1.000" not in page.locator("body").inner_text() and not any("1.000" in c for r in rows for c in r)
    screenshot(page, "worklist-1024.png")
    _fits(page)

    open_page(page, url, "Diagnose")
    page.get_by_text("Upload one or more frontal chest films").wait_for(timeout=120_000)
    page.locator("input[type=file]").set_input_files(files)
    page.locator(".st-key-diagnose-ready button").wait_for(timeout=300_000)
    idle(page)
    page.wait_for_function(f"() => document.querySelectorAll('{ROWS}').length >= {FILMS}",
                           timeout=60_000, polling=POLL_MS)
    header, rows = _table(page)
    diagnose_order = [row[header.index("file")].split(": ", 1)[1].removesuffix(".dcm") for row in rows]
    assert diagnose_order == worklist_order                                  # one order, the library's
    assert [row[header.index("priority")] for row in rows] == worklist_priority   # shown the same way
    assert "1.000" not in page.locator("body").inner_text()
    screenshot(page, "diagnose-1024.png")
    _fits(page)


def test_the_report_names_the_dicoms_patient_and_its_file_name_names_nobody(room, browser_page, tmp_path):
    url, studies, files = room
    page = browser_page
    open_page(page, url, "Diagnose")     # afresh: none of an earlier test's films stays in the upload
    page.get_by_text("Upload one or more frontal chest films").wait_for(timeout=120_000)
    page.locator("input[type=file]").set_input_files(files[0])
    page.locator(".st-key-diagnose-ready button").wait_for(timeout=120_000)
    idle(page)
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name=re.compile("Download report")).click()
    ds = studies[0]
    name = download.value.suggested_filename
    assert re.fullmatch(r"pneumo-report-[0-9.]+-\d{8}\.pdf", name), name
    for identifier in (str(ds.PatientName).split("^")[1], str(ds.PatientID), ds.AccessionNumber):
        assert identifier not in name
    path = tmp_path / "report.pdf"
    download.value.save_as(path)
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(path).pages)
    family, given = str(ds.PatientName).split("^")
    study_date = f"{ds.StudyDate[:4]}-{ds.StudyDate[4:6]}-{ds.StudyDate[6:]}"
    assert f"{family}, {given}" in text and str(ds.PatientID) in text
    # the browser's locale (Playwright's default en-US) writes the date month/day/year
    assert f"{ds.StudyDate[4:6]}/{ds.StudyDate[6:]}/{ds.StudyDate[:4]}" in text or study_date in text
    assert "Scored by the model" in text and "Report made" in text and "Reader's findings" in text
