"""Accounts: roles, salted scrypt password hashes, sign-in with throttling, and the permission table.

Passwords are hashed with hashlib.scrypt (a standard memory-hard KDF) and a random 16-byte salt;
the hash string carries its parameters (`scrypt$n=16384,r=8,p=1$SALT$HASH`, base64) so they can
be raised later without breaking old accounts. Every failed sign-in goes to the event log, and
repeated failures for a name slow the next attempts down (capped at a few seconds).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TextIO

import pandas as pd

from active.engine.labeling import validate_annotator
from store.db import utcnow
from store.errors import CxrAlError
from store.project import Project

ROLES = ("annotator", "lead", "admin")
MIN_PASSWORD_LENGTH = 8

# What each role may do. Annotators label and review their own work; leads also see dashboards,
# configure rounds, trigger training and export; admins also manage accounts.
ANNOTATOR_ACTIONS = frozenset({"label", "review_own"})
LEAD_ACTIONS = ANNOTATOR_ACTIONS | {"dashboard", "configure_rounds", "train", "export"}
ADMIN_ACTIONS = LEAD_ACTIONS | {"manage_accounts"}
PERMISSIONS: dict[str, frozenset[str]] = {"annotator": ANNOTATOR_ACTIONS, "lead": frozenset(LEAD_ACTIONS),
                                          "admin": frozenset(ADMIN_ACTIONS)}
ACTIONS = frozenset(ADMIN_ACTIONS)

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and ~50 ms per hash: cheap for us, dear for a guesser
SALT_BYTES = 16

# Throttling: recent failures for a name (since its last successful sign-in) delay the next attempt.
FAILURE_WINDOW = timedelta(minutes=15)
FAILURE_BASE_DELAY_S = 0.5
FAILURE_MAX_DELAY_S = 3.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32,
                          maxmem=256 * n * r + (1 << 20))


def hash_password(password: str) -> str:
    """A salted scrypt hash string that records its own parameters."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when the password matches the stored hash (constant-time compare); False for any malformed hash."""
    if not stored:
        return False
    try:
        scheme, params, salt_b64, digest_b64 = stored.split("$")
        values = dict(item.split("=", 1) for item in params.split(","))
        n, r, p = int(values["n"]), int(values["r"]), int(values["p"])
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
    except (ValueError, KeyError):
        return False
    if scheme != "scrypt" or not (1 < n <= 2**20 and 0 < r <= 64 and 0 < p <= 16):
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), expected)


def validate_role(role: str) -> str:
    """The role, checked against ROLES."""
    if role not in ROLES:
        raise CxrAlError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    return role


def can(role: str | None, action: str) -> bool:
    """Whether a role may do an action (label, review_own, dashboard, configure_rounds, train, export,
    manage_accounts); unknown roles may do nothing."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; known actions: {sorted(ACTIONS)}")
    return action in PERMISSIONS.get(role or "", frozenset())


def add_user(project: Project, name: str, role: str, password: str, actor: str | None = None) -> dict[str, str]:
    """Create an account, or change the role and password of an existing one (`actor`: who did it, for the
    event log); returns {name, role}."""
    name = validate_annotator(name)
    role = validate_role(role)
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise CxrAlError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    existing = project.db.annotator(name)
    if existing is not None and existing.get("role") == "system":
        raise CxrAlError(f"{name!r} is a system account; choose another name")
    project.db.upsert_annotator(name, role, hash_password(password), actor=actor)
    return {"name": name, "role": role}


def list_users(project: Project) -> pd.DataFrame:
    """The sign-in accounts (name, role, created_at), without system accounts and without hashes."""
    users = project.db.annotators()
    return users[users["role"].isin(ROLES)].reset_index(drop=True)


def recent_failures(project: Project, name: str) -> int:
    """Failed sign-ins for a name within FAILURE_WINDOW and since its last successful sign-in."""
    since = utcnow() - FAILURE_WINDOW
    failed = project.db.events("signin_failed", limit=500)
    failed = failed[(failed["actor"] == name) & (failed["logged_at"] >= since)]
    if failed.empty:
        return 0
    ok = project.db.events("signin", limit=500)
    ok = ok[ok["actor"] == name]
    if not ok.empty:
        failed = failed[failed["id"] > ok["id"].max()]
    return int(len(failed))


def failure_delay(failures: int) -> float:
    """Seconds to wait before checking a password after this many recent failures (0 for none)."""
    if failures <= 0:
        return 0.0
    return min(FAILURE_MAX_DELAY_S, FAILURE_BASE_DELAY_S * 2 ** (failures - 1))


def authenticate(project: Project, name: str, password: str, *,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, Any] | None:
    """The account {name, role} when the password is right, else None; failures are logged and throttled."""
    name = (name or "").strip()
    if not name or len(name) > 64:
        project.db.log_event("signin_failed", name[:64] or None, reason="no or too long name")
        return None
    sleep(failure_delay(recent_failures(project, name)))
    account = project.db.annotator(name)
    if account is None or account.get("role") not in ROLES or not account.get("password_hash"):
        _scrypt(password or "", b"\0" * SALT_BYTES, SCRYPT_N, SCRYPT_R, SCRYPT_P)  # same time as a real check
        project.db.log_event("signin_failed", name, reason="unknown account")
        return None
    if not verify_password(password or "", account["password_hash"]):
        project.db.log_event("signin_failed", name, reason="wrong password")
        return None
    project.db.log_event("signin", name, role=account["role"])
    return {"name": name, "role": account["role"]}


def read_password(*, from_stdin: bool, stdin: TextIO | None = None) -> str:
    """A new password: the first line of stdin (works without a TTY), or typed twice at a getpass prompt."""
    if from_stdin:
        line = (stdin or sys.stdin).readline()
        password = line.rstrip("\r\n")
        if not password:
            raise CxrAlError("no password on stdin (pipe it in, e.g. `printf '%s\\n' \"$PW\" | cxr-al user add ...`)")
        return password
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Repeat password: ")
    if first != second:
        raise CxrAlError("the passwords do not match")
    return first
