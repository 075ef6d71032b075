"""The active-learning loop on phantoms: pretrain -> embed -> suggest -> label -> train -> suggest."""

from __future__ import annotations

import numpy as np
import pytest

from active.engine.labeling import record_label
from active.engine.policy import round_due
from active.engine.queue import suggest
from active.engine.rounds import embed, latest_round, pretrain, train
from active.views.status import status
from store.errors import CxrAlError


def _oracle(project) -> dict[int, str]:
    frame = project.db.oracle_labels()
    return dict(zip(frame["image_id"].astype(int), frame["label"], strict=True))


def _label_some(project, n: int, annotator: str = "frank") -> None:
    """Label the first n pool images not labeled yet with their hidden ground truth."""
    oracle = _oracle(project)
    labeled = set(project.db.current_labels()["image_id"])
    for image_id in [i for i in project.db.images("pool")["id"].astype(int) if i not in labeled][:n]:
        record_label(project, image_id, oracle[image_id], annotator)


def _label_each_class(project, per_class: int, annotator: str = "frank") -> None:
    """Label up to per_class more pool images of every class with their hidden ground truth, so a round can
    train whatever ran before (the pool's first images may all be of one class)."""
    oracle = _oracle(project)
    labeled = set(project.db.current_labels()["image_id"])
    free = [i for i in project.db.images("pool")["id"].astype(int) if i not in labeled]
    for cls in project.classes:
        for image_id in [i for i in free if oracle[i] == cls][:per_class]:
            record_label(project, image_id, cls, annotator)


@pytest.fixture(scope="module")
def looped(tmp_path_factory):
    """One phantom project taken through pretraining (in a child process, as the CLI does) and embedding."""
    from store.ingest import ingest_folder
    from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
    from store.project import init_project

    root = tmp_path_factory.mktemp("loop")
    data = write_phantom_dataset(root / "data", n=48, seed=5, size=64)
    project = init_project(root / "project", list(PHANTOM_CLASSES), image_size=64)
    ingest_folder(project.db, data / "images", project.classes, labels_from="folders", test_fraction=0.25, seed=0)
    pretrain(project, method="simclr", epochs=1, batch_size=16, max_steps=2, in_child=True, progress=False,
             augment="standard")
    embed(project, in_child=False, progress=False)
    return project


def test_pretrain_and_embed_are_recorded(looped) -> None:
    info = status(looped)
    assert info["embeddings"] == 48
    assert info["index"]["size"] == 48 and info["index"]["type"]
    run = latest_round(looped, "pretrain")
    assert run["status"] == "done" and run["checkpoint"].endswith(".pt")
    assert run["params"]["augment"] == "standard"
    assert np.isfinite(run["metrics"]["final_loss"])
    assert embed(looped, in_child=False, progress=False)["count"] == 0  # nothing new to embed
    # a new project joins the pooled middle and last blocks: 128 + 256 + 512 for a ResNet-18
    assert looped.config["embedding"] == "multiscale"
    done = looped.db.rounds("embed").iloc[-1]
    assert done["params"]["embedding"] == "multiscale" and done["metrics"]["dim"] == 896


def test_changing_the_embedding_embeds_every_image_again(tmp_path) -> None:
    """Vectors of two recipes are never mixed: a project switched to "last" re-embeds all of its images; one
    whose project.yaml predates the key keeps "last" (what it was embedded with)."""
    from store.embeddings import load_embeddings
    from store.ingest import ingest_folder
    from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
    from store.project import CONFIG_NAME, init_project, open_project, write_config

    data = write_phantom_dataset(tmp_path / "data", n=12, seed=3, size=48)
    project = init_project(tmp_path / "p", list(PHANTOM_CLASSES), image_size=48)
    ingest_folder(project.db, data / "images", project.classes, labels_from="folders", test_fraction=0.0)
    assert embed(project, init="random", in_child=False, progress=False)["count"] == 12
    _, multi, tag = load_embeddings(project.artifacts / "embeddings.parquet")
    assert multi.shape == (12, 896) and tag.endswith("|multiscale")
    config = dict(project.config)
    del config["embedding"]  # a project.yaml written before the key existed
    write_config(project.root / CONFIG_NAME, config)
    project = open_project(project.root)
    assert project.config["embedding"] == "last"
    assert embed(project, init="random", in_child=False, progress=False)["count"] == 12  # all again
    _, last, tag = load_embeddings(project.artifacts / "embeddings.parquet")
    assert last.shape == (12, 512) and not tag.endswith("multiscale")
    # the same backbone's last block: the multiscale vector's tail, up to the joint normalisation over 3 blocks
    np.testing.assert_allclose(multi[:, -512:] * np.sqrt(3), last, atol=1e-4)


def test_suggest_label_train_suggest(looped) -> None:
    oracle = _oracle(looped)
    test_ids = set(looped.db.images("test")["id"])
    first = suggest(looped, 8, strategy="auto", annotator="alice")
    second = suggest(looped, 8, strategy="auto", annotator="bob")
    assert len(first) == 8 and len(second) == 8
    assert not set(first["image_id"]) & set(second["image_id"])  # disjoint batches
    assert not (set(first["image_id"]) | set(second["image_id"])) & test_ids  # test split never queued
    assert status(looped)["queue"] == 16
    for image_id in list(first["image_id"]) + list(second["image_id"]):
        record_label(looped, int(image_id), oracle[int(image_id)], "alice" if image_id in set(first["image_id"])
                     else "bob", seconds_spent=1.0)
    assert status(looped)["queue"] == 0

    result = train(looped, mode="probe", in_child=False, progress=False, n_bootstrap=50)
    metrics = latest_round(looped, "train")["metrics"]
    for key in ("accuracy", "balanced_accuracy", "macro_auc", "macro_f1", "hm", "ece"):
        assert key in metrics
    assert metrics["n_train"] == 16
    preds = looped.db.predictions(result["round_id"])
    assert len(preds) == 48 and np.allclose([sum(p) for p in preds["probs"]], 1.0, atol=1e-4)

    after = suggest(looped, 4, strategy="auto", annotator="alice")
    assert len(after) == 4 and set(after["model_round"]) == {result["round_id"]}
    assert not set(after["image_id"]) & (set(first["image_id"]) | set(second["image_id"]))


def test_probe_round_writes_bootstrap_samples_for_bald(looped) -> None:
    from active.engine.artifacts import round_samples
    from active.engine.jobs import MC_SAMPLES
    from active.strategies import QueryInputs, select

    if latest_round(looped, "train") is None:
        _label_some(looped, 12)
        train(looped, mode="probe", in_child=False, progress=False, n_bootstrap=10)
    last = latest_round(looped, "train")
    samples = last["metrics"]["samples"]
    assert samples["kind"] == "bootstrap" and samples["T"] == MC_SAMPLES and "features" not in samples
    assert not samples["mc_probs"].startswith("/")  # recorded relative to the project root
    mc = np.load(looped.root / samples["mc_probs"])
    assert mc.shape == (MC_SAMPLES, 48, len(looped.classes))
    np.testing.assert_allclose(mc.sum(axis=2), 1.0, atol=1e-5)
    assert not np.allclose(mc[0], mc[1])  # the members differ

    pool = looped.db.images("pool")["id"].to_numpy(np.int64)[::-1]  # any order of ids: rows follow it
    mc_pool, features = round_samples(looped, int(last["id"]), pool)
    assert features is None and mc_pool.shape == (MC_SAMPLES, len(pool), len(looped.classes))
    ids = np.load(looped.root / samples["image_ids"])
    np.testing.assert_array_equal(mc_pool[:, 0], mc[:, int(np.flatnonzero(ids == pool[0])[0])])
    assert round_samples(looped, int(last["id"]), np.array([10_000])) == (None, None)  # not covered
    labeled = np.isin(pool, looped.db.current_labels()["image_id"])
    ranked = select("bald", QueryInputs(labeled=labeled, mc_probs=mc_pool), 4)
    assert len(ranked.indices) == 4 and not labeled[ranked.indices].any()


def test_failed_round_is_recorded_and_next_round_retries(looped, monkeypatch) -> None:
    labels_before = len(looped.db.current_labels())
    import active.engine.jobs as jobs

    def broken(spec, out):
        raise RuntimeError("simulated crash in the middle of training")

    monkeypatch.setattr(jobs.TrainJob, "run", broken)
    oracle = _oracle(looped)
    pool = looped.db.images("pool")["id"].astype(int).tolist()
    for image_id in pool[:4]:
        record_label(looped, image_id, oracle[image_id], "carol")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(looped, mode="probe", in_child=False, progress=False)
    rounds = looped.db.rounds("train")
    assert rounds.iloc[-1]["status"] == "failed" and "simulated crash" in rounds.iloc[-1]["error"]
    assert len(looped.db.current_labels()) == labels_before + 4
    monkeypatch.undo()
    train(looped, mode="probe", in_child=False, progress=False, n_bootstrap=20)
    assert looped.db.rounds("train").iloc[-1]["status"] == "done"


def test_round_policy_fires_after_n_new_labels(looped) -> None:
    looped.config["round_policy"] = {**looped.round_policy, "train_every": 3}
    oracle = _oracle(looped)
    labeled = set(looped.db.current_labels()["image_id"])
    fresh = [i for i in looped.db.images("pool")["id"].astype(int) if i not in labeled]
    assert not round_due(looped)
    for image_id in fresh[:2]:
        record_label(looped, image_id, oracle[image_id], "dave")
    assert not round_due(looped)
    record_label(looped, fresh[2], oracle[fresh[2]], "dave")
    assert round_due(looped)
    train(looped, mode="probe", in_child=False, progress=False, n_bootstrap=20)
    assert not round_due(looped)


def test_double_reading_sends_labeled_images_to_a_second_reader(looped) -> None:
    alice_only = looped.db.current_labels()
    alice_only = set(alice_only.loc[alice_only["annotator"] == "alice", "image_id"])
    queued = suggest(looped, 4, strategy="random", annotator="erin", double_read_fraction=0.5)
    doubles = queued[queued["strategy"] == "double-read"]
    assert len(doubles) == 2 and set(doubles["image_id"]) <= alice_only | set(
        looped.db.current_labels()["image_id"])


def test_training_needs_two_classes(tmp_path) -> None:
    from store.ingest import ingest_folder
    from store.phantoms import write_phantom_dataset
    from store.project import init_project

    data = write_phantom_dataset(tmp_path / "d", n=8, size=32)
    project = init_project(tmp_path / "p", ["Normal", "Consolidation", "GroundGlass", "Interstitial"], image_size=32)
    ingest_folder(project.db, data / "images", project.classes)
    record_label(project, 1, "Normal", "alice")
    with pytest.raises(CxrAlError, match="two classes"):
        train(project, mode="probe", in_child=False)
    assert project.db.rounds().empty  # refused before a round was opened


def test_explain_probe_round_and_neighbors(looped, tmp_path) -> None:
    from active.views.explain import explain, neighbors

    if latest_round(looped, "train") is None:  # run alone (-k explain): no earlier test trained a round
        _label_each_class(looped, 2)
        train(looped, mode="probe", in_child=False, progress=False, n_bootstrap=10)
    (result,) = explain(looped, [1], class_name="Consolidation")
    assert result["heatmap"].shape == (64, 64) and 0 <= result["heatmap"].min() <= result["heatmap"].max() <= 1
    assert result["class"] == "Consolidation" and abs(sum(result["probs"].values()) - 1) < 1e-4
    assert result["overlay_png"][:8] == b"\x89PNG\r\n\x1a\n"
    near = neighbors(looped, 1, k=5)
    assert len(near) == 5 and 1 not in set(near["image_id"])
    assert near["similarity"].is_monotonic_decreasing


def test_refresh_queue_after_a_round_replaces_stale_suggestions_but_keeps_claimed_ones(looped) -> None:
    from active.engine.queue import refresh_queue

    if latest_round(looped, "train") is None:
        train(looped, mode="probe", in_child=False, progress=False, n_bootstrap=20)
    round_id = int(latest_round(looped, "train")["id"])
    labeled = set(looped.db.current_labels()["image_id"])
    free = [i for i in looped.db.images("pool")["id"].astype(int) if i not in labeled
            and i not in set(looped.db.open_queue()["image_id"])]
    looped.db.add_to_queue([{"image_id": free[0], "annotator": None, "strategy": "typiclust", "model_round": None},
                            {"image_id": free[1], "annotator": "erin", "strategy": "typiclust", "model_round": None}])
    fresh = refresh_queue(looped)
    queue = looped.db.open_queue()
    stale = queue[(queue["image_id"] == free[0]) & queue["model_round"].isna()]
    assert stale.empty  # the stale unassigned suggestion expired (the new model may suggest it again)
    assert free[1] in set(queue.loc[queue["annotator"] == "erin", "image_id"])  # the claimed one stays
    assert len(fresh) == min(looped.round_policy["batch_size"], len(free) - 1)
    assert set(fresh["model_round"]) == {round_id}
    assert not set(fresh["image_id"]) & labeled


def test_finetune_round_writes_mc_dropout_samples_and_features(tmp_path) -> None:
    """A tiny fine-tuning round (32 px, 1 epoch, 16 images) records MC-dropout samples and penultimate features
    that BALD and BADGE take."""
    from active.engine.artifacts import round_samples
    from active.engine.jobs import MC_SAMPLES
    from active.strategies import QueryInputs, select
    from store.ingest import ingest_folder
    from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
    from store.project import init_project

    data = write_phantom_dataset(tmp_path / "data", n=16, seed=2, size=32)
    project = init_project(tmp_path / "project", list(PHANTOM_CLASSES), image_size=32)
    ingest_folder(project.db, data / "images", project.classes, labels_from="folders", labels_as="labels",
                  test_fraction=0.25, seed=0)
    result = train(project, mode="finetune", epochs=1, batch_size=8, device="cpu", in_child=False, progress=False,
                   n_bootstrap=10)
    samples = latest_round(project, "train")["metrics"]["samples"]
    assert samples["kind"] == "mc_dropout" and samples["T"] == MC_SAMPLES
    pool = project.db.images("pool")["id"].to_numpy(np.int64)
    mc, features = round_samples(project, result["round_id"], pool)
    assert mc.shape == (MC_SAMPLES, len(pool), 4) and features.shape == (len(pool), 512)
    np.testing.assert_allclose(mc.sum(axis=2), 1.0, atol=1e-5)
    assert not np.allclose(mc[0], mc[1])  # dropout is on by default in fine-tuning rounds
    preds = project.db.predictions(result["round_id"]).set_index("image_id")
    mean = mc.mean(axis=0)
    assert np.abs(mean - np.stack(preds.loc[pool, "probs"].to_numpy())).max() < 0.5  # samples around the model
    labeled = np.zeros(len(pool), dtype=bool)
    labeled[:2] = True
    inputs = QueryInputs(labeled=labeled, probs=mean, mc_probs=mc, features=features)
    for strategy in ("bald", "badge"):
        ranked = select(strategy, inputs, 4)
        assert len(ranked.indices) == 4 and not labeled[ranked.indices].any(), strategy
