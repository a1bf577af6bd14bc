"""A poisoned film from the archive never stops the watcher: UIDs checked (PS3.5 9.1), errors per film.

And credentials never cross the network in clear: http:// with basic auth or a token is refused.
"""
import io
from types import SimpleNamespace

import pytest
import requests
from conftest import chest_studies, pacs_env

from pneumo_core.errors import ConfigError, PacsError
from pneumo_core.pacs.client import FilmRef, PacsClient, uid_problem
from pneumo_core.pacs.state import PacsState
from pneumo_core.pacs.watcher import Watcher, outbox_paths
from pneumo_core.settings import load_settings

POISON = "../../x/PWNED"
GOOD = "1.2.826.0.1.3680043.8.498.1"


@pytest.mark.parametrize("uid, problem", [
    (GOOD, None), ("0.1", None), ("", "empty"), (POISON, "not a UID"), ("1.02.3", "not a UID"),
    ("1..2", "not a UID"), ("1.2.", "not a UID"), ("1.2 ", "not a UID"), ("1" * 65, "65 characters"),
    ("**1**", "not a UID")])
def test_uids_follow_ps3_5_9_1_and_the_reason_never_quotes_the_value(uid, problem):
    found = uid_problem(uid)
    assert (found is None) if problem is None else (problem in found and (not uid or uid not in found))


class _Archive:
    """An archive that finds the given films; retrieving `broken` raises a bug-like error."""
    url = "http://127.0.0.1:9/dicom-web"

    def __init__(self, films, broken=()):
        self.films, self.broken, self.retrieved = films, set(broken), []

    def search_films(self, since=None, study_uid=None):
        return self.films

    def retrieve(self, film):
        self.retrieved.append(film.sop_uid)
        if film.sop_uid in self.broken:
            raise ValueError("an unexpected answer")
        raise PacsError("gone", 404)


def test_a_bad_uid_is_skipped_with_the_reason_and_an_error_fails_only_its_film(tmp_path):
    films = [FilmRef("1.2.3", "1.2.3.4", POISON), FilmRef(POISON, "1.2.3.4", "1.2.3.5"),
             FilmRef("1.2.3", "1.2.3.4", GOOD)]
    archive, state = _Archive(films, broken=[GOOD]), PacsState(tmp_path / "pacs.sqlite")
    watcher = Watcher(archive, SimpleNamespace(model=SimpleNamespace(id="v1")), state, None, tmp_path / "outbox")
    summary = watcher.poll()                      # returns: nothing escapes from one film
    assert summary["skipped"] == 2 and summary["failed"] == 1
    rows = {r["sop_uid"]: r for r in state.films()}
    assert rows[POISON]["status"] == "skipped" and "SOP Instance UID is not a UID" in rows[POISON]["reason"]
    assert rows["1.2.3.5"]["status"] == "skipped" and "Study Instance UID" in rows["1.2.3.5"]["reason"]
    assert rows[GOOD]["status"] == "failed" and "ValueError" in rows[GOOD]["reason"]
    assert archive.retrieved == [GOOD]            # a bad UID never reaches a request or a path
    assert watcher.poll()["skipped"] == 0         # skipped for good: not tried again
    with pytest.raises(PacsError, match="not a UID"):
        outbox_paths(tmp_path / "outbox", POISON)
    assert not any((tmp_path / "outbox").iterdir()) and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("url, credentials, refused", [
    ("http://pacs.hospital:8042/dicom-web", {"user": "ann", "password": "pw"}, True),
    ("http://pacs.hospital:8042/dicom-web", {"token": "t0k"}, True),
    ("http://pacs.hospital:8042/dicom-web", {}, False),                      # nothing secret to send
    ("https://pacs.hospital/dicom-web", {"user": "ann", "password": "pw"}, False),
    ("http://127.0.0.1:8042/dicom-web", {"user": "ann", "password": "pw"}, False),  # never leaves the machine
    ("http://localhost:8042/dicom-web", {"token": "t0k"}, False)])
def test_credentials_over_plain_http_are_refused_unless_allowed(url, credentials, refused):
    if refused:
        with pytest.raises(ConfigError, match="PNEUMO_PACS_ALLOW_HTTP_CREDENTIALS"):
            PacsClient(url, **credentials)
        PacsClient(url, **credentials, allow_http_credentials=True)
    else:
        PacsClient(url, **credentials)
    settings = load_settings({"PNEUMO_PACS_URL": url, "PNEUMO_PACS_USER": "ann", "PNEUMO_PACS_PASSWORD": "pw",
                              "PNEUMO_PACS_ALLOW_HTTP_CREDENTIALS": "1", "PNEUMO_HOME": "/nonexistent"})
    assert PacsClient.from_settings(settings).url == url.rstrip("/")


def test_a_pwned_uid_from_the_archive_is_skipped_and_the_watcher_keeps_going(trained_home, tmp_path, orthanc, cli):
    import shutil
    home = tmp_path / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*"))
    good, bad = chest_studies([(1, "PA", "CHEST", "CR"), (0, "PA", "CHEST", "DX")], seed=7)
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = POISON
    for ds in (good, bad):   # Orthanc's REST upload: it stores what it is given
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        requests.post(f"{orthanc.url}/instances", data=buffer.getvalue(), auth=orthanc.auth,
                      timeout=30).raise_for_status()
    assert POISON in {f.sop_uid for f in PacsClient.from_settings(load_settings(pacs_env(orthanc))).search_films()}
    for _ in range(2):   # a restart (a new watcher over the same state) does not crash on the same film again
        run = cli("pacs", "watch", "--once", home=home, env_extra=pacs_env(orthanc))
        assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["sop_uid"]: r for r in PacsState(home / "pacs.sqlite").films()}
    assert rows[POISON]["status"] == "skipped" and "SOP Instance UID" in rows[POISON]["reason"]
    assert rows[good.SOPInstanceUID]["status"] == "stored"
    assert not (tmp_path / "x").exists() and not (home / "x").exists()
    assert POISON not in run.stderr
