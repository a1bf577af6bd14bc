"""Helpers shared by the benchmark scripts: timing and one result line per number."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data" / "chest_xray"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"
CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright cannot download its own browsers here
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def start_dashboard(home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` with PNEUMO_HOME=home on a free local port, once its health check answers.

    Returns the server process (terminate it when done) and its URL; its output goes to `log`.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", f"--server.port={port}",
                               "--server.address=127.0.0.1", "--server.headless=true"], cwd=REPO,
                              env={**os.environ, "PNEUMO_HOME": str(home)}, stdout=log.open("w"),
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        if server.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.read() == b"ok":
                    return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"the dashboard did not start; see {log}")


BENCH_USER, BENCH_PASSWORD = "bench", "bench password, not a secret"


def bench_home(source: Path, home: Path) -> Path:
    """A home of its own at `home`: `source`'s models linked, an admin account `BENCH_USER` to sign in with.

    The bench's account and audit rows stay out of the source home.
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to((source / "models").resolve())
    subprocess.run([sys.executable, "-m", "pneumo_core", "users", "add", BENCH_USER, "--role", "admin"], cwd=REPO,
                   input=f"{BENCH_PASSWORD}\n{BENCH_PASSWORD}\n", text=True, check=True, capture_output=True,
                   env={**os.environ, "PNEUMO_HOME": str(home)})
    return home


def report(name: str, value, unit: str = "", target: str = "") -> None:
    """Print one result as `bench: NAME = VALUE UNIT [target ...]` (grep-able, README-ready)."""
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    print(f"bench: {name} = {text} {unit}".rstrip() + (f"   (target {target})" if target else ""), flush=True)


def timed(fn, repeat: int) -> np.ndarray:
    """Wall seconds of `repeat` calls of fn()."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return np.array(out)


def save_chart(figure, stem: str, width: int = 1100, height: int = 560) -> list[Path]:
    """Write a Plotly figure to docs/STEM.html (plotly.js from its CDN) and docs/STEM.png (for the README).

    The PNG is a screenshot of a self-contained copy in headless Chromium (no kaleido needed); it is
    skipped, with a note, where Chromium is missing.
    """
    import tempfile

    docs = REPO / "docs"
    written = [docs / f"{stem}.html"]
    figure.write_html(written[0], include_plotlyjs="cdn")
    if not Path(CHROMIUM).exists():
        print(f"note: {CHROMIUM} not found; docs/{stem}.png not drawn", flush=True)
        return written
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        page_file = Path(tmp) / "chart.html"
        figure.write_html(page_file, include_plotlyjs=True, full_html=True, default_width=width,
                          default_height=height)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": width + 20, "height": height + 20})
        page.goto(page_file.as_uri())
        page.locator(".main-svg").first.wait_for()
        page.locator(".plotly-graph-div").screenshot(path=str(docs / f"{stem}.png"))
        browser.close()
    return [*written, docs / f"{stem}.png"]
