"""Self-supervised pretraining: every method trains a few steps on phantoms, checkpoints, resumes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.augment import XrayAugmentConfig
from models.backbones import build_backbone, load_checkpoint, save_checkpoint
from models.embed import embed_paths
from models.ssl import pretrain
from store.errors import CxrAlError
from store.phantoms import write_phantom_dataset

SIZE = 32
FAST = XrayAugmentConfig(local_views=2)  # DINO with two local crops instead of six


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> list[str]:
    """Nine phantom radiographs: two batches of 4 per epoch, the ninth dropped (drop_last)."""
    root = write_phantom_dataset(tmp_path_factory.mktemp("pool"), n=9, seed=11, size=40)
    return sorted(str(p) for p in (root / "images").rglob("*.png"))


@pytest.fixture(scope="module")
def init_weights(tmp_path_factory) -> Path:
    """A known random starting point, so 'the weights changed' compares against exact initial values."""
    torch.manual_seed(123)
    return save_checkpoint(tmp_path_factory.mktemp("init") / "init.pt", build_backbone("resnet18"))


def _run(pool, out, **kw):
    args = dict(method="simclr", epochs=2, batch_size=4, image_size=SIZE, max_steps=3, progress=False,
                augment=FAST, seed=0, device="cpu")
    args.update(kw)
    return pretrain(pool, out, **args)


@pytest.mark.parametrize("method", ["simclr", "moco", "byol", "simsiam", "dino"])
def test_method_trains_and_writes_a_loadable_changed_backbone(method, pool, init_weights, tmp_path):
    result = _run(pool, tmp_path, method=method, init=str(init_weights))
    assert result.method == method and result.device == "cpu"
    # three steps (the momentum teachers see the student change from the second on): a whole
    # epoch of two batches, then one step into the second epoch, which still reports its loss
    assert result.steps == 3
    assert len(result.losses) == 2 and all(math.isfinite(v) for v in result.losses)
    assert result.images_per_second > 0 and result.wall_seconds > 0

    backbone, meta = load_checkpoint(result.checkpoint)
    assert meta["method"] == method and meta["image_size"] == SIZE and meta["init"] == str(init_weights)
    assert meta["losses"] == result.losses
    initial, _ = load_checkpoint(init_weights)
    before, after = initial.state_dict(), backbone.state_dict()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert any(k.endswith("conv1.weight") for k in changed), f"{method} left the convolutions untouched"
    with torch.no_grad():
        assert torch.isfinite(backbone.eval()(torch.rand(2, 1, SIZE, SIZE))).all()

    assert (tmp_path / "lightning" / "last.ckpt").is_file()
    with open(tmp_path / "loss.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["loss"]) for r in rows] == pytest.approx(result.losses, rel=1e-5)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_from_last_checkpoint_and_embeds(pool, tmp_path):
    first = _run(pool, tmp_path, epochs=1, max_steps=None)
    assert len(first.losses) == 1
    second = _run(pool, tmp_path, epochs=3, max_steps=None, resume=True)
    assert second.steps == 4  # epochs 2 and 3 only: epoch 1 came from last.ckpt
    assert second.losses[0] == first.losses[0] and len(second.losses) == 3
    _, meta = load_checkpoint(second.checkpoint)
    assert meta["steps"] == 6 and meta["epochs"] == 3

    # the pretrained checkpoint is what embedding reads, at its own image size
    vectors = embed_paths(second.checkpoint, pool, batch_size=4, progress=False, device="cpu")
    assert vectors.shape == (len(pool), 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    with pytest.raises(CxrAlError, match="cannot resume"):
        _run(pool, tmp_path, method="byol", resume=True)


def test_resume_without_a_checkpoint_is_a_user_error(pool, tmp_path):
    with pytest.raises(CxrAlError, match="nothing to resume"):
        _run(pool, tmp_path, resume=True)


def test_pool_smaller_than_a_batch_still_trains(pool, tmp_path):
    result = _run(pool[:3], tmp_path, batch_size=64, method="simsiam", epochs=1)
    assert result.steps == 1 and result.extra["batch_size"] == 3 and math.isfinite(result.losses[0])


def test_imagenet_init_without_cached_weights_is_a_user_error(pool, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(CxrAlError, match="ImageNet weights"):
        _run(pool, tmp_path / "out", init="imagenet")


@pytest.mark.parametrize("kw, match", [(dict(method="mae"), "unknown SSL method"),
                                       (dict(device="tpu"), "device"),
                                       (dict(max_steps=0), "max_steps")])
def test_bad_arguments_are_user_errors(pool, tmp_path, kw, match):
    with pytest.raises(CxrAlError, match=match):
        _run(pool, tmp_path, **kw)


def test_a_single_image_cannot_be_pretrained_on(pool, tmp_path):
    with pytest.raises(CxrAlError, match="at least 2 images"):
        _run(pool[:1], tmp_path)


def test_unreadable_image_in_the_pool_is_a_user_error_naming_it(pool, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(CxrAlError, match="broken.png"):
        _run(pool[:3] + [str(broken)], tmp_path / "out", batch_size=4, epochs=1)


def test_same_seed_same_result(pool, tmp_path):
    runs = [_run(pool[:4], tmp_path / str(i), method="byol", epochs=1, max_steps=2) for i in range(2)]
    assert runs[0].losses == runs[1].losses
    a, _ = load_checkpoint(runs[0].checkpoint)
    b, _ = load_checkpoint(runs[1].checkpoint)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
