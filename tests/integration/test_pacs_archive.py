"""PACS round trip against a real Orthanc (Debian's, with DICOMweb), one per test session.

Films are synthetic, converted to CR/DX DICOM with synthetic patient names, stored with STOW-RS;
the watcher runs as a user would run it (a command-line process) with the session's tiny model where the
process is the point (the archive going down mid-run, the watcher stopped); the module's first watcher run
and the later commands of a test (predict, a second watch, status, score) run in this process (`cli_here`,
the `cli` fixture: no interpreter and TensorFlow start each).
"""
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import requests
from conftest import REPO, chest_studies, cli_here, emptied, pacs_env
from helpers import free_port

from pneumo_core.errors import PacsUnavailable
from pneumo_core.pacs.client import PacsClient
from pneumo_core.pacs.state import PacsState, worklist
from pneumo_core.records.audit import AuditTrail
from pneumo_core.serve import dicom_out

FRONTAL = [(1, "PA", "CHEST", "CR"), (0, "AP", "CHEST", "DX"), (1, "PA", "CHEST", "CR")]
LATERAL, HAND = (1, "LL", "CHEST", "CR"), (0, "PA", "HAND", "CR")


def _home(trained_home, tmp_path_factory):
    home = tmp_path_factory.mktemp("pacs") / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*"))
    return home


@pytest.fixture(scope="module")
def archive(trained_home, tmp_path_factory, orthanc_server):
    """The session's Orthanc, emptied, holding three frontal chest studies, a lateral and a hand, after one
    watcher run."""
    server = emptied(orthanc_server)
    home = _home(trained_home, tmp_path_factory)
    films = chest_studies(FRONTAL + [LATERAL, HAND], seed=1)
    client = PacsClient(server.dicomweb, server.user, server.password)
    for ds in films:
        client.store([ds], ds.StudyInstanceUID)
    first = cli_here("pacs", "watch", "--once", home=home, env_extra=pacs_env(server))
    return SimpleNamespace(server=server, home=home, films=films, client=client, first=first)


class FlakyArchive:
    """A relay in front of an archive that goes down, refusing connections on its port, right after it has
    passed on `stores_before_outage` stores (STOW-RS POSTs), and comes back on the same port with `back()`:
    an outage at a chosen moment of a watcher's run, while the real archive runs on.

    Attributes:
        dicomweb, user, password: as an `OrthancServer`'s, for `pacs_env`.
        down: set once the relay has gone down.
    """

    def __init__(self, server, stores_before_outage: int):
        self.upstream, self.user, self.password = server.url, server.user, server.password
        self.port = free_port()
        self.dicomweb = f"http://127.0.0.1:{self.port}/dicom-web"
        self.stores_left = stores_before_outage
        self.down = threading.Event()
        self.back()

    def back(self) -> None:
        """Listen (again) on the relay's port."""
        relay = self

        class Relay(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"    # one request per connection: none stays open through the outage

            def body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []        # a streamed upload (the heatmap captures)
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)

            def relay(self):
                body = self.body()
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "transfer-encoding", "content-length")}
                answer = requests.request(self.command, relay.upstream + self.path, data=body, headers=headers,
                                          timeout=120, allow_redirects=False, stream=True)
                content = answer.raw.read()      # as sent: a compressed answer stays compressed
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
                self.wfile.flush()
                if self.command == "POST" and answer.ok:
                    relay.stores_left -= 1
                    if relay.stores_left == 0:
                        relay.go_down()

            do_GET = do_POST = relay

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Relay)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def go_down(self) -> None:
        """Stop listening: a new connection is refused, as by an archive that is down."""
        self.server.shutdown()
        self.server.server_close()
        self.down.set()


def _instances(archive, study_uid, modality):
    return archive.client.search_films(study_uid=study_uid, modalities=(modality,))


def test_watcher_stores_an_sr_and_a_heatmap_in_each_frontal_films_study(archive):
    assert archive.first.returncode == 0, archive.first.stderr[-3000:]
    summary = json.loads(archive.first.stdout.strip().splitlines()[-1])
    assert summary["found"] == 5 and summary["scored"] == 3 and summary["stored"] == 3 and summary["skipped"] == 2
    for ds in archive.films[:3]:
        (sr_ref,) = _instances(archive, ds.StudyInstanceUID, "SR")
        (sc_ref,) = _instances(archive, ds.StudyInstanceUID, "OT")
        sr = archive.client.retrieve_instance(ds.StudyInstanceUID, sr_ref.series_uid, sr_ref.sop_uid)
        sc = archive.client.retrieve_instance(ds.StudyInstanceUID, sc_ref.series_uid, sc_ref.sop_uid)
        result = dicom_out.read_result(sr)
        assert result["source_sop_uid"] == ds.SOPInstanceUID and result["study_uid"] == ds.StudyInstanceUID
        assert sr.PatientName == ds.PatientName and sc.PatientID == ds.PatientID
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert sc.pixel_array.shape[2] == 3 and sc.Columns == 640


def test_sr_probability_and_call_equal_predict_json(archive, tmp_path, cli):
    paths = []
    for i, ds in enumerate(archive.films[:3]):
        paths.append(tmp_path / f"film{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    predicted = json.loads(cli("predict", *paths, "--json", home=archive.home).stdout)
    for ds, expected in zip(archive.films[:3], predicted):
        (sr_ref,) = _instances(archive, ds.StudyInstanceUID, "SR")
        result = dicom_out.read_result(archive.client.retrieve_instance(
            ds.StudyInstanceUID, sr_ref.series_uid, sr_ref.sop_uid))
        assert result["label"] == expected["label"] and result["model"] == expected["model"]
        assert result["probability"] == pytest.approx(expected["probability"], abs=1e-6)
        assert result["ood_flag"] == expected["ood_flag"]


def test_lateral_and_non_chest_studies_are_skipped_with_a_reason(archive):
    state = PacsState(archive.home / "pacs.sqlite")
    skipped = {r["sop_uid"]: r["reason"] for r in state.films(statuses=("skipped",))}
    lateral, hand = archive.films[3], archive.films[4]
    assert set(skipped) == {lateral.SOPInstanceUID, hand.SOPInstanceUID}
    assert "lateral view (LL)" in skipped[lateral.SOPInstanceUID]
    assert "body part HAND" in skipped[hand.SOPInstanceUID]
    assert not _instances(archive, lateral.StudyInstanceUID, "SR") and not _instances(archive, hand.StudyInstanceUID,
                                                                                        "SR")


def test_a_second_run_adds_nothing_and_status_reports_it(archive, cli):
    before = archive.server.get("/statistics")["CountInstances"]
    audit_before = AuditTrail(archive.home / "audit.sqlite").rows()
    again = cli("pacs", "watch", "--once", home=archive.home, env_extra=pacs_env(archive.server))
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["found"] == 5 and summary["new"] == 0 and summary["scored"] == summary["stored"] == 0
    assert archive.server.get("/statistics")["CountInstances"] == before == 5 + 2 * 3
    audit = AuditTrail(archive.home / "audit.sqlite").rows()
    assert audit == audit_before and len([r for r in audit if r["source"] == "pacs"]) == 3
    status = json.loads(cli("pacs", "status", "--json", home=archive.home).stdout)
    assert status["backlog"] == 0 and status["counts"] == {"stored": 3, "skipped": 2}
    assert status["last_poll"] and status["url"] == archive.server.dicomweb and not status["errors"]


def test_score_one_study_and_the_worklist_order(archive, cli):
    (late,) = chest_studies([(1, "PA", "CHEST", "DX")], seed=2)
    archive.client.store([late], late.StudyInstanceUID)
    result = cli("pacs", "score", late.StudyInstanceUID, home=archive.home, env_extra=pacs_env(archive.server))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["stored"] == 1
    rows = worklist(PacsState(archive.home / "pacs.sqlite"))
    assert len(rows) == 6 and [r["priority"] for r in rows] == sorted(r["priority"] for r in rows)
    assert all(r["in_archive"] for r in rows if r["priority_name"] != "not scored")
    assert [r["status"] for r in rows[-2:]] == ["skipped", "skipped"]


def test_worklist_page_lists_the_films_and_opens_one_with_its_heatmap(archive, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from pneumo_core.records.access import Actor
    monkeypatch.setenv("PNEUMO_HOME", str(archive.home))
    for key, value in pacs_env(archive.server).items():
        monkeypatch.setenv(key, value)
    at = AppTest.from_file(str(REPO / "views" / "worklist.py"), default_timeout=120)
    at.session_state["actor"] = Actor("test", "admin")
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    groups = ["high", "uncertain", "low", "check", "urgent", "routine", "not scored"]
    assert list(table["priority"])[0] != "not scored"
    assert (table["priority"].map(groups.index).diff().dropna() >= 0).all()
    assert "1.000" not in table.to_string()                         # one probability rule: '> 0.99' at the top
    assert len(at.get("image")) == 2   # the film and its heatmap, retrieved from the archive


def test_archive_down_mid_run_every_film_is_scored_exactly_once(trained_home, tmp_path_factory, orthanc):
    home = _home(trained_home, tmp_path_factory)
    # Four films: the outage comes at a set store (the relay), so one film before it, one cut in half by it and
    # two after it make the case; more films only cost scoring time.
    films = chest_studies([(i % 2, "PA", "CHEST", "CR") for i in range(4)], seed=3, shape=(768, 640))
    client = PacsClient(orthanc.dicomweb, orthanc.user, orthanc.password)
    for ds in films:
        client.store([ds], ds.StudyInstanceUID)
    # Each film's results are two stores (its report, then its heatmap): the archive goes down after the first
    # film's two and the second film's report, so that one film waits in the outbox with half its results out.
    archive = FlakyArchive(orthanc, stores_before_outage=3)
    state = PacsState(home / "pacs.sqlite")
    stored = lambda: state.status()["counts"].get("stored", 0)      # noqa: E731
    env = {**os.environ, "PNEUMO_HOME": str(home), **pacs_env(archive)}
    watcher = subprocess.Popen([sys.executable, "-m", "pneumo_core", "pacs", "watch", "--interval", "0.5"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = ""
    try:
        assert archive.down.wait(timeout=300), "the watcher stored nothing"
        _wait_for(lambda: state.status()["last_error"] or watcher.poll() is not None)
        assert "cannot be reached" in state.status()["last_error"]
        assert stored() == 1                       # the first film; the second's heatmap could not be stored
        archive.back()
        _wait_for(lambda: stored() == len(films) or watcher.poll() is not None, timeout=300)
    finally:
        watcher.terminate()
        output = watcher.communicate(timeout=60)[0]
        archive.go_down()
    assert stored() == len(films), output[-3000:]
    audit = AuditTrail(home / "audit.sqlite").rows()
    assert len(audit) == len(films) and len({r["sha256"] for r in audit}) == len(films)   # each scored once
    for ds in films[:2]:                            # each result stored once, the half-stored film's too
        for modality in ("SR", "OT"):
            assert len(client.search_films(study_uid=ds.StudyInstanceUID, modalities=(modality,))) == 1, modality
    assert not list((home / "pacs_outbox").iterdir())


def _wait_for(condition, timeout: float = 120, poll: float = 0.1):
    """Wait until `condition()` is true; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def test_wrong_credentials_are_a_clear_error_not_an_outage(orthanc):
    from pneumo_core.errors import PacsError
    with pytest.raises(PacsError, match="refused the credentials") as caught:
        PacsClient(orthanc.dicomweb, orthanc.user, "wrong").search_films()
    assert caught.value.status == 401 and not isinstance(caught.value, PacsUnavailable)


def test_a_film_gone_from_the_archive_fails_alone_and_the_rest_is_stored(orthanc, trained_home, tmp_path):
    from pneumo_core.learn.model import PneumoModel
    from pneumo_core.pacs.client import FilmRef
    from pneumo_core.pacs.watcher import MAX_ATTEMPTS, Watcher
    from pneumo_core.records.registry import resolve
    from pneumo_core.serve.diagnosis import Diagnoser
    client = PacsClient(orthanc.dicomweb, orthanc.user, orthanc.password)
    (ds,) = chest_studies([FRONTAL[0]], seed=5)
    client.store([ds], ds.StudyInstanceUID)
    diagnoser = Diagnoser(PneumoModel.load(resolve(trained_home / "models")))
    state = PacsState(tmp_path / "pacs.sqlite")
    # Found by an earlier search, deleted from the archive since.
    state.add([FilmRef(ds.StudyInstanceUID, ds.SeriesInstanceUID, "1.2.3.4.5.6")], diagnoser.model.id)
    watcher = Watcher(client, diagnoser, state, AuditTrail(tmp_path / "audit.sqlite"), tmp_path / "outbox")
    for _ in range(MAX_ATTEMPTS + 1):
        summary = watcher.poll()
    rows = {r["sop_uid"]: r for r in state.films()}
    assert rows[ds.SOPInstanceUID]["status"] == "stored"
    gone = rows["1.2.3.4.5.6"]
    assert gone["status"] == "failed" and gone["attempts"] == MAX_ATTEMPTS and "404" in gone["reason"]
    assert summary["failed"] == 0   # given up after MAX_ATTEMPTS: not tried again
    assert watcher.timings["retrieve"] > 0 and watcher.timings["store_sr"] > 0


