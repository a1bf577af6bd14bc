"""Sign-in and roles in the dashboard under Streamlit's AppTest: app.py's gate, the sign-in and
setup pages, the pages each role gets, and what stays off the screen's records."""
import re

import pytest
from conftest import REPO
from helpers import PASSWORD, shown
from streamlit.testing.v1 import AppTest

from pneumo_core.records.access import Actor
from pneumo_core.records.users import MAX_FAILURES, UserStore

BY = Actor("it-admin", "admin")   # the administrator who manages the accounts of these tests

ALL_PAGES = ["diagnose", "heatmaps", "metrics", "models", "retrain", "monitor", "audit", "users"]
ROLE_PAGES = {"clinician": {"diagnose", "heatmaps", "metrics", "models"},
              "ml_lead": {"diagnose", "heatmaps", "metrics", "models", "retrain", "monitor"},
              "auditor": {"audit"},
              "admin": set(ALL_PAGES)}


def app() -> AppTest:
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=120)


def reachable(at: AppTest) -> set[str]:
    """The pages st.navigation registered for this session (switch_page refuses the others)."""
    found = set()
    for name in ALL_PAGES:
        try:
            at.switch_page(f"views/{name}.py")
        except ValueError:
            continue
        found.add(name)
    return found


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def accounts(home):
    store = UserStore(home)
    for name, role in (("root", "admin"), ("ana", "clinician"), ("sam", "ml_lead"), ("ida", "auditor")):
        store.add(name, role, PASSWORD, by=BY)
    return store


def sign_in_form(at: AppTest, name: str, password: str) -> AppTest:
    fields = {t.label: t for t in at.text_input}
    fields["Account name"].input(name)
    fields["Password"].input(password)
    next(b for b in at.button if b.label == "Sign in").click()
    return at.run()


def test_signed_out_every_page_is_the_sign_in_page(accounts):
    at = app().run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Pneumo"] and any(s.value == "Sign in" for s in at.subheader)
    assert reachable(at) == set()           # no deep link reaches another page
    for name in ALL_PAGES:                  # each page run on its own stops before showing anything
        page = AppTest.from_file(str(REPO / "views" / f"{name}.py"), default_timeout=120).run()
        assert not page.exception and [w.value for w in page.warning] == ["Sign in first."], name
        assert not page.title, name


def test_a_local_account_signs_in_and_out(accounts):
    at = app().run()
    at = sign_in_form(at, "ana", PASSWORD)
    assert not at.exception
    assert at.session_state["actor"] == Actor("ana", "clinician")
    assert any("Signed in as ana" in t.value for t in at.sidebar.text)
    assert reachable(at) == ROLE_PAGES["clinician"]
    next(b for b in at.sidebar.button if b.label == "Sign out").click()
    at.run()
    assert "actor" not in at.session_state and reachable(at) == set()


def test_failed_sign_ins_make_this_account_and_client_wait_and_the_wait_is_recorded(accounts):
    from pneumo_core.records.audit import AuditTrail
    from pneumo_core.settings import load_settings
    at = app().run()
    for _ in range(MAX_FAILURES):
        at = sign_in_form(at, "ana", "not the password")
        assert [shown(e.value) for e in at.error] == ["Wrong account name or password."]
    at = sign_in_form(at, "ana", PASSWORD)
    assert at.error and shown(at.error[0].value).startswith("Too many failed sign-ins: try again in")
    assert "actor" not in at.session_state
    assert accounts.failures("pair:ana|local") == MAX_FAILURES
    locks = AuditTrail(load_settings().audit_path).events(kind="sign_in_locked")
    assert [(e["who"], e["details"]["client"]) for e in locks] == [("ana", "local")]


def test_sign_in_sign_out_and_a_failed_sign_in_are_recorded_with_the_name(accounts):
    from pneumo_core.records.audit import AuditTrail
    from pneumo_core.settings import load_settings
    if not hasattr(AuditTrail, "events"):
        pytest.skip("AuditTrail has no events on this branch yet (the store branch of issue 13 adds them)")
    at = sign_in_form(app().run(), "ana", "not the password")
    at = sign_in_form(at, "ana", PASSWORD)
    next(b for b in at.sidebar.button if b.label == "Sign out").click()
    at.run()
    trail = AuditTrail(load_settings().audit_path)
    assert [(e["kind"], e["who"]) for e in trail.events()][::-1] == [
        ("sign_in_failed", "ana"), ("sign_in", "ana"), ("sign_out", "ana")]


def test_the_setup_code_printed_in_the_terminal_creates_the_first_admin(home, capsys):
    at = app().run()
    assert not at.exception and any(s.value == "Create the first administrator" for s in at.subheader)
    printed = capsys.readouterr().err
    (code,) = re.findall(r"setup code: ([A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4})", printed)
    assert code not in str([m.value for m in at.markdown])      # the code is on the terminal only

    def submit(typed):
        fields = {t.label.split(" (")[0]: t for t in at.text_input}
        fields["Setup code"].input(typed)
        fields["Administrator account name"].input("root")
        fields["Password"].input(PASSWORD)
        fields["Password again"].input(PASSWORD)
        next(b for b in at.button if b.label == "Create administrator").click()
        return at.run()

    submit("AAAA-BBBB-CCCC")
    assert at.error and "wrong, used or expired" in at.error[0].value and "actor" not in at.session_state
    submit(code)
    assert not at.exception
    assert at.session_state["actor"] == Actor("root", "admin")
    assert reachable(at) == ROLE_PAGES["admin"]
    assert UserStore(home).verify("root", PASSWORD).role == "admin"
    assert "no administrator yet" not in capsys.readouterr().err    # no new code once an admin exists


@pytest.mark.parametrize("role", ["clinician", "ml_lead", "auditor", "admin"])
def test_each_role_gets_its_pages_only(home, role):
    at = app()
    at.session_state["actor"] = Actor(f"someone-{role}", role)
    at.run()
    assert not at.exception
    assert reachable(at) == ROLE_PAGES[role]


@pytest.mark.parametrize("name, role", [("retrain", "clinician"), ("audit", "clinician"), ("users", "ml_lead"),
                                        ("diagnose", "auditor"), ("models", "auditor"), ("monitor", "auditor")])
def test_a_page_refuses_a_role_it_is_not_for(home, name, role):
    at = AppTest.from_file(str(REPO / "views" / f"{name}.py"), default_timeout=120)
    at.session_state["actor"] = Actor("x", role)
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [f"x ({role}) may not use this page."] and not at.title


def test_a_disabled_account_is_signed_out_on_its_next_click(accounts):
    at = sign_in_form(app().run(), "sam", PASSWORD)
    assert at.session_state["actor"] == Actor("sam", "ml_lead")
    accounts.set_role("sam", "clinician", by=BY)
    at.run()
    assert at.session_state["actor"] == Actor("sam", "clinician") and "retrain" not in reachable(at)
    accounts.disable("sam", by=BY)
    at.run()
    assert "actor" not in at.session_state and reachable(at) == set()


def test_an_idle_session_is_signed_out(accounts):
    at = sign_in_form(app().run(), "ana", PASSWORD)
    assert at.session_state["actor"] == Actor("ana", "clinician")
    at.session_state["last_seen"] = at.session_state["last_seen"] - 31 * 60   # as if left alone for 31 minutes
    at.run()
    assert "actor" not in at.session_state and reachable(at) == set()
    assert any("without activity" in w.value for w in at.warning)


def test_an_oidc_user_gets_the_role_of_their_email_or_is_refused(home):
    home.mkdir(parents=True)
    (home / "oidc_roles.toml").write_text('[roles]\n"ana@hospital.example" = "clinician"\n')
    at = app()
    at.user = {"is_logged_in": True, "email": "ana@hospital.example", "sub": "1"}
    at.run()
    assert not at.exception
    assert at.session_state["actor"] == Actor("ana@hospital.example", "clinician")
    assert reachable(at) == ROLE_PAGES["clinician"]
    stranger = app()
    stranger.user = {"is_logged_in": True, "email": "eve@elsewhere.example", "sub": "2"}
    stranger.run()
    assert "actor" not in stranger.session_state and reachable(stranger) == set()
    assert any("eve@elsewhere.example has no role in Pneumo" in shown(w.value) for w in stranger.warning)


def test_the_users_page_adds_changes_and_disables_accounts(accounts):
    at = AppTest.from_file(str(REPO / "views" / "users.py"), default_timeout=120)
    at.session_state["actor"] = Actor("root", "admin")
    at.run()
    assert not at.exception and set(at.dataframe[0].value["name"]) == {"root", "ana", "sam", "ida"}
    fields = {t.label.split(" (")[0]: t for t in at.text_input}
    fields["Account name"].input("new.user")
    fields["Initial password"].input(PASSWORD)
    fields["Password again"].input(PASSWORD)
    next(s for s in at.selectbox if s.label == "Role").set_value("auditor")
    next(b for b in at.button if b.label == "Add account").click()
    at.run()
    assert not at.exception and accounts.get("new.user")["role"] == "auditor"
    next(s for s in at.selectbox if s.label == "Account").set_value("ana")
    at.run()
    next(b for b in at.button if b.label == "Disable").click()
    at.run()
    assert accounts.get("ana")["disabled"]


def test_a_weights_path_outside_the_configured_folder_is_refused_as_plain_text(home, tmp_path, monkeypatch):
    from pneumo_core.jobs.queue import JobQueue
    from pneumo_core.settings import load_settings
    monkeypatch.setenv("PNEUMO_DATA", str(tmp_path / "data" / "chest_xray"))
    monkeypatch.setenv("PNEUMO_WEIGHTS_DIR", str(tmp_path / "weights"))
    at = AppTest.from_file(str(REPO / "views" / "retrain.py"), default_timeout=120)
    at.session_state["actor"] = Actor("sam", "ml_lead")
    at.run()
    next(t for t in at.text_input if t.label == "Weights").input("/etc/*shadow*")
    next(b for b in at.button if b.label == "Retrain with current settings").click()
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Not submitted:"]
    assert any("weights file must lie inside" in c.value and str(tmp_path / "weights") in c.value for c in at.code)
    assert JobQueue(load_settings()).list() == []


