"""In a real browser: a reader records a verdict on Diagnose; it reaches `monitor --json` and the PDF."""
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import synthetic_film
from helpers import idle, pdf_text, require_chromium, sign_in

require_chromium()


@pytest.fixture(scope="module")
def home(dashboard) -> Path:
    """The shared dashboard's home: no other test records a verdict there."""
    return dashboard.home


@pytest.fixture(scope="module")
def server(dashboard) -> str:
    """The session's shared dashboard (conftest `dashboard`)."""
    return dashboard.url


def test_a_verdict_recorded_on_diagnose_reaches_monitor_and_the_report(server, home, browser_page, tmp_path, cli):
    page = browser_page
    sign_in(page, server, "tester")
    page.get_by_text("Upload one or more frontal chest films").wait_for(timeout=120_000)
    film = cv2.imencode(".png", synthetic_film(1, np.random.default_rng(3), (300, 360)))[1].tobytes()
    page.locator("input[type=file]").set_input_files({"name": "film.png", "mimeType": "image/png", "buffer": film})
    page.locator(".st-key-diagnose-ready button").wait_for(timeout=120_000)
    idle(page)
    call = page.locator("h4", has_text="Call:").inner_text().removeprefix("Call: ").strip()

    form = page.locator("[data-testid=stForm]")
    form.get_by_text("PNEUMONIA", exact=True).click()
    form.get_by_label("Note (optional; no patient names or identifiers)").fill("consolidation")
    form.get_by_role("button", name=re.compile("Record verdict")).click()
    page.get_by_text("Recorded: PNEUMONIA").wait_for(timeout=60_000)
    idle(page)

    result = cli("monitor", "--json", home=home)
    assert result.returncode == 0, result.stderr[-2000:]
    reader = json.loads(result.stdout)["reader"]
    # One film read PNEUMONIA: a true positive when the call was PNEUMONIA, a miss otherwise.
    hit = call == "PNEUMONIA"
    assert (reader["films"], reader["n"], reader["tp"], reader["fn"]) == (1, 1, int(hit), int(not hit))
    assert reader["sensitivity"]["value"] == (1.0 if hit else 0.0)
    assert reader["specificity"]["n"] == 0 and len(reader["disagreements"]) == int(not hit)

    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name=re.compile("Download report")).click()
    path = tmp_path / "report.pdf"
    download.value.save_as(path)
    text = pdf_text(path.read_bytes())     # every page: after a longer call the findings run onto page 2
    assert "Reader's findings" in text and "consolidation" in text and "tester" in text
