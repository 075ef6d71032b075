"""The signed-in state of one browser session and the project the app serves."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

from active.delivery.serve import PROJECT_ENV
from active.engine.project import open_project
from active.views.accounts import can
from store.errors import CxrAlError
from store.project import Project

USER_KEY = "cxr_user"


def project_dir() -> Path:
    """The project folder: `streamlit run app.py -- --project DIR`, else the CXR_AL_PROJECT variable."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--project", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:])
    chosen = args.project or os.environ.get(PROJECT_ENV)
    if not chosen:
        raise CxrAlError("no project given: run `cxr-al serve PROJECT_DIR` "
                         f"(or `streamlit run app.py -- --project DIR`, or set {PROJECT_ENV})")
    return Path(chosen)


def load_project() -> Project:
    """Open the served project (re-read every run, so project.yaml edits show up)."""
    return open_project(project_dir())


def project() -> Project:
    """The served project; stops the page with the error when it cannot be opened."""
    try:
        return load_project()
    except CxrAlError as exc:
        st.error(f"CXR-AL cannot open its project: {exc}")
        st.stop()
        raise  # unreachable: st.stop() ends the run


def current_user() -> dict[str, str] | None:
    """The signed-in account {name, role} of this browser session, or None."""
    return st.session_state.get(USER_KEY)


def sign_in(user: dict[str, str]) -> None:
    """Remember the account for this browser session (server-side state; nothing in the browser)."""
    sign_out()  # nothing of an earlier session carries over
    st.session_state[USER_KEY] = {"name": user["name"], "role": user["role"]}


def sign_out() -> None:
    """Forget everything of this browser session: the account and any labeling state."""
    for key in list(st.session_state.keys()):
        del st.session_state[key]


def require(action: str) -> dict[str, str]:
    """The signed-in account when it may do action; otherwise the page stops with a message."""
    user = current_user()
    if user is None:
        st.warning("Please sign in.")
        st.stop()
    if not can(user["role"], action):
        st.error("Your account may not open this page.")
        st.stop()
    return user
