"""The leakage check and the grouping in `status`: a planted cross-split patient and a planted near-duplicate."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from active.engine.artifacts import EMBEDDINGS_NAME
from active.engine.labeling import record_label
from active.views import leakage
from active.views.status import status
from store.embeddings import save_embeddings
from store.errors import CxrAlError
from store.ingest import ingest_folder
from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
from store.project import init_project


@pytest.fixture
def grouped(tmp_path):
    """24 phantoms of 8 patients (3 images each, one study per patient), split by patient."""
    data = write_phantom_dataset(tmp_path / "data", n=24, seed=6, size=32)
    files = sorted(p.relative_to(data / "images").as_posix() for p in (data / "images").rglob("*.png"))
    with open(tmp_path / "groups.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("file", "patient_id", "study_id"),
                                  *((f, f"P{i % 8}", f"S{i % 8}") for i, f in enumerate(files))])
    project = init_project(tmp_path / "p", list(PHANTOM_CLASSES), image_size=32)
    ingest_folder(project.db, data / "images", project.classes, labels_from="folders", test_fraction=0.25, seed=0,
                  groups_from=str(tmp_path / "groups.csv"))
    return project


def _move_to_test(project, image_id: int) -> None:
    """Plant leakage the way an old per-image split or a hand edit would: one image moved to the test split."""
    with project.db.write() as con:
        con.execute("UPDATE images SET split = 'test' WHERE id = ?", [image_id])


def test_a_clean_grouped_split_has_no_leakage(grouped) -> None:
    info = leakage.leakage(grouped)
    assert not info["found"] and info["groups_in_both"] == []
    assert info["near_duplicates"]["checked"] is False and "embed" in info["near_duplicates"]["why_not"]
    counts = status(grouped)["grouping"]
    assert counts["patients"] == 8 and counts["studies"] == 8 and counts["images_without_group"] == 0
    assert counts["pool_patients"] + counts["test_patients"] == 8 and counts["test_patients"] >= 1
    assert counts["patients_in_both"] == 0 and counts["test_split_labels"] == 0


def test_leakage_finds_a_planted_cross_split_patient(grouped) -> None:
    images = grouped.db.images()
    pool = images[images["split"] == "pool"]
    patient = pool["patient_key"].iloc[0]
    moved = int(pool["id"].iloc[0])
    _move_to_test(grouped, moved)
    info = leakage.leakage(grouped)
    assert info["found"]
    [group] = info["groups_in_both"]
    assert group["kind"] == "patient" and group["key"] == patient and group["test"] == [moved]
    assert sorted(group["pool"]) == sorted(int(i) for i in pool.loc[pool["patient_key"] == patient, "id"]
                                           if i != moved)
    counts = status(grouped)["grouping"]
    assert counts["patients_in_both"] == 1


def test_leakage_finds_a_planted_near_duplicate_pair(grouped) -> None:
    images = grouped.db.images()
    ids = images["id"].to_numpy()
    vectors = np.random.default_rng(0).normal(size=(len(ids), 32)).astype(np.float32)
    pool_id = int(images.loc[images["split"] == "pool", "id"].iloc[2])
    test_id = int(images.loc[images["split"] == "test", "id"].iloc[0])
    vectors[ids == test_id] = vectors[ids == pool_id] * 1.01 + 0.001  # the same radiograph, re-exported
    save_embeddings(grouped.artifacts / EMBEDDINGS_NAME, ids[:-1], vectors[:-1], "test")
    found = leakage.near_duplicate_pairs(grouped)
    assert found["checked"] and found["count"] == 1 and found["not_embedded"] == 1
    [pair] = found["pairs"]
    assert (pair["pool_id"], pair["test_id"]) == (pool_id, test_id) and pair["similarity"] > 0.99
    assert leakage.leakage(grouped)["found"]
    assert leakage.near_duplicate_pairs(grouped, threshold=0.05)["count"] > 1  # a loose threshold finds more
    with pytest.raises(CxrAlError, match="between 0 and 1"):
        leakage.near_duplicate_pairs(grouped, threshold=1.5)


def test_status_counts_test_split_labels(grouped) -> None:
    test_id = int(grouped.db.images("test")["id"].iloc[0])
    record_label(grouped, test_id, "Normal", "alice", test_split=True)
    assert status(grouped)["grouping"]["test_split_labels"] == 1


def test_status_and_leakage_of_a_project_without_images(tmp_path):
    from active.views.leakage import leakage
    from active.views.status import status
    from store.project import init_project

    empty = init_project(tmp_path / "empty", ["Normal", "COVID-19"])
    report = status(empty)
    assert report["grouping"]["patients"] == 0
    found = leakage(empty)
    assert not found["found"] and found["groups_in_both"] == []
