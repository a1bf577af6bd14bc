"""The dashboard's sign-in and session policy (pneumo_core.records.signin) as plain library calls:
no Streamlit, a dict for the session, a real audit trail and account store in a temporary home."""
import subprocess
import sys

import pytest
from conftest import REPO
from helpers import PASSWORD

from pneumo_core.errors import AccountError, SetupError, SignInError
from pneumo_core.records import signin
from pneumo_core.records.access import PERMISSIONS, ROLES, Actor
from pneumo_core.records.audit import AuditTrail
from pneumo_core.records.users import LOCK_SECONDS, MAX_FAILURES, UserStore

NOW = 1_000_000.0

BY = Actor("it-admin", "admin")   # the administrator who manages the accounts of these tests
# The pages each role opens (app.py's navigation and each page's own check read the same table).
ROLE_PAGES = {"clinician": {"diagnose", "worklist", "heatmaps", "metrics", "models"},
              "ml_lead": {"diagnose", "worklist", "heatmaps", "metrics", "models", "retrain", "site", "monitor"},
              "auditor": {"audit"},   # not Monitor: clinical operations, not audit (issue 24)
              "admin": set(signin.PAGE_ACTIONS)}


@pytest.fixture
def trail(tmp_path):
    return AuditTrail(tmp_path / "audit.sqlite")


@pytest.fixture
def accounts(tmp_path):
    return UserStore(tmp_path / "home")


def events(trail):
    return [(e["kind"], e["who"], e["details"]) for e in trail.events()][::-1]


@pytest.mark.parametrize("role", ROLES)
def test_each_role_opens_its_pages_only(role):
    who = Actor("someone", role)
    assert {page for page in signin.PAGE_ACTIONS if signin.may_open(who, page)} == ROLE_PAGES[role]
    assert all(signin.page_refusal(who, page) is None for page in ROLE_PAGES[role])


def test_the_documented_roles_table_is_the_one_the_dashboard_enforces():
    table = (REPO / "docs" / "deploying.md").read_text().split("## Roles", 1)[1]
    documented = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0] in ROLES:
            documented[cells[0]] = {page.strip().lower() for page in cells[1].split(",")}
    enforced = {role: {page for page in signin.PAGE_ACTIONS if signin.may_open(Actor("x", role), page)}
                for role in ROLES}
    assert documented == enforced == ROLE_PAGES


def test_a_refused_page_says_sign_in_first_or_names_the_user_and_role():
    assert signin.page_refusal(None, "diagnose") == "Sign in first."
    assert not signin.may_open(None, "diagnose")
    assert signin.page_refusal(Actor("ida", "auditor"), "diagnose") == "ida (auditor) may not use this page."


def test_every_page_of_the_dashboard_has_an_action_the_library_knows():
    pages = {p.stem for p in (REPO / "views").glob("*.py")} - {"signin"}
    assert set(signin.PAGE_ACTIONS) == pages
    assert set(signin.PAGE_ACTIONS.values()) <= set(PERMISSIONS)


def test_a_session_holds_the_actor_its_source_and_the_time_and_records_sign_in_and_out(trail):
    session = {}
    signin.start_session(session, Actor("ana", "clinician"), signin.LOCAL, NOW, trail)
    assert session == {"actor": Actor("ana", "clinician"), "auth_source": "local", "last_seen": NOW}
    assert signin.session_actor(session) == Actor("ana", "clinician")
    assert signin.end_session(session, "signed out", trail) == "local"
    assert session == {} and signin.session_actor(session) is None
    assert signin.end_session(session, "signed out", trail) is None   # nobody left: nothing more recorded
    assert events(trail) == [
        ("sign_in", "ana", {"source": "dashboard", "role": "clinician", "method": "local"}),
        ("sign_out", "ana", {"source": "dashboard", "reason": "signed out"})]


def test_something_else_under_the_actor_key_is_nobody():
    assert signin.session_actor({"actor": {"name": "root", "role": "admin"}}) is None


def test_an_active_session_goes_on_and_its_idle_clock_restarts(accounts, trail):
    accounts.add("ana", "clinician", PASSWORD, by=BY)
    session = {}
    signin.start_session(session, Actor("ana", "clinician"), signin.LOCAL, NOW, trail)
    check = signin.check_session(session, accounts, NOW + 60, provider_signed_in=False)
    assert check == signin.SessionCheck(Actor("ana", "clinician"))
    assert session["last_seen"] == NOW + 60


def test_a_session_idle_past_the_limit_ends_with_a_notice(accounts, trail):
    accounts.add("ana", "clinician", PASSWORD, by=BY)
    session = {}
    signin.start_session(session, Actor("ana", "clinician"), signin.LOCAL, NOW, trail)
    assert signin.check_session(session, accounts, NOW + signin.IDLE_MINUTES * 60, False).actor is not None
    later = session["last_seen"] + signin.IDLE_MINUTES * 60 + 1
    check = signin.check_session(session, accounts, later, False)
    assert check.actor is None and check.sign_out == f"idle for more than {signin.IDLE_MINUTES} minutes"
    assert check.notice == f"Signed out after {signin.IDLE_MINUTES} minutes without activity."


def test_a_local_account_disabled_removed_or_given_another_role_takes_effect_on_the_next_run(accounts, trail,
                                                                                           tmp_path):
    accounts.add("root", "admin", PASSWORD, by=BY)
    accounts.add("sam", "ml_lead", PASSWORD, by=BY)
    session = {}
    signin.start_session(session, Actor("sam", "ml_lead"), signin.LOCAL, NOW, trail)
    accounts.set_role("sam", "clinician", by=BY)
    assert signin.check_session(session, accounts, NOW + 1, False).actor == Actor("sam", "clinician")
    assert session["actor"] == Actor("sam", "clinician")
    accounts.disable("sam", by=BY)
    assert signin.check_session(session, accounts, NOW + 2, False) == signin.SessionCheck(None, "account disabled")
    elsewhere = UserStore(tmp_path / "restored")   # a PNEUMO_HOME restored without the account
    session = {}
    signin.start_session(session, Actor("sam", "ml_lead"), signin.LOCAL, NOW, trail)
    assert signin.check_session(session, elsewhere, NOW + 1, False).sign_out == "account disabled"


def test_an_oidc_session_ends_with_the_identity_providers(accounts, trail):
    session = {}
    signin.start_session(session, Actor("ana@hospital.example", "clinician"), signin.OIDC, NOW, trail)
    assert signin.check_session(session, accounts, NOW + 1, True).actor == Actor("ana@hospital.example", "clinician")
    check = signin.check_session(session, accounts, NOW + 2, False)
    assert check == signin.SessionCheck(None, "identity provider session ended")


def test_an_actor_a_test_harness_put_in_the_session_is_taken_as_it_is(accounts):
    session = {"actor": Actor("tester", "admin")}   # no auth_source, no account
    assert signin.check_session(session, accounts, NOW, False) == signin.SessionCheck(Actor("tester", "admin"))
    assert session == {"actor": Actor("tester", "admin")}


def test_an_oidc_user_is_their_lower_case_email_with_the_mapped_role(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "oidc_roles.toml").write_text('[roles]\n"ana@hospital.example" = "clinician"\n')
    assert signin.oidc_actor({"email": " Ana@Hospital.example "}, home) == Actor("ana@hospital.example", "clinician")
    assert signin.oidc_actor({"email": "bo@x.example", "pneumo_role": "auditor"}, home) == Actor("bo@x.example",
                                                                                                 "auditor")
    with pytest.raises(SignInError, match="eve@elsewhere.example has no role in Pneumo"):
        signin.oidc_actor({"email": "eve@elsewhere.example"}, home)
    with pytest.raises(SignInError, match="no email"):
        signin.oidc_actor({}, home)


def refusal(accounts, name, password, client="10.6.6.6"):
    with pytest.raises(SignInError) as refused:
        accounts.verify(name, password, client)
    return refused.value


def test_a_refused_sign_in_names_the_account_or_unknown_never_what_was_typed(accounts, trail):
    accounts.add("ana", "clinician", PASSWORD, by=BY)
    typed_secret = "Hunter2-typed-in-the-name-field"
    signin.record_refusal(trail, " Ana ", refusal(accounts, " Ana ", "wrong-wrong-wrong"), client="10.6.6.6")
    signin.record_refusal(trail, typed_secret, refusal(accounts, typed_secret, PASSWORD), client="10.6.6.6")
    signin.record_refusal(trail, typed_secret, SetupError("the setup code is wrong"), method="setup code")
    assert events(trail) == [
        ("sign_in_failed", "ana", {"source": "dashboard", "reason": "wrong account name or password"}),
        ("sign_in_failed", "unknown account", {"source": "dashboard", "reason": "wrong account name or password"}),
        ("sign_in_failed", "unknown account", {"source": "dashboard", "method": "setup code",
                                               "reason": "SetupError"})]
    for stored in trail.path.parent.glob("audit.sqlite*"):
        assert typed_secret.lower().encode() not in stored.read_bytes(), stored


def test_the_wait_a_failure_starts_is_recorded_and_a_wait_refusal_says_locked(accounts, trail):
    accounts.add("ana", "clinician", PASSWORD, by=BY)
    for _ in range(MAX_FAILURES):
        signin.record_refusal(trail, "ana", refusal(accounts, "ana", "wrong-wrong-wrong"), client="10.6.6.6")
    signin.record_refusal(trail, "ana", refusal(accounts, "ana", PASSWORD), client="10.6.6.6")
    recorded = events(trail)
    assert recorded[-3:] == [
        ("sign_in_failed", "ana", {"source": "dashboard", "reason": "wrong account name or password"}),
        ("sign_in_locked", "ana", {"source": "dashboard", "client": "10.6.6.6", "seconds": LOCK_SECONDS}),
        ("sign_in_failed", "ana", {"source": "dashboard", "reason": "locked"})]
    assert [kind for kind, _, _ in recorded].count("sign_in_locked") == 1


def test_the_client_key_is_the_address_or_local():
    assert signin.client_key("10.1.2.3") == "10.1.2.3"
    assert signin.client_key(None) == signin.client_key("") == "local"


def test_x_forwarded_for_counts_only_through_a_named_proxy():
    # Streamlit's server copies the header's last hop into the address for a connection from this machine.
    for forged in ("198.51.100.1", "198.51.100.2", "10.0.0.1, 198.51.100.3"):
        last = forged.split(", ")[-1]
        assert signin.client_key(last, forged) == "local"          # no proxy named: it is this machine
    assert signin.client_key("198.51.100.7", "198.51.100.7", ["127.0.0.1"]) == "198.51.100.7"
    # through the named proxy, the hop it added counts, not the ones the client wrote before it
    assert signin.client_key("198.51.100.7", "6.6.6.6, 198.51.100.7", ["127.0.0.1/32", "::1"]) == "198.51.100.7"
    # a client reaching the dashboard directly is its own address, whatever it writes
    assert signin.client_key("203.0.113.5", "1.2.3.4", ["127.0.0.1"]) == "203.0.113.5"
    assert signin.client_key("10.9.0.2", "203.0.113.8, 10.9.0.1", ["10.9.0.0/16"]) == "203.0.113.8"


def test_a_new_password_must_be_typed_the_same_twice():
    assert signin.confirm_password(PASSWORD, PASSWORD) == PASSWORD
    with pytest.raises(AccountError, match="the two passwords differ"):
        signin.confirm_password(PASSWORD, PASSWORD + " ")


def test_an_administrator_may_disable_others_but_not_themselves():
    root = Actor("root", "admin")
    assert signin.disable_refusal(root, "root") == "You cannot disable yourself"
    assert signin.disable_refusal(root, "ana") is None


def test_a_fresh_server_issues_one_setup_code_until_an_administrator_exists(accounts):
    first = signin.first_admin_setup(accounts)
    assert first.needed and first.new_code
    assert signin.first_admin_setup(accounts) == signin.FirstAdmin(True)   # pending: no second code
    notice = signin.setup_code_notice(first.new_code)
    assert first.new_code in notice and "valid 60 minutes" in notice
    assert accounts.create_first_admin(first.new_code, "root", PASSWORD) == Actor("root", "admin")
    assert signin.first_admin_setup(accounts) == signin.FirstAdmin(False)


def test_make_run_prints_the_address_and_a_working_setup_code_before_any_visit(accounts, tmp_path):
    signin.first_admin_setup(accounts)          # a code left pending by an earlier start: unreadable now
    result = subprocess.run([sys.executable, "-m", "pneumo_core", "users", "first-start", "--url",
                             "http://localhost:8502"], cwd=REPO, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PNEUMO_HOME": str(accounts.path.parent)})
    assert result.returncode == 0, result.stderr
    assert "http://localhost:8502" in result.stdout and "STREAMLIT_SERVER_PORT" in result.stdout
    code = result.stdout.split("One-time setup code: ")[1].split()[0]
    assert accounts.create_first_admin(code, "root", PASSWORD) == Actor("root", "admin")   # the printed code works
    again = signin.first_start(accounts, "http://localhost:8501")
    assert "http://localhost:8501" in again and "setup code" not in again    # an administrator exists: no code


def test_the_library_policy_never_imports_streamlit():
    code = "import sys, pneumo_core.records.signin; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
