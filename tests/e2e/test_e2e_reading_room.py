"""The reading room at 1024 px in a real browser (issue 24): the Worklist (ten films a real Orthanc holds,
scored by the watcher) and Diagnose (the same ten films uploaded) show every column, no "1.000", and
the films in the same order; the PDF report names the DICOM's patient, its file name does not."""
import io
import re
import shutil

import pypdf
import pytest
from conftest import chest_studies, cli_here, pacs_env
from helpers import POLL_MS, dashboard_with_tester, idle, open_page, require_chromium

from pneumo_core.pacs.client import PacsClient

require_chromium()
VIEWPORT = (1024, 900)
FILMS = 10
ROWS = "[data-testid=stDataFrame] table tbody tr"


@pytest.fixture(scope="module")
def room(trained_home, tmp_path_factory, module_orthanc):
    """Ten frontal films in an Orthanc of this module's own, scored by the watcher; the dashboard over
    that home; and the films as DICOM files (named by accession) to upload on Diagnose."""
    server = module_orthanc
    root = tmp_path_factory.mktemp("reading-room")
    home = root / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*"))
    studies = chest_studies([(i % 2, "PA", "CHEST", "DX") for i in range(FILMS)], seed=24, shape=(320, 288))
    client = PacsClient(server.dicomweb, server.user, server.password)
    files = []
    for ds in studies:
        client.store([ds], ds.StudyInstanceUID)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append({"name": f"{ds.AccessionNumber}.dcm", "mimeType": "application/dicom",
                      "buffer": buffer.getvalue()})
    result = cli_here("pacs", "watch", "--once", home=home, env_extra=pacs_env(server))
    assert result.returncode == 0, result.stderr[-3000:]
    with dashboard_with_tester(home, root / "server.log", env=pacs_env(server)) as url:
        yield url, studies, files


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


def test_worklist_and_diagnose_at_1024_px_fit_show_no_1000_and_agree_on_the_order(room, browser_page, shots):
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
    page.screenshot(path=str(shots / "worklist-1024.png"), full_page=True)
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
    page.screenshot(path=str(shots / "diagnose-1024.png"), full_page=True)
    _fits(page)


def test_the_report_names_the_dicoms_patient_and_its_file_name_names_nobody(room, browser_page, tmp_path):
    url, studies, files = room
    page = browser_page
    open_page(page, url, "Diagnose")     # afresh: none of the first test's ten films stays in the upload
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
