"""The shipped reverse proxy (deploy/nginx/pneumo.conf) run with Debian's nginx in front of a started dashboard.

TLS with a self-signed certificate made here, the security headers on every answer, the metrics
endpoint closed in every spelling, plain http redirected, and the dashboard usable through it in a
real browser (its websocket proxied) without one Content-Security-Policy violation.
"""
import base64
import datetime
import hashlib
import ipaddress
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import REPO
from helpers import dashboard_with_tester, free_port, sign_in

pytestmark = []
NGINX = Path("/usr/sbin/nginx")
CONFIG = REPO / "deploy" / "nginx" / "pneumo.conf"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1 and localhost, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert, private = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, private


def _config_for_test(folder: Path, dashboard_port: int, http_port: int, https_port: int, cert: Path, key: Path) -> Path:
    """deploy/nginx/pneumo.conf with only its ports and certificate paths changed, inside a minimal nginx.conf."""
    site = CONFIG.read_text()
    for old, new in (("listen 80;", f"listen 127.0.0.1:{http_port};"),
                     ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
                     ("server 127.0.0.1:8501;", f"server 127.0.0.1:{dashboard_port};"),
                     ("/etc/ssl/pneumo/fullchain.pem", str(cert)), ("/etc/ssl/pneumo/privkey.pem", str(key))):
        assert site.count(old) == 1, old   # the shipped file still has the line the test changes
        site = site.replace(old, new)
    (folder / "pneumo.conf").write_text(site)
    temp = "".join(f"{kind}_temp_path {folder / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                       "scgi"))
    main = folder / "nginx.conf"
    main.write_text(f"daemon off;\nmaster_process off;\npid {folder / 'nginx.pid'};\n"
                    f"error_log {folder / 'error.log'};\nevents {{}}\nhttp {{\naccess_log {folder / 'access.log'};\n"
                    f"{temp}include {folder / 'pneumo.conf'};\n}}\n")
    return main


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("nginx exited:\n" + log.read_text()[-2000:])
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError("nginx did not listen:\n" + log.read_text()[-2000:])


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """(https url, http url, dashboard url, certificate) of nginx with the shipped config before a dashboard."""
    if not NGINX.exists():
        if os.environ.get("CI"):
            pytest.fail("CI needs /usr/sbin/nginx for the proxy test (make test installs nginx-light)")
        pytest.skip("Debian's nginx is not installed (make test installs nginx-light)")
    folder = tmp_path_factory.mktemp("nginx")
    cert, key = _self_signed(folder)
    home = tmp_path_factory.mktemp("proxied") / "home"
    with dashboard_with_tester(home, folder / "streamlit.log") as dashboard:
        http_port, https_port = free_port(), free_port()
        config = _config_for_test(folder, int(dashboard.rsplit(":", 1)[1]), http_port, https_port, cert, key)
        assert subprocess.run([NGINX, "-t", "-p", folder, "-c", config], capture_output=True).returncode == 0
        process = subprocess.Popen([NGINX, "-p", folder, "-c", config], stdout=subprocess.DEVNULL,
                                   stderr=(folder / "nginx.out").open("w"))
        try:
            _wait_for_port(https_port, process, folder / "nginx.out")
            yield f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", dashboard, cert
        finally:
            process.terminate()
            process.wait(timeout=30)


def _headers_are_set(answer: requests.Response) -> None:
    csp = answer.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self' 'sha256-" in csp and "unsafe-eval" not in csp
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Strict-Transport-Security"].startswith("max-age=")


def test_tls_headers_and_the_closed_metrics_endpoint(proxy):
    https, http, dashboard, cert = proxy
    page = requests.get(https, verify=cert, timeout=30)
    assert page.status_code == 200 and "<html" in page.text
    _headers_are_set(page)
    assert requests.get(f"{https}/_stcore/health", verify=cert, timeout=30).text == "ok"
    # The endpoint is there (and open) behind the proxy; through it, closed in every spelling, headers still set.
    assert requests.get(f"{dashboard}/_stcore/metrics", timeout=30).status_code == 200
    for path in ("/_stcore/metrics", "/_stcore/metrics?format=json", "/_stcore/metrics/", "/_stcore/%6Detrics",
                 "//_stcore/metrics", "/_stcore/./metrics"):
        closed = requests.get(f"{https}{path}", verify=cert, timeout=30, allow_redirects=False)
        assert closed.status_code == 404, path
        _headers_are_set(closed)
    plain = requests.get(f"{http}/", timeout=30, allow_redirects=False)
    assert plain.status_code == 301 and plain.headers["Location"].startswith("https://")


def test_the_csp_allows_exactly_the_inline_script_of_the_installed_streamlit():
    import streamlit
    html = (Path(streamlit.__file__).parent / "static" / "index.html").read_text()
    hashes = {base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
              for s in re.findall(r"<script>(.*?)</script>", html, re.S)}
    assert hashes == set(re.findall(r"'sha256-([^']+)'", CONFIG.read_text()))


def test_the_dashboard_works_through_the_proxy_without_a_csp_violation(proxy, browser):
    https, _, _, _ = proxy
    context = browser.new_context(ignore_https_errors=True)     # the worker's Chromium (conftest), a profile of its own
    try:
        page = context.new_page()
        console = []
        page.on("console", lambda message: console.append(message.text))
        sign_in(page, https, "tester")          # the websocket carries the sign-in: proxied
        page.get_by_text("Decision support, not a diagnosis.").wait_for(timeout=60_000)
        assert page.evaluate("() => window.top === window.self")
    finally:
        context.close()
    assert not [line for line in console if "Content Security Policy" in line], console
