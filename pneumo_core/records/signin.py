"""The dashboard's sign-in and session policy, without a screen.

Which page each role opens; what a signed-in session holds and when it ends (idle, account disabled
or given another role, the identity provider's session gone); the first administrator's setup code;
an OpenID Connect user's account; the checks of a new-account form; what a refused sign-in records.

A session is a mapping (the dashboard passes Streamlit's `st.session_state`; tests a dict) holding
`actor` (the `Actor`), `auth_source` ("local" or "oidc") and `last_seen` (seconds since the epoch).
Sign-in and sign-out are recorded in the audit trail's events. Nothing here imports Streamlit.
"""
from __future__ import annotations

import ipaddress
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from pneumo_core.errors import AccountError, LockedOut, PneumoError, SetupError
from pneumo_core.records.access import Actor
from pneumo_core.records.users import SETUP_TTL_SECONDS, UserStore, oidc_role

IDLE_MINUTES = 30   # a session left alone this long is signed out (a shared ward workstation)
LOCAL, OIDC = "local", "oidc"   # how a session signed in: a local account, or the hospital's identity provider
SOURCE = "dashboard"            # the audit events' source
# The session's keys (tests and the dashboard's pages read "actor").
ACTOR, AUTH_SOURCE, LAST_SEEN = "actor", "auth_source", "last_seen"

# page (its script's name under views/) -> the action of access.PERMISSIONS it needs
PAGE_ACTIONS: dict[str, str] = {
    "diagnose": "diagnose",
    "worklist": "diagnose",
    "heatmaps": "diagnose",
    "metrics": "view_metrics",
    "models": "view_metrics",
    "retrain": "submit_job",
    "site": "site_validate",
    "monitor": "view_monitor",
    "audit": "view_audit",
    "users": "manage_users",
}


# Pages ------------------------------------------------------------------------------------------

def may_open(actor: Actor | None, page: str) -> bool:
    """True when `actor` is signed in and its role allows `page` (a key of PAGE_ACTIONS)."""
    return actor is not None and actor.may(PAGE_ACTIONS[page])


def page_refusal(actor: Actor | None, page: str) -> str | None:
    """Why `actor` may not open `page`, as the page says it; None when it may.

    Args:
        actor: the signed-in user, or None.
        page: a key of PAGE_ACTIONS.
    Returns:
        "Sign in first." for nobody, "NAME (ROLE) may not use this page." for a role without the
        page's action, else None.
    """
    if actor is None:
        return "Sign in first."
    if not may_open(actor, page):
        return f"{actor.name} ({actor.role}) may not use this page."
    return None


# The session ------------------------------------------------------------------------------------

def session_actor(session: MutableMapping) -> Actor | None:
    """The session's user, or None (anything else under the key is ignored)."""
    current = session.get(ACTOR)
    return current if isinstance(current, Actor) else None


def start_session(session: MutableMapping, actor: Actor, source: str, now: float, trail) -> None:
    """Make `actor` the session's user and record the sign-in.

    Args:
        session: the session's mapping.
        actor: the user who signed in.
        source: LOCAL or OIDC.
        now: seconds since the epoch (the idle clock starts here).
        trail: the `AuditTrail` the sign-in is recorded in.
    """
    session[ACTOR], session[AUTH_SOURCE], session[LAST_SEEN] = actor, source, now
    trail.event("sign_in", actor.name, source=SOURCE, role=actor.role, method=source)


def end_session(session: MutableMapping, reason: str, trail) -> str | None:
    """Forget the session's user, recording the sign-out (if someone was signed in).

    Args:
        session: the session's mapping.
        reason: why, for the audit ("signed out", "account disabled", ...).
        trail: the `AuditTrail`.
    Returns:
        How the session had signed in (LOCAL, OIDC or None): an OIDC user also leaves the provider.
    """
    current, source = session_actor(session), session.get(AUTH_SOURCE)
    if current:
        trail.event("sign_out", current.name, source=SOURCE, reason=reason)
    for key in (ACTOR, AUTH_SOURCE, LAST_SEEN):
        session.pop(key, None)
    return source


@dataclass(frozen=True)
class SessionCheck:
    """What one run of the dashboard does with its session.

    Attributes:
        actor: who the session acts as on this run; None shows the sign-in page.
        sign_out: why the session must end now (for the audit), or None.
        notice: what the sign-in page then says, or None.
    """
    actor: Actor | None
    sign_out: str | None = None
    notice: str | None = None


def check_session(session: MutableMapping, accounts: UserStore, now: float, provider_signed_in: bool) -> SessionCheck:
    """The checks of every run: idle time, the identity provider's session, the local account.

    A local account disabled (or gone) since sign-in ends the session on its next click, one given
    another role acts with the new role; an OIDC user whose provider session ended is signed out; a
    session idle more than IDLE_MINUTES is signed out. Otherwise the idle clock restarts (the session
    is updated). An actor with no `auth_source` (put there by a test harness) is taken as it is:
    session state lives on the server and no browser message can set it.

    Args:
        session: the session's mapping.
        accounts: the local accounts.
        now: seconds since the epoch.
        provider_signed_in: True while the identity provider says its user is signed in.
    Returns:
        The SessionCheck; when `sign_out` is set, call `end_session` with it.
    """
    current, source = session_actor(session), session.get(AUTH_SOURCE)
    if current is None or source is None:
        return SessionCheck(current)
    if now - session.get(LAST_SEEN, 0) > IDLE_MINUTES * 60:
        return SessionCheck(None, f"idle for more than {IDLE_MINUTES} minutes",
                            f"Signed out after {IDLE_MINUTES} minutes without activity.")
    session[LAST_SEEN] = now
    if source == OIDC and not provider_signed_in:
        return SessionCheck(None, "identity provider session ended")
    if source == LOCAL:
        try:
            account = accounts.get(current.name)
        except AccountError:  # the account is gone (a restored PNEUMO_HOME)
            account = None
        if account is None or account["disabled"]:
            return SessionCheck(None, "account disabled")
        if account["role"] != current.role:
            session[ACTOR] = current = Actor(current.name, account["role"])
    return SessionCheck(current)


def oidc_actor(claims: dict, home: Path) -> Actor:
    """The user an identity provider signed in: their email (lower-case) with the role it maps to.

    Args:
        claims: the ID token's claims (Streamlit's `st.user`).
        home: PNEUMO_HOME (its `oidc_roles.toml`).
    Returns:
        Actor(email, role).
    Raises:
        SignInError: no email, or no role for it (see `users.oidc_role`).
    """
    role = oidc_role(claims, home)
    return Actor(str(claims.get("email")).strip().lower(), role)


# Refused sign-ins -------------------------------------------------------------------------------

UNKNOWN_ACCOUNT = "unknown account"   # who a refusal names when the name typed is no account


def record_refusal(trail, name: str, error: PneumoError, method: str | None = None, client: str | None = None) -> None:
    """Record a refused sign-in (or setup-code use), and the wait it started for this account and client.

    The record names the account only when the name typed is one (`error.account`, set by
    `UserStore.verify`); otherwise "unknown account": what was typed is never kept, since it may be a
    password typed into the name field.

    Args:
        trail: the `AuditTrail`.
        name: the account name as typed (not recorded; kept for callers' symmetry).
        error: the refusal: its message, "locked" for a wait, or its kind for a setup-code refusal.
        method: "setup code" for the first-administrator form, else None (a password).
        client: the client's key (`client_key`), recorded with a wait that starts.
    """
    who = getattr(error, "account", None) or UNKNOWN_ACCOUNT
    if method is not None:
        details = {"method": method, "reason": type(error).__name__}
    else:
        details = {"reason": "locked" if isinstance(error, LockedOut) else str(error)}
    trail.event("sign_in_failed", who, source=SOURCE, **details)
    seconds = getattr(error, "locked_seconds", 0.0)
    if seconds:
        trail.event("sign_in_locked", who, source=SOURCE, client=client or "local", seconds=round(seconds))


def client_key(address: str | None, forwarded_for: str | None = None, trusted_proxies=()) -> str:
    """The client's key for sign-in rate limiting: its address, or 'local' for this machine.

    Streamlit's server (uvicorn) takes the address from `X-Forwarded-For` when the connection comes from
    this machine, whoever sent the header; so the header's word is taken only through the proxies the
    hospital named (`PNEUMO_TRUSTED_PROXIES`): a connection from this machine with no trusted proxy
    here is this machine, whatever its header says.

    Args:
        address: the address Streamlit reports (None for this machine).
        forwarded_for: the request's X-Forwarded-For header, if any.
        trusted_proxies: addresses or networks ("10.0.0.0/8") of the hospital's reverse proxies.
    Returns:
        The client's address, or "local".
    """
    hops = [hop.strip() for hop in (forwarded_for or "").split(",") if hop.strip()]
    # Streamlit's address came from the header when it is one of its hops: the real peer was this machine.
    peer = "127.0.0.1" if hops and (address is None or address in hops) else (address or "127.0.0.1")
    chain = hops + [peer]
    while len(chain) > 1 and _trusted(chain[-1], trusted_proxies):
        chain.pop()   # a trusted proxy's word names the hop before it
    client = chain[-1]
    return "local" if _is_loopback(client) else client


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _trusted(address: str, trusted_proxies) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for proxy in trusted_proxies:
        try:
            if ip in ipaddress.ip_network(proxy, strict=False):
                return True
        except ValueError:
            continue
    return False


# Accounts made on the dashboard -----------------------------------------------------------------

def confirm_password(password: str, again: str) -> str:
    """The password typed twice, or AccountError when the two differ (its length is checked on use)."""
    if password != again:
        raise AccountError("the two passwords differ")
    return password


def disable_refusal(by: Actor, name: str) -> str | None:
    """Why `by` may not disable account `name` from the dashboard (themselves), or None."""
    return "You cannot disable yourself" if name == by.name else None


@dataclass(frozen=True)
class FirstAdmin:
    """Whether the first administrator must still be created, and a setup code issued just now.

    Attributes:
        needed: no enabled administrator exists: the sign-in page shows the setup form.
        new_code: a code issued by this call, for the server's terminal only (never a page); None
            when one was already pending or none is needed.
    """
    needed: bool
    new_code: str | None = None


_setup_lock = threading.Lock()   # concurrent first page loads issue one code, not one each


def first_admin_setup(accounts: UserStore) -> FirstAdmin:
    """Whether a fresh server still needs its first administrator; issues a setup code if none is pending.

    Args:
        accounts: the local accounts.
    Returns:
        FirstAdmin; print `setup_code_notice(new_code)` where the server was started when `new_code` is set.
    """
    if accounts.has_admin():
        return FirstAdmin(False)
    with _setup_lock:
        if accounts.setup_code_pending():
            return FirstAdmin(True)
        try:
            return FirstAdmin(True, accounts.issue_setup_code())
        except SetupError:  # an administrator was created meanwhile (command line, another session)
            return FirstAdmin(False)


def first_start(accounts: UserStore, url: str) -> str:
    """What the server's terminal shows when the dashboard starts (`make run`), before any browser visit.

    Without an administrator a fresh setup code is issued (it replaces one left pending by an earlier
    start, whose code nobody can read back: only its hash is stored).

    Args:
        accounts: the local accounts; url: the dashboard's address.
    Returns:
        The lines to print: the address, and the setup code while no administrator exists.
    """
    lines = f"Pneumo: the dashboard is at {url} (another port: STREAMLIT_SERVER_PORT=8502 make run)\n"
    if accounts.has_admin():
        return lines
    with _setup_lock:
        try:
            return lines + setup_code_notice(accounts.issue_setup_code())
        except SetupError:  # an administrator was created meanwhile
            return lines


def setup_code_notice(code: str) -> str:
    """The lines the server's terminal shows with a new setup code."""
    return (f"\nPneumo: no administrator yet. One-time setup code: {code}\n"
            f"  Open the dashboard and enter it to create the first administrator "
            f"(valid {SETUP_TTL_SECONDS // 60} minutes, single use),\n"
            f"  or run: python -m pneumo_core users add NAME --role admin\n")
