"""Signing an AppTest in: AppTest has no browser and no cookies, so ui.session reads the session token from here
(the autouse fixture in conftest.py points ui.session.browser_token at it). The session itself is real."""

from __future__ import annotations

import os

TOKEN: dict[str, str | None] = {"token": None}


def sign_in_apptest(name: str) -> str:
    """Start a real sign-in session for an account of the served project (CXR_AL_PROJECT) and present its token
    as this test's browser cookie; returns the token."""
    from active.delivery.serve import PROJECT_ENV
    from active.views.sessions import start_session
    from store.project import open_project

    TOKEN["token"] = start_session(open_project(os.environ[PROJECT_ENV]), name)
    return TOKEN["token"]


def present_cookie(token: str | None) -> None:
    """What the browser sends from now on (None: no cookie)."""
    TOKEN["token"] = token
