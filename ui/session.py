"""Who is signed in: Streamlit glue over the library's sign-in policy (`pneumo_core.records.signin`).

The decisions (which page a role opens, when a session ends, what a refusal records) are the
library's; this module hands it Streamlit's session state, the browser's address and the identity
provider's state, and shows or prints what it decides.
"""
from __future__ import annotations

import sys
import time

import streamlit as st

from pneumo_core.errors import PneumoError, SignInError
from pneumo_core.records import signin
from pneumo_core.records.access import Actor
from ui.loaders import audit_trail, settings, users


def actor() -> Actor | None:
    """The signed-in user (`st.session_state["actor"]`, set only by the server), or None."""
    return signin.session_actor(st.session_state)


def who() -> str:
    """The signed-in user's name, for the records."""
    current = actor()
    return current.name if current else "nobody"


def may(action: str) -> bool:
    """True when the signed-in user's role allows `action` (a key of access.PERMISSIONS)."""
    current = actor()
    return bool(current and current.may(action))


def require_page(page: str) -> Actor:
    """The signed-in user if their role may open `page`; else a message and the page stops.

    app.py shows each role only its pages; this also guards a page script run on its own.

    Args:
        page: the page's name, a key of `signin.PAGE_ACTIONS` ("diagnose", "users", ...).
    Returns:
        The signed-in Actor.
    """
    current = actor()
    refusal = signin.page_refusal(current, page)
    if refusal:
        (st.warning if current is None else st.error)(refusal)
        st.stop()
    return current


def client() -> str:
    """The browser's address for rate limiting ('local' on this machine or under AppTest); X-Forwarded-For
    counts only through the proxies of PNEUMO_TRUSTED_PROXIES (`signin.client_key`)."""
    try:
        address, forwarded = st.context.ip_address, st.context.headers.get("X-Forwarded-For")
    except Exception:  # no client context
        address, forwarded = None, None
    address, forwarded = (value if isinstance(value, str) else None for value in (address, forwarded))  # AppTest: mocks
    return signin.client_key(address, forwarded, settings().trusted_proxies)


def audit_event(kind: str, who_: str, **details) -> None:
    """One event row (user change, download, ...) in the audit trail, from the dashboard."""
    audit_trail().event(kind, who_, source=signin.SOURCE, **details)


def record_refusal(name: str, error: PneumoError, method: str | None = None) -> None:
    """Record a refused sign-in (or setup-code use): the account, or "unknown account" (`signin.record_refusal`)."""
    signin.record_refusal(audit_trail(), name, error, method, client())


def sign_in(signed_in: Actor, source: str) -> None:
    """Make `signed_in` this session's user ('local' account or 'oidc') and record it."""
    signin.start_session(st.session_state, signed_in, source, time.time(), audit_trail())


def sign_out(reason: str = "signed out") -> None:
    """End this session's sign-in (and the identity provider's cookie for OIDC users)."""
    source = signin.end_session(st.session_state, reason, audit_trail())
    st.session_state.pop("_audit_recorded", None)   # the next user's diagnoses are recorded again
    if source == signin.OIDC and oidc_configured():
        st.logout()


def oidc_configured() -> bool:
    """True when `.streamlit/secrets.toml` has an [auth] section (OpenID Connect sign-in)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def oidc_logged_in() -> bool:
    """True while the identity provider says this browser's user is signed in."""
    try:
        return bool(st.user.is_logged_in)
    except Exception:  # authentication not configured
        return False


def signed_in_actor() -> Actor | None:
    """This session's user after the checks of every run (`signin.check_session`), or None (show the
    sign-in page). A user the identity provider signed in is given an account here (`signin.oidc_actor`);
    one it maps to no role is refused, and the sign-in page says why."""
    if actor() is None and oidc_logged_in():
        try:
            sign_in(signin.oidc_actor(st.user.to_dict(), settings().home), signin.OIDC)
        except SignInError as error:
            st.session_state["oidc_refused"] = str(error)
            return None
    check = signin.check_session(st.session_state, users(), time.time(), oidc_logged_in())
    if check.sign_out:
        sign_out(check.sign_out)
        if check.notice:
            st.session_state["signed_out_because"] = check.notice
    return check.actor


def setup_code_if_needed() -> bool:
    """True when no administrator exists yet; then makes sure a setup code is pending and printed.

    The code goes to the server's terminal only (whoever started `make run`), never to a page.
    """
    setup = signin.first_admin_setup(users())
    if setup.new_code:
        print(signin.setup_code_notice(setup.new_code), file=sys.stderr, flush=True)
    return setup.needed
