"""Users: local accounts (add, disable, enable, change role) and who gets which role through OIDC."""
import pandas as pd
import streamlit as st

import ui
from pneumo_core.errors import PneumoError
from pneumo_core.records.access import ROLES
from pneumo_core.records.signin import disable_refusal
from pneumo_core.records.users import OIDC_ROLES_FILE, ROLE_CLAIM, oidc_roles

admin = ui.require_page("users")
st.title("Users")
store = ui.users()
accounts = store.list()
st.dataframe(pd.DataFrame(accounts, columns=["name", "role", "disabled", "created", "changed"]),
             hide_index=True, width="stretch")

st.subheader("Add an account")
account = ui.new_account_form("add_user", "Add account",
                              lambda name, password, role: store.add(name, role, password, by=admin),
                              name_label="Account name", example="a.lopez", password_label="Initial password",
                              extra=lambda column: column.selectbox("Role", ROLES), clear_on_submit=True)
if account:
    ui.audit_event("user_change", admin.name, action="add", account=account["name"], role=account["role"])
    st.toast(f"{account['name']} added as {account['role']}.")
    st.rerun()

if accounts:
    st.subheader("Change an account")
    names = [a["name"] for a in accounts]
    chosen = st.selectbox("Account", names)
    account = accounts[names.index(chosen)]
    left, middle, right = st.columns(3)
    self_disable = disable_refusal(admin, chosen)
    new_role = left.selectbox("Role", ROLES, index=ROLES.index(account["role"]), key=f"role_{chosen}")
    try:
        if left.button("Set role", disabled=new_role == account["role"]):
            store.set_role(chosen, new_role, by=admin)
            ui.audit_event("user_change", admin.name, action="set_role", account=chosen, role=new_role,
                           was=account["role"])
            st.rerun()
        if account["disabled"]:
            if middle.button("Enable", key=f"enable_{chosen}"):
                store.enable(chosen, by=admin)
                ui.audit_event("user_change", admin.name, action="enable", account=chosen)
                st.rerun()
        elif middle.button("Disable", key=f"disable_{chosen}", disabled=self_disable is not None, help=self_disable):
            store.disable(chosen, by=admin)
            ui.audit_event("user_change", admin.name, action="disable", account=chosen)
            st.rerun()
    except PneumoError as error:
        st.error(str(error).capitalize() + ".")

st.subheader("Hospital sign-in (OpenID Connect)")
if not ui.oidc_configured():
    st.caption("Not configured: see `.streamlit/secrets.toml.example` and the README's \"Deploying on a hospital "
               "network\".")
mapping = oidc_roles(ui.settings().home)
st.caption(f"A user signed in through the identity provider gets the role of its `{ROLE_CLAIM}` claim, else the "
           f"one their email has in `{ui.settings().home / OIDC_ROLES_FILE}`, else no access.")
if mapping:
    st.dataframe(pd.DataFrame([{"email": e, "role": r} for e, r in mapping.items()]), hide_index=True)
