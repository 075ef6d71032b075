"""Accounts: scrypt hashes, roles, permissions, throttled and logged failed sign-ins, `cxr-al user`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from active.views import accounts
from active.views.accounts import (
    add_user,
    authenticate,
    can,
    failure_delay,
    hash_password,
    list_users,
    verify_password,
)
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


def test_sign_in_logs_failures_and_slows_repeated_guesses(project):
    add_user(project, "alice", "annotator", "long-enough-1")
    waits: list[float] = []
    assert authenticate(project, "alice", "long-enough-1", sleep=waits.append) == {"name": "alice",
                                                                                     "role": "annotator"}
    for _ in range(3):
        assert authenticate(project, "alice", "guess-guess", sleep=waits.append) is None
    assert authenticate(project, "mallory", "whatever-1", sleep=waits.append) is None
    assert authenticate(project, "", "x", sleep=waits.append) is None
    assert waits[:4] == [0.0, 0.0, failure_delay(1), failure_delay(2)]
    assert failure_delay(1) > 0 and failure_delay(50) == accounts.FAILURE_MAX_DELAY_S
    failed = project.db.events("signin_failed")
    assert list(failed["actor"]).count("alice") == 3 and "mallory" in set(failed["actor"])
    # a right password still works after failures, and resets the slow-down
    assert authenticate(project, "alice", "long-enough-1", sleep=waits.append) is not None
    assert accounts.recent_failures(project, "alice") == 0


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
