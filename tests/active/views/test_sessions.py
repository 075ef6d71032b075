"""Sign-in sessions: checked per page run, revoked by password changes, disabling and sign-out-all, idle and
absolute expiry, and claimed images that go back to the queue when their session ends."""

from __future__ import annotations

import subprocess
import sys
import time

import pandas as pd
import pytest

from active.engine import labeling
from active.views import sessions
from active.views.accounts import add_user, set_disabled
from store.errors import CxrAlError
from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
from store.project import init_project


@pytest.fixture
def project(tmp_path):
    project = init_project(tmp_path / "p", ["Normal", "COVID-19"])
    add_user(project, "alice", "annotator", "alice-secret-1")
    add_user(project, "lena", "lead", "lena-secret-1")
    return project


@pytest.fixture
def pool_project(tmp_path):
    """A small phantom pool with two annotators and an unassigned queue."""
    from store.ingest import ingest_folder

    data = write_phantom_dataset(tmp_path / "phantoms", n=12, seed=1, size=32)
    project = init_project(tmp_path / "project", list(PHANTOM_CLASSES), image_size=32)
    ingest_folder(project.db, data / "images", project.classes, labels_from="folders", labels_as="oracle",
                  test_fraction=0.0, seed=0)
    for name in ("alice", "bob"):
        add_user(project, name, "annotator", f"{name}-secret-1")
    pool = project.db.images("pool")["id"].tolist()
    project.db.add_to_queue([{"image_id": int(i), "annotator": None, "strategy": "hybrid", "score": 0.5,
                              "model_round": None, "rank": k} for k, i in enumerate(pool[:4])])
    return project


def test_a_session_is_its_token_and_only_its_hash_is_stored(project):
    token = sessions.start_session(project, "alice", address="10.0.0.7")
    user, reason = sessions.session_user(project, token)
    assert reason is None and user == {"name": "alice", "role": "annotator", "session": sessions.token_hash(token)}
    assert project.db.session(token) is None  # the token itself is nowhere in the database
    assert sessions.session_user(project, token + "x") == (None, "unknown")
    assert sessions.session_user(project, None) == (None, None)
    live = sessions.live_sessions(project)
    assert live["annotator"].tolist() == ["alice"] and live["client"].tolist() == ["10.0.0.7"]
    assert "token_hash" not in live.columns
    assert sessions.cookie_name(project).startswith(sessions.COOKIE_PREFIX)


def test_role_changes_show_at_once_and_password_changes_sign_out(project):
    token = sessions.start_session(project, "lena")
    add_user(project, "lena", "annotator", "lena-secret-1", actor="root")  # demoted, same password
    assert sessions.session_user(project, token)[0]["role"] == "annotator"
    add_user(project, "lena", "annotator", "lena-secret-2", actor="root")  # a new password
    assert sessions.session_user(project, token) == (None, "password changed")
    again = sessions.start_session(project, "lena")  # signing in with the new one works
    assert sessions.session_user(project, again)[0]["name"] == "lena"


def test_disable_sign_out_and_sign_out_all_end_sessions(project):
    alice, lena, lena2 = (sessions.start_session(project, n) for n in ("alice", "lena", "lena"))
    set_disabled(project, "alice", True)
    assert sessions.session_user(project, alice) == (None, "account disabled")
    sessions.end_session(project, lena)
    assert sessions.session_user(project, lena) == (None, "signed out")
    assert sessions.session_user(project, lena2)[0] is not None
    assert sessions.sign_out_all(project, actor="root") == 1
    assert sessions.session_user(project, lena2) == (None, "signed out by an admin")
    assert sessions.live_sessions(project).empty


def test_idle_and_absolute_expiry(project):
    project.config["access"] = {"session_idle_s": 1, "session_max_s": 3600}
    idle = sessions.start_session(project, "alice")
    kept = sessions.start_session(project, "lena")
    for _ in range(4):  # lena keeps using the app, alice does not
        time.sleep(0.4)
        assert sessions.session_user(project, kept)[0] is not None
    assert sessions.session_user(project, idle) == (None, "idle")
    project.config["access"] = {"session_idle_s": 3600, "session_max_s": 60}
    capped = sessions.start_session(project, "alice")
    project.db.start_session("old", "alice", idle_s=3600, max_s=0)  # started as long ago as the limit
    assert sessions.session_user(project, capped)[0] is not None
    assert project.db.session("old")["end_reason"] == "expired"


def test_claims_of_an_ended_session_return_to_the_queue(pool_project):
    """alice's shown image goes back to the queue when she signs out, and bob is then offered it."""
    alice_token = sessions.start_session(pool_project, "alice")
    alice = labeling.start_labeling(pool_project, "alice", session_key=sessions.token_hash(alice_token))
    shown = labeling.current_image(alice)["image_id"]
    queue = pool_project.db.open_queue()
    assert queue.set_index("image_id").loc[shown, "annotator"] == "alice"
    bob = labeling.start_labeling(pool_project, "bob", session_key=sessions.token_hash(
        sessions.start_session(pool_project, "bob")))
    assert labeling.current_image(bob)["image_id"] != shown
    sessions.end_session(pool_project, alice_token)
    assert pd.isna(pool_project.db.open_queue().set_index("image_id").loc[shown, "annotator"])
    assert (pool_project.db.events("claims_released")["payload"].str.contains(str(shown))).any()
    labeling.skip_current(bob)
    bob.refreshed_at = float("-inf")
    assert labeling.current_image(bob)["image_id"] == shown  # the returned image is first in line again
    with pytest.raises(CxrAlError, match="session has ended"):  # and alice's page can no longer label
        labeling.label_current(alice, pool_project.classes[0])
    assert pool_project.db.current_labels().empty


def test_an_idle_session_claims_are_swept_when_the_queue_is_read(pool_project):
    pool_project.config["access"] = {"session_idle_s": 1}
    alice = labeling.start_labeling(pool_project, "alice", session_key=sessions.token_hash(
        sessions.start_session(pool_project, "alice")))
    shown = labeling.current_image(alice)["image_id"]
    time.sleep(1.2)  # alice walks away; nobody ends her session
    bob = labeling.start_labeling(pool_project, "bob", session_key=sessions.token_hash(
        sessions.start_session(pool_project, "bob")))
    assert labeling.current_image(bob)["image_id"] == shown


def test_a_label_is_a_sign_of_life(pool_project):
    pool_project.config["access"] = {"session_idle_s": 2}
    token = sessions.start_session(pool_project, "alice")
    alice = labeling.start_labeling(pool_project, "alice", session_key=sessions.token_hash(token))
    for k in range(3):  # labeling from the page's fragment never runs the page check, yet keeps her signed in
        labeling.current_image(alice)
        time.sleep(0.8)
        labeling.label_current(alice, pool_project.classes[k % 2])
    assert sessions.session_user(pool_project, token)[0] is not None


def test_cli_sign_out_all_and_disable(project):
    def user(*args):
        return subprocess.run([sys.executable, "-m", "active.delivery.cli", "user", *args], capture_output=True,
                              text=True, timeout=120)

    token = sessions.start_session(project, "lena")
    done = user("sign-out-all", str(project.root), "lena")
    assert done.returncode == 0 and "1 session(s) ended of 'lena'" in done.stdout, done.stderr
    assert sessions.session_user(project, token) == (None, "signed out by an admin")
    done = user("disable", str(project.root), "nobody")
    assert done.returncode != 0 and "no account 'nobody'" in done.stderr and "Traceback" not in done.stderr


def test_a_schema_v3_project_gains_sessions_when_opened(project):
    """A project made before sessions existed: opening it migrates (schema v4) and sign-in sessions work."""
    import duckdb

    from store.db import SCHEMA_VERSION
    from store.project import open_project

    con = duckdb.connect(str(project.db.path))
    for stmt in ("DROP TABLE sessions", "DROP TABLE signin_failures", "ALTER TABLE queue DROP COLUMN claim_session",
                 "ALTER TABLE annotators DROP COLUMN disabled_at",
                 "ALTER TABLE annotators DROP COLUMN credentials_changed_at",
                 "UPDATE meta SET value = '3' WHERE key = 'schema_version'"):
        con.execute(stmt)
    con.close()
    reopened = open_project(project.root)
    assert reopened.db.schema_version() == SCHEMA_VERSION == 4
    token = sessions.start_session(reopened, "lena")
    assert sessions.session_user(reopened, token)[0]["role"] == "lead"


def test_a_kept_check_still_sees_changes_made_by_another_process(project):
    """Checks are kept in the process while the access stamp stands: a change through another ProjectDB (as the
    CLI in its own process) bumps it, so the next check reads the database; a timer's check (touch=False) does not
    count as activity."""
    from store.db import ProjectDB

    token = sessions.start_session(project, "lena")
    assert sessions.session_user(project, token)[0]["role"] == "lead"
    stamp = project.db.access_stamp()
    other = ProjectDB(project.db.path)  # what `cxr-al user ...` would use
    other.upsert_annotator("lena", "annotator")
    assert project.db.access_stamp() != stamp
    assert sessions.session_user(project, token)[0]["role"] == "annotator"
    other.set_annotator_disabled("lena", True)
    assert sessions.session_user(project, token) == (None, "account disabled")
    quiet = sessions.start_session(project, "alice")
    seen = project.db.session(sessions.token_hash(quiet))["last_seen"]
    time.sleep(1.1)  # past the touch interval for a 4 s idle limit
    with project.db.write() as con:
        con.execute("UPDATE sessions SET idle_s = 4")
    sessions._CHECKED.clear()
    assert sessions.session_user(project, quiet, touch=False)[0]["name"] == "alice"
    assert project.db.session(sessions.token_hash(quiet))["last_seen"] == seen  # a timer's check: no activity
    assert sessions.session_user(project, quiet)[0]["name"] == "alice"
    assert project.db.session(sessions.token_hash(quiet))["last_seen"] > seen


def test_another_sessions_claim_is_not_this_ones(pool_project):
    """alice in two browsers: B does not treat A's claim as its own, so when A ends (its claim returns to the
    queue) B and bob cannot both be shown that image."""
    a = labeling.start_labeling(pool_project, "alice", session_key=sessions.token_hash(
        a_token := sessions.start_session(pool_project, "alice")))
    shown = labeling.current_image(a)["image_id"]
    b = labeling.start_labeling(pool_project, "alice", session_key=sessions.token_hash(
        sessions.start_session(pool_project, "alice")))
    seen_by_b = labeling.current_image(b)["image_id"]
    assert seen_by_b != shown
    sessions.end_session(pool_project, a_token)
    bob = labeling.start_labeling(pool_project, "bob", session_key=sessions.token_hash(
        sessions.start_session(pool_project, "bob")))
    assert labeling.current_image(bob)["image_id"] == shown  # A's claim came back: first in line again
    b.refreshed_at = float("-inf")
    b.current = None
    assert labeling.current_image(b)["image_id"] not in (shown,)  # B does not take it as its own
    held = pool_project.db.open_queue().dropna(subset=["annotator"]).groupby("image_id").size()
    assert (held <= 1).all()
