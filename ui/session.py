"""The signed-in state of one browser and the project the app serves.

Who is signed in is decided on every page run from the browser's session cookie, never from st.session_state:
st.context.cookies holds the cookies of the HTTP request that opened this run's websocket, so a client that
reconnects with a stolen Streamlit session id but without the cookie is not signed in, whatever that Streamlit
session's state holds. After a right password the server hands the browser an HttpOnly cookie through a one-time ticket
(ui/handoff.py; SameSite=Strict, Secure over HTTPS), then the page reloads so the new websocket carries it; a
reload keeps you signed in. See
active.views.sessions for the server-side record and README "Access and sessions".
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from active.delivery.serve import PROJECT_ENV
from active.engine.labeling import SIGNIN_SESSION
from active.engine.project import open_project
from active.views import sessions
from active.views.accounts import can
from store.config import access_policy
from store.errors import CxrAlError
from store.project import Project
from ui import handoff

CHECKED_KEY = "_cxr_checked"  # this run's verdict on the cookie (re-decided every run)
ENDED_KEY = "_cxr_session_ended"  # why the last session ended, for the sign-in page
PENDING_KEY = "_cxr_cookie_to_set"  # a new session's token, for the run that gives it to the browser
ENDED_PARAM = "ended"  # ?ended=REASON: why the session ended, carried through handoff.FORGET_PATH
SECURE_JS = '(window.location.protocol === "https:" ? "&secure=1" : "")'  # handoff routes: the address is HTTPS
FORGOTTEN_KEY = "_cxr_forgotten"  # the ended session whose state was dropped (the browser may still send its cookie)


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


def browser_token(served: Project) -> str | None:
    """The session token this browser sent with the request that opened this connection."""
    return st.context.cookies.get(sessions.cookie_name(served))


def client_address() -> str | None:
    """The client's address (None on this machine, and without a client: AppTest)."""
    address = st.context.ip_address
    return address if isinstance(address, str) else None


def current_user(touch: bool = True) -> dict[str, Any] | None:
    """The signed-in account {name, role, session} of this browser, checked against its server-side session once
    per page run (a role change, revocation or expiry shows on the next run); None when not signed in. touch: the
    run is the user's doing, so it counts as activity (a timer's run does not: an open tab never keeps a session
    from idling out)."""
    ctx = get_script_run_ctx()
    run = ctx.cursors if ctx is not None else None  # a new dict every run: identity marks this run
    checked = st.session_state.get(CHECKED_KEY)
    if run is not None and checked is not None and checked[0] is run:
        return checked[1]
    served = project()
    token = browser_token(served)
    user, reason = sessions.session_user(served, token, touch=touch)
    if user is None and reason is not None and st.session_state.get(FORGOTTEN_KEY) != token:
        _forget(reason, token)  # once: later runs of this connection still send the dead cookie
    st.session_state[CHECKED_KEY] = (run, user)
    SIGNIN_SESSION.set(None if user is None else user["session"])
    return user


def _forget(reason: str | None, token: str | None) -> None:
    """Drop everything this browser session held (its sign-in ended) and say why on the sign-in page."""
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    st.session_state[FORGOTTEN_KEY] = token
    if reason not in (None, "unknown"):
        st.session_state[ENDED_KEY] = reason


def end_message() -> str | None:
    """Why this browser's last session ended (shown once on the sign-in page): from this connection's state, or
    from the address the cookie's removal came back to (clear_cookie)."""
    reason = st.session_state.pop(ENDED_KEY, None)
    if ENDED_PARAM in st.query_params:
        reason = reason or st.query_params[ENDED_PARAM]
        del st.query_params[ENDED_PARAM]
        if reason not in sessions.END_REASONS:  # only the fixed sentences: the address is anyone's to write
            return None
    return None if reason is None else sessions.END_REASONS.get(reason, f"Your session ended ({reason}).")


def sign_in(user: dict[str, str]) -> None:
    """Start a server-side session for the account and rerun: the next run hands its token to the browser as a
    cookie (deliver_cookie). Nothing of an earlier sign-in in this browser carries over."""
    served = project()
    old = browser_token(served)
    sessions.end_session(served, old, reason="signed in again")
    _forget(None, old)
    st.session_state[PENDING_KEY] = sessions.start_session(served, user["name"], address=client_address())
    st.rerun()


def deliver_cookie() -> None:
    """After a right password: give the browser the session cookie and reload the page, so the next connection
    carries it. Ends this run; does nothing otherwise. Served by `cxr-al serve` (ui/server.py), the cookie is
    HttpOnly, set by the server through a one-time ticket (ui/handoff.py); under a bare `streamlit run app.py`
    (no such route) a script sets it, readable by scripts. Both: SameSite=Strict, Path=/, Secure over HTTPS."""
    token = st.session_state.pop(PENDING_KEY, None)
    if token is None:
        return
    served = project()
    max_age = access_policy(served.config)["session_max_s"]
    name = sessions.cookie_name(served)
    if handoff.mounted():
        ticket = handoff.issue(name, token, max_age, binding=st.context.cookies.get(handoff.BINDING_COOKIE))
        script = f"""window.location.replace({json.dumps(handoff.HANDOFF_PATH)} + "?ticket=" +
            {json.dumps(ticket)} + "&next=" + encodeURIComponent(window.location.pathname) + {SECURE_JS});"""
    else:
        cookie = f"{name}={token}; Path=/; SameSite=Strict; Max-Age={max_age}"
        script = f"""document.cookie = {json.dumps(cookie)} +
            (window.location.protocol === "https:" ? "; Secure" : "");
            window.location.reload();"""
    st.html(f"<script>{script}</script>", unsafe_allow_javascript=True)
    st.info("Signing in ...")
    st.stop()


def sign_out() -> None:
    """End this browser's session on the server (its claimed images return to the queue) and forget its state."""
    served = project()
    token = browser_token(served)
    sessions.end_session(served, token)
    _forget("signed out", token)


def clear_cookie() -> None:
    """Remove a session cookie the browser still sends although its session is over (tidiness: it opens nothing).
    An HttpOnly cookie only the server can remove: the page goes through handoff.FORGET_PATH and comes back, the
    reason the session ended kept in the address for the sign-in page."""
    served = project()
    if browser_token(served) is None:
        return
    if handoff.mounted():
        if ENDED_PARAM in st.query_params:
            return  # back from handoff.FORGET_PATH already: never a loop of redirects
        back = f"{ENDED_PARAM}={st.session_state.get(ENDED_KEY) or 'unknown'}"
        script = f"""window.location.replace({json.dumps(handoff.FORGET_PATH)} + "?name=" +
            {json.dumps(sessions.cookie_name(served))} + "&next=" +
            encodeURIComponent(window.location.pathname + "?" + {json.dumps(back)}) + {SECURE_JS});"""
    else:
        script = f"document.cookie = {json.dumps(sessions.cookie_name(served) + '=; Path=/; SameSite=Strict; Max-Age=0')};"
    st.html(f"<script>{script}</script>", unsafe_allow_javascript=True)


def allowed(action: str, session_key: str | None = None) -> bool:
    """For widget callbacks: Streamlit runs them before the page and its fragments, so before require(). Whether
    this connection's own cookie is a live session that may do action (and, given session_key, is that session:
    the one a labeling session belongs to). A client that took over a Streamlit session id without the cookie
    can press no button."""
    user = current_user()
    return user is not None and can(user["role"], action) and (session_key is None or user["session"] == session_key)


def require(action: str, touch: bool = True) -> dict[str, Any]:
    """The signed-in account when it may do action; otherwise the page stops with a message. Every page calls it
    first: it checks the session (once per run) and binds this run's labeling claims to it. touch: as in
    current_user."""
    user = current_user(touch)
    if user is None:
        st.warning("Please sign in.")
        st.stop()
    if not can(user["role"], action):
        st.error("Your account may not open this page.")
        st.stop()
    return user


def fragment(action: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """st.fragment(**options) whose every run first checks the session like require(action). A fragment's own
    reruns (a key press in it, run_every) skip app.py and the page's require(), so a plain @st.fragment keeps
    working for a session that is over, and for a client that reconnected with only a Streamlit session id.
    The runs of a fragment with run_every are a timer's, not the user's: they do not count as activity."""
    touch = options.get("run_every") is None

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def checked(*args: Any, **kwargs: Any) -> Any:
            require(action, touch)
            return func(*args, **kwargs)

        return st.fragment(checked, **options)

    return decorate
