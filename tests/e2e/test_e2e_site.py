"""In a real browser (Playwright + Debian's Chromium against `streamlit run app.py`): validate a site, see the report.

Set PNEUMO_SCREENSHOT_DIR to take and keep the screenshots (docs/screenshots/site.png, monitor.png).
"""
import io
import shutil
import zipfile
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from conftest import make_dataset
from helpers import POLL_MS, dashboard_with_tester, idle, open_page, require_chromium, screenshot

from pneumo_core.records import registry
from pneumo_core.records.audit import AuditTrail

require_chromium()
VIEWPORT = (1360, 1800)


@pytest.fixture(scope="module")
def site_server(trained_home, tmp_path_factory):
    """The dashboard over a copy of the tiny trained home; a labelled site folder beside the data folder."""
    root = tmp_path_factory.mktemp("e2e_site")
    home = root / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*", "jobs*"))
    (root / "data" / "chest_xray").mkdir(parents=True)
    make_dataset(root / "data" / "clinic", {".": (20, 20)}, seed=11)
    data = {"PNEUMO_DATA": str(root / "data" / "chest_xray")}
    with dashboard_with_tester(home, root / "server.log", env=data) as url:
        yield url, home


def test_validating_a_site_shows_its_report(site_server, browser_page):
    url, home = site_server
    page = browser_page
    open_page(page, url, "Site")
    button = page.get_by_role("button", name="Validate at this site")
    button.wait_for(timeout=120_000)
    assert page.get_by_text("clinic").first.is_visible()               # the folder beside the data is offered
    button.click()
    page.get_by_text("Site clinic, 40 films").wait_for(timeout=180_000)  # the verdict
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 3",
                           timeout=60_000, polling=POLL_MS)
    assert page.get_by_text("Calibration at site clinic").first.is_visible()
    assert not page.locator("[data-testid=stException]").count()
    idle(page)
    screenshot(page, "site.png")
    assert list((home / "models").glob("*/site_reports/clinic.json"))


def test_a_zip_uploaded_without_a_typed_name_takes_its_folders_name_and_proceeds(site_server, browser_page,
                                                                                tmp_path):
    url, _ = site_server
    films = make_dataset(tmp_path / "films", {"north": (20, 20)}, seed=12)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for film in sorted((films / "north").rglob("*.jpeg")):
            archive.write(film, film.relative_to(films).as_posix())
    page = browser_page
    open_page(page, url, "Site")
    page.get_by_text("Upload a zip").click()
    page.locator("input[type=file]").set_input_files({"name": "upload-2026.zip", "mimeType": "application/zip",
                                                      "buffer": buffer.getvalue()})
    button = page.get_by_role("button", name="Validate at this site")
    button.wait_for(timeout=120_000)                                    # the page went on: no silent stop
    idle(page)
    names = page.get_by_label("Site name")
    assert names.count() == 1 and names.input_value() == "north"       # one box, the zip's folder name
    assert not page.locator("[data-testid=stException]").count()
    assert page.get_by_text("has not been validated at site north").is_visible()


def test_monitor_page_counts_the_diagnoses_of_its_window(site_server, browser_page):
    url, home = site_server
    trail = AuditTrail(home / "audit.sqlite")
    before = len(trail.rows())
    now = datetime.now(UTC)
    for i in range(7):    # seven calls of the last week, one from 40 days ago (outside the 30-day window)
        when = now - timedelta(days=40 if i == 6 else i)
        trail.record(SimpleNamespace(when=when.isoformat(timespec="seconds"), sha256=f"{i:064x}",
                                     model_id=registry.resolve(home / "models").name, probability=0.3,
                                     threshold=0.5, label="NORMAL", ood_score=0.5, ood_flag=False, method=None),
                     source="cli")
    page = browser_page
    open_page(page, url, "Monitor")
    page.get_by_text("Recent window (days)").wait_for(timeout=120_000)
    count = page.locator("[data-testid=stMetric]", has_text="Diagnoses in the window")
    count.first.wait_for(timeout=60_000)
    assert count.locator("[data-testid=stMetricValue]").inner_text() == str(before + 6)
    assert not page.locator("[data-testid=stException]").count()
    screenshot(page, "monitor.png")
