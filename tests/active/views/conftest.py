"""A phantom project with several annotators, a double-read set of known kappa, and rounds recorded
directly through the database (no training): shared by the views tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from active.engine.labeling import record_label
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

