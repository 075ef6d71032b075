"""Accounts: roles, salted scrypt password hashes, throttled sign-in with lockout, and the permission table.

Passwords are hashed with hashlib.scrypt (a standard memory-hard KDF) and a random 16-byte salt;
the hash string carries its parameters (`scrypt$n=16384,r=8,p=1$SALT$HASH`, base64) so they can
be raised later without breaking old accounts.

Sign-in throttling. Every failed sign-in counts against the name tried and against the client address, in the
signin_failures table (SQL counts per subject, so failures on other names never reset anyone's count). A name is
stored there only as a keyed hash (HMAC with a random per-project key), whether or not it is an account, so unknown
names are throttled, locked and timed exactly like known ones, and a password typed into the name box is never
kept. Each failure doubles the wait before the next attempt on that name (0.5 s, 1 s, 2 s ... capped); an address
gets `lockout_failures` failures a quarter of an hour free (a shared hospital NAT), then the same doubling.
`lockout_failures` failures on a name lock it for `lockout_s` after the last one (0: until `cxr-al user unlock`);
a right password clears the name's count. Attempts on one name or address wait for each other (striped in-process
locks), so parallel guesses are throttled together, and at most MAX_CONCURRENT_VERIFICATIONS scrypt checks run at
once. The event log names the account only when it exists; otherwise it keeps the keyed hash.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import math
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from typing import Any, TextIO

import pandas as pd

from active.engine.labeling import validate_annotator
from store.config import access_policy
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

# Throttling (see the module docstring); the lockout threshold and time are project settings (store.config.AccessPolicy).
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
WAIT_IN_LINE_S = 5.0  # an attempt waits at most this long for its turn; a longer wait is refused with "try again in"
ADDRESS_WINDOW = timedelta(minutes=15)
MAX_CONCURRENT_VERIFICATIONS = 2  # scrypt checks at once (16 MiB and a core each); more wait for a slot
VERIFY_SLOT_TIMEOUT_S = 20.0
NAME_KEY = "signin-names"  # ProjectDB.secret name of the key that hashes names tried
LOCAL_ADDRESS = "local"  # what Streamlit reports as no address: this machine

_VERIFY_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_VERIFICATIONS)
_NAME_KEYS: dict[str, bytes] = {}  # database path -> its name key
# Striped locks: attempts on one subject always share a stripe (and wait for each other); memory stays bounded
# however many names are sprayed.
_SUBJECT_LOCKS = tuple(threading.Lock() for _ in range(64))


class SignInRefused(CxrAlError):
    """A sign-in refused without a verdict on the password: locked, too many recent failures, a disabled
    account, or the server busy. The message says what to do."""


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
    event log); returns {name, role}. A new password ends the account's sign-in sessions; a role change alone
    takes effect on their next page (every page reads the current role)."""
    name = validate_annotator(name)
    role = validate_role(role)
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise CxrAlError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    existing = project.db.annotator(name)
    if existing is not None and existing.get("role") == "system":
        raise CxrAlError(f"{name!r} is a system account; choose another name")
    changed = existing is None or not verify_password(password, existing.get("password_hash"))
    project.db.upsert_annotator(name, role, hash_password(password), actor=actor, password_changed=changed)
    return {"name": name, "role": role}


def list_users(project: Project) -> pd.DataFrame:
    """The sign-in accounts (name, role, created_at, disabled, locked), without system accounts and hashes."""
    users = project.db.annotators()
    users = users[users["role"].isin(ROLES)].reset_index(drop=True)
    locked = locked_names(project, list(users["name"]))
    users["disabled"] = users.pop("disabled_at").notna()
    users["locked"] = users["name"].isin(locked)
    return users


def backoff(failures: int) -> float:
    """Seconds to wait after the last failure before the next attempt, after this many failures (0 for none)."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(failures - 1, 32))


def name_hash(project: Project, name: str) -> str:
    """A keyed hash of a name tried at sign-in: how a name is throttled and logged without being stored."""
    path = str(project.db.path.resolve())
    key = _NAME_KEYS.get(path)
    if key is None:  # a project's key never changes once made: read once per process
        key = _NAME_KEYS[path] = project.db.secret(NAME_KEY)
    return hmac.new(key, name.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def name_subject(project: Project, name: str) -> str:
    return f"name:{name_hash(project, name)}"


def address_subject(address: str | None) -> str:
    return f"address:{address or LOCAL_ADDRESS}"


def throttle_state(project: Project, name: str, address: str | None = None,
                   now: datetime | None = None) -> dict[str, Any]:
    """Where a name and an address stand: failures counted, whether the name is locked (and until when; None for
    'until unlocked') and how many seconds the next attempt must wait."""
    policy = access_policy(project.config)
    now = now or utcnow()
    subject, where = name_subject(project, name), address_subject(address)
    counts = project.db.signin_failures({subject: None, where: now - ADDRESS_WINDOW})
    (n_name, last_name), (n_address, last_address) = counts[subject], counts[where]
    locked, locked_until = _lock(n_name, last_name, policy, now)
    ready = [last + timedelta(seconds=backoff(n)) for n, last in
             ((n_name, last_name), (n_address - policy["lockout_failures"], last_address)) if last is not None]
    wait = max([(t - now).total_seconds() for t in ready] + [0.0])
    return {"failures": n_name, "address_failures": n_address, "locked": locked,
            "locked_until": locked_until if locked else None, "wait_s": wait}


def _lock(failures: int, last: datetime | None, policy: dict[str, int], now: datetime) -> tuple[bool, datetime | None]:
    """Whether a name with these failures is locked, and until when (None: until an admin unlocks it)."""
    if failures < policy["lockout_failures"]:
        return False, None
    if policy["lockout_s"] == 0:
        return True, None
    until = last + timedelta(seconds=policy["lockout_s"])
    return until > now, until


def locked_names(project: Project, names: list[str]) -> set[str]:
    """Which of these names are locked now (too many failed sign-ins), in one query."""
    policy, now = access_policy(project.config), utcnow()
    subjects = {name_subject(project, n): n for n in names}
    counts = project.db.signin_failures(dict.fromkeys(subjects))
    return {name for subject, name in subjects.items() if _lock(*counts[subject], policy, now)[0]}


def unlock_user(project: Project, name: str, actor: str | None = None) -> int:
    """Clear a name's failed sign-ins (an admin's unlock); returns how many there were."""
    name = (name or "").strip()
    n = project.db.clear_signin_failures(name_subject(project, name))
    project.db.log_event("account_unlocked", actor, name=name, failures=n)
    return n


def set_disabled(project: Project, name: str, disabled: bool, actor: str | None = None) -> None:
    """Disable an account (its sessions end at once and it cannot sign in) or enable it again."""
    name = validate_annotator(name)
    account = project.db.annotator(name)
    if account is None or account.get("role") not in ROLES:
        raise CxrAlError(f"no account {name!r}; see `cxr-al user list`")
    project.db.set_annotator_disabled(name, disabled, actor=actor)


@contextmanager
def _one_at_a_time(subjects: list[str]) -> Iterator[None]:
    """Hold the locks of these subjects (in a fixed order, so two attempts never wait on each other in a circle)."""
    stripes = sorted({zlib.crc32(s.encode("utf-8")) % len(_SUBJECT_LOCKS) for s in subjects})
    with ExitStack() as stack:
        for k in stripes:  # a bounded wait: attempts queued behind a guesser's are refused, not stalled for ever
            if not _SUBJECT_LOCKS[k].acquire(timeout=WAIT_IN_LINE_S):
                raise SignInRefused("other sign-ins from this name or address are being checked; try again in a "
                                    "moment")
            stack.callback(_SUBJECT_LOCKS[k].release)
        yield


@contextmanager
def _verification_slot() -> Iterator[None]:
    if not _VERIFY_SLOTS.acquire(timeout=VERIFY_SLOT_TIMEOUT_S):
        raise SignInRefused("the server is busy checking other sign-ins; try again in a moment")
    try:
        yield
    finally:
        _VERIFY_SLOTS.release()


def _wait_text(seconds: float) -> str:
    return f"{math.ceil(seconds)} s" if seconds < 120 else f"{math.ceil(seconds / 60)} min"


def authenticate(project: Project, name: str, password: str, *, address: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, Any] | None:
    """The account {name, role} when the password is right, else None (the failure is counted and logged).

    Raises SignInRefused, without checking the password, while the name is locked or its next attempt is more
    than WAIT_IN_LINE_S away; shorter waits are slept (attempts on one name queue for their turn, at most
    WAIT_IN_LINE_S). A disabled account signs in with no password (the answer is None, as for a wrong one).
    address: the client's (st.context.ip_address)."""
    name = (name or "").strip()[:256]
    if not name:
        return None
    policy = access_policy(project.config)
    subjects = [name_subject(project, name), address_subject(address)]
    # attempts on one name wait for each other (parallel guesses are throttled together); attempts from one address
    # only count against it: colleagues behind one NAT signing in at once must not queue behind each other
    with _one_at_a_time(subjects[:1]):
        state = throttle_state(project, name, address)
        if state["locked"]:
            until = ("until an admin unlocks it (`cxr-al user unlock`)" if state["locked_until"] is None else
                     f"for {_wait_text((state['locked_until'] - utcnow()).total_seconds())}, or until an admin "
                     "unlocks it")
            raise SignInRefused(f"too many failed sign-ins for this name: it is locked {until}")
        if state["wait_s"] > WAIT_IN_LINE_S:
            raise SignInRefused(f"too many failed sign-ins: try again in {_wait_text(state['wait_s'])}")
        if state["wait_s"] > 0:
            sleep(state["wait_s"])
        account = project.db.annotator(name)
        # a disabled account is checked like an unknown one (same time, same answer): a right password of a
        # disabled account tells a guesser nothing
        real = (account is not None and account.get("role") in ROLES and bool(account.get("password_hash"))
                and account.get("disabled_at") is None)
        with _verification_slot():
            if real:
                right = verify_password(password or "", account["password_hash"])
            else:  # the same time as a real check
                _scrypt(password or "", b"\0" * SALT_BYTES, SCRYPT_N, SCRYPT_R, SCRYPT_P)
                right = False
        if not right:
            project.db.record_signin_failure(
                subjects, name if account is not None else None, name_hash=subjects[0].split(":", 1)[1][:16],
                reason="wrong password" if real else "no such account", address=address or LOCAL_ADDRESS)
            if state["failures"] + 1 == policy["lockout_failures"]:
                project.db.log_event("signin_locked", name if account is not None else None,
                                     name_hash=subjects[0].split(":", 1)[1][:16], address=address or LOCAL_ADDRESS)
            return None
        project.db.clear_signin_failures(subjects[0])
        project.db.log_event("signin", name, role=account["role"], address=address or LOCAL_ADDRESS)
        return {"name": name, "role": account["role"]}


# Sign-in through OpenID Connect (README "Sign-in through OpenID Connect"). Streamlit's st.login leaves the
# provider's identity in a signed cookie that lives 30 days and comes with every new page; CXR-AL takes it once (in
# this process, and per the project's sign-in events), to start a session of its own like a right password does,
# and only while it is fresh (its ID token issued moments ago). So sign-out, revocation, expiry and roles all stay
# with that session, and the identity cookie left in the browser never signs anyone in again (Streamlit's st.logout
# would clear it, but also sign the user out of the provider).
OIDC_FRESH_S = 300.0  # an identity whose ID token is older than this opens nothing
RECENT_SIGNINS = 1000  # sign-in events searched for an identity taken before this process started
_USED_IDENTITIES: dict[str, float] = {}  # identities taken in this process (hashed) -> when (time.time())
_USED_LOCK = threading.Lock()


def _take_identity(project: Project, claims: Mapping[str, Any], now: float) -> str | None:
    """The identity's hash the first time a fresh identity is seen (in this process, and in the sign-in events of
    the project, which outlive a restart); None when it is stale or was taken already."""
    issued = claims.get("iat")
    if isinstance(issued, bool) or not isinstance(issued, int | float) or not -60 <= now - issued <= OIDC_FRESH_S:
        return None
    key = hashlib.sha256(json.dumps([claims.get(k) for k in ("iss", "sub", "aud", "nonce", "iat")],
                                    default=str).encode("utf-8")).hexdigest()[:32]
    with _USED_LOCK:
        for old in [k for k, when in _USED_IDENTITIES.items() if now - when > 2 * OIDC_FRESH_S]:
            del _USED_IDENTITIES[old]
        if key in _USED_IDENTITIES:
            return None
        _USED_IDENTITIES[key] = now
    signins = project.db.events("signin", limit=RECENT_SIGNINS)["payload"]
    taken = any(json.loads(payload).get("identity") == key for payload in signins if isinstance(payload, str))
    return None if taken else key


def _account_named(project: Project, name: str) -> dict[str, Any] | None:
    """The sign-in account of this name, else the one whose name differs only in case (when just one does)."""
    account = project.db.annotator(name)
    if account is None:
        users = project.db.annotators()
        same = users[users["name"].str.lower() == name.lower()]["name"].tolist()
        account = project.db.annotator(same[0]) if len(same) == 1 else None
    return account if account is not None and account.get("role") in ROLES else None


def oidc_account(project: Project, claims: Mapping[str, Any], *, provider: str, claim: str = "email",
                 address: str | None = None, now: float | None = None) -> dict[str, Any] | None:
    """The account {name, role} an identity from the project's OpenID Connect provider signs in as: the one named
    by the identity's `claim` (st.user's claims). None when the identity is another provider's, stale, or was
    taken already (the sign-in page then just shows itself). SignInRefused, logged like a failed sign-in (the
    keyed hash of the value, never the value), when no enabled account has that name."""
    if claims.get("provider") != provider or not claims.get("is_logged_in"):
        return None
    taken = _take_identity(project, claims, time.time() if now is None else now)
    if taken is None:
        return None
    value = claims.get(claim)
    name = value.strip()[:256] if isinstance(value, str) else ""
    account = _account_named(project, name) if name else None
    if account is None or account.get("disabled_at") is not None:
        project.db.log_event("signin_failed", None if account is None else account["name"],
                             name_hash=name_hash(project, name)[:16], address=address or LOCAL_ADDRESS,
                             reason=f"{provider} identity: " + ("no such account" if account is None else "disabled"))
        if account is None:
            shown = repr(name) if name else f"(your identity has no {claim!r})"
            raise SignInRefused(f"no account here matches your {provider} sign-in {shown}; ask an admin to add one")
        raise SignInRefused("this account is disabled; ask an admin to enable it")
    project.db.log_event("signin", account["name"], role=account["role"], address=address or LOCAL_ADDRESS,
                         provider=provider, identity=taken)
    return {"name": account["name"], "role": account["role"]}


def failed_signins(project: Project, limit: int = 50) -> pd.DataFrame:
    """The latest failed sign-ins (when, name, address, reason): the account's name when it exists, else the keyed
    hash of the name tried (a password typed into the name box is never shown)."""
    events = project.db.events("signin_failed", limit=limit)
    rows = []
    for event in events.itertuples(index=False):
        payload = json.loads(event.payload) if isinstance(event.payload, str) and event.payload else {}
        name = event.actor if isinstance(event.actor, str) else f"(no account) #{payload.get('name_hash', '?')}"
        rows.append({"when (UTC)": event.logged_at, "name": name, "address": payload.get("address"),
                     "reason": payload.get("reason")})
    return pd.DataFrame(rows, columns=["when (UTC)", "name", "address", "reason"])


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
