"""Beyond one server, at scale (issue #25): two dashboards, two job runners and two PACS watchers, each a
"machine" with its own PNEUMO_HOME, against one PostgreSQL and one Orthanc.

- 20 retraining jobs queued in a real browser, 10 on each dashboard, each run exactly once by two
  long-lived runners (`runner.serve` with a fake 0.2 s job body: the test measures claims, not training);
- 200 studies in the archive, each given exactly one SR by two `pacs watch` processes (the tiny model);
- the one audit chain they all wrote verifies (`audit verify`) and counts the 200 diagnoses.

The 2 000 concurrent audit rows from 4 processes are tests/integration/test_shared_records.py's.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import REPO, chest_studies, pacs_env
from helpers import PASSWORD, require_chromium, start_dashboard, stop

from pneumo_core.jobs.rows import JobStore
from pneumo_core.pacs.client import PacsClient
from pneumo_core.pacs.state import PacsState

require_chromium()
STUDIES = 200
JOBS_PER_DASHBOARD = 10
LEADS = {"dashboard-a": "lead-a", "dashboard-b": "lead-b"}    # the ML lead who queues on each dashboard
FINISHED = ("succeeded", "failed", "cancelled")


def machine(folder: Path, models: Path) -> Path:
    """A machine's PNEUMO_HOME: its own folder, the shared model store mounted at `models/`."""
    folder.mkdir()
    (folder / "models").symlink_to(models)
    return folder


def wait_for(condition, what: str, timeout: float, every: float = 0.5):
    """Poll `condition()` until it returns something true (returned), or fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def store_studies(server, count: int) -> list[str]:
    """`count` one-film studies of small synthetic films (CR/DX, PA/AP) stored in the archive; their UIDs."""
    client = PacsClient(server.dicomweb, server.user, server.password)
    kinds = [(1, "PA", "CHEST", "CR"), (0, "AP", "CHEST", "DX")]
    films = chest_studies([kinds[i % 2] for i in range(count)], seed=25, shape=(96, 80))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda ds: client.store([ds], ds.StudyInstanceUID), films))
    return [ds.StudyInstanceUID for ds in films]


def sign_in_at_once(pages: dict, addresses: dict) -> None:
    """Sign each page's lead in on its dashboard's Retrain page, the dashboards rendering side by side (a
    fresh browser context starts signed out, and each later step is a click: a page load would sign out)."""
    for name, page in pages.items():
        page.set_default_timeout(120_000)
        page.goto(addresses[name])
    for name, page in pages.items():
        page.get_by_label("Account name", exact=True).fill(LEADS[name])
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Sign in", exact=True).click()
    for name, page in pages.items():
        page.get_by_text(f"Signed in as {LEADS[name]}").wait_for()
        page.get_by_role("button", name="Retrain with current settings").wait_for()


def queue_jobs(pages: dict, jobs: JobStore, count: int) -> None:
    """Click "Retrain with current settings" `count` times on each dashboard, both dashboards at once; each
    click's job is in the database, and its page says so, before that dashboard's next click."""
    for clicks in range(1, count + 1):
        for page in pages.values():
            page.get_by_role("button", name="Retrain with current settings").click()
        for name, page in pages.items():
            def queued(lead=LEADS[name], clicks=clicks):
                rows = jobs.select("submitted_by = ?", (lead,))
                return rows[0]["id"] if len(rows) >= clicks else None     # the newest first
            job_id = wait_for(queued, f"{LEADS[name]}'s job {clicks}", 60, 0.1)
            page.get_by_text(f"Job {job_id} submitted").wait_for(timeout=60_000)


def scored_counts(log: Path) -> tuple[int, int]:
    """(films scored, results stored) by one watcher, summed from the poll lines it printed."""
    polls = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return sum(p["scored"] for p in polls), sum(p["stored"] for p in polls)


def test_two_dashboards_two_runners_two_watchers_share_one_database_and_one_archive(
        trained_home, synthetic_data, postgres_server, orthanc, browser, cli, tmp_path, monkeypatch):
    url = postgres_server.new_database()
    monkeypatch.setenv("PNEUMO_DATABASE_URL", url)          # this process reads the shared records too
    models = tmp_path / "models"                            # the shared model store (NFS in a hospital)
    shutil.copytree(trained_home / "models", models)
    machines = {name: machine(tmp_path / name, models) for name in
                ("dashboard-a", "dashboard-b", "runner-1", "runner-2", "watcher-1", "watcher-2", "auditor")}
    assert cli("db", "upgrade", home=machines["auditor"]).returncode == 0     # the DBA's step, before any process
    # An administrator first (else a dashboard offers its setup code instead of signing in), then the leads.
    for account, role in [("root", "admin"), *((lead, "ml_lead") for lead in LEADS.values())]:
        added = cli("users", "add", account, "--role", role, home=machines["auditor"], stdin=f"{PASSWORD}\n" * 2)
        assert added.returncode == 0, added.stderr
    workers = {"PNEUMO_JOB_RUNNERS": "workers", "PNEUMO_MIN_FREE_MB": "1", "PYTHONPATH": str(REPO)}
    environment = {**os.environ, **workers, "TF_CPP_MIN_LOG_LEVEL": "2"}

    # Everything starts at once: the watchers (TensorFlow and the model), the runners, the archive's films,
    # and the two dashboards (in threads: each start waits for its health check).
    watchers = {}
    for name in ("watcher-1", "watcher-2"):
        log = tmp_path / f"{name}.log"
        watchers[name] = (subprocess.Popen(
            [sys.executable, "-m", "pneumo_core", "pacs", "watch", "--url", orthanc.dicomweb, "--interval", "1"],
            cwd=REPO, env={**environment, **pacs_env(orthanc), "PNEUMO_HOME": str(machines[name])},
            stdout=log.open("w"), stderr=(tmp_path / f"{name}.err").open("w")), log)
    runs, stop_file = tmp_path / "runs.txt", tmp_path / "stop-runners"
    runners = [subprocess.Popen([sys.executable, str(REPO / "tests" / "records_worker.py"), "serve", str(runs),
                                 str(2 * JOBS_PER_DASHBOARD), str(stop_file)],
                                cwd=REPO, env={**environment, "PNEUMO_HOME": str(machines[name])},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name in ("runner-1", "runner-2")]
    dashboard_env = {**workers, "PNEUMO_DATA": str(synthetic_data), "PNEUMO_MAX_JOBS_PER_USER": str(JOBS_PER_DASHBOARD)}
    dashboards = {}
    try:
        with ThreadPoolExecutor(2) as pool:
            starting = {name: pool.submit(start_dashboard, machines[name], tmp_path / f"{name}.log",
                                          env=dashboard_env) for name in LEADS}
            studies = store_studies(orthanc, STUDIES)
            for name, future in starting.items():
                if future.exception() is None:     # kept first, so `finally` stops it if the other failed
                    dashboards[name] = future.result()
            for future in starting.values():
                future.result()                    # raises a failed start's error
        jobs = JobStore(machines["auditor"] / "jobs.sqlite")
        contexts = {name: browser.new_context(viewport={"width": 1360, "height": 1200})
                    for name in dashboards}        # a context each: two users' browsers
        try:
            pages = {name: context.new_page() for name, context in contexts.items()}
            sign_in_at_once(pages, {name: f"{address}/retrain" for name, (_, address) in dashboards.items()})
            queue_jobs(pages, jobs, JOBS_PER_DASHBOARD)
        finally:
            for context in contexts.values():
                context.close()

        # The runners: each of the 20 jobs ran exactly once, both took some, all succeeded, each names its lead.
        ended = wait_for(lambda: (rows := jobs.select()) and all(r["state"] in FINISHED for r in rows) and rows,
                         "the 20 jobs to end", 120)
        for runner in runners:
            assert runner.wait(timeout=60) == 0, runner.stderr.read()[-3000:]
        lines = [line.split() for line in runs.read_text().splitlines()]
        assert Counter(int(job) for job, *_ in lines) == Counter(r["id"] for r in ended)   # each once, none missed
        assert len(ended) == 2 * JOBS_PER_DASHBOARD
        assert len({pid for _, pid, _ in lines}) == 2                                    # both runners took jobs
        assert {r["state"] for r in ended} == {"succeeded"}
        assert Counter(r["submitted_by"] for r in ended) == {lead: JOBS_PER_DASHBOARD for lead in LEADS.values()}

        # The watchers: all 200 films scored and stored, one SR in each study, both watchers did some.
        state = PacsState(machines["auditor"] / "pacs.sqlite")
        wait_for(lambda: len(state.films(statuses=("stored",))) == STUDIES
                 or any(w.poll() is not None for w, _ in watchers.values()), f"{STUDIES} films stored", 300)
        assert state.status()["counts"] == {"stored": STUDIES}
        for name, (watcher, _) in watchers.items():
            assert watcher.poll() is None, (tmp_path / f"{name}.err").read_text()[-3000:]
            watcher.send_signal(signal.SIGTERM)     # as systemd stops it
        for name, (watcher, _) in watchers.items():
            assert watcher.wait(timeout=60) == 0, (tmp_path / f"{name}.err").read_text()[-3000:]
        counts = {name: scored_counts(log) for name, (_, log) in watchers.items()}
        assert sum(scored for scored, _ in counts.values()) == STUDIES, counts
        assert sum(stored for _, stored in counts.values()) == STUDIES, counts
        assert all(scored > 0 for scored, _ in counts.values()), counts
        study_uid = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in orthanc.get("/studies?expand")}
        sr_per_study = Counter({uid: 0 for uid in study_uid.values()})
        for series in orthanc.get("/series?expand"):
            if series["MainDicomTags"].get("Modality") == "SR":
                sr_per_study[study_uid[series["ParentStudy"]]] += len(series["Instances"])
        assert set(sr_per_study) == set(studies) and set(sr_per_study.values()) == {1}, sr_per_study

        # One audit chain for all of them: it verifies and holds the watchers' 200 diagnoses.
        verify = cli("audit", "verify", home=machines["auditor"])
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert f"intact: {STUDIES} diagnoses row(s)" in verify.stdout, verify.stdout
    finally:
        stop_file.touch()
        for process in [*runners, *(w for w, _ in watchers.values()), *(p for p, _ in dashboards.values())]:
            if process.poll() is None:
                stop(process)
