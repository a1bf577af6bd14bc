"""End to end in a real browser: Playwright drives Debian's Chromium against `streamlit run app.py`.

Set PNEUMO_E2E_HOME to use an existing home (e.g. with a real model) and PNEUMO_SCREENSHOT_DIR to
keep the screenshots (the README's come from `PNEUMO_SCREENSHOT_DIR=docs/screenshots`).
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, synthetic_film

from pneumo_core import registry

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
def e2e_home(request, tmp_path_factory) -> Path:
    """PNEUMO_E2E_HOME as it is, else a copy of the tiny trained home (the retrain test adds to it)."""
    if os.environ.get("PNEUMO_E2E_HOME"):
        return Path(os.environ["PNEUMO_E2E_HOME"])
    home = tmp_path_factory.mktemp("e2e") / "home"
    shutil.copytree(request.getfixturevalue("trained_home"), home)
    return home


@pytest.fixture(scope="module")
def server(request, e2e_home, tmp_path_factory):
    home = e2e_home
    data = {} if os.environ.get("PNEUMO_E2E_HOME") else {"PNEUMO_DATA": str(request.getfixturevalue("synthetic_data"))}
    port = _free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=REPO, env={**os.environ, "PNEUMO_HOME": str(home), **data}, stdout=log.open("w"), stderr=subprocess.STDOUT)
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
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser_page():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1500})
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("PNEUMO_SCREENSHOT_DIR") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _film(tmp_path: Path) -> Path:
    real = sorted((SHARED_DATA / "train" / "PNEUMONIA").glob("*.jpeg"))[:1] if SHARED_DATA.is_dir() else []
    if real and os.environ.get("PNEUMO_E2E_HOME"):
        return real[0]
    path = tmp_path / "film.png"
    cv2.imwrite(str(path), synthetic_film(1, np.random.default_rng(0), (300, 360)))
    return path


def _confusion_labels(page) -> list:
    return page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot'))
        .map(p => p.data && p.data[0] && p.data[0].text).filter(t => t && String(t).includes('true negative'))""")


def test_a_deep_link_on_a_fresh_server_gets_the_apps_navigation(server, browser_page):
    # First test of the module on purpose: Streamlit runs a deep-linked script of a `pages/` folder
    # on its own until app.py has run once, which is why the pages live in `views/`.
    page = browser_page
    page.goto(f"{server}/models")
    page.get_by_text("Decision support, not a diagnosis.").wait_for(timeout=120_000)
    titles = page.locator("[data-testid=stSidebarNav]").inner_text().split()
    assert {"Diagnose", "Retrain"} <= set(titles) and "app" not in titles


def test_upload_gives_a_call_and_a_heatmap(server, browser_page, shots, tmp_path):
    page = browser_page
    page.goto(server)
    page.get_by_text("Upload one or more frontal chest films").wait_for(timeout=120_000)
    page.locator("input[type=file]").set_input_files(str(_film(tmp_path)))
    page.get_by_text("Probability of pneumonia").wait_for(timeout=120_000)
    call = page.locator("[data-testid=stMetricValue]").first.inner_text()
    assert call in ("NORMAL", "PNEUMONIA")
    images = page.locator("[data-testid=stImage] img")
    images.nth(1).wait_for(timeout=30_000)
    assert images.count() == 2 and page.get_by_text("evidence for the").is_visible()
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "diagnose.png"), full_page=True)


def test_threshold_slider_changes_the_matrix(server, browser_page, shots):
    page = browser_page
    page.goto(f"{server}/metrics")
    page.get_by_text("Threshold: call PNEUMONIA").wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=60_000)
    before = _confusion_labels(page)
    assert before, "confusion matrix not drawn"
    page.screenshot(path=str(shots / "metrics.png"), full_page=True)
    slider = page.locator("[data-testid=stSlider] input[type=range]").first
    slider.focus()
    page.keyboard.press("End")  # threshold 1.0: (almost) every film is called NORMAL
    page.wait_for_function("""(old) => { const now = Array.from(document.querySelectorAll('.js-plotly-plot'))
        .map(p => p.data && p.data[0] && p.data[0].text).filter(t => t && String(t).includes('true negative'));
        return now.length && JSON.stringify(now) !== JSON.stringify(old); }""", arg=before, timeout=60_000)
    after = _confusion_labels(page)
    assert slider.get_attribute("value") == "1" and after != before
    assert after[0][0][1].startswith("0<br>")  # no false positives left at threshold 1.0


def test_every_page_renders(server, e2e_home, browser_page, shots):
    page = browser_page
    active = next(v for v in registry.list_versions(e2e_home / "models") if v["active"])
    expected = {  # what each page must show once its script has run to the end
        "heatmaps": page.locator("[data-testid=stImage] img").nth(2),               # one panel per CAM method
        "models": page.get_by_text(f"{active['backbone']} ({active['weights'] or 'random init'} weights)").first,
        "retrain": page.get_by_role("button", name="Retrain with current settings"),
    }
    for path, marker in (("heatmaps", "Compare"), ("models", "Model card"), ("retrain", "Past jobs")):
        page.goto(f"{server}/{path}")
        page.get_by_text(marker).first.wait_for(timeout=120_000)
        # Streamlit's own ready marker: the script has run to its end (the Retrain page's fragment
        # reruns every 2 s, and is idle in between).
        page.locator("[data-testid=stApp][data-test-script-state=notRunning]").wait_for(timeout=120_000)
        expected[path].wait_for(timeout=30_000)     # raises (fails the test) when the content never comes
        assert not page.locator("[data-testid=stException]").count(), path
        page.screenshot(path=str(shots / f"{path}.png"), full_page=True)


def test_retrain_runs_to_completion_and_the_candidate_is_promoted(server, e2e_home, browser_page, shots):
    if os.environ.get("PNEUMO_E2E_HOME"):
        pytest.skip("retraining a real model takes minutes; run against the tiny test home")
    page = browser_page
    page.goto(f"{server}/retrain")
    page.get_by_text("Past jobs").wait_for(timeout=120_000)       # the first run has finished
    page.get_by_role("button", name="Retrain with current settings").click()
    page.get_by_text(re.compile(r"Job \d+ submitted")).wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"Job \d+: ")).first.wait_for(timeout=60_000)   # the live progress bar
    page.screenshot(path=str(shots / "retrain-progress.png"), full_page=True)
    promote = page.get_by_role("button", name=re.compile(r"^Promote "))
    promote.wait_for(timeout=300_000)        # the fragment refreshes the page when the job ends
    page.get_by_text("called differently").wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(shots / "retrain.png"), full_page=True)
    candidate = registry.candidates(e2e_home / "models")[0]
    before = registry.active_version(e2e_home / "models")
    promote.click()
    deadline = time.time() + 30
    while registry.active_version(e2e_home / "models") == before and time.time() < deadline:
        time.sleep(0.5)
    assert registry.active_version(e2e_home / "models") == candidate
    assert registry.promotions(e2e_home / "models")[-1]["to"] == candidate
