"""Labeling sessions: queue order, atomic claims (disjoint images under concurrency), skip, unsure, undo."""

from __future__ import annotations

import threading

import pytest

from active.engine import labeling
from store.errors import CxrAlError
from store.ingest import ingest_folder
from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
from store.project import init_project


@pytest.fixture
def project(tmp_path):
    data = write_phantom_dataset(tmp_path / "data", n=24, seed=3, size=48)
    project = init_project(tmp_path / "p", list(PHANTOM_CLASSES), image_size=32)
    project.config["round_policy"]["train_every"] = 0
    project.save_config()
    ingest_folder(project.db, data / "images", project.classes, labels_from="folders", labels_as="oracle",
                  test_fraction=0.25, seed=0)
    return project


def queue(project, image_ids, annotator=None, strategy="margin"):
    project.db.add_to_queue([{"image_id": int(i), "annotator": annotator, "strategy": strategy, "score": 0.5,
                              "model_round": 3, "rank": k} for k, i in enumerate(image_ids)])


def test_suggestions_first_then_pool_never_test_images(project):
    pool = project.db.images("pool")["id"].tolist()
    test = set(project.db.images("test")["id"])
    queue(project, pool[5:8])
    ls = labeling.start_labeling(project, "alice")
    shown = []
    while (current := labeling.current_image(ls)) is not None:
        shown.append(current)
        labeling.label_current(ls, "Normal", seconds_spent=1.0)
    assert [c["image_id"] for c in shown[:3]] == pool[5:8]
    assert [c["strategy"] for c in shown[:3]] == ["margin"] * 3 and shown[0]["remaining"] == 3
    assert {c["source"] for c in shown[3:]} == {"pool"}
    assert sorted(c["image_id"] for c in shown) == sorted(pool) and not test & {c["image_id"] for c in shown}
    labels = project.db.current_labels()
    assert len(labels) == len(pool) and set(labels["annotator"]) == {"alice"}
    assert project.db.open_queue().empty


def test_two_sessions_get_disjoint_images_even_when_racing(project):
    pool = project.db.images("pool")["id"].tolist()
    queue(project, pool[:6])
    sessions = {name: labeling.start_labeling(project, name) for name in ("bob", "carol")}
    seen: dict[str, list[int]] = {name: [] for name in sessions}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(name):
        try:
            ls = sessions[name]
            for _ in range(6):
                barrier.wait(timeout=30)
                current = labeling.current_image(ls)
                if current is None:
                    return
                seen[name].append(current["image_id"])
                labeling.label_current(ls, "Consolidation")
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(name,)) for name in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert not set(seen["bob"]) & set(seen["carol"])
    labels = project.db.current_labels()
    for name in sessions:
        assert sorted(labels.loc[labels["annotator"] == name, "image_id"]) == sorted(seen[name])
    assert set(pool[:6]) <= set(seen["bob"]) | set(seen["carol"])  # the suggestions went first


def test_a_stale_snapshot_never_shows_an_image_labeled_meanwhile(project):
    pool = project.db.images("pool")["id"].tolist()
    queue(project, pool[:2])
    ls = labeling.start_labeling(project, "alice")
    first = labeling.current_image(ls)["image_id"]  # snapshot taken: pool[1] and the pool are candidates
    project.db.add_label(pool[1], "Normal", "bob")  # labeled elsewhere (CLI, another app server)
    project.db.add_label(pool[2], "Normal", "bob")
    labeling.label_current(ls, "Normal")
    following = labeling.current_image(ls)["image_id"]
    assert first == pool[0] and following not in (pool[1], pool[2])


def test_skip_and_unsure_pass_the_image_on(project):
    pool = project.db.images("pool")["id"].tolist()
    queue(project, pool[:2])
    alice = labeling.start_labeling(project, "alice")
    skipped = labeling.current_image(alice)["image_id"]
    labeling.skip_current(alice)
    unsure = labeling.current_image(alice)["image_id"]
    assert labeling.mark_unsure(alice) is True
    assert labeling.current_image(alice)["image_id"] not in (skipped, unsure)
    assert {skipped, unsure} == set(pool[:2])
    assert set(project.db.events("skip")["actor"]) == {"alice"} and len(project.db.events("unsure")) == 1
    second = project.db.open_queue()
    second = second[second["strategy"] == "second-read"]
    assert second["image_id"].tolist() == [unsure] and second["annotator"].isna().all()
    # a fresh session for alice (new browser tab) does not offer them again; bob gets the unsure one first
    assert labeling.current_image(labeling.start_labeling(project, "alice"))["image_id"] not in (skipped, unsure)
    bob = labeling.current_image(labeling.start_labeling(project, "bob"))
    assert bob["image_id"] == unsure and bob["strategy"] == "second-read"
    assert project.db.current_labels().empty  # nothing labeled by passing on


def test_undo_shows_the_image_again_and_a_stale_key_press_is_refused(project):
    ls = labeling.start_labeling(project, "alice")
    first = labeling.current_image(ls)["image_id"]
    labeling.label_current(ls, "GroundGlass", image_id=first)
    second = labeling.current_image(ls)["image_id"]
    with pytest.raises(CxrAlError, match="no longer shown"):
        labeling.label_current(ls, "Normal", image_id=first)  # a double key press meant for the old image
    undone = labeling.undo_last_label(ls)
    assert undone["image_id"] == first and ls.current["source"] == "undo"
    assert project.db.current_labels().empty
    labeling.label_current(ls, "Interstitial", image_id=first)
    assert labeling.current_image(ls)["image_id"] == second  # the image shown before the undo comes back
    history = project.db.label_history(first)
    assert list(history["label"]) == ["GroundGlass", "Interstitial"]
    assert history["superseded_by"].notna().sum() == 1  # the withdrawn label is kept, superseded
    assert labeling.undo_last_label(labeling.start_labeling(project, "nobody")) is None
    with pytest.raises(CxrAlError, match="unknown class|not a class|class"):
        labeling.label_current(ls, "Pneumothorax")


def test_upcoming_is_what_comes_next_and_claims_nothing(project):
    pool = project.db.images("pool")["id"].tolist()
    queue(project, pool[2:5])
    ls = labeling.start_labeling(project, "alice")
    first = labeling.current_image(ls)
    ahead = labeling.upcoming(ls, 2)
    assert first["image_id"] == pool[2] and [a["image_id"] for a in ahead] == pool[3:5]
    assert all(a["path"] for a in ahead)
    open_entries = project.db.open_queue()
    claimed = open_entries[open_entries["annotator"] == "alice"]
    assert claimed["image_id"].tolist() == [pool[2]]  # only the shown one is claimed
    labeling.skip_current(ls)
    assert labeling.current_image(ls)["image_id"] == ahead[0]["image_id"]
    assert pool[2] not in [a["image_id"] for a in labeling.upcoming(ls, 10)]


def test_a_test_image_is_labeled_only_on_request_and_never_changes_test_metrics(project, tmp_path):
    from active.engine.rounds import ground_truth
    from active.views.review import relabel

    test_id = int(project.db.images("test")["id"].iloc[0])
    truth = project.db.oracle_labels().set_index("image_id")["label"][test_id]
    other = next(c for c in project.classes if c != truth)
    with pytest.raises(CxrAlError, match="test split.*--test-split"):
        labeling.record_label(project, test_id, other, "alice")
    with pytest.raises(CxrAlError, match="test split"):
        relabel(project, test_id, other, "lena", any_image=True)
    assert project.db.label_history(test_id).empty  # refused: nothing written
    labeling.record_label(project, test_id, other, "alice", test_split=True)
    assert project.db.label_history(test_id)["source"].tolist() == ["test-split"]  # shown as such
    pool_id = int(project.db.images("pool")["id"].iloc[0])
    labeling.record_label(project, pool_id, "Normal", "alice", test_split=True)  # on a pool image: a label
    assert project.db.label_history(pool_id)["source"].tolist() == ["cli"]
    truth_now = ground_truth(project).set_index("image_id")
    assert truth_now.loc[test_id, "label"] == truth and truth_now.loc[test_id, "split"] == "test"
    assert truth_now.loc[pool_id, "label"] == "Normal"

    data = write_phantom_dataset(tmp_path / "imported", n=12, seed=4, size=32)
    imported = init_project(tmp_path / "q", list(PHANTOM_CLASSES), image_size=32)
    ingest_folder(imported.db, data / "images", imported.classes, labels_from="folders", labels_as="labels",
                  test_fraction=0.5, seed=0)
    test_id = int(imported.db.images("test")["id"].iloc[0])
    given = imported.db.current_labels().set_index("image_id")["label"][test_id]  # imported with the image
    other = next(c for c in imported.classes if c != given)
    labeling.record_label(imported, test_id, other, "alice", test_split=True)
    assert ground_truth(imported).set_index("image_id").loc[test_id, "label"] == given


def test_annotators_walking_one_queue_cost_one_write_per_label(project, monkeypatch):
    """Four annotators take turns on one queue (each one's snapshot starts at the same head): every image goes to
    exactly one of them, and after the first image a key press costs one database write (the label and the next
    claim together), not one more per image another annotator took meanwhile."""
    from store.db import ProjectDB

    pool = project.db.images("pool")["id"].tolist()
    queue(project, pool[:12])
    sessions = [labeling.start_labeling(project, name) for name in ("alice", "bob", "carol", "dave")]
    shown = {ls.annotator: [labeling.current_image(ls)["image_id"]] for ls in sessions}
    writes = []
    original = ProjectDB.write

    def counted(self):
        writes.append(1)
        return original(self)

    monkeypatch.setattr(ProjectDB, "write", counted)
    for _ in range(2):
        for ls in sessions:
            labeling.label_current(ls, "Normal", seconds_spent=1.0)
            shown[ls.annotator].append(labeling.current_image(ls)["image_id"])
    everything = [i for ids in shown.values() for i in ids]
    assert len(everything) == len(set(everything)) == 12  # disjoint: nobody got an image twice
    assert set(everything) == set(pool[:12])  # in queue order, none skipped over
    assert len(writes) == 8  # 8 key presses, 8 writes
    labels = project.db.current_labels()
    assert len(labels) == 8 and labels.groupby("annotator").size().tolist() == [2, 2, 2, 2]
