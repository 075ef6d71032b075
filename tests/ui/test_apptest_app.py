"""Streamlit AppTest of the app's own logic: sign-in, the label page, export and accounts pages."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from active.views.accounts import authenticate

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60


@pytest.fixture(autouse=True)
def served(ui_project, monkeypatch):
    monkeypatch.setenv("CXR_AL_PROJECT", str(ui_project.root))
    monkeypatch.chdir(REPO)
    return ui_project


def app_as(name: str | None, role: str | None = None, page: str = "app.py") -> AppTest:
    at = AppTest.from_file(str(REPO / page), default_timeout=TIMEOUT)
    if name is not None:
        at.session_state["cxr_user"] = {"name": name, "role": role}
    return at.run()


def pictures(at: AppTest) -> list[str]:
    """The PNG pictures drawn in the page (ui.viewer.show_png: data: URIs, never /media/ URLs)."""
    return [h.value for h in at.html if "data:image/png;base64," in h.value]


def texts(at: AppTest) -> str:
    parts = [m.value for m in (*at.markdown, *at.caption, *at.title, *at.success, *at.error, *at.warning,
                               *at.subheader)]
    return "\n".join(str(p) for p in parts)


def test_sign_in_shows_nothing_of_the_project_until_the_password_is_right(served, passwords):
    at = app_as(None)
    assert [t.label for t in at.text_input] == ["Username", "Password"]
    assert "ui-test" not in texts(at) and not at.image and not pictures(at)
    at.text_input(key="signin_username").input("alice")
    at.text_input(key="signin_password").input("wrong-password")
    at.button[0].click().run()
    assert "Wrong username or password." in texts(at)
    assert "cxr_user" not in at.session_state
    assert (served.db.events("signin_failed")["actor"] == "alice").any()
    at.text_input(key="signin_password").input(passwords["alice"])
    at.button[0].click().run()
    assert at.session_state["cxr_user"] == {"name": "alice", "role": "annotator"}


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
    at.session_state["cxr_user"] = {"name": "alice", "role": "annotator"}
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
