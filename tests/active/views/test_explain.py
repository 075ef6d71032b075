"""Explaining images with a round's model: loaded once per process, reloaded when its checkpoint changes."""

from __future__ import annotations

import os

import numpy as np
import pytest

import models.round_model
from active.views import explain as explain_view
from store.errors import CxrAlError

SIZE = 32


def _probe_checkpoint(path, classes, seed: int):
    """A backbone with random weights and a probe head: a round model as a probe round writes it."""
    import torch

    from models.backbones import build_backbone, save_checkpoint
    from models.probe import ProbeHead

    torch.manual_seed(seed)
    backbone = build_backbone("resnet18", "random")
    rng = np.random.default_rng(seed)
    head = ProbeHead(rng.normal(size=(len(classes), backbone.feature_dim)), rng.normal(size=len(classes)))
    return save_checkpoint(path, backbone, head=head.state_dict(), head_kind="probe", classes=classes,
                           image_size=SIZE)


@pytest.fixture
def explained(tmp_path, monkeypatch):
    """A phantom project whose latest training round holds a probe model, a fresh model cache, and a list that
    records every model load."""
    from store.ingest import ingest_folder
    from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
    from store.project import init_project

    data = write_phantom_dataset(tmp_path / "phantoms", n=8, seed=1, size=SIZE)
    project = init_project(tmp_path / "project", list(PHANTOM_CLASSES), image_size=SIZE)
    ingest_folder(project.db, data / "images", project.classes)
    checkpoint = _probe_checkpoint(project.root / "artifacts" / "classifier.pt", project.classes, seed=0)
    round_id = project.db.start_round("train", {"mode": "probe"})
    project.db.finish_round(round_id, checkpoint="artifacts/classifier.pt")

    loads = []
    real = models.round_model.load_round_model

    def counting(path):
        loads.append(str(path))
        return real(path)

    monkeypatch.setattr(models.round_model, "load_round_model", counting)
    monkeypatch.setattr(explain_view, "ROUND_MODELS", explain_view.RoundModelCache())
    return project, checkpoint, loads


def test_second_explain_reuses_the_loaded_model(explained) -> None:
    project, _, loads = explained
    (first,) = explain_view.explain(project, [1])
    (second,) = explain_view.explain(project, [1])
    assert len(loads) == 1 and explain_view.ROUND_MODELS.loads == 1
    np.testing.assert_allclose(second["heatmap"], first["heatmap"], atol=1e-6)
    assert second["class"] == first["class"] and second["probs"] == pytest.approx(first["probs"])
    # the same round asked for by its id (another key path to the same file) is the same model too
    (by_id,) = explain_view.explain(project, [1], round_id=1)
    assert len(loads) == 1
    np.testing.assert_allclose(by_id["heatmap"], first["heatmap"], atol=1e-6)


def test_a_batch_loads_once_and_matches_single_calls(explained) -> None:
    project, _, loads = explained
    batch = explain_view.explain(project, [1, 2, 3, 4])
    assert len(loads) == 1
    assert [r["image_id"] for r in batch] == [1, 2, 3, 4]
    (third,) = explain_view.explain(project, [3])
    np.testing.assert_allclose(third["heatmap"], batch[2]["heatmap"], atol=1e-5)
    assert len(loads) == 1


def test_a_rewritten_checkpoint_is_loaded_again_and_replaces_the_old_one(explained) -> None:
    project, checkpoint, loads = explained
    explain_view.explain(project, [1])
    _probe_checkpoint(checkpoint, project.classes, seed=1)  # a new model under the same name
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # coarse clocks: surely newer
    explain_view.explain(project, [1])
    assert len(loads) == 2
    assert len(explain_view.ROUND_MODELS._models) == 1  # the old version is dropped, not kept beside it


def test_cache_is_bounded_least_recently_used_first(explained, tmp_path) -> None:
    project, checkpoint, loads = explained
    cache = explain_view.RoundModelCache(size=2)
    others = [_probe_checkpoint(tmp_path / f"m{k}.pt", project.classes, seed=k) for k in (1, 2)]
    cache.get(checkpoint)
    cache.get(others[0])
    cache.get(checkpoint)  # used again: the older one is now others[0]
    cache.get(others[1])
    assert cache.loads == 3
    cache.get(checkpoint)
    assert cache.loads == 3  # still held
    cache.get(others[0])
    assert cache.loads == 4  # it was the one dropped


def test_two_threads_asking_at_once_load_one_model(explained) -> None:
    from concurrent.futures import ThreadPoolExecutor

    project, checkpoint, loads = explained
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: explain_view.ROUND_MODELS.get(checkpoint), range(4)))
    assert len(loads) == 1 and all(r[0] is results[0][0] for r in results)


def test_missing_checkpoint_is_a_user_error(explained) -> None:
    project, checkpoint, _ = explained
    checkpoint.unlink()
    with pytest.raises(CxrAlError, match="no checkpoint"):
        explain_view.explain(project, [1])
