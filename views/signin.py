"""Sign in: a local account, the hospital's identity provider (OpenID Connect), or, on a fresh
server, the one-time setup code that creates the first administrator."""
import streamlit as st

import ui
from pneumo_core.errors import LockedOut, PneumoError, SignInError
from pneumo_core.users import MIN_PASSWORD

st.title("Pneumo")
st.caption("Pneumonia detection on paediatric chest X-rays.")
for key in ("signed_out_because", "oidc_refused"):
    if key in st.session_state:
        st.warning(st.session_state.pop(key))
        if key == "oidc_refused" and ui.oidc_logged_in():
            if st.button("Sign out of the identity provider"):
                st.logout()
            st.stop()

if ui.oidc_configured():  # offered even before the first local administrator exists
    if st.button("Sign in with your hospital account", type="primary", icon=":material/badge:"):
        st.login()
    st.caption("Or with a local Pneumo account:")

if ui.setup_code_if_needed():
    st.subheader("Create the first administrator")
    st.markdown("This server has no administrator yet. The one-time **setup code** is printed in the terminal "
                "where the dashboard was started (`make run`).")
    with st.form("setup"):
        code = st.text_input("Setup code", placeholder="XXXX-XXXX-XXXX")
        name = st.text_input("Administrator account name", placeholder="e.g. j.smith")
        password = st.text_input(f"Password (at least {MIN_PASSWORD} characters)", type="password")
        again = st.text_input("Password again", type="password")
        if st.form_submit_button("Create administrator", type="primary"):
            try:
                if password != again:
                    raise SignInError("the two passwords differ")
                actor = ui.users().create_first_admin(code, name, password, ui.client())
            except PneumoError as error:
                ui.audit_event("sign_in_failed", name.strip().lower()[:64] or "unknown", method="setup code",
                               reason=type(error).__name__)
                st.error(str(error).capitalize() + ".")
            else:
                ui.audit_event("user_change", actor.name, action="add", account=actor.name, role=actor.role,
                               method="setup code")
                ui.sign_in(actor, "local")
                st.rerun()
    st.stop()

st.subheader("Sign in")
with st.form("signin"):
    name = st.text_input("Account name")
    password = st.text_input("Password", type="password")
    if st.form_submit_button("Sign in", type="primary" if not ui.oidc_configured() else "secondary"):
        try:
            actor = ui.users().verify(name, password, ui.client())
        except LockedOut as error:
            ui.audit_event("sign_in_failed", name.strip().lower()[:64] or "unknown", reason="locked")
            st.error(str(error).capitalize() + ".")
        except SignInError as error:
            ui.audit_event("sign_in_failed", name.strip().lower()[:64] or "unknown", reason=str(error))
            st.error(str(error).capitalize() + ".")
        else:
            ui.sign_in(actor, "local")
            st.rerun()
st.caption("Accounts are managed by an administrator (Users page, or `python -m pneumo_core users` on the server).")
