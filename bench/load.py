"""Load: 10 browser sessions each uploading 5 films at once, and one uploading 20 distinct 7000 x 7000
PNGs, all concurrently against one dashboard (Playwright contexts on one Chromium).

Prints the calls received (a film counts when its session's page shows the call and the audit
trail holds its row), p50/p95 seconds from upload to the calls on screen, and the peak resident
memory of the dashboard (the streamlit process and its children, sampled every 0.2 s).

    PNEUMO_HOME=/work/home_default .venv/bin/python bench/load.py

PNEUMO_HOME is copied to a temporary folder first (models only: the audit rows go to the copy).
Where the dashboard has a sign-in page, set PNEUMO_BENCH_USER and PNEUMO_BENCH_PASSWORD.
"""
from common import CHROMIUM, CHROMIUM_FLAGS, REPO, SHARED_DATA, report, start_dashboard  # noqa: I001

import asyncio
import hashlib
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image
from playwright.async_api import TimeoutError as PlaywrightTimeout
from playwright.async_api import async_playwright

# PNEUMO_LOAD_SESSIONS / PNEUMO_LOAD_BIG_FILMS change the load (e.g. one session alone, to read its CPU cost).
SESSIONS = int(os.environ.get("PNEUMO_LOAD_SESSIONS", 10))
BIG_FILMS = int(os.environ.get("PNEUMO_LOAD_BIG_FILMS", 20))
FILMS_PER_SESSION, BIG_SIDE = 5, 7000
READY = "Upload one or more frontal chest films"  # the Diagnose page before any upload
TIMEOUT_MS = 600_000


def big_png(path: Path, seed: int) -> Path:
    """A 7000 x 7000 film of a few hundred KB: constant columns, a few rows of noise make it distinct."""
    rng = np.random.default_rng(seed)
    film = np.full((BIG_SIDE, BIG_SIDE), 90, np.uint8)
    film[:, ::9] = 160
    film[:4] = rng.integers(0, 255, (4, BIG_SIDE), dtype=np.uint8)
    Image.fromarray(film).save(path, compress_level=1)
    return path


class PeakRSS:
    """Peak resident memory of a process and its children, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2):
        self.process, self.every, self.peak, self._stop = psutil.Process(pid), every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        """Resident bytes of the tree now."""
        return self._sum(lambda p: p.memory_info().rss)

    def cpu(self) -> float:
        """CPU seconds (user + system) the tree has used so far."""
        return self._sum(lambda p: sum(p.cpu_times()[:2]))

    def _sum(self, measure):
        total = 0
        for p in [self.process, *self.process.children(recursive=True)]:
            try:
                total += measure(p)
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


async def open_diagnose(context, url: str):
    """A page on the Diagnose screen, signed in first when the dashboard asks and credentials are set."""
    page = await context.new_page()
    await page.goto(url)
    user, password = os.environ.get("PNEUMO_BENCH_USER"), os.environ.get("PNEUMO_BENCH_PASSWORD")
    if user and password:
        field = page.locator("input[type=password]")
        ready = page.get_by_text(READY)
        await field.or_(ready).first.wait_for(timeout=TIMEOUT_MS)
        if await field.count():
            await page.locator("input[type=text], input[type=email], input:not([type])").first.fill(user)
            await field.first.fill(password)
            await field.first.press("Enter")  # submits a Streamlit form; else the button below
            button = page.get_by_role("button", name=re.compile(r"sign in|log in|login", re.IGNORECASE))
            try:
                await page.get_by_text(READY).wait_for(timeout=5_000)
            except PlaywrightTimeout:
                await button.first.click()
    await page.get_by_text(READY).wait_for(timeout=TIMEOUT_MS)
    return page


async def upload_session(browser, url: str, films: list[Path]) -> dict:
    """Upload `films` at once in a fresh context; seconds until the page shows the calls, or the error."""
    context = await browser.new_context(viewport={"width": 1360, "height": 1200})
    try:
        page = await open_diagnose(context, url)
        start = time.perf_counter()
        await page.locator("input[type=file]").set_input_files([str(f) for f in films])
        # The page shows the call of a film once every film of the upload has been scored or refused.
        await page.locator("[data-testid=stMetricValue]").filter(has_text="NORMAL").or_(
            page.locator("[data-testid=stMetricValue]").filter(has_text="PNEUMONIA")).first.wait_for(
            timeout=TIMEOUT_MS)
        seconds = time.perf_counter() - start
        refused = await page.get_by_text("could not be scored").count()
        crashed = await page.locator("[data-testid=stException]").count()
        return {"seconds": seconds, "refused": refused, "crashed": crashed, "films": films}
    except Exception as error:  # a session that never shows its calls is counted, not fatal
        return {"seconds": None, "error": f"{type(error).__name__}: {str(error)[:200]}", "films": films}
    finally:
        await context.close()


async def drive(url: str, sessions: list[list[Path]], cpu) -> tuple[float, float, list[dict]]:
    """Warm-up session, then the others at once: (warm-up seconds, server CPU seconds after it, results)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        warm = await upload_session(browser, url, sessions[0][:1])  # loads the model; not counted
        warm_cpu = cpu()
        results = await asyncio.gather(*(upload_session(browser, url, films) for films in sessions[1:]))
        await browser.close()
    return warm["seconds"], warm_cpu, list(results)


def audited(home: Path, films: list[Path]) -> set[str]:
    """The SHA-256 of each film that has a row in the audit trail."""
    wanted = {hashlib.sha256(f.read_bytes()).hexdigest() for f in films}
    with sqlite3.connect(home / "audit.sqlite") as db:
        return {sha for (sha,) in db.execute("SELECT DISTINCT sha256 FROM diagnoses") if sha in wanted}


def main() -> None:
    source = Path(os.environ.get("PNEUMO_HOME", REPO / ".pneumo"))
    with tempfile.TemporaryDirectory(prefix="pneumo-load-") as tmp:
        tmp = Path(tmp)
        home = tmp / "home"
        shutil.copytree(source / "models", home / "models")
        real = sorted((SHARED_DATA / "train" / "NORMAL").glob("*.jpeg"))[:30] + sorted(
            (SHARED_DATA / "train" / "PNEUMONIA").glob("*.jpeg"))[:30]
        warm_film = real.pop()
        sessions = [[warm_film]] + [real[i * FILMS_PER_SESSION:(i + 1) * FILMS_PER_SESSION] for i in range(SESSIONS)]
        (tmp / "big").mkdir()
        if BIG_FILMS:
            sessions.append([big_png(tmp / "big" / f"large-{i:02d}.png", i) for i in range(BIG_FILMS)])

        server, url = start_dashboard(home, tmp / "server.log")
        try:
            load_average = os.getloadavg()[0]
            with PeakRSS(server.pid) as rss:
                idle, cpu_before = rss.now(), rss.cpu()
                warm_seconds, warm_cpu, results = asyncio.run(drive(url, sessions, rss.cpu))
                after, cpu = rss.now(), rss.cpu() - warm_cpu
                warm_cpu -= cpu_before
        finally:
            server.terminate()
            server.wait(timeout=30)

        films = [f for r in results for f in r["films"]]
        shown = [f for r in results if r["seconds"] is not None and not r["crashed"] for f in r["films"]]
        received = audited(home, shown)
        seconds = sorted(r["seconds"] for r in results if r["seconds"] is not None)
        for r in results:
            if r["seconds"] is None:
                print(f"note: a session of {len(r['films'])} films got no calls: {r['error']}", flush=True)
            elif r["refused"] or r["crashed"]:
                print(f"note: a session of {len(r['films'])} films had refusals or an exception on screen", flush=True)
        report("load: calls received", f"{len(received)}/{len(films)}", "", f"{len(films)}/{len(films)}")
        report("load: sessions with every call", f"{sum(1 for r in results if r['seconds'] is not None)}/"
               f"{len(results)}")
        report("load: first upload (model load, one film, alone)", warm_seconds, "s")
        if seconds:
            report("load: upload to calls on screen, p50", float(np.percentile(seconds, 50)), "s")
            report("load: upload to calls on screen, p95", float(np.percentile(seconds, 95)), "s", "<= 5 s")
            if BIG_FILMS:
                report(f"load: upload to calls on screen, the {BIG_FILMS} x 7000 px session",
                       float(results[-1]["seconds"] or -1), "s")
        report("load: dashboard CPU time, warm-up (model load, one film)", warm_cpu, "s")
        report(f"load: dashboard CPU time, the {len(films)} films of the load", cpu, "s")
        report(f"load: machine load average at the start ({os.cpu_count()} CPUs)", load_average)
        report("load: dashboard RSS idle (before the first upload)", idle / 2 ** 30, "GB")
        report("load: dashboard RSS peak", rss.peak / 2 ** 30, "GB", "< 1.5 GB")
        report("load: dashboard RSS after the load", after / 2 ** 30, "GB")


if __name__ == "__main__":
    main()
