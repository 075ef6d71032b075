"""Sign-in page: the only page before sign-in; it shows nothing of the project."""

from __future__ import annotations

import streamlit as st

from active.views.accounts import SignInRefused, authenticate
from ui import session


def render() -> None:
    """Username + password form; a right password starts a session and gives this browser its cookie."""
    st.title("CXR-AL")
    st.caption("Sign in to label chest X-rays.")
    ended = session.end_message()
    if ended:
        st.info(ended)
    with st.form("signin", clear_on_submit=False, enter_to_submit=True):
        name = st.text_input("Username", key="signin_username", autocomplete="username")
        password = st.text_input("Password", type="password", key="signin_password",
                                 autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    if not name.strip():
        st.error("Enter your username and password.")
        return
    try:
        with st.spinner("Checking ..."):
            user = authenticate(session.project(), name, password, address=session.client_address())
    except SignInRefused as exc:
        st.error(f"Not signed in: {exc}.")
        return
    if user is None:
        st.error("Wrong username or password.")
        return
    session.sign_in(user)


if __name__ == "__main__":  # run as a page by st.navigation: draw it from the imported module
    from ui.signin import render as _render

    _render()
