"""Sign-in page: the only page before sign-in; it shows nothing of the project."""

from __future__ import annotations

import streamlit as st

from active.views.accounts import authenticate
from ui import session


def render() -> None:
    """Username + password form; a right password signs this browser session in."""
    st.title("CXR-AL")
    st.caption("Sign in to label chest X-rays.")
    with st.form("signin", clear_on_submit=False, enter_to_submit=True):
        name = st.text_input("Username", key="signin_username", autocomplete="username")
        password = st.text_input("Password", type="password", key="signin_password",
                                 autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    with st.spinner("Checking ..."):
        user = authenticate(session.project(), name, password)
    if user is None:
        st.error("Wrong username or password.")
        return
    session.sign_in(user)
    st.rerun()


if __name__ == "__main__":  # run as a page by st.navigation: draw it from the imported module
    from ui.signin import render as _render

    _render()
