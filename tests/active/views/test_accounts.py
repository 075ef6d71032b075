"""Accounts: scrypt hashes, roles, permissions, throttled, locked and logged failed sign-ins, `cxr-al user`."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from active.views import accounts
from active.views.accounts import (
    SignInRefused,
    add_user,
    authenticate,
    backoff,
    can,
    failed_signins,
    hash_password,
    list_users,
    set_disabled,
    throttle_state,
    unlock_user,
    verify_password,
)
from store.config import access_policy
from store.errors import CxrAlError
from store.project import init_project


@pytest.fixture
def project(tmp_path):
    return init_project(tmp_path / "p", ["Normal", "COVID-19"])


def test_hash_is_salted_self_describing_and_verifies():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second  # a fresh salt each time
    assert first.startswith("scrypt$n=16384,r=8,p=1$") and "correct horse" not in first
    assert verify_password("correct horse", first) and verify_password("correct horse", second)
    assert not verify_password("correct hors", first)
    for broken in (None, "", "md5$x$y$z", "scrypt$n=2,r=8$AA==$AA==", first.rsplit("$", 1)[0]):
        assert not verify_password("correct horse", broken)


def test_roles_and_permissions():
    assert can("annotator", "label") and not can("annotator", "export") and not can("annotator", "dashboard")
    assert can("lead", "export") and can("lead", "train") and not can("lead", "manage_accounts")
    assert can("admin", "manage_accounts") and can("admin", "label")
    assert not can(None, "label") and not can("system", "label")
    with pytest.raises(ValueError):
        can("admin", "fly")


def test_add_user_validates_and_never_stores_the_password(project):
    with pytest.raises(CxrAlError, match="at least 8"):
        add_user(project, "alice", "annotator", "short")
    with pytest.raises(CxrAlError, match="unknown role"):
        add_user(project, "alice", "boss", "long-enough-1")
    with pytest.raises(CxrAlError, match="not valid"):
        add_user(project, "al ice", "annotator", "long-enough-1")
    with pytest.raises(CxrAlError, match="reserved"):
        add_user(project, "import", "annotator", "long-enough-1")
    add_user(project, "alice", "annotator", "long-enough-1")
    stored = project.db.annotator("alice")["password_hash"]
    assert "long-enough-1" not in stored and verify_password("long-enough-1", stored)
    add_user(project, "alice", "lead", "another-pass-2")  # role and password change
    assert list_users(project).to_dict(orient="records")[0]["role"] == "lead"
    assert "password_hash" not in list_users(project).columns


def no_wait(_seconds: float) -> None:
    """authenticate's sleep in tests: take note of nothing, wait for nothing."""


@pytest.fixture
def patient(monkeypatch):
    """Attempts never refused for being too soon (the waits are recorded instead of slept): reaches lockout fast."""
    monkeypatch.setattr(accounts, "WAIT_IN_LINE_S", 1e9)
    waits: list[float] = []
    return waits


def test_sign_in_logs_failures_and_slows_repeated_guesses(project, patient):
    add_user(project, "alice", "annotator", "long-enough-1")
    assert authenticate(project, "alice", "long-enough-1", sleep=patient.append) == {"name": "alice",
                                                                                     "role": "annotator"}
    for n in range(1, 4):
        assert authenticate(project, "alice", "guess-guess", sleep=patient.append) is None
        assert 0 < throttle_state(project, "alice")["wait_s"] <= backoff(n)  # doubling with each failure
    assert all(0 < w <= backoff(3) for w in patient)  # waits short enough are slept, not refused
    assert backoff(0) == 0 and backoff(2) == 2 * backoff(1) and backoff(50) == accounts.BACKOFF_MAX_S
    assert authenticate(project, "", "x", sleep=patient.append) is None  # nothing to check, nothing counted
    failed = project.db.events("signin_failed")
    assert list(failed["actor"]).count("alice") == 3
    # a right password still works after failures, and clears the name's count (not the address's)
    assert authenticate(project, "alice", "long-enough-1", sleep=patient.append) is not None
    state = throttle_state(project, "alice")
    assert state["failures"] == 0 and state["address_failures"] == 3


def test_unknown_names_are_throttled_like_accounts_and_never_stored(project, patient):
    add_user(project, "alice", "annotator", "long-enough-1")
    typed = "my-Secret-pw-9"  # a password typed into the name box
    for _ in range(3):
        assert authenticate(project, typed, "whatever-1", sleep=patient.append) is None
    assert throttle_state(project, typed)["failures"] == 3
    failed = project.db.events("signin_failed")
    assert failed["actor"].isna().all()
    assert typed not in " ".join(failed["payload"]) and typed not in failed_signins(project).to_string()
    assert failed_signins(project)["name"].str.startswith("(no account) #").all()
    # the same time: an unknown name costs a full scrypt hash, like a wrong password of a real account
    times = {}
    for who in ("alice", "nobody-here"):
        start = time.perf_counter()
        for _ in range(3):
            authenticate(project, who, "wrong-pass-1", address=f"10.0.0.{len(times)}", sleep=no_wait)
        times[who] = (time.perf_counter() - start) / 3
    assert 0.5 < times["nobody-here"] / times["alice"] < 2.0, times


def test_failures_on_other_names_never_reset_a_count(project, patient):
    add_user(project, "alice", "annotator", "long-enough-1")
    for _ in range(3):
        authenticate(project, "alice", "guess-guess", address="10.1.1.1", sleep=patient.append)
    for k in range(12):  # spraying other names (and empty ones) from elsewhere
        authenticate(project, f"user{k}", "guess-guess", address=f"10.2.0.{k}", sleep=no_wait)
        authenticate(project, "", "x", sleep=no_wait)
    assert throttle_state(project, "alice", "10.1.1.1")["failures"] == 3


def test_an_address_spraying_names_is_slowed_down(project, patient):
    project.config["access"] = {"lockout_failures": 3}
    limit = access_policy(project.config)["lockout_failures"]
    for k in range(limit + 2):
        authenticate(project, f"user{k}", "guess-guess", address="10.9.9.9", sleep=no_wait)
    state = throttle_state(project, "someone-new", "10.9.9.9")
    assert state["failures"] == 0 and state["address_failures"] == limit + 2
    assert state["wait_s"] > 0  # a fresh name from that address waits: the address has used its free failures
    assert throttle_state(project, "someone-new", "10.9.9.10")["wait_s"] == 0


def test_lockout_after_n_failures_until_an_admin_unlocks(project, patient):
    add_user(project, "alice", "annotator", "long-enough-1")
    project.config["access"] = {"lockout_failures": 4, "lockout_s": 0}
    for _ in range(4):
        assert authenticate(project, "alice", "guess-guess", sleep=patient.append) is None
    with pytest.raises(SignInRefused, match="locked until an admin unlocks"):
        authenticate(project, "alice", "long-enough-1", sleep=patient.append)  # even the right password
    assert list_users(project).set_index("name").loc["alice", "locked"]
    assert (project.db.events("signin_locked")["actor"] == "alice").all()
    for _ in range(5):  # an unknown name locks the same way: a lock does not tell that an account exists
        with contextlib.suppress(SignInRefused):
            authenticate(project, "mallory", "guess-guess", sleep=patient.append)
    with pytest.raises(SignInRefused, match="locked"):
        authenticate(project, "mallory", "guess-guess", sleep=patient.append)
    assert unlock_user(project, "alice", actor="root") == 4
    assert authenticate(project, "alice", "long-enough-1", sleep=patient.append) is not None


def test_a_lock_with_a_lockout_time_ends_by_itself(project, patient):
    add_user(project, "alice", "annotator", "long-enough-1")
    project.config["access"] = {"lockout_failures": 2, "lockout_s": 1}
    for _ in range(2):
        authenticate(project, "alice", "guess-guess", sleep=patient.append)
    with pytest.raises(SignInRefused, match=r"locked for 1 s, or until an admin unlocks it"):
        authenticate(project, "alice", "long-enough-1", sleep=patient.append)
    time.sleep(1.1)
    assert authenticate(project, "alice", "long-enough-1", sleep=patient.append) is not None


def test_a_long_wait_is_refused_not_slept(project):
    add_user(project, "alice", "annotator", "long-enough-1")
    waits: list[float] = []
    refused = 0
    for _ in range(8):
        try:
            authenticate(project, "alice", "guess-guess", sleep=waits.append)
        except SignInRefused as exc:
            assert "try again in" in str(exc)
            refused += 1
    assert refused and max(waits) <= accounts.WAIT_IN_LINE_S
    assert throttle_state(project, "alice")["failures"] == 8 - refused  # a refused attempt checks no password


def test_parallel_guesses_on_one_name_wait_for_each_other(project):
    """Four guessers at once: each attempt waits for the previous one and its back-off, as if they were one."""
    add_user(project, "alice", "annotator", "long-enough-1")
    outcomes: list[str] = []

    def guess(k: int) -> None:
        try:
            outcomes.append(repr(authenticate(project, "alice", "guess-guess", address=f"10.3.0.{k}")))
        except SignInRefused:
            outcomes.append("refused")

    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(guess, range(4)))
    elapsed = time.perf_counter() - start
    assert outcomes.count("None") >= 3 and throttle_state(project, "alice")["failures"] == outcomes.count("None")
    # checked one after the other: the waits of failures 1, 2 (and 3) add up
    assert elapsed >= backoff(1) + backoff(2), elapsed


def test_disabled_accounts_cannot_sign_in(project, patient):
    add_user(project, "alice", "annotator", "long-enough-1")
    set_disabled(project, "alice", True, actor="root")
    assert list_users(project).set_index("name").loc["alice", "disabled"]
    # the right password of a disabled account gets the answer a wrong one gets: a guesser learns nothing
    assert authenticate(project, "alice", "long-enough-1", sleep=patient.append) is None
    assert authenticate(project, "alice", "wrong-pass-1", sleep=patient.append) is None
    set_disabled(project, "alice", False, actor="root")
    assert authenticate(project, "alice", "long-enough-1", sleep=patient.append) is not None
    with pytest.raises(CxrAlError, match="no account"):
        set_disabled(project, "nobody", True)


def test_cli_user_add_and_list(project):
    def cxr(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "active.delivery.cli", *args], input=stdin, capture_output=True,
                              text=True, timeout=120)

    done = cxr("user", "add", str(project.root), "lena", "--role", "lead", "--password-stdin",
               stdin="lena-secret-1\n")
    assert done.returncode == 0, done.stderr
    assert authenticate(project, "lena", "lena-secret-1", sleep=lambda _: None)["role"] == "lead"
    refused = cxr("user", "add", str(project.root), "lena", "--role", "lead", "--password-stdin", stdin="short\n")
    assert refused.returncode != 0 and "at least 8" in refused.stderr and "Traceback" not in refused.stderr
    empty = cxr("user", "add", str(project.root), "x1", "--role", "annotator", "--password-stdin", stdin="")
    assert empty.returncode != 0 and "no password on stdin" in empty.stderr
    listed = cxr("user", "list", str(project.root))
    assert listed.returncode == 0 and "lena" in listed.stdout and "scrypt" not in listed.stdout


def test_an_account_change_is_logged_once_with_who_made_it(project):
    add_user(project, "lena", "lead", "long enough 1", actor="admin")
    add_user(project, "lena", "annotator", "long enough 2", actor="admin")
    events = project.db.events("account")
    assert events["actor"].tolist() == ["admin", "admin"]
    assert len(project.db.events()) == 2  # nothing else logged the change
