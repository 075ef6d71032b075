"""Sign-in sessions: a server-side record per sign-in, bound to a secret token the browser keeps.

A right password starts a session: a random 256-bit token goes to the browser (as a cookie, see ui/session.py)
and only its SHA-256 is stored (a random token needs no key or salt: the hash cannot be reversed or guessed).
Every page run looks the session up by the hash of the cookie it arrived with, in one indexed read, and gets the
account's current role: a role change shows on the next page; a password change, a disabled account, sign-out,
`cxr-al user sign-out-all`, the idle limit and the absolute expiry (project.yaml `access`) end it. A session that
ends hands its claimed images back to the queue (store.db: claims carry the session that made them).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import timedelta
from typing import Any

import pandas as pd

from active.views.accounts import ROLES
from store.config import access_policy
from store.db import utcnow
from store.project import Project

TOKEN_BYTES = 32
RECHECK_S = 30.0  # a live session checked in this process is read again after this long, or when access changes
TOUCH_EVERY_S = 60.0  # a session's idle limit restarts at most this often (a write), or every quarter of the limit
COOKIE_PREFIX = "cxr_al_session_"

# Why a session ended, as a sentence for the sign-in page.
END_REASONS = {
    "signed out": "You signed out.",
    "idle": "Your session timed out after a while without activity; please sign in again.",
    "expired": "Your session reached its time limit; please sign in again.",
    "password changed": "Your password was changed; please sign in with the new one.",
    "account disabled": "Your account was disabled.",
    "account removed": "Your account was removed.",
    "signed out by an admin": "An admin signed you out; please sign in again.",
    "signed in again": "You signed in again elsewhere in this browser.",
}


def token_hash(token: str) -> str:
    """What the database keeps of a session token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def cookie_name(project: Project) -> str:
    """The session cookie's name: one per project folder, so two projects served from one host (different ports
    share cookies) never overwrite each other's sign-in."""
    return COOKIE_PREFIX + hashlib.sha256(str(project.root.resolve()).encode("utf-8")).hexdigest()[:12]


def start_session(project: Project, name: str, *, address: str | None = None) -> str:
    """Record a sign-in session for an account; returns the token for the browser (never stored)."""
    policy = access_policy(project.config)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    project.db.start_session(token_hash(token), name, idle_s=policy["session_idle_s"],
                             max_s=policy["session_max_s"], client=address)
    return token


# Live sessions this process checked lately: (database, token hash) -> (access stamp, when, row). Every page run
# and fragment run checks its session; with several annotators labeling that was a database connection per key
# press. A kept row is used while the project's access stamp (store.db: bumped after any change to accounts or
# sessions, in any process) is unchanged, for at most RECHECK_S, and only while its own expiry times say it is
# live; anything else reads the database again, so a revocation still shows on the next run.
_CHECKED: dict[tuple[str, str], tuple[int, float, dict[str, Any]]] = {}
_CHECKED_LOCK = threading.Lock()


def _session_row(project: Project, key: str) -> dict[str, Any] | None:
    """The session's row (as ProjectDB.session), from this process's recent checks when nothing changed since."""
    cache_key = (str(project.db.path), key)
    stamp = project.db.access_stamp()  # before the read: a change committed after it shows on the next check
    with _CHECKED_LOCK:
        hit = _CHECKED.get(cache_key)
    now = utcnow()
    if (hit is not None and hit[0] == stamp and time.monotonic() - hit[1] < RECHECK_S
            and hit[2]["expires_at"] > now and hit[2]["idle_expires_at"] > now):
        return hit[2]
    row = project.db.session(key)
    with _CHECKED_LOCK:
        if row is not None and row["end_reason"] is None:
            _CHECKED[cache_key] = (stamp, time.monotonic(), row)
        else:
            _CHECKED.pop(cache_key, None)
        if len(_CHECKED) > 4096:  # sessions gone quiet: keep the dictionary small
            old = [k for k, (_, when, _) in _CHECKED.items() if time.monotonic() - when >= RECHECK_S]
            for k in old:
                del _CHECKED[k]
    return row


def _remember_touch(project: Project, key: str, row: dict[str, Any]) -> None:
    now = utcnow()
    touched = {**row, "last_seen": now, "idle_expires_at": now + timedelta(seconds=int(row["idle_s"]))}
    with _CHECKED_LOCK:
        hit = _CHECKED.get((str(project.db.path), key))
        if hit is not None:
            _CHECKED[(str(project.db.path), key)] = (hit[0], hit[1], touched)


def session_user(project: Project, token: str | None, *, touch: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """(account, None) for a live session's token: {name, role, session (the token's hash)}; (None, why) when the
    token is unknown or its session is over (then it is ended here, and its claims return to the queue). touch:
    this counts as activity (the idle limit starts again, written at most every TOUCH_EVERY_S)."""
    if not token:
        return None, None
    key = token_hash(token)
    row = _session_row(project, key)
    if row is None:
        return None, "unknown"
    reason = row["end_reason"]
    if reason is None and row["role"] not in ROLES:
        reason = "account removed"
    if reason is not None:
        if row["ended_at"] is None:
            project.db.end_sessions(reason, token_hash=key)
        return None, reason
    if touch and (utcnow() - row["last_seen"]).total_seconds() >= min(TOUCH_EVERY_S, row["idle_s"] / 4):
        project.db.touch_session(key)
        _remember_touch(project, key, row)
    return {"name": row["annotator"], "role": row["role"], "session": key}, None


def end_session(project: Project, token: str | None, reason: str = "signed out") -> None:
    """End the session of this token (sign-out); its claims return to the queue."""
    if token:
        project.db.end_sessions(reason, token_hash=token_hash(token))


def sign_out_all(project: Project, name: str | None = None, actor: str | None = None) -> int:
    """End every live session (or an account's): each is signed out on its next page. Returns how many."""
    return project.db.end_sessions("signed out by an admin", annotator=name, actor=actor or "cli")


def live_sessions(project: Project) -> pd.DataFrame:
    """The live sessions (annotator, role, created_at, last_seen, idle_until, expires_at, client), newest first."""
    return project.db.sessions()
