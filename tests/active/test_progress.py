"""Progress and review services on a phantom project with several annotators, a double-read set of
known kappa, and rounds recorded directly through the database (no training)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from active.engine import artifacts, policy
from active.engine.labeling import record_label, undo_label
from active.views import agreement, dashboard, review, status
from store.errors import CxrAlError
from store.export import labeled_set
from store.project import open_project

N, C, G, INTER = "Normal", "Consolidation", "GroundGlass", "Interstitial"
# alice and bob both read the first ten pool images: 8 of 10 agree, each says Normal five times,
# so p_o = 0.8, p_e = 0.5 and Cohen's kappa = Fleiss' kappa = 0.6
ALICE = [N, N, N, N, N, C, C, C, C, C]
BOB = [N, N, N, N, C, C, C, C, C, N]
CAROL = [G, G, INTER, INTER, G, C]  # single reads of pool[10:16]
SECONDS = {"alice": 6.0, "bob": 9.0, "carol": 12.0}


def _probs(project, label: str, p: float) -> list[float]:
    """Probabilities giving `label` p and sharing the rest evenly."""
    k = len(project.classes)
    out = [(1 - p) / (k - 1)] * k
    out[project.classes.index(label)] = p
    return out


def seed_progress_project(root: Path):
    """The phantom project with labels, a simulation and rounds; returns (project, pool ids)."""
    from store.ingest import ingest_folder
    from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
    from store.project import init_project

    data = write_phantom_dataset(root / "phantoms", n=40, seed=3, size=48)
    project = init_project(root / "project", list(PHANTOM_CLASSES), image_size=48)
    ingest_folder(project.db, data / "images", project.classes, labels_from="folders", labels_as="oracle",
                  test_fraction=0.2, seed=0)
    db = project.db
    for name, role in (("alice", "annotator"), ("bob", "annotator"), ("carol", "annotator"), ("lena", "lead")):
        db.upsert_annotator(name, role)
    pool = [int(i) for i in db.images("pool")["id"]]
    for name, labels, ids in (("alice", ALICE, pool[:10]), ("bob", BOB, pool[:10]), ("carol", CAROL, pool[10:16])):
        for image_id, label in zip(ids, labels, strict=True):
            record_label(project, image_id, label, name, seconds_spent=SECONDS[name])

    pretrain = db.start_round("pretrain", {"method": "simclr", "backbone": "resnet18"})
    db.finish_round(pretrain, checkpoint="ssl.pt", metrics={"final_loss": 1.5})
    first = db.start_round("train", {"mode": "probe", "n_train": 10})
    db.finish_round(first, metrics={"mode": "probe", "n_train": 10, "macro_auc": 0.70, "balanced_accuracy": 0.50,
                                    "ci": {"macro_auc": [0.60, 0.80], "balanced_accuracy": [0.40, 0.60]}})
    failed = db.start_round("train", {"mode": "finetune", "n_train": 16})
    db.fail_round(failed, "JobFailed: train job failed: CUDA out of memory")
    unscored = db.start_round("train", {"mode": "probe", "n_train": 12})
    db.finish_round(unscored, metrics={"mode": "probe", "n_train": 12})  # no test split: no curve point
    second = db.start_round("train", {"mode": "probe", "n_train": 16})
    consensus = labeled_set(db).set_index("image_id")["label"].to_dict()
    probs = {i: _probs(project, consensus.get(i, N), 0.7) for i in db.images()["id"].astype(int)}
    probs[pool[1]] = _probs(project, C, 0.9)  # read Normal by both: the model objects strongly
    probs[pool[6]] = _probs(project, G, 0.6)  # read Consolidation by both: a milder objection
    probs[pool[12]] = _probs(project, N, 0.8)  # carol's Interstitial: objection on her own work
    probs[pool[20]] = [0.3, 0.25, 0.25, 0.2]  # unlabeled, least confident of all
    matrix = [[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 2, 0], [0, 1, 0, 1]]
    db.finish_round(second, checkpoint=None, metrics={
        "mode": "probe", "n_train": 16, "macro_auc": 0.80, "balanced_accuracy": 0.75, "classes": project.classes,
        "ci": {"macro_auc": [0.72, 0.88], "balanced_accuracy": [0.6, 0.9]}, "confusion_matrix": matrix},
        predictions=pd.DataFrame({"image_id": list(probs), "probs": list(probs.values())}))

    curves = pd.DataFrame([
        {"strategy": s, "seed": seed, "labels": n, "macro_auc": v + 0.02 * seed, "accuracy": 0.5}
        for s, base in (("random", 0.6), ("entropy", 0.65)) for seed in (0, 1)
        for n, v in ((10, base), (20, base + 0.1))])
    sim_dir = root / "simulation"
    sim_dir.mkdir()
    curves.to_csv(sim_dir / "curves.csv", index=False)
    sim = db.start_round("simulate", {"strategies": ["random", "entropy"], "seeds": 2, "mode": "probe"})
    db.finish_round(sim, metrics={"curves": str(sim_dir / "curves.csv"), "full_label": {"macro_auc": 0.9}})
    return project, pool


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """The seeded project, built once; tests get copies."""
    return seed_progress_project(tmp_path_factory.mktemp("progress"))


@pytest.fixture
def proj(seeded, tmp_path):
    """A private copy of the seeded project (the phantom images stay shared and read-only)."""
    project, pool = seeded
    shutil.copytree(project.root, tmp_path / "project")
    return open_project(tmp_path / "project"), pool


def test_efficiency_curve_one_point_per_scored_round_with_ci(proj) -> None:
    project, _ = proj
    curve = dashboard.efficiency_curve(project)
    assert curve["round_id"].tolist() == [2, 5]  # failed and unscored rounds give no point
    assert curve["labels"].tolist() == [10, 16]
    assert curve["value"].tolist() == pytest.approx([0.70, 0.80])
    assert curve[["ci_low", "ci_high"]].to_numpy().ravel().tolist() == pytest.approx([0.60, 0.80, 0.72, 0.88])
    balanced = dashboard.efficiency_curve(project, "balanced_accuracy")
    assert balanced["value"].tolist() == pytest.approx([0.50, 0.75])
    assert dashboard.efficiency_curve(project, "hm").empty  # recorded by no round
    with pytest.raises(CxrAlError, match="unknown metric"):
        dashboard.efficiency_curve(project, "auc")


def test_simulation_curves_mean_and_band_per_strategy(proj) -> None:
    project, _ = proj
    sim = dashboard.simulation_curves(project).set_index(["strategy", "labels"])
    assert set(sim.index.get_level_values(0)) == {"random", "entropy"}
    assert sim.loc[("random", 10), ["mean", "low", "high"]].tolist() == pytest.approx([0.61, 0.60, 0.62])
    assert sim.loc[("entropy", 20), "mean"] == pytest.approx(0.76)
    assert (sim["seeds"] == 2).all() and (sim["full_label"] == 0.9).all()
    assert dashboard.simulation_curves(project, "hm").empty  # not in curves.csv


def test_labels_per_class_and_annotator_throughput(proj) -> None:
    project, pool = proj
    over_time = dashboard.labels_per_class_over_time(project)
    last = over_time[over_time["time"] == over_time["time"].max()].set_index("label")["labels"]
    expected = labeled_set(project.db)["label"].value_counts()
    assert last.to_dict() == {c: int(expected.get(c, 0)) for c in project.classes}
    assert over_time.groupby("label")["labels"].apply(lambda s: s.is_monotonic_increasing).all()

    stats = dashboard.annotator_stats(project).set_index("annotator")
    assert stats.loc["alice", "labels"] == 10 and stats.loc["carol", "labels"] == 6
    assert stats.loc["bob", "median_seconds"] == 9.0
    assert stats.loc["alice", "labels_per_hour"] == pytest.approx(3600 / 6)  # ten labels of 6 s each
    assert stats.loc["carol", "labels_per_hour"] == pytest.approx(3600 / 12)
    # one session each (seconds apart): its first image's time plus the gaps between labels
    assert 12 / 3600 <= stats.loc["carol", "session_hours"] < 60 / 3600
    record_label(project, pool[20], N, "alice", seconds_spent=3.0)
    undo_label(project, "alice")  # a withdrawn label is not work done
    assert dashboard.annotator_stats(project).set_index("annotator").loc["alice", "labels_given"] == 10


def test_fleiss_kappa_textbook_example_and_unequal_raters() -> None:
    # Fleiss (1971) as in the Wikipedia article: 10 subjects, 14 raters, 5 categories, kappa 0.210
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                      [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert agreement.fleiss_kappa(table) == pytest.approx(0.2099, abs=1e-4)
    # unequal raters (2, 3, 2): P_i = 1, 1/3, 0 so P = 4/9; p = (5/7, 2/7) so P_e = 29/49
    unequal = np.array([[2, 0], [2, 1], [1, 1], [1, 0]])  # the last subject has one rater: left out
    assert agreement.fleiss_kappa(unequal) == pytest.approx((4 / 9 - 29 / 49) / (1 - 29 / 49))
    assert np.isnan(agreement.fleiss_kappa(np.array([[2, 0], [3, 0]])))  # one category only: undefined
    assert np.isnan(agreement.fleiss_kappa(np.array([[1, 0]])))  # no subject with two raters


def test_agreement_on_the_double_read_set(proj) -> None:
    project, pool = proj
    summary = agreement.agreement_summary(project)
    assert summary["double_read_images"] == 10 and summary["readers"] == ["alice", "bob"]
    assert summary["fleiss_kappa"] == pytest.approx(0.6)
    assert summary["percent_agreement"] == pytest.approx(0.8)
    pairs = summary["pairs"]
    assert len(pairs) == 1  # carol shares no image with anyone
    pair = pairs.iloc[0]
    assert (pair["annotator_a"], pair["annotator_b"], pair["shared_images"]) == ("alice", "bob", 10)
    assert pair["kappa"] == pytest.approx(0.6) and pair["agreement"] == pytest.approx(0.8)

    adjudicate = agreement.adjudication_list(project)
    assert adjudicate["image_id"].tolist() == [pool[4], pool[9]]
    assert adjudicate["annotator_labels"].iloc[0] == f"alice={N};bob={C}"

    record_label(project, pool[10], G, "bob")  # bob now shares one image with carol
    pairs = agreement.pairwise_kappa(project).set_index(["annotator_a", "annotator_b"])
    assert pairs.loc[("bob", "carol"), "shared_images"] == 1 and pairs.loc[("bob", "carol"), "agreement"] == 1.0
    assert np.isnan(pairs.loc[("bob", "carol"), "kappa"])  # one shared image, one category: undefined


def test_round_history_with_failed_round_and_running_rounds(proj) -> None:
    project, _ = proj
    history = status.round_history(project)
    assert history["round_id"].tolist() == [6, 5, 4, 3, 2, 1]  # newest first
    failed = history[history["status"] == "failed"]
    assert failed["round_id"].tolist() == [3]
    assert "CUDA out of memory" in failed["error"].iloc[0] and failed["model"].iloc[0].startswith("finetune")
    row = history.set_index("round_id").loc[5]
    assert row["macro_auc"] == pytest.approx(0.8) and row["labels"] == 16 and row["duration_s"] >= 0
    assert history.set_index("round_id").loc[1, "model"] == "simclr resnet18"
    assert status.running_rounds(project).empty
    running = project.db.start_round("train", {"mode": "probe"})
    now = status.running_rounds(project)
    assert now["round_id"].tolist() == [running] and now["duration_s"].iloc[0] >= 0
    with pytest.raises(CxrAlError, match="already running"):
        policy.start_training_now(project, "lena")


def test_dashboard_sees_a_killed_round_as_failed(proj) -> None:
    """A round whose process died (kill -9) is failed on the dashboard too, and does not block Train now."""
    import socket
    import subprocess
    import sys

    project, _ = proj
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = project.db.start_round("train", {"pid": dead.pid, "host": socket.gethostname()})
    row = status.round_history(project).set_index("round_id").loc[gone]
    assert row["status"] == "failed" and "ended without finishing" in row["error"]
    assert status.running_rounds(project).empty


def test_train_now_needs_two_classes(tmp_path) -> None:
    from store.phantoms import PHANTOM_CLASSES
    from store.project import init_project

    project = init_project(tmp_path / "empty", list(PHANTOM_CLASSES), image_size=32)
    with pytest.raises(CxrAlError, match="two classes"):
        policy.start_training_now(project, "lena")
    assert project.db.events("train_requested").empty


def test_background_log_tail_reads_progress_bars(proj) -> None:
    project, _ = proj
    assert status.background_log_tail(project) == ""
    log = project.artifacts / "rounds" / artifacts.BACKGROUND_LOG
    log.parent.mkdir(parents=True)
    log.write_text("embedding\nfit:  10%|#\rfit:  50%|#####\rfit: 100%|##########\n")
    assert status.background_log_tail(project, lines=2) == "fit:  50%|#####\nfit: 100%|##########"


def test_review_lists(proj) -> None:
    project, pool = proj
    disagree = review.model_disagreements(project)
    assert disagree["image_id"].tolist() == [pool[1], pool[12], pool[6]]  # surest objection first
    assert disagree["pred"].tolist() == [C, N, G] and disagree["model_round"].eq(5).all()
    # alice's own reading of the two contested images differs from the consensus the model learned
    assert review.model_disagreements(project, "alice")["image_id"].tolist() == [pool[1], pool[4], pool[9], pool[6]]
    assert review.model_disagreements(project, "carol")["image_id"].tolist() == [pool[12]]

    unsure = review.least_confident(project, limit=5)
    assert unsure["image_id"].iloc[0] == pool[20] and pd.isna(unsure["label"].iloc[0])
    assert unsure["confidence"].is_monotonic_increasing and len(unsure) == 5
    assert set(review.least_confident(project, "carol", limit=None)["image_id"]) == set(pool[10:16])
    assert not set(review.least_confident(project, limit=None)["image_id"]) & set(project.db.images("test")["id"])

    gallery = review.class_gallery(project, "groundglass", "carol")
    assert set(gallery["image_id"]) == {pool[10], pool[11], pool[14]} and (gallery["label"] == G).all()
    assert gallery["path"].map(lambda p: Path(p).is_file()).all()

    round_id, matrix = review.latest_confusion_matrix(project)
    assert round_id == 5 and matrix.loc[C, N] == 1 and matrix.to_numpy().sum() == 8
    crosstab = review.labels_vs_predictions(project, "alice")
    assert crosstab.loc[N, C] == 2 and crosstab.loc[C, G] == 1 and crosstab.to_numpy().sum() == 10


def test_relabel_supersedes_the_old_label_with_who_and_when(proj) -> None:
    project, pool = proj
    image_id = pool[1]
    new_id = review.relabel(project, image_id, "consolidation", "alice")
    history = review.label_history_table(project, image_id).set_index("label_id")
    old = history[(history["annotator"] == "alice") & (history.index != new_id)].iloc[0]
    assert old["label"] == N and old["status"] == "superseded"
    assert old["superseded_by"] == "alice" and pd.notna(old["superseded_at"])
    assert history.loc[new_id, "status"] == "current" and history.loc[new_id, "source"] == "review"
    mine = project.db.current_labels()
    assert mine[(mine["image_id"] == image_id) & (mine["annotator"] == "alice")]["label"].tolist() == [C]
    with pytest.raises(CxrAlError, match="already has your label"):
        review.relabel(project, image_id, C, "alice")
    with pytest.raises(CxrAlError, match="only images you labeled"):
        review.relabel(project, pool[12], N, "alice")  # carol's image
    lead_id = review.relabel(project, pool[12], N, "lena", any_image=True)  # leads may relabel any image
    assert review.label_history_table(project, pool[12]).set_index("label_id").loc[lead_id, "annotator"] == "lena"
    with pytest.raises(CxrAlError, match="unknown class"):
        review.relabel(project, image_id, "Pneumothorax", "alice")
