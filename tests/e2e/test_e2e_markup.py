"""In a real browser: DICOM header fields and file names holding Markdown are shown as text.

A film's AccessionNumber and ViewPosition hold a Markdown image pointing at a local listener and
bold markers; its file name holds bold markers too. After the upload nothing has reached the
listener, the page made no request outside the dashboard, and nothing is bold.
"""
import http.server
import threading

import pytest
from helpers import chest_film, dicom_film, free_port, idle, require_chromium, sign_in

require_chromium()


@pytest.fixture(scope="module")
def listener():
    """A local HTTP server that records every request made to it (none may come)."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, seen
    server.shutdown()


@pytest.fixture(scope="module")
def server(dashboard) -> str:
    """The session's shared dashboard (conftest `dashboard`)."""
    return dashboard.url


def test_markdown_in_dicom_headers_and_file_names_is_shown_as_text(server, browser_page, listener):
    port, seen = listener
    page = browser_page
    outside = []
    page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(server)
            and not request.url.startswith(("data:", "blob:")) else None)
    accession = f"![t](http://127.0.0.1:{port}/accession.png) **BOLDACC**"
    films = [{"name": "**BOLDNAME**.dcm", "mimeType": "application/dicom",
              "buffer": dicom_film(chest_film(seed=1), accession=accession, ViewPosition="**AP**")},
             {"name": f"![n](http:127.0.0.1:{port}) **BOLDFAIL**.png", "mimeType": "image/png", "buffer": b"x" * 100}]
    sign_in(page, server, "tester")
    page.get_by_text("Upload one or more frontal chest films").wait_for(timeout=120_000)
    page.locator("input[type=file]").set_input_files(films)
    page.locator(".st-key-diagnose-ready button").wait_for(timeout=120_000)
    idle(page)
    body = page.locator("body").inner_text()
    assert "**BOLDNAME**" in body and "**BOLDACC**" in body and "**AP**" in body and "**BOLDFAIL**" in body
    assert f"![t](http://127.0.0.1:{port}/accession.png)" in body        # the header value, as it is
    marked = f"/BOLD|accession\\.png|127\\.0\\.0\\.1:{port}/"   # any element the payloads could have made
    bold = page.evaluate("() => Array.from(document.querySelectorAll('strong, b, em, i, h1, h2, img'))"
                         f".map(e => e.outerHTML).filter(h => {marked}.test(h))")
    assert bold == []
    assert seen == [] and outside == []
