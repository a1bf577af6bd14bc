"""Sign-in and roles in a real browser: Playwright drives Debian's Chromium against `streamlit run
app.py`, with accounts made by the command line and a real local OpenID Connect provider
(`oidc-provider-mock`, started here)."""
import inspect
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from helpers import (
    add_user,
    free_port,
    idle,
    require_chromium,
    sign_in,
    sign_out,
    start_dashboard,
    stop,
)

from pneumo_core.records import registry
from pneumo_core.records.access import Actor, PermissionDenied

require_chromium()
OLDER = "20000101-000000-mobilenet_v2"
OIDC_EMAIL = "ana.lopez@hospital.example"
PAGE_PATHS = ["", "diagnose", "heatmaps", "metrics", "models", "retrain", "audit", "users"]


@pytest.fixture(scope="module")
def home(trained_home, tmp_path_factory) -> Path:
    """The tiny trained home with an older second version, three accounts and one OIDC mapping."""
    home = tmp_path_factory.mktemp("auth") / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*"))
    (first,) = [d for d in (home / "models").iterdir() if d.is_dir() and not d.name.startswith(".")]
    shutil.copytree(first, home / "models" / OLDER)
    meta = json.loads((home / "models" / OLDER / "metadata.json").read_text())
    (home / "models" / OLDER / "metadata.json").write_text(json.dumps({**meta, "created": "2000-01-01T00:00:00+00:00"}))
    for name, role in (("root", "admin"), ("ana", "clinician"), ("sam", "ml_lead")):
        add_user(home, name, role)
    (home / "oidc_roles.toml").write_text(f'[roles]\n"{OIDC_EMAIL}" = "clinician"\n')
    return home


@pytest.fixture(scope="module")
def provider():
    """A real OpenID Connect provider on a free port (any client id/secret is accepted)."""
    from oidc_provider_mock import run_server_in_thread
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"   # plain http on localhost, for the provider's checks
    with run_server_in_thread(port=free_port()) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def server(home, provider, synthetic_data, tmp_path_factory):
    """The dashboard with OIDC configured against `provider` (local accounts work beside it)."""
    folder = tmp_path_factory.mktemp("streamlit")
    port = free_port()
    secrets = folder / "secrets.toml"
    secrets.write_text(f"""[auth]
redirect_uri = "http://localhost:{port}/oauth2callback"
cookie_secret = "{os.urandom(32).hex()}"
client_id = "pneumo-test"
client_secret = "pneumo-test-secret"
server_metadata_url = "{provider}/.well-known/openid-configuration"
""")
    log = folder / "server.log"
    process, url = start_dashboard(home, log, port, extra_args=["--secrets.files", str(secrets)],
                                   env={"PNEUMO_DATA": str(synthetic_data), "AUTHLIB_INSECURE_TRANSPORT": "1"})
    yield url, log
    stop(process)


@pytest.fixture
def page(browser):
    """A fresh browser context per test (the worker's shared Chromium, conftest `browser`): no cookie or session
    carried over."""
    context = browser.new_context(viewport={"width": 1360, "height": 1400}, accept_downloads=True)
    yield context.new_page()
    context.close()


def nav_titles(page) -> list[str]:
    page.locator("[data-testid=stSidebarNav]").wait_for(timeout=60_000)
    # Each link's text is its icon's ligature name, then its title.
    return [t.strip().split("\n")[-1] for t in page.locator("[data-testid=stSidebarNavLink]").all_inner_texts()]


def test_signed_out_every_deep_link_shows_only_the_sign_in_page(server, page):
    url, _ = server
    for path in PAGE_PATHS:
        page.goto(f"{url}/{path}")
        page.get_by_label("Account name", exact=True).wait_for(timeout=120_000)
        idle(page)
        assert page.locator("h1").all_inner_texts() == ["Pneumo"], path
        assert not page.locator("[data-testid=stSidebarNav]").count(), path
        assert not page.get_by_text("Page not found").count(), path


def test_a_clinician_sees_no_retrain_promote_rollback_cancel_or_audit_controls(server, page):
    url, _ = server
    sign_in(page, f"{url}/models", "ana")
    assert nav_titles(page) == ["Diagnose", "Worklist", "Heatmaps", "Metrics", "Models"]
    page.get_by_text("Model card").wait_for(timeout=120_000)
    idle(page)
    for label in ("Roll back", "Make active", "Promote", "Cancel job", "Retrain with current settings",
                  "Download CSV"):
        assert not page.get_by_role("button", name=re.compile(label)).count(), label
    sign_in(page, f"{url}/retrain", "ana")   # a deep link to a page the role lacks opens no part of it
    idle(page)
    assert not page.get_by_role("button", name="Retrain with current settings").count()
    assert "Retrain" not in page.locator("h1").all_inner_texts()


def test_the_library_refuses_a_clinicians_promotion(home):
    parameters = inspect.signature(registry.promote).parameters
    if "actor" not in parameters:
        pytest.skip("registry.promote takes no actor on this branch yet (the store branch of issue 13 adds it)")
    with pytest.raises(PermissionDenied, match="ana \\(clinician\\) may not promote"):
        registry.promote(home / "models", OLDER, actor=Actor("ana", "clinician"))


def test_an_ml_lead_rolls_back_and_the_promotion_names_them(server, home, page):
    url, _ = server
    sign_in(page, f"{url}/models", "sam")
    assert "Retrain" in nav_titles(page) and "Audit" not in nav_titles(page)
    before = registry.active_version(home / "models")
    target = OLDER if before != OLDER else next(v for v in registry.candidates(home / "models"))
    page.get_by_role("button", name=re.compile("^(Roll back|Make active)$")).first.click()
    deadline = time.time() + 60
    while registry.active_version(home / "models") == before and time.time() < deadline:
        time.sleep(0.5)
    last = registry.promotions(home / "models")[-1]
    assert (last["from"], last["to"], last["who"]) == (before, target, "sam")
    sign_out(page)
    assert not page.locator("[data-testid=stSidebarNav]").count()


# A report and the records never carry the uploaded file name: tests/e2e/test_e2e.py, on the dashboard that diagnoses
# already (here it was the one test that loaded TensorFlow and the model into this module's server).


def test_an_oidc_sign_in_reaches_the_dashboard_as_the_providers_email(server, page):
    url, _ = server
    local = url.replace("127.0.0.1", "localhost")     # the redirect URI's host, for the identity cookie
    page.goto(local)
    page.get_by_role("button", name="Sign in with your hospital account").click(timeout=120_000)
    page.locator("input[name=sub]").fill(OIDC_EMAIL, timeout=60_000)  # the provider's own sign-in form
    page.get_by_role("button", name="Authorize").click()
    page.get_by_text(f"Signed in as {OIDC_EMAIL}").wait_for(timeout=120_000)
    assert nav_titles(page) == ["Diagnose", "Worklist", "Heatmaps", "Metrics", "Models"]
    page.goto(f"{local}/metrics")                     # the identity cookie keeps a reload signed in
    page.get_by_text(f"Signed in as {OIDC_EMAIL}").wait_for(timeout=120_000)


def test_an_oidc_email_without_a_role_is_refused(server, page):
    url, _ = server
    page.goto(url.replace("127.0.0.1", "localhost"))
    page.get_by_role("button", name="Sign in with your hospital account").click(timeout=120_000)
    page.locator("input[name=sub]").fill("eve@elsewhere.example", timeout=60_000)
    page.get_by_role("button", name="Authorize").click()
    page.get_by_text("eve@elsewhere.example has no role in Pneumo").wait_for(timeout=120_000)
    assert not page.locator("[data-testid=stSidebarNav]").count()


def test_a_fresh_server_asks_for_the_setup_code_from_its_terminal(tmp_path, page):
    log = tmp_path / "server.log"
    process, url = start_dashboard(tmp_path / "fresh", log)
    try:
        page.goto(url)
        page.get_by_text("Create the first administrator").wait_for(timeout=120_000)
        deadline = time.time() + 30
        while not re.search(r"setup code: (\S+)", log.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        code = re.search(r"setup code: (\S+)", log.read_text()).group(1)
        assert code not in page.content()
        page.get_by_label("Setup code").fill(code)
        page.get_by_label("Administrator account name").fill("first.admin")
        page.get_by_label(re.compile("^Password \\(at least")).fill("a long enough password")
        page.get_by_label("Password again").fill("a long enough password")
        page.get_by_role("button", name="Create administrator").click()
        page.get_by_text("Signed in as first.admin").wait_for(timeout=120_000)
        assert "Users" in nav_titles(page)
    finally:
        stop(process)
