"""In a real browser (Playwright + Debian's Chromium against `streamlit run app.py`): validate a site, see the report.

Set PNEUMO_SCREENSHOT_DIR to keep the screenshots (docs/screenshots/site.png, monitor.png).
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, make_dataset
from helpers import add_user, sign_in

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs /usr/bin/chromium for the browser test (make test installs it)")
    pytest.skip("Debian's chromium is not installed (make test installs it)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site_server(trained_home, tmp_path_factory):
    """The dashboard over a copy of the tiny trained home; a labelled site folder beside the data folder."""
    root = tmp_path_factory.mktemp("e2e_site")
    home = root / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*", "jobs*"))
    (root / "data" / "chest_xray").mkdir(parents=True)
    make_dataset(root / "data" / "clinic", {".": (20, 20)}, seed=11)
    port = _free_port()
    log = root / "server.log"
    add_user(home, "tester", "admin", exist_ok=True)   # the dashboard opens on its sign-in page
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=REPO,
        env={**os.environ, "PNEUMO_HOME": str(home), "PNEUMO_DATA": str(root / "data" / "chest_xray")},
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("streamlit did not start:\n" + log.read_text()[-2000:])
    yield url, home
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser_page():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1800})
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("PNEUMO_SCREENSHOT_DIR") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_validating_a_site_shows_its_report(site_server, browser_page, shots):
    url, home = site_server
    page = browser_page
    sign_in(page, f"{url}/site", "tester")
    button = page.get_by_role("button", name="Validate at this site")
    button.wait_for(timeout=120_000)
    assert page.get_by_text("clinic").first.is_visible()               # the folder beside the data is offered
    button.click()
    page.get_by_text("Site clinic, 40 films").wait_for(timeout=180_000)  # the verdict
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=60_000)
    assert page.get_by_text("Calibration at site clinic").first.is_visible()
    assert not page.locator("[data-testid=stException]").count()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(shots / "site.png"), full_page=True)
    assert list((home / "models").glob("*/site_reports/clinic.json"))


def test_monitor_page_renders(site_server, browser_page, shots):
    url, _ = site_server
    page = browser_page
    sign_in(page, f"{url}/monitor", "tester")
    page.get_by_text("Recent window (days)").wait_for(timeout=120_000)
    page.get_by_text("Diagnoses in the window").first.wait_for(timeout=60_000)
    assert not page.locator("[data-testid=stException]").count()
    page.screenshot(path=str(shots / "monitor.png"), full_page=True)
