"""Diagnose in a real browser: seconds from upload to the call on screen (warm model), and the
dashboard's resident memory with one model loaded. Needs a trained model in PNEUMO_HOME."""
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import CHROMIUM, CHROMIUM_FLAGS, REPO, SHARED_DATA, report
from playwright.sync_api import sync_playwright

PORT = 8597
films = sorted((SHARED_DATA / "train" / "NORMAL").glob("*.jpeg"))[:6]
server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(PORT),
                           "--server.headless", "true"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
try:
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{PORT}")
        page.get_by_text("Upload one or more frontal chest films").wait_for(timeout=120_000)
        seconds = []
        for film in films:  # the first upload loads the model; the rest are warm
            start = time.perf_counter()
            page.locator("input[type=file]").set_input_files(str(film))
            page.get_by_text(film.name).last.wait_for(timeout=120_000)
            page.get_by_text("Probability of pneumonia").wait_for(timeout=120_000)
            page.locator("[data-testid=stImage] img").nth(1).wait_for(timeout=60_000)
            seconds.append(time.perf_counter() - start)
            page.goto(f"http://127.0.0.1:{PORT}")  # a fresh page: a new upload, same warm server
            page.get_by_text("Upload one or more frontal chest films").wait_for(timeout=120_000)
        browser.close()
    report("diagnose: upload to call + heatmap on screen, first (model load)", seconds[0], "s")
    report("diagnose: upload to call + heatmap on screen, warm (median)", sorted(seconds[1:])[len(seconds[1:]) // 2],
           "s", "<= 2 s")
    rss_kb = int(next(line.split()[1] for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS")))
    report("dashboard resident memory with one model loaded", rss_kb / 1024 ** 2, "GB", "< 1.5 GB")
finally:
    server.terminate()
    server.wait(timeout=30)
