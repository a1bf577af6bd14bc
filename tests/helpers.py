"""Helpers shared by tests: accounts made with the command line, a dashboard server, browser sign-in."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]
PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def users_cli(home: Path, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`python -m pneumo_core users ARGS` with PNEUMO_HOME=home; stdin is not a terminal."""
    return subprocess.run([sys.executable, "-m", "pneumo_core", "users", *map(str, args)], cwd=REPO, input=stdin or "",
                          env={**os.environ, "PNEUMO_HOME": str(home)}, capture_output=True, text=True, timeout=120)


def add_user(home: Path, name: str, role: str, password: str = PASSWORD, exist_ok: bool = False) -> None:
    """Create an account with the command line, the password given twice on standard input."""
    result = users_cli(home, "add", name, "--role", role, stdin=f"{password}\n{password}\n")
    assert result.returncode == 0 or (exist_ok and "already exists" in result.stderr), result.stderr


def start_dashboard(home: Path, log: Path, port: int | None = None, extra_args=(), env=None,
                    address: str | None = "127.0.0.1"):
    """`streamlit run app.py` as a subprocess; returns (process, url) once /_stcore/health answers.

    `address=None` leaves the address to .streamlit/config.toml, as `make run` does.
    """
    port = port or free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.headless", "true", *(["--server.address", address] if address else []), *extra_args]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PNEUMO_HOME": str(home), **(env or {})},
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError("streamlit exited:\n" + log.read_text()[-2000:])
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("streamlit did not start:\n" + log.read_text()[-2000:])


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def sign_in(page, url: str, name: str, password: str = PASSWORD, timeout: int = 120_000) -> None:
    """Open `url` (any page's address: a new browser session starts signed out), sign in with a local
    account and wait for the signed-in sidebar; the page of `url` is then shown if the role allows it."""
    page.goto(url)
    field, signed_in = page.get_by_label("Account name", exact=True), page.get_by_text(re.compile("^Signed in as "))
    field.or_(signed_in).first.wait_for(timeout=timeout)
    if signed_in.count():   # Streamlit kept this tab's session across the reload
        if signed_in.first.inner_text().split("\n")[0] == f"Signed in as {name}":
            return
        sign_out(page, timeout)
    field.fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_text(f"Signed in as {name}").wait_for(timeout=timeout)


def sign_out(page, timeout: int = 60_000) -> None:
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Account name", exact=True).wait_for(timeout=timeout)


def pdf_text(data: bytes) -> str:
    """Every page's text of a PDF (its streams are usually compressed, so a byte search would miss it)."""
    import io

    from pypdf import PdfReader
    return "\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages)
