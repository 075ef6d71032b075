"""The queue: `auto` batches record which part of the batch each image came from, and the evidence reads it."""

from __future__ import annotations

import pytest

from active.engine.labeling import record_label
from active.engine.queue import batch_seed, label_source, strategy_evidence, suggest
from active.engine.rounds import train
from tests.conftest import embedded_phantom_project


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A phantom project embedded by an un-pretrained backbone (fast), ground truth hidden as oracle labels."""
    return embedded_phantom_project(tmp_path_factory.mktemp("queue"), seed=3, test_fraction=0.2)


def test_auto_batches_record_their_parts_and_feed_the_evidence(embedded) -> None:
    project = embedded
    oracle = dict(zip(project.db.oracle_labels()["image_id"], project.db.oracle_labels()["label"], strict=True))
    first = suggest(project, 10, strategy="auto", annotator="ann", seed=1)
    assert sorted(first["strategy"]) == ["auto:random"] * 2 + ["auto:typiclust"] * 8  # cold start, 20% random
    event = project.db.events("suggest").iloc[-1]["payload"]
    assert "typical" in str(event)
    for image_id in first["image_id"]:
        record_label(project, int(image_id), oracle[int(image_id)], "ann")
    origins = project.db.label_origins()
    assert sorted(origins["strategy"]) == sorted(first["strategy"])
    assert sorted(origins["strategy"].map(label_source)) == ["random"] * 2 + ["typiclust"] * 8
    assert label_source("double-read") == "" and label_source("entropy") == "entropy"

    # more batches until the random share is large enough to measure anything
    for seed in range(2, 7):
        batch = suggest(project, 10, strategy="auto", annotator="ann", seed=seed)
        for image_id in batch["image_id"]:
            record_label(project, int(image_id), oracle[int(image_id)], "ann")
        if seed == 2:
            train(project, mode="probe", in_child=False, progress=False, n_bootstrap=10)
    ids = project.db.images("pool")["id"].to_numpy()
    from active.engine.artifacts import embeddings_for

    gains = strategy_evidence(project, ids, embeddings_for(project, ids))
    assert "random" in gains and len(gains) >= 2
    assert all(len(v) == len(gains["random"]) for v in gains.values())  # paired by held-out split
    # with a model: the batch after exploring is still 20% random and names its arm
    parts = set(suggest(project, 10, strategy="auto", annotator="ann", seed=9)["strategy"])
    assert "auto:random" in parts and parts <= {"auto:random", "auto:typiclust", "auto:badge", "auto:margin"}


def test_bald_suggests_after_a_probe_round(embedded) -> None:
    """The round writes its probe ensemble's samples; suggest hands them to BALD (it used to always fail)."""
    project = embedded
    if project.db.rounds("train").empty:
        oracle = dict(zip(project.db.oracle_labels()["image_id"], project.db.oracle_labels()["label"], strict=True))
        for image_id in project.db.images("pool")["id"][:16]:
            record_label(project, int(image_id), oracle[int(image_id)], "ann")
        train(project, mode="probe", in_child=False, progress=False, n_bootstrap=10)
    batch = suggest(project, 4, strategy="bald", annotator="bea")
    assert len(batch) == 4 and set(batch["strategy"]) == {"bald"}


def test_an_unsure_image_keeps_the_part_that_picked_it(embedded) -> None:
    """Marked unsure, then labeled on its second read: the label still counts for the strategy that picked it
    (hard images must not drop out of the evidence and the estimate)."""
    project = embedded
    labeled = set(project.db.current_labels()["image_id"])
    queued = set(project.db.open_queue()["image_id"])
    image_id = next(int(i) for i in project.db.images("pool")["id"] if int(i) not in labeled | queued)
    project.db.add_to_queue([{"image_id": image_id, "annotator": "ann", "strategy": "auto:random", "model_round": 7}])
    entry = project.db.open_queue("ann")
    project.db.close_queue_entries([int(entry.loc[entry["image_id"] == image_id, "id"].iloc[0])], "unsure")
    project.db.add_to_queue([{"image_id": image_id, "annotator": None, "strategy": "second-read"}])
    record_label(project, image_id, project.classes[0], "bob")
    row = project.db.label_origins().set_index("image_id").loc[image_id]
    assert row["strategy"] == "auto:random" and row["model_round"] == 7


def test_every_batch_draws_from_its_own_seed() -> None:
    """A batch's seed follows the project's state, so the random share of successive batches is drawn afresh
    (the app used to pass seed 0 to every batch) and a repeated call gives the same batch."""
    seeds = {batch_seed(0, r, n) for r in (None, 3, 4) for n in (0, 10, 20)}
    assert len(seeds) == 9
    assert batch_seed(0, 3, 10) == batch_seed(0, 3, 10) != batch_seed(1, 3, 10)
