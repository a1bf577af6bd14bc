"""The Worklist in a real browser: Playwright drives Debian's Chromium against `streamlit run app.py`,
after the PACS watcher has scored films stored in a real Orthanc."""
import os
import shutil
from pathlib import Path

import pytest
from conftest import chest_studies, cli_here, pacs_env
from helpers import POLL_MS, dashboard_with_tester, require_chromium, sign_in

from pneumo_core.pacs.client import PacsClient
from pneumo_core.pacs.state import PacsState, worklist

require_chromium()
VIEWPORT = (1500, 1500)
PRIORITIES = ["high", "uncertain", "low", "check", "urgent", "routine", "not scored"]


@pytest.fixture(scope="module")
def scored(trained_home, tmp_path_factory, module_orthanc):
    """A home whose watcher has scored four frontal films and skipped a lateral, and its archive (an
    Orthanc of this module's own)."""
    server = module_orthanc
    home = tmp_path_factory.mktemp("e2e-pacs") / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*"))
    client = PacsClient(server.dicomweb, server.user, server.password)
    for ds in chest_studies([(1, "PA", "CHEST", "CR"), (0, "PA", "CHEST", "CR"), (1, "AP", "CHEST", "DX"),
                             (1, "LL", "CHEST", "CR"), (0, "PA", "CHEST", "DX")], seed=7):
        client.store([ds], ds.StudyInstanceUID)
    result = cli_here("pacs", "watch", "--once", home=home, env_extra=pacs_env(server))
    assert result.returncode == 0, result.stderr[-3000:]
    return home, server


@pytest.fixture(scope="module")
def server_url(scored, tmp_path_factory):
    home, archive = scored
    with dashboard_with_tester(home, tmp_path_factory.mktemp("streamlit") / "server.log", env=pacs_env(archive)) as url:
        yield url


def test_worklist_shows_the_scored_studies_in_priority_order(scored, server_url, browser_page, tmp_path):
    home, _ = scored
    expected = worklist(PacsState(home / "pacs.sqlite"))
    page = browser_page
    sign_in(page, f"{server_url}/worklist", "tester")
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
    page.screenshot(path=str(Path(os.environ.get("PNEUMO_SCREENSHOT_DIR") or tmp_path) / "worklist.png"),
                    full_page=True)
