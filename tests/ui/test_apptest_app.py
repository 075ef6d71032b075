"""Streamlit AppTest of the app's own logic: sign-in, the label page, export and accounts pages, sessions (the
browser's session decides, never st.session_state; one check per run; guarded fragments; sign-out)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from apptest_session import present_cookie, sign_in_apptest
from streamlit.testing.v1 import AppTest

from active.views import sessions
from active.views.accounts import authenticate

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60


@pytest.fixture(autouse=True)
def served(ui_project, monkeypatch):
    monkeypatch.setenv("CXR_AL_PROJECT", str(ui_project.root))
    monkeypatch.chdir(REPO)
    return ui_project


def app_as(name: str | None, role: str | None = None, page: str = "app.py") -> AppTest:
    """The page as `name` sees it (signed in through a real session; role: the account's, for the reader)."""
    at = AppTest.from_file(str(REPO / page), default_timeout=TIMEOUT)
    if name is not None:
        sign_in_apptest(name)
    return at.run()


def pictures(at: AppTest) -> list[str]:
    """The PNG pictures drawn in the page (ui.viewer.show_png: data: URIs, never /media/ URLs)."""
    return [h.value for h in at.html if "data:image/png;base64," in h.value]


def session_cookie_set(at: AppTest) -> str:
    """The token of the session cookie the page's script gives the browser (SameSite=Strict, path /)."""
    from active.views.sessions import COOKIE_PREFIX

    scripts = [h.value for h in at.html if "document.cookie" in h.value and COOKIE_PREFIX in h.value]
    assert scripts, "no session cookie was set"
    match = re.search(COOKIE_PREFIX + r"[0-9a-f]{12}=([A-Za-z0-9_-]{40,}); Path=/; SameSite=Strict", scripts[-1])
    assert match, scripts[-1]
    return match.group(1)


def texts(at: AppTest) -> str:
    parts = [m.value for m in (*at.markdown, *at.caption, *at.title, *at.success, *at.error, *at.warning,
                               *at.subheader, *at.info)]
    return "\n".join(str(p) for p in parts)


def test_sign_in_shows_nothing_of_the_project_until_the_password_is_right(served, passwords):
    at = app_as(None)
    assert [t.label for t in at.text_input] == ["Username", "Password"]
    assert "ui-test" not in texts(at) and not at.image and not pictures(at)
    at.text_input(key="signin_username").input("alice")
    at.text_input(key="signin_password").input("wrong-password")
    at.button[0].click().run()
    assert "Wrong username or password." in texts(at)
    assert served.db.sessions().empty
    assert (served.db.events("signin_failed")["actor"] == "alice").any()
    at.text_input(key="signin_password").input(passwords["alice"])
    at.button[0].click().run()
    assert served.db.sessions()["annotator"].tolist() == ["alice"]  # a server-side session, and a cookie for it:
    token = session_cookie_set(at)
    assert not at.get("image") and "label_session" not in at.session_state  # nothing until the browser sends it
    present_cookie(token)  # the browser reloads with its new cookie
    at.run()
    assert "label_session" in at.session_state and "Signed in as **alice** (annotator)" in texts(at)


def test_label_page_buttons_label_skip_unsure_and_undo(served):
    at = app_as("alice", "annotator", "ui/label.py")
    labels = [b.label for b in at.button if b.key and b.key.startswith("label_class_")]
    assert labels == served.classes  # one button per class in the configured order
    info = texts(at)
    assert "1 / 16" in info and "suggested by **hybrid**" in info
    assert len(pictures(at)) == 1 and not at.image  # lossless, in the page: never st.image's /media/
    first = at.session_state["label_session"].current["image_id"]

    at.button(key="label_class_1").click().run()  # the second class
    mine = served.db.current_labels()
    assert mine[["image_id", "label", "annotator", "source"]].values.tolist() == [
        [first, served.classes[1], "alice", "ui"]]
    assert "2 / 16" in texts(at)
    second = at.session_state["label_session"].current["image_id"]
    assert second != first

    at.button(key="label_skip").click().run()
    at.button(key="label_unsure").click().run()
    assert "marked unsure" in texts(at)
    at.button(key="label_undo").click().run()
    assert served.db.current_labels().empty
    assert at.session_state["label_session"].current["image_id"] == first
    assert "label it again" in texts(at)


def test_annotator_is_refused_export_and_accounts_pages(served):
    for page in ("ui/export.py", "ui/accounts.py"):
        at = app_as("alice", "annotator", page)
        assert "Your account may not open this page." in texts(at)
        assert not at.get("download_button") and not at.dataframe


def test_export_page_filters(served):
    pool = served.db.images("pool")["id"].tolist()
    served.db.add_label(pool[0], served.classes[0], "alice")
    served.db.add_label(pool[1], served.classes[1], "bob")
    served.db.add_label(pool[1], served.classes[1], "carol")
    at = app_as("lena", "lead", "ui/export.py")
    assert "**2** labeled images match" in texts(at)
    at.selectbox(key="export_agreement").select("agree").run()
    assert "**1** labeled images match" in texts(at)
    at.selectbox(key="export_agreement").select("(any)").run()
    at.selectbox(key="export_annotator").select("alice").run()
    assert "**1** labeled images match" in texts(at)
    assert len(at.get("download_button")) == 4


def test_admin_adds_an_account_that_can_sign_in(served):
    at = app_as("root", "admin", "ui/accounts.py")
    at.text_input(key="account_name").input("erin")
    at.selectbox(key="account_role").select("lead")
    at.text_input(key="account_password").input("erin-secret-1")
    at.text_input(key="account_repeat").input("erin-secret-2")
    at.button[0].click().run()
    assert "differ" in texts(at) and served.db.annotator("erin") is None
    at.text_input(key="account_name").input("erin")
    at.selectbox(key="account_role").select("lead")
    at.text_input(key="account_password").input("erin-secret-1")
    at.text_input(key="account_repeat").input("erin-secret-1")
    at.button[0].click().run()
    assert "saved with role lead" in texts(at)
    assert authenticate(served, "erin", "erin-secret-1", sleep=lambda _: None) == {"name": "erin", "role": "lead"}


def test_label_page_panels_prediction_neighbours_and_round_status(served):
    import numpy as np
    import pandas as pd

    from active.engine.artifacts import EMBEDDINGS_NAME
    from store.embeddings import save_embeddings

    images = served.db.images()
    ids = images["id"].to_numpy()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(ids), 8)).astype(np.float32)
    save_embeddings(served.artifacts / EMBEDDINGS_NAME, ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                    "test")
    for image_id in served.db.images("pool")["id"].tolist()[-10:]:
        served.db.add_label(int(image_id), served.classes[2], "bob")
    round_id = served.db.start_round("train", {"mode": "probe", "n_train": 10})
    probs = np.tile(np.array([0.1, 0.7, 0.15, 0.05], dtype=np.float32), (len(ids), 1))
    served.db.finish_round(round_id, metrics={"macro_auc": 0.8},
                           predictions=pd.DataFrame({"image_id": ids, "probs": list(probs)}))

    at = AppTest.from_file(str(REPO / "ui/label.py"), default_timeout=TIMEOUT)
    sign_in_apptest("alice")
    at.run()
    at.toggle(key="panel_neighbours").set_value(True).run()
    shown = texts(at)
    assert f"Round {round_id}: **{served.classes[1]}** (70%)" in shown
    assert f"Model: round {round_id}" in shown
    assert len(pictures(at)) >= 2  # the radiograph plus labeled neighbours from the index
    at.toggle(key="panel_overlay").set_value(True).run()
    assert "No heatmap: that round kept no model checkpoint" in texts(at)


def test_an_abandoned_round_is_reaped_and_does_not_block_the_policy(served):
    import socket
    import subprocess
    import sys

    from active.engine.rounds import project_lock, reap_abandoned_rounds
    from active.views.status import round_progress

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = served.db.start_round("train", {"pid": 1, "host": socket.gethostname()})  # pid 1 always exists
    gone = served.db.start_round("train", {"pid": dead.pid, "host": socket.gethostname()})
    with project_lock(served):  # a round in progress holds the project's round lock
        assert reap_abandoned_rounds(served) == [gone]
        rounds = served.db.rounds("train").set_index("id")
        assert rounds.loc[gone, "status"] == "failed" and "ended without finishing" in rounds.loc[gone, "error"]
        assert rounds.loc[alive, "status"] == "running"
        info = round_progress(served)
        assert info["running"]["id"] == alive and info["running"]["fraction"] is None
        assert rounds.loc[alive, "params"]["pid"] == 1
    # nobody holds the lock any more: whatever process has that pid, the round is not running
    assert reap_abandoned_rounds(served) == [alive]


# ----------------------------------------------------------------------------- sessions
def guarded_page() -> None:
    """A page whose only check is its fragment's (session.fragment): the fragment body counts its runs."""
    import streamlit as st

    from ui import session

    @session.fragment("label")
    def panel() -> None:
        st.session_state["panel_runs"] = st.session_state.get("panel_runs", 0) + 1
        st.markdown("panel body")
        st.button("press", key="press")

    panel()


def test_session_state_alone_signs_nobody_in(served):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.session_state["cxr_user"] = {"name": "lena", "role": "lead"}  # what used to be enough
    at.session_state["_cxr_checked"] = (None, {"name": "lena", "role": "lead", "session": "x"})
    at.run()
    assert [t.label for t in at.text_input] == ["Username", "Password"]
    assert "label_session" not in at.session_state


def test_one_session_check_per_run(served, monkeypatch):
    token = sign_in_apptest("alice")
    calls = []
    real = sessions.session_user
    monkeypatch.setattr(sessions, "session_user", lambda *a, **k: calls.append(1) or real(*a, **k))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    assert "Signed in as **alice** (annotator)" in "\n".join(c.value for c in at.caption)
    assert len(calls) == 1  # app.py and the page's require() share it
    sessions.end_session(served, token)
    at.run()
    assert len(calls) == 2 and "You signed out." in texts(at)


def test_a_guarded_fragment_checks_the_session_on_its_own_reruns(served):
    token = sign_in_apptest("alice")
    at = AppTest.from_function(guarded_page, default_timeout=TIMEOUT).run()
    assert "panel body" in texts(at) and at.session_state["panel_runs"] == 1
    at.button(key="press").click().run()
    assert at.session_state["panel_runs"] == 2
    sessions.end_session(served, token)
    at.run()
    assert "Please sign in." in texts(at) and "panel body" not in texts(at)
    assert "panel_runs" not in at.session_state  # the body did not run; the ended session's state is dropped


def test_sign_out_ends_the_server_side_session(served):
    token = sign_in_apptest("lena")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    at.button(key="signout").click().run()
    assert sessions.session_user(served, token) == (None, "signed out")
    assert [t.label for t in at.text_input] == ["Username", "Password"] and "You signed out." in texts(at)
    present_cookie(None)  # the browser dropped the cookie; nothing more to say
    at.run()
    assert "You signed out." not in texts(at)
