"""Accounts page (admins): who may sign in, with which role; add an account or change a role or password; unlock,
disable or sign out an account; who is signed in; failed sign-ins."""

from __future__ import annotations

import streamlit as st

from active.views.accounts import (
    MIN_PASSWORD_LENGTH,
    ROLES,
    add_user,
    failed_signins,
    list_users,
    set_disabled,
    unlock_user,
)
from active.views.sessions import live_sessions, sign_out_all
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
    users = list_users(project)
    st.dataframe(users, hide_index=True, key="accounts_table")
    _account_actions(project, users, user["name"])

    st.subheader("Signed in now")
    _table(live_sessions(project), "accounts_sessions", "Nobody.")
    st.subheader("Failed sign-ins")
    st.caption("A name that is no account is never stored: it shows as its keyed hash.")
    _table(failed_signins(project), "accounts_failed", "None so far.")


def _table(frame, key: str, empty: str) -> None:
    if frame.empty:
        st.caption(empty)
    else:
        st.dataframe(frame, hide_index=True, key=key)


def _account_actions(project, users, admin: str) -> None:
    """Unlock, disable, enable an account or sign it out everywhere."""
    if users.empty:
        return
    with st.form("account_actions"):
        name = st.selectbox("Account", list(users["name"]), key="account_action_name")
        c1, c2, c3, c4 = st.columns(4)
        actions = {"unlock": c1.form_submit_button("Unlock", help="forget its failed sign-ins"),
                   "disable": c2.form_submit_button("Disable", help="it cannot sign in; its sessions end now"),
                   "enable": c3.form_submit_button("Enable"),
                   "sign_out": c4.form_submit_button("Sign out everywhere", help="end its sessions now")}
    chosen = [a for a, pressed in actions.items() if pressed]
    if not chosen or name is None:
        return
    try:
        if chosen[0] == "unlock":
            unlock_user(project, name, actor=admin)
            st.success(f"**{name}** unlocked.")
        elif chosen[0] in ("disable", "enable"):
            if name == admin and chosen[0] == "disable":
                st.error("You cannot disable your own account here; use `cxr-al user disable`.")
                return
            set_disabled(project, name, chosen[0] == "disable", actor=admin)
            st.success(f"**{name}** {chosen[0]}d.")
        else:
            n = sign_out_all(project, name, actor=admin)
            st.success(f"**{name}** signed out of {n} session(s).")
    except CxrAlError as exc:
        st.error(f"Not done: {exc}")


if __name__ == "__main__":  # run as a page by st.navigation: draw it from the imported module
    from ui.accounts import render as _render

    _render()
