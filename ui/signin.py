"""Sign-in page: the only page before sign-in; it shows nothing of the project."""

from __future__ import annotations

from typing import Any

import streamlit as st
from streamlit.errors import StreamlitAuthError, StreamlitMissingAuthlibError

from active.views.accounts import authenticate, oidc_account
from store.config import oidc_sign_in
from store.errors import CxrAlError
from ui import session


def render() -> None:
    """Username + password form, and "Sign in with PROVIDER" when project.yaml configures OpenID Connect; a right
    password, or an identity from the provider that names an account, starts a session and gives this browser
    its cookie."""
    st.title("CXR-AL")
    st.caption("Sign in to label chest X-rays.")
    ended = session.end_message()
    if ended:
        st.info(ended)
    oidc = oidc_sign_in(session.project().config)
    if oidc is not None:
        provider_sign_in(oidc)
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
        if user is None:
            st.error("Wrong username or password.")
            return
        session.sign_in(user)
    except CxrAlError as exc:  # refused (throttled, locked), or the project is busy: said, never a traceback
        st.error(f"Not signed in: {str(exc).rstrip('.')}.")


def provider_sign_in(oidc: dict[str, Any]) -> None:
    """Back from the provider (st.user holds a fresh identity): sign in as the account it names, or say why not.
    Otherwise the "Sign in with ..." button, which sends the browser to the provider (st.login)."""
    try:
        user = oidc_account(session.project(), st.user.to_dict(), provider=oidc["provider"], claim=oidc["claim"],
                            address=session.client_address())
        if user is not None:
            session.sign_in(user)
    except CxrAlError as exc:
        st.error(f"Not signed in: {str(exc).rstrip('.')}.")
    if st.button(f"Sign in with {oidc['label']}", key="signin_oidc", icon=":material/badge:"):
        try:
            st.login(oidc["provider"])
        except (StreamlitAuthError, StreamlitMissingAuthlibError) as exc:  # they say what to fix
            st.error(f"Sign-in with {oidc['label']} is not set up right: {exc}")
    st.caption("or with a username and password:")


if __name__ == "__main__":  # run as a page by st.navigation: draw it from the imported module
    from ui.signin import render as _render

    _render()
