"""The prior film in a real browser (issue 24, item 20): a patient's earlier film in a real Orthanc shows beside
the current one on the Worklist and on Diagnose, both calls, both heatmaps, the date gap and the change."""
import io
import shutil
from datetime import date, timedelta

import numpy as np
import pytest
from conftest import cli_here, pacs_env, synthetic_film
from helpers import dashboard_with_tester, open_page, require_chromium, sign_in

from pneumo_core.pacs.client import PacsClient
from pneumo_core.serve.dicom_out import film_as_cr

require_chromium()
VIEWPORT = (1440, 1600)
PATIENT = "SYNPRIOR01"
GAP_DAYS = 60


@pytest.fixture(scope="module")
def archive(trained_home, tmp_path_factory, module_orthanc):
    """(home, server, current film's DICOM bytes): a prior study 60 days old (older than the watcher looks back, so
    only the archive knows it) and today's study of the same synthetic patient; the watcher scored today's."""
    server = module_orthanc
    home = tmp_path_factory.mktemp("e2e-prior") / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*"))
    client = PacsClient(server.dicomweb, server.user, server.password)
    rng = np.random.default_rng(3)
    prior = film_as_cr(synthetic_film(0, rng, (256, 224)), "Synthetic^Prior", PATIENT, accession="ACCPRIOR1",
                       study_date=f"{date.today() - timedelta(days=GAP_DAYS):%Y%m%d}")
    current = film_as_cr(synthetic_film(1, rng, (256, 224)), "Synthetic^Prior", PATIENT, accession="ACCPRIOR2")
    for ds in (prior, current):
        client.store([ds], ds.StudyInstanceUID)
    assert [f.accession for f in client.prior_studies(PATIENT, date.today())] == ["ACCPRIOR1"]
    result = cli_here("pacs", "watch", "--once", home=home, env_extra=pacs_env(server))
    assert result.returncode == 0, result.stderr[-3000:]
    buffer = io.BytesIO()
    current.save_as(buffer, enforce_file_format=True)
    return home, server, buffer.getvalue()


@pytest.fixture(scope="module")
def server_url(archive, tmp_path_factory):
    home, server, _ = archive
    with dashboard_with_tester(home, tmp_path_factory.mktemp("streamlit") / "server.log", env=pacs_env(server)) as url:
        yield url


def _prior_panel_shows_both_films(page, shots, name: str) -> None:
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
    panel.screenshot(path=str(shots / f"prior-{name}.png"))


def test_the_worklist_shows_the_prior_film_from_the_archive_beside_the_current_one(server_url, browser_page, shots):
    open_page(browser_page, server_url, "Worklist")
    _prior_panel_shows_both_films(browser_page, shots, "worklist")


def test_diagnose_shows_the_prior_film_of_an_uploaded_dicom(archive, server_url, browser_page, shots):
    _, _, current = archive
    page = browser_page
    sign_in(page, f"{server_url}/diagnose", "tester")   # a new session: the Worklist's prior is not in its memo
    page.get_by_text("Upload one or more frontal chest films").wait_for(timeout=120_000)
    page.locator("input[type=file]").set_input_files({"name": "current.dcm", "mimeType": "application/dicom",
                                                      "buffer": current})
    page.locator(".st-key-diagnose-ready button").wait_for(timeout=180_000)
    _prior_panel_shows_both_films(page, shots, "diagnose")
