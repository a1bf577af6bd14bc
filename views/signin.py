"""Sign in: a local account, the hospital's identity provider (OpenID Connect), or, on a fresh
server, the one-time setup code that creates the first administrator."""
import streamlit as st

import ui
from pneumo_core.errors import SignInError

st.title("Pneumo")
st.caption("Pneumonia detection on paediatric chest X-rays.")
for key in ("signed_out_because", "oidc_refused"):
    if key in st.session_state:
        st.warning(ui.literal(st.session_state.pop(key)))   # an IdP refusal names the provider's email
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
    actor = ui.new_account_form(
        "setup", "Create administrator",
        lambda name, password, code: ui.users().create_first_admin(code, name, password, ui.client()),
        name_label="Administrator account name", example="j.smith", password_label="Password",
        extra=lambda column: column.text_input("Setup code", placeholder="XXXX-XXXX-XXXX"),
        refused=lambda name, error: ui.record_refusal(name, error, method="setup code"))
    if actor:
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
        except SignInError as error:   # a lockout too: recorded as "locked"
            ui.record_refusal(name, error)
            st.error(ui.literal(str(error).capitalize() + "."))
        else:
            ui.sign_in(actor, "local")
            st.rerun()
st.caption("Accounts are managed by an administrator (Users page, or `python -m pneumo_core users` on the server).")
