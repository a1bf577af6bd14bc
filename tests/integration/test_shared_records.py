"""The records on both engines: the SQLite files (PNEUMO_DATABASE_URL unset) and a real PostgreSQL.

Each store test runs twice (`engine_url`); the concurrency tests run several processes against one
database: one audit chain from 4 writers, 20 jobs run exactly once by 2 runners.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pneumo_core.errors import AccountError, LockedOut, SignInError
from pneumo_core.jobs.queue import STALE_SECONDS, JobQueue
from pneumo_core.pacs.client import FilmRef
from pneumo_core.pacs.state import PacsState, worklist
from pneumo_core.records import db as records_db
from pneumo_core.records.access import Actor
from pneumo_core.records.audit import AuditTrail
from pneumo_core.records.users import UserStore
from pneumo_core.records.verdicts import latest_verdicts, record_verdict
from pneumo_core.serve.diagnosis import Diagnosis
from pneumo_core.settings import TrainConfig, load_settings

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
LEAD = Actor("lead", "ml_lead")
ADMIN = Actor("root", "admin")


def diagnosis(i: int, label: str = "NORMAL") -> Diagnosis:
    return Diagnosis(name=f"film{i}.png", probability=0.013 * i, label=label, threshold=0.5, certainty="clear",
                     heatmap=None, method="gradcam", model_id="v1", sha256=f"{i:064x}", ood_score=0.25, ood_flag=False)


def worker_env(home: Path, **extra) -> dict:
    """The environment of a test's child process: this worktree's library, the test's database."""
    return {**os.environ, "PYTHONPATH": str(REPO), "PNEUMO_HOME": str(home), "PNEUMO_MIN_FREE_MB": "1", **extra}


def queue(home: Path) -> JobQueue:
    return JobQueue(load_settings({**os.environ, "PNEUMO_HOME": str(home), "PNEUMO_MIN_FREE_MB": "1",
                                   "PNEUMO_JOB_RUNNERS": "workers"}))


def test_the_engine_is_the_environments(engine_url, tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite")
    assert trail.database.dialect == ("postgresql" if engine_url else "sqlite")
    assert (tmp_path / "audit.sqlite").exists() is (engine_url is None)   # no file when the server keeps it
    if engine_url:
        secret = engine_url.replace("postgres@", "postgres:s3cret@")
        assert "s3cret" not in records_db.Database("audit", tmp_path / "a", url=secret).describe()


def test_audit_rows_events_verdicts_and_verify(engine_url, tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite")
    ids = [trail.record(diagnosis(i, "PNEUMONIA" if i % 2 else "NORMAL"), source="cli", who="dr a") for i in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    trail.event("job_submit", "lead", job=1)
    verdict = record_verdict(trail, Actor("dr a", "clinician"), ids[1], "NORMAL", zones=["lingula"])
    assert verdict.agree is False and latest_verdicts(trail)[f"{1:064x}"].read == "NORMAL"
    assert [r["id"] for r in trail.rows(call="PNEUMONIA")] == [4, 2]
    assert trail.rows()[0]["probability"] == 0.013 * 4        # read back bit for bit: the hash depends on it
    assert [e["kind"] for e in trail.events()] == ["verdict", "job_submit"]
    result = trail.verify()
    assert result["ok"], result["problem"]
    assert result["rows"] == {"diagnoses": 5, "events": 2}


def test_on_postgresql_the_server_refuses_changes_and_verify_names_a_tampered_row(postgres_server, monkeypatch,
                                                                                  tmp_path):
    url = postgres_server.new_database()
    monkeypatch.setenv("PNEUMO_DATABASE_URL", url)
    trail = AuditTrail(tmp_path / "audit.sqlite")
    for i in range(6):
        trail.record(diagnosis(i))
    trail.event("sign_in", "ana")
    database = url.rsplit("/", 1)[1]
    for statement in ("UPDATE diagnoses SET probability = 0.9 WHERE id = 3", "DELETE FROM events",
                      "DELETE FROM diagnoses WHERE id = 6", "TRUNCATE diagnoses",
                      "UPDATE audit_sequence SET seq = 1"):
        with pytest.raises(subprocess.CalledProcessError) as refused:
            postgres_server.sql(statement, database)
        assert "append-only" in refused.value.stderr
    with pytest.raises(Exception, match="append-only"):      # the library's own connection too
        with trail.database.transaction() as db:
            db.execute("DELETE FROM diagnoses WHERE id = ?", (2,))
    assert trail.verify()["ok"]
    # The table's owner can switch the triggers off (as the sqlite3 shell can drop them): the chain still tells.
    postgres_server.sql("ALTER TABLE diagnoses DISABLE TRIGGER diagnoses_append_only; "
                        "DELETE FROM diagnoses WHERE id > 4", database)
    assert "the newest rows after row 4 are missing" in trail.verify()["problem"]
    postgres_server.sql("UPDATE diagnoses SET probability = 0.9 WHERE id = 3", database)
    assert "diagnoses row 3: its content does not match its hash" in trail.verify()["problem"]


def test_accounts_sign_in_lockout_and_setup_code(engine_url, tmp_path):
    clock = [1_000_000.0]
    store = UserStore(tmp_path / "home", clock=lambda: clock[0])
    code = store.issue_setup_code()
    assert store.setup_code_pending()
    assert store.create_first_admin(code, "root", PASSWORD).role == "admin"
    store.add("ana", "clinician", PASSWORD, by=ADMIN)
    with pytest.raises(AccountError, match="already exists"):
        store.add("ana", "auditor", PASSWORD, by=ADMIN)
    assert [a["name"] for a in store.list()] == ["ana", "root"]
    assert store.verify("ana", PASSWORD).role == "clinician"
    for _ in range(5):
        with pytest.raises(SignInError):
            store.verify("ana", "wrong password!!")
    with pytest.raises(LockedOut):
        store.verify("ana", PASSWORD)
    assert UserStore(tmp_path / "home", clock=lambda: clock[0]).failures("user:ana") == 5   # kept by the store
    clock[0] += 31
    assert store.verify("ana", PASSWORD).name == "ana" and store.failures("user:ana") == 0
    store.disable("ana", by=ADMIN)
    with pytest.raises(AccountError, match="last enabled administrator"):
        store.disable("root", by=Actor("other", "admin"))


def test_jobs_submit_claim_change_counter_and_cancel(engine_url, tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_JOB_RUNNERS", "workers")
    data = tmp_path / "data"
    (data / "NORMAL").mkdir(parents=True)
    jobs = queue(tmp_path / "home")
    _, token = jobs.changed_since(None)
    first = jobs.submit(TrainConfig(data_dir=str(data)), actor=LEAD)
    second = jobs.submit(TrainConfig(data_dir=str(data)), actor=LEAD)
    assert (first, second) == (1, 2) and jobs.get(first)["state"] == "queued"   # workers start them, not submit
    assert jobs.changed_since(token)[0]
    assert jobs.store.claim_next("here", os.getpid(), None, time.time()) == first
    assert jobs.store.claim_next("here", os.getpid(), None, time.time()) == second
    assert jobs.store.claim_next("here", os.getpid(), None, time.time()) is None
    assert jobs.cancel(second, actor=LEAD)["state"] == "cancelled"
    # A runner on another machine that stopped beating: its job fails with the reason, never stays running.
    jobs.store.update(first, "running", runner_host="gpu-2", heartbeat=time.time() - STALE_SECONDS - 1)
    failed = jobs.get(first)
    assert failed["state"] == "failed" and "gpu-2 sent no heartbeat" in failed["error"]


def test_pacs_state_claims_a_film_for_one_watcher(engine_url, tmp_path):
    state = PacsState(tmp_path / "pacs.sqlite")
    films = [FilmRef("1.2.3", "1.2.3.4", f"1.2.3.4.{i}", modality="DX") for i in range(3)]
    assert state.add(films, "v1") == 3 and state.add(films, "v1") == 0
    mine = state.claim("1.2.3.4.0", "v1", "watcher-a", ("new",))
    assert mine["claimed_by"] == "watcher-a"
    assert state.claim("1.2.3.4.0", "v1", "watcher-b", ("new",)) is None      # held by a
    state.update("1.2.3.4.0", "v1", status="scored", label="PNEUMONIA", probability=0.9, threshold=0.5)
    state.release("1.2.3.4.0", "v1", "watcher-a")
    assert state.claim("1.2.3.4.0", "v1", "watcher-b", ("new",)) is None      # moved on meanwhile
    assert state.claim("1.2.3.4.1", "v1", "watcher-b", ("new",), seconds=-1) is not None
    assert state.claim("1.2.3.4.1", "v1", "watcher-a", ("new",)) is not None   # b's claim lapsed
    state.set_meta(last_poll="2026-01-01T00:00:00+00:00")
    state.set_meta(last_poll="2026-01-02T00:00:00+00:00")
    assert state.status()["last_poll"].startswith("2026-01-02") and state.status()["backlog"] == 3
    assert [r["sop_uid"] for r in worklist(state)][0] == "1.2.3.4.0"          # PNEUMONIA first


def test_2000_audit_rows_from_4_processes_make_one_chain(postgres_server, tmp_path, cli, monkeypatch):
    url = postgres_server.new_database()
    AuditTrail(tmp_path / "audit.sqlite").database.connect().close()   # migrated once, before the race
    env = worker_env(tmp_path, PNEUMO_DATABASE_URL=url)
    writers = [subprocess.Popen([sys.executable, str(REPO / "tests" / "records_worker.py"), "audit", "500"],
                                env=env, cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for writer in writers:
        assert writer.wait(timeout=300) == 0, writer.stderr.read()
    verify = cli("audit", "verify", home=tmp_path / "elsewhere", env_extra={"PNEUMO_DATABASE_URL": url})
    assert verify.returncode == 0, verify.stdout
    assert "intact: 2000 diagnoses row(s)" in verify.stdout and "intact: 200 events row(s)" in verify.stdout
    monkeypatch.setenv("PNEUMO_DATABASE_URL", url)
    writers_seen = Counter(r["who"] for r in AuditTrail(tmp_path / "audit.sqlite").rows())
    assert sorted(writers_seen.values()) == [500] * 4


def test_20_jobs_run_exactly_once_by_2_runners(engine_url, tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_JOB_RUNNERS", "workers")
    data = tmp_path / "data"
    (data / "NORMAL").mkdir(parents=True)
    home = tmp_path / "home"
    jobs = queue(home)
    submitted = [jobs.submit(TrainConfig(data_dir=str(data)), actor=Actor(f"user{i % 10}", "ml_lead"))
                 for i in range(20)]
    runs = tmp_path / "runs.txt"
    env = worker_env(home, PNEUMO_JOB_RUNNERS="workers",
                     **({"PNEUMO_DATABASE_URL": engine_url} if engine_url else {}))
    runners = [subprocess.Popen([sys.executable, str(REPO / "tests" / "records_worker.py"), "jobs", str(runs)],
                                env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for runner in runners:
        assert runner.wait(timeout=300) == 0, runner.stderr.read()
    lines = [line.split() for line in runs.read_text().splitlines()]
    ran = Counter(int(job) for job, *_ in lines)
    assert sorted(ran) == sorted(submitted) and set(ran.values()) == {1}     # each job once
    assert len({pid for _, pid, _ in lines}) == 2                                # both runners took jobs
    assert {job["state"] for job in jobs.list()} == {"succeeded"}


class FakeArchive:
    """An archive in memory: `count` synthetic DX chest films, a study each; keeps what is stored."""

    url = "memory://archive"

    def __init__(self, count: int):
        from conftest import chest_studies
        self.datasets = {}
        for ds in chest_studies([(1, "AP", "CHEST", "DX")] * count, shape=(64, 64)):
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
            self.datasets[ds.SOPInstanceUID] = buffer.getvalue()
        self.films = [FilmRef(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, modality="DX", view="AP")
                      for ds in map(self.retrieve_bytes, self.datasets.values())]
        self.stored: list[str] = []
        self.lock = threading.Lock()

    @staticmethod
    def retrieve_bytes(data: bytes):
        return pydicom.dcmread(io.BytesIO(data))

    def search_films(self, since=None, study_uid=None):
        return list(self.films)

    def retrieve(self, film):
        return self.retrieve_bytes(self.datasets[film.sop_uid])

    def store(self, datasets, study_uid):
        with self.lock:
            self.stored.extend(ds.SOPInstanceUID for ds in datasets)


class FakeDiagnoser:
    """Scores every film PNEUMONIA at 0.9, slowly enough that two watchers overlap; counts its calls."""

    def __init__(self):
        self.model = type("Model", (), {"id": "v1"})()
        self.scored: list[str] = []

    def diagnose(self, gray, name, method, info=None):
        time.sleep(0.02)
        self.scored.append(name)
        return Diagnosis(name=name, probability=0.9, label="PNEUMONIA", threshold=0.5, certainty="clear",
                         heatmap=np.zeros(gray.shape, np.float32), method=method, model_id="v1",
                         sha256=name.rsplit(".", 1)[-1].rjust(64, "0"), ood_score=0.5, ood_flag=False)


def test_two_watchers_score_and_store_each_film_once(engine_url, tmp_path):
    from pneumo_core.pacs.watcher import Watcher
    archive, diagnoser = FakeArchive(30), FakeDiagnoser()
    trail = AuditTrail(tmp_path / "audit.sqlite")
    watchers = [Watcher(archive, diagnoser, PacsState(tmp_path / "pacs.sqlite"), trail, tmp_path / f"outbox{i}")
                for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(lambda w: w.poll(), watchers))
    assert sorted(diagnoser.scored) == sorted(f.sop_uid for f in archive.films)      # each film scored once
    assert len(archive.stored) == 60 and len(set(archive.stored)) == 60               # one SR + one capture each
    assert sum(s["scored"] for s in summaries) == 30 and all(s["scored"] for s in summaries)   # both worked
    assert len(trail.rows()) == 30 and trail.verify()["ok"]
    assert {r["status"] for r in PacsState(tmp_path / "pacs.sqlite").films()} == {"stored"}


def test_the_applications_role_can_append_to_the_audit_trail_but_never_change_it(postgres_server, monkeypatch,
                                                                                  tmp_path):
    from pneumo_core.records.migrations import app_role_sql
    owner_url = postgres_server.new_database()
    database = owner_url.rsplit("/", 1)[1]
    records_db.engine(owner_url)                       # the owner migrates
    postgres_server.sql("DO $$ BEGIN CREATE ROLE pneumo_app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    for statement in app_role_sql("pneumo_app"):
        postgres_server.sql(statement, database)
    monkeypatch.setenv("PNEUMO_DATABASE_URL", postgres_server.url(database, user="pneumo_app"))
    trail = AuditTrail(tmp_path / "audit.sqlite")
    for i in range(3):
        trail.record(diagnosis(i))
    trail.event("sign_in", "ana")
    assert trail.verify()["ok"]
    for statement in ("ALTER TABLE diagnoses DISABLE TRIGGER diagnoses_append_only", "DELETE FROM diagnoses",
                      "UPDATE events SET who = 'x'", "TRUNCATE events", "UPDATE audit_sequence SET seq = 9"):
        with pytest.raises(Exception, match="must be owner|permission denied"):
            with trail.database.transaction() as db:
                db.execute(statement)
    added = UserStore(tmp_path / "home").add("ana", "clinician", PASSWORD, by=ADMIN)   # the other tables: as usual
    assert added["role"] == "clinician"


def test_db_command_says_where_the_records_are_and_never_shows_the_password(engine_url, cli, tmp_path):
    env = {"PNEUMO_DATABASE_URL": engine_url.replace("postgres@", "postgres:hunter2@")} if engine_url else {}
    status = cli("db", "status", home=tmp_path, env_extra=env)
    assert status.returncode == 0
    if engine_url:
        assert "schema revision 0001" in status.stdout and "hunter2" not in status.stdout + status.stderr
    else:
        assert "SQLite files under" in status.stdout and cli("db", "upgrade", home=tmp_path).returncode == 2
    assert "GRANT SELECT, INSERT ON diagnoses, events TO pneumo_app" in cli("db", "grants", "pneumo_app",
                                                                            home=tmp_path).stdout


def test_a_worker_runs_a_job_queued_on_another_machine_and_keeps_its_log_here(engine_url, tmp_path, monkeypatch):
    from pneumo_core.jobs import runner
    monkeypatch.setenv("PNEUMO_JOB_RUNNERS", "workers")
    data = tmp_path / "data"
    (data / "NORMAL").mkdir(parents=True)            # no PNEUMONIA/: the runner's data check fails the job
    dashboard = queue(tmp_path / "dashboard-home")
    job_id = dashboard.submit(TrainConfig(data_dir=str(data)), actor=LEAD)
    dashboard.store.update(job_id, None, log_path="/srv/elsewhere/jobs/1.log")   # a folder of the other machine
    worker_home = tmp_path / ("runner-home" if engine_url else "dashboard-home")  # SQLite: one machine only
    assert runner.serve(queue(worker_home), once=True) == 1
    job = dashboard.get(job_id)
    assert job["state"] == "failed" and "the data check failed" in job["error"]
    assert job["log_path"] == str(worker_home / "jobs" / f"{job_id}.log")
    assert "data check" in Path(job["log_path"]).read_text()
    assert job["runner_host"] and job["heartbeat"] > time.time() - 60
