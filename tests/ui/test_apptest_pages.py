"""Review page and progress dashboard under streamlit.testing (AppTest): no browser, no training.

Rounds, predictions and a simulation are written straight through the database, so each test
runs in seconds on a CPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from apptest_session import sign_in_apptest
from streamlit.testing.v1 import AppTest

from active.engine.labeling import record_label
from store.export import labeled_set
from store.project import open_project

REPO = Path(__file__).resolve().parents[2]
REVIEW = str(REPO / "ui" / "review.py")
DASHBOARD = str(REPO / "ui" / "dashboard.py")
N, C, G, INTER = "Normal", "Consolidation", "GroundGlass", "Interstitial"
# alice and bob read pool[0:6]: 4 of 6 agree, each says Normal three times: kappa = (2/3 - 1/2) / (1/2) = 1/3
ALICE = [N, N, N, C, C, C]
BOB = [N, N, C, C, C, N]
CAROL = [G, INTER, G]  # pool[6:9], single reads
ROLES = {"alice": "annotator", "bob": "annotator", "carol": "annotator", "lena": "lead", "root": "admin"}
TIMEOUT = 60


def _probs(classes: list[str], label: str, p: float) -> list[float]:
    out = [(1 - p) / (len(classes) - 1)] * len(classes)
    out[classes.index(label)] = p
    return out


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A phantom project with double reads, two scored training rounds, a failed one and a simulation."""
    from store.ingest import ingest_folder
    from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
    from store.project import init_project

    root = tmp_path_factory.mktemp("pages")
    data = write_phantom_dataset(root / "phantoms", n=24, seed=4, size=48)
    project = init_project(root / "project", list(PHANTOM_CLASSES), image_size=48, name="pages")
    project.config["round_policy"]["train_every"] = 0
    project.save_config()
    ingest_folder(project.db, data / "images", project.classes, labels_from="folders", labels_as="oracle",
                  test_fraction=0.25, seed=0)
    db = project.db
    for name, role in ROLES.items():
        db.upsert_annotator(name, role)
    pool = [int(i) for i in db.images("pool")["id"]]
    for name, labels, ids in (("alice", ALICE, pool[:6]), ("bob", BOB, pool[:6]), ("carol", CAROL, pool[6:9])):
        for image_id, label in zip(ids, labels, strict=True):
            record_label(project, image_id, label, name, seconds_spent=4.0)
    first = db.start_round("train", {"mode": "probe", "n_train": 6})
    db.finish_round(first, metrics={"mode": "probe", "n_train": 6, "macro_auc": 0.70, "ci": {"macro_auc": [0.6, 0.8]}})
    failed = db.start_round("train", {"mode": "finetune", "n_train": 9})
    db.fail_round(failed, "JobFailed: train job failed: CUDA out of memory")
    second = db.start_round("train", {"mode": "probe", "n_train": 9})
    consensus = labeled_set(db).set_index("image_id")["label"].to_dict()
    probs = {i: _probs(project.classes, consensus.get(i, N), 0.7) for i in db.images()["id"].astype(int)}
    probs[pool[1]] = _probs(project.classes, C, 0.9)  # alice and bob said Normal
    probs[pool[7]] = _probs(project.classes, N, 0.8)  # carol said Interstitial
    db.finish_round(second, metrics={
        "mode": "probe", "n_train": 9, "macro_auc": 0.80, "ci": {"macro_auc": [0.7, 0.9]},
        "classes": project.classes, "confusion_matrix": [[1, 0, 0, 0], [0, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]},
        predictions=pd.DataFrame({"image_id": list(probs), "probs": list(probs.values())}))
    curves = pd.DataFrame([{"strategy": s, "seed": seed, "labels": n, "macro_auc": base + n / 100}
                           for s, base in (("random", 0.5), ("hybrid", 0.6)) for seed in (0, 1) for n in (5, 10)])
    (root / "sim").mkdir()
    curves.to_csv(root / "sim" / "curves.csv", index=False)
    sim = db.start_round("simulate", {"strategies": ["random", "hybrid"], "seeds": 2})
    db.finish_round(sim, metrics={"curves": str(root / "sim" / "curves.csv"), "full_label": {"macro_auc": 0.9}})
    return project.root, pool


@pytest.fixture
def project(seeded, tmp_path, monkeypatch):
    """A private copy of the seeded project, served to the pages through CXR_AL_PROJECT."""
    root, pool = seeded
    shutil.copytree(root, tmp_path / "project")
    monkeypatch.setenv("CXR_AL_PROJECT", str(tmp_path / "project"))
    return open_project(tmp_path / "project"), pool


def _page(path: str, user: str) -> AppTest:
    at = AppTest.from_file(path, default_timeout=TIMEOUT)
    sign_in_apptest(user)  # a real session for the account (its role: ROLES[user])
    return at.run()


def _cards(at: AppTest) -> set[int]:
    """Image ids of the gallery cards shown (each card's caption starts 'Image ID:')."""
    ids = set()
    for md in at.markdown:
        text = md.value
        if text.startswith("Image ") and ":" in text:
            ids.add(int(text.split(":")[0].split()[1]))
    return ids


def _table(at: AppTest, key: str) -> pd.DataFrame:
    """The table drawn inside the container with this key."""
    return at.get_by_key(key).dataframe[0].value


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_review_annotator_sees_only_own_work(project) -> None:
    proj, pool = project
    at = _page(REVIEW, "alice")
    assert not at.exception
    with pytest.raises(KeyError):
        at.selectbox(key="review_scope")  # no choice of whose labels: her own only
    # her readings the model disputes: pool[1] (surest), and the two contested images where she was outvoted
    assert _cards(at) == {pool[1], pool[2], pool[5]}
    at.radio(key="review_view").set_value("Least confident").run()
    assert _cards(at) <= set(pool[:6]) and _cards(at)
    at.radio(key="review_view").set_value("Image history").run()
    at.number_input(key="review_image_id").set_value(pool[7]).run()  # carol's image
    assert "no label of yours" in _texts(at.info)


def test_relabel_button_supersedes_the_old_label(project) -> None:
    proj, pool = project
    at = _page(REVIEW, "alice")
    own_button = at.button(key=f"disagree_{pool[1]}_relabel_{proj.classes.index(N)}")
    assert own_button.disabled  # her current label
    at.button(key=f"disagree_{pool[1]}_relabel_{proj.classes.index(C)}").click().run()
    assert not at.exception
    assert "relabeled" in _texts(at.markdown)
    history = proj.db.label_history(pool[1])
    alice = history[history["annotator"] == "alice"].sort_values("id")
    assert alice["label"].tolist() == [N, C]
    assert alice["superseded_by"].iloc[0] == alice["id"].iloc[1] and pd.notna(alice["superseded_at"].iloc[0])
    assert pd.isna(alice["superseded_by"].iloc[1])
    assert pool[1] not in _cards(at)  # she now agrees with the model


def test_review_for_a_lead_shows_everyone_and_label_history(project) -> None:
    proj, pool = project
    at = _page(REVIEW, "lena")
    assert not at.exception
    assert at.selectbox(key="review_scope").value == "(all annotators)"
    assert {pool[1], pool[7]} <= _cards(at)
    at.selectbox(key="review_scope").set_value("carol").run()
    assert _cards(at) == {pool[7]}
    at.radio(key="review_view").set_value("Confusion matrix").run()
    matrix = _table(at, "review-confusion-test")
    assert matrix.loc[G, C] == 1 and int(matrix.to_numpy().sum()) == 6
    at.radio(key="review_view").set_value("Image history").run()
    at.number_input(key="review_image_id").set_value(pool[2]).run()
    history = _table(at, "review-history-table")
    assert set(history["annotator"]) == {"alice", "bob"} and set(history["status"]) == {"current"}


def test_overlays_without_a_model_checkpoint_say_why(project) -> None:
    proj, pool = project
    at = _page(REVIEW, "alice")
    at.toggle(key="review_overlays").set_value(True).run()
    assert not at.exception
    assert "no overlay" in _texts(at.caption) and "checkpoint" in _texts(at.caption)
    assert sum("data:image/png" in h.value for h in at.html) == 3  # the plain images are still shown


def test_dashboard_refuses_annotators(project) -> None:
    at = _page(DASHBOARD, "alice")
    assert "may not open" in _texts(at.error)
    with pytest.raises(KeyError):
        at.get_by_key("dash-curve-table")


def test_dashboard_shows_curve_agreement_and_failed_rounds(project) -> None:
    proj, pool = project
    at = _page(DASHBOARD, "lena")
    assert not at.exception
    curve = _table(at, "dash-curve-table")
    assert curve["round_id"].tolist() == [1, 3] and curve["labels"].tolist() == [6, 9]
    assert curve["value"].tolist() == pytest.approx([0.70, 0.80])
    assert curve["ci_low"].tolist() == pytest.approx([0.6, 0.7])
    sim = _table(at, "dash-simulation-table")
    assert set(sim["strategy"]) == {"random", "hybrid"}
    assert sim.set_index(["strategy", "labels"]).loc[("random", 10), "mean"] == pytest.approx(0.6)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Fleiss' kappa"] == "0.333" and metrics["Double-read images"] == "6"
    pairs = _table(at, "dash-kappa-pairs")
    assert pairs.iloc[0]["kappa"] == pytest.approx(1 / 3)
    assert _table(at, "dash-adjudication")["image_id"].tolist() == [pool[2], pool[5]]
    assert "CUDA out of memory" in _texts(at.error) and "Round 2" in _texts(at.error)
    assert _table(at, "dash-rounds")["status"].tolist() == ["done", "done", "failed", "done"]
    annotators = _table(at, "dash-annotators").set_index("annotator")
    assert annotators.loc["alice", "labels"] == 6 and annotators.loc["alice", "labels_per_hour"] == pytest.approx(900)
    assert "Too few labels yet to tell" in _texts(at.markdown)  # no label came from an auto batch here
    at.selectbox(key="dash_metric").set_value("balanced_accuracy").run()
    assert "No scored training round" in _texts(at.info)  # no round recorded balanced accuracy


def test_train_now_is_refused_while_a_round_runs(project) -> None:
    proj, _ = project
    running = proj.db.start_round("train", {"mode": "probe", "n_train": 9})
    at = _page(DASHBOARD, "lena")
    assert f"Round {running} (train) running" in _texts(at.info)
    at.button(key="dash_train_now").click().run()
    assert "already running" in _texts(at.markdown)
    assert proj.db.events("train_requested").empty


def test_pages_on_a_new_project_explain_what_is_missing(tmp_path, monkeypatch) -> None:
    from store.phantoms import PHANTOM_CLASSES
    from store.project import init_project

    project = init_project(tmp_path / "new", list(PHANTOM_CLASSES), image_size=32)
    project.db.upsert_annotator("lena", "lead")
    monkeypatch.setenv("CXR_AL_PROJECT", str(project.root))
    at = _page(DASHBOARD, "lena")
    assert not at.exception
    assert "No scored training round" in _texts(at.info) and "No rounds yet." in _texts(at.info)
    at = _page(REVIEW, "lena")
    assert not at.exception
    assert "No disagreements" in _texts(at.info)
    for view in ("Least confident", "Class gallery", "Confusion matrix", "Image history"):
        at.radio(key="review_view").set_value(view).run()
        assert not at.exception, view


def test_lead_changes_the_round_policy_and_it_is_logged(project) -> None:
    proj, _ = project
    at = _page(DASHBOARD, "lena")
    at.number_input(key="dash_policy_train_every").set_value(40)
    at.selectbox(key="dash_policy_mode").set_value("finetune")
    at.selectbox(key="dash_policy_strategy").set_value("entropy")
    at.slider(key="dash_policy_double").set_value(0.25)
    at.slider(key="dash_policy_random_share").set_value(0.3)
    at.button(key="dash_policy_save").click().run()
    assert not at.exception
    assert "Round policy saved." in _texts(at.markdown)
    saved = open_project(proj.root)
    assert saved.round_policy["train_every"] == 40 and saved.round_policy["mode"] == "finetune"
    assert saved.round_policy["strategy"] == "entropy" and saved.config["double_read_fraction"] == 0.25
    assert saved.round_policy["random_share"] == pytest.approx(0.3)
    assert "a round every 40 new labels" in _texts(at.caption)
    event = proj.db.events("round_policy_changed")
    assert event["actor"].tolist() == ["lena"]


def test_bad_round_policy_values_change_nothing(project) -> None:
    from active.engine.policy import update_round_policy
    from store.errors import CxrAlError

    proj, _ = project
    before = (proj.root / "project.yaml").read_text()
    for bad in ({"train_every": -1}, {"mode": "magic"}, {"strategy": "guess"}, {"batch_size": 0},
                {"double_read_fraction": 1.5}, {"train_every": 10, "epochs": 2.5}):
        with pytest.raises(CxrAlError):
            update_round_policy(proj, "lena", **bad)
    assert (proj.root / "project.yaml").read_text() == before
    assert proj.db.events("round_policy_changed").empty
