"""Accounts page (admins): who may sign in, with which role; add an account or change a role or password."""

from __future__ import annotations

import streamlit as st

from active.views.accounts import MIN_PASSWORD_LENGTH, ROLES, add_user, list_users
from store.errors import CxrAlError
from ui import session


def render() -> None:
    """The account list, the form to add or change an account, and the recent failed sign-ins."""
    user = session.require("manage_accounts")
    project = session.project()
    st.title("Accounts")
    st.subheader("Add an account or change one")
    with st.form("account_form", clear_on_submit=True):
        c1, c2 = st.columns(2)
        name = c1.text_input("Name", key="account_name", help="letters, digits and _ . @ - (max 64)")
        role = c2.selectbox("Role", ROLES, key="account_role",
                            help="annotators label; leads also see dashboards, train and export; admins manage accounts")
        password = c1.text_input("New password", type="password", key="account_password",
                                 help=f"at least {MIN_PASSWORD_LENGTH} characters", autocomplete="new-password")
        repeat = c2.text_input("Repeat the password", type="password", key="account_repeat",
                               autocomplete="new-password")
        submitted = st.form_submit_button("Save account", type="primary")
    if submitted:
        if password != repeat:
            st.error("The two passwords differ; nothing was saved.")
        else:
            try:
                account = add_user(project, name, role, password, actor=user["name"])
            except CxrAlError as exc:
                st.error(f"Not saved: {exc}")
            else:
                st.success(f"Account **{account['name']}** saved with role {account['role']}.")

    st.subheader("Who may sign in")
    st.dataframe(list_users(project), hide_index=True, key="accounts_table")

    st.subheader("Failed sign-ins")
    failed = project.db.events("signin_failed", limit=50)
    if failed.empty:
        st.caption("None so far.")
    else:
        st.dataframe(failed[["logged_at", "actor", "payload"]].rename(
            columns={"logged_at": "when (UTC)", "actor": "name", "payload": "reason"}), hide_index=True)


if __name__ == "__main__":  # run as a page by st.navigation: draw it from the imported module
    from ui.accounts import render as _render

    _render()
