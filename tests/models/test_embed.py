"""Embeddings: unit vectors of the backbone's width, repeatable, independent of batching, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbones import build_backbone, save_checkpoint
from models.embed import embed_images, embed_paths
from models.runtime import resolve_device
from store.errors import CxrAlError
from store.phantoms import write_phantom_dataset


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    root = write_phantom_dataset(tmp_path_factory.mktemp("emb"), n=5, seed=2, size=48)
    return sorted(str(p) for p in (root / "images").rglob("*.png"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(9)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "backbone.pt", build_backbone("resnet18"),
                           method="simclr", image_size=40)


def test_unit_norm_shape_and_repeatable(images, checkpoint):
    a = embed_paths(checkpoint, images, batch_size=2, progress=False, device="cpu")
    b = embed_paths(checkpoint, images, batch_size=2, progress=False, device="cpu")
    assert a.shape == (len(images), 512) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[0] - a[1]).max() > 1e-4  # different images, different vectors


def test_batching_does_not_change_the_vectors(images, checkpoint):
    one_batch = embed_paths(checkpoint, images, batch_size=len(images), progress=False, device="cpu")
    small = embed_paths(checkpoint, images, batch_size=2, progress=False, device="cpu")
    np.testing.assert_allclose(one_batch, small, atol=1e-5)  # eval mode: no batch statistics


def test_image_size_defaults_to_the_checkpoints(images, checkpoint):
    default = embed_paths(checkpoint, images, progress=False, device="cpu")
    at_40 = embed_paths(checkpoint, images, image_size=40, progress=False, device="cpu")
    at_64 = embed_paths(checkpoint, images, image_size=64, progress=False, device="cpu")
    np.testing.assert_array_equal(default, at_40)
    assert np.abs(default - at_64).max() > 1e-4


def test_without_a_checkpoint_a_seeded_random_backbone_is_used(images):
    a = embed_paths(None, images, image_size=32, progress=False, device="cpu")
    b = embed_paths(None, images, image_size=32, progress=False, device="cpu")
    other = embed_paths(None, images, image_size=32, progress=False, device="cpu", seed=1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - other).max() > 1e-4


def test_embed_images_keeps_the_models_mode_and_handles_no_paths(images):
    model = build_backbone("resnet18").train()
    assert embed_images(model, [], image_size=32, progress=False, device="cpu").shape == (0, 512)
    out = embed_images(model, images[:2], image_size=32, progress=False, device="cpu")
    assert out.shape == (2, 512) and model.training


def test_multiscale_joins_pooled_blocks_each_weighing_the_same(images, checkpoint):
    multi = embed_paths(checkpoint, images, progress=False, device="cpu", embedding="multiscale")
    last = embed_paths(checkpoint, images, progress=False, device="cpu")
    assert multi.shape == (len(images), 128 + 256 + 512)
    np.testing.assert_allclose(np.linalg.norm(multi, axis=1), 1.0, atol=1e-5)
    for block in (multi[:, :128], multi[:, 128:384], multi[:, 384:]):  # layer2, layer3, layer4: 1/3 of the norm each
        np.testing.assert_allclose(np.linalg.norm(block, axis=1) ** 2, 1 / 3, atol=1e-5)
    np.testing.assert_allclose(multi[:, 384:] * np.sqrt(3), last, atol=1e-5)
    one_batch = embed_paths(checkpoint, images, batch_size=len(images), progress=False, device="cpu",
                            embedding="multiscale")
    np.testing.assert_allclose(one_batch, multi, atol=1e-5)  # the hooks leave nothing behind between batches
    model = build_backbone("resnet18")
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(CxrAlError, match="unknown embedding 'middle'"):
        embed_images(model, images, image_size=32, progress=False, device="cpu", embedding="middle")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_image_is_a_user_error_naming_the_file(images, tmp_path, num_workers):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(CxrAlError, match="broken.png"):
        embed_paths(None, [images[0], str(broken)], image_size=32, progress=False, device="cpu",
                    num_workers=num_workers)


def test_imagenet_init_without_cached_weights_is_a_user_error(images, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(CxrAlError, match="ImageNet weights"):
        embed_paths(None, images, init="imagenet", progress=False, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(CxrAlError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
