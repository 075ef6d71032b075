"""Grad-CAM++ heatmaps, overlays and the pointing game (heatmap peak inside the phantom lesion mask)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from models.backbones import EmbeddingNet, build_backbone, save_checkpoint
from models.finetune import Classifier, finetune
from models.gradcam import (
    cam_target_layers,
    explain,
    explain_batch,
    heatmap_peak,
    overlay_png,
    pointing_game,
)
from models.probe import fit_probe
from models.round_model import load_round_model
from store.errors import CxrAlError
from store.phantoms import iter_phantoms, render_phantom


@pytest.fixture(scope="module")
def phantom_batch():
    """Six 64 px phantoms as a (6, 1, 64, 64) tensor in [0, 1], with their uint8 pixels."""
    phantoms = list(iter_phantoms(6, seed=2, size=64))
    pixels = np.stack([p.pixels for p in phantoms])
    return torch.from_numpy(pixels).float().unsqueeze(1) / 255.0, pixels


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return Classifier(build_backbone("resnet18"), 4, dropout=0.2)


def test_heatmap_shapes_range_and_predicted_class(classifier, phantom_batch):
    x, _ = phantom_batch
    out = explain_batch(classifier, x)
    assert out.heatmaps.shape == (6, 64, 64) and out.heatmaps.dtype == np.float32
    assert out.heatmaps.min() >= 0.0 and out.heatmaps.max() <= 1.0
    assert np.allclose(out.heatmaps.reshape(6, -1).max(axis=1), 1.0, atol=1e-3)  # each map scaled to its peak
    assert out.probs.shape == (6, 4)
    np.testing.assert_array_equal(out.class_indices, out.probs.argmax(axis=1))  # None = predicted class
    chosen = explain_batch(classifier, x, class_indices=[3, 2, 1, 0, 3, 2])
    np.testing.assert_array_equal(chosen.class_indices, [3, 2, 1, 0, 3, 2])
    assert not np.allclose(chosen.heatmaps, out.heatmaps)  # a different class gives a different map


def test_batching_paths_and_model_state(classifier, phantom_batch, tmp_path):
    x, pixels = phantom_batch
    whole = explain(classifier, x, [1] * 6, batch_size=16)
    np.testing.assert_allclose(explain(classifier, x, [1] * 6, batch_size=4), whole, atol=1e-5)
    paths = []
    for i, img in enumerate(pixels):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img, "L").save(paths[-1])
    np.testing.assert_allclose(explain(classifier, paths, [1] * 6, image_size=64), whole, atol=1e-5)
    classifier.train()
    explain(classifier, x[:2])
    assert classifier.training  # mode restored
    assert not classifier.backbone.cam_target_layer()._forward_hooks  # hooks released
    with pytest.raises(ValueError, match="image_size"):
        explain(classifier, paths)


def test_frozen_backbone_with_probe_head(phantom_batch):
    x, _ = phantom_batch
    torch.manual_seed(0)
    backbone = build_backbone("resnet18").eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        feats = backbone(x).numpy()
    probe = fit_probe(feats, np.array([0, 1, 0, 1, 0, 1]), n_classes=3)
    model = nn.Sequential(backbone, probe.to_torch_head())
    out = explain_batch(model, x, class_indices=[1] * 6)
    assert out.heatmaps.shape == (6, 64, 64)
    assert out.heatmaps.max() > 0.99  # gradients reached the frozen layer through the input
    np.testing.assert_allclose(out.probs, probe.predict_proba(feats), atol=1e-5)


def test_probe_on_a_multiscale_embedding_explains_through_every_pooled_block(phantom_batch, tmp_path):
    """A probe round on "multiscale" vectors: its saved model maps images to the probe's own probabilities, and
    Grad-CAM++ hooks layer2, layer3 and layer4 (the decision depends on all three), releasing them after."""
    x, _ = phantom_batch
    torch.manual_seed(0)
    backbone = build_backbone("resnet18").eval()
    embedder = EmbeddingNet(backbone, "multiscale")
    with torch.no_grad():
        feats = embedder(x).numpy()
    assert feats.shape == (6, 896)
    probe = fit_probe(feats, np.array([0, 1, 0, 1, 0, 1]), n_classes=3)
    path = save_checkpoint(tmp_path / "classifier.pt", backbone, head=probe.to_torch_head().state_dict(),
                           head_kind="probe", embedding="multiscale", classes=["a", "b", "c"], image_size=64)
    model, _ = load_round_model(path)
    layers = cam_target_layers(model)
    assert [layer is backbone_layer for layer, backbone_layer in
            zip(layers, (model[0].backbone.trunk.layer2, model[0].backbone.trunk.layer3,
                         model[0].backbone.trunk.layer4[-1]), strict=True)] == [True, True, True]
    out = explain_batch(model, x, class_indices=[1] * 6)
    assert out.heatmaps.shape == (6, 64, 64) and out.heatmaps.max() > 0.99
    np.testing.assert_allclose(out.probs, probe.predict_proba(feats), atol=1e-5)
    assert not any(layer._forward_hooks for layer in layers)
    last_only = EmbeddingNet(backbone, "last")
    assert cam_target_layers(nn.Sequential(last_only, probe.to_torch_head())) == [backbone.trunk.layer4[-1]]
    with pytest.raises(CxrAlError, match="unknown embedding"):
        EmbeddingNet(backbone, "middle")


def test_overlay_png(phantom_batch, tmp_path):
    _, pixels = phantom_batch
    heat = np.zeros((16, 16), np.float32)
    heat[4:8, 10:14] = 1.0  # a coarse map is resized to the X-ray
    data = overlay_png(pixels[0], heat, tmp_path / "sub" / "overlay.png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "sub" / "overlay.png").read_bytes() == data
    rgb = np.asarray(Image.open(io.BytesIO(data)))
    assert rgb.shape == (64, 64, 3)
    hot, cold = rgb[20:28, 44:52].astype(int), rgb[44:52, 8:16].astype(int)
    assert (hot[..., 0] - hot[..., 2]).mean() > 50  # jet: red where the heatmap is high
    assert (cold[..., 2] - cold[..., 0]).mean() > 0  # blue where it is low
    inferno = overlay_png(pixels[0], heat, colormap="inferno")
    assert inferno != data


def test_pointing_game_rules():
    masks = np.zeros((3, 32, 32), bool)
    masks[0, 5:10, 5:10] = True
    masks[1, 20:25, 20:25] = True  # masks[2] empty: a Normal image, skipped
    heat = np.zeros((3, 32, 32), np.float32)
    heat[0, 7, 7] = 1.0  # inside
    heat[1, 20, 14] = 1.0  # 6 px left of the lesion
    heat[2, 0, 0] = 1.0
    assert pointing_game(heat, masks) == 0.5
    assert pointing_game(heat, masks, tolerance=6) == 1.0
    assert pointing_game(heat, masks, tolerance=5) == 0.5
    flat = np.zeros((32, 32), np.float32)
    flat[0:10, 0:10] = 1.0  # a corner cell of a coarse CAM, upsampled with edge clamping: a plateau to the edge
    assert heatmap_peak(flat) == (9, 9)  # the plateau's innermost pixel (the cell centre), not its mean
    coarse = np.zeros((4, 4), np.float32)
    coarse[3, 0] = 1.0
    upsampled = cv2.resize(coarse, (32, 32), interpolation=cv2.INTER_LINEAR)  # as pytorch-grad-cam scales CAMs
    row, col = heatmap_peak(upsampled)
    assert 26 <= row <= 29 and 2 <= col <= 5  # the cell (3, 0) covers rows 24-31, cols 0-7; its centre is (28, 4)
    with pytest.raises(ValueError, match="non-empty"):
        pointing_game(heat[2:], masks[2:])
    with pytest.raises(ValueError, match="shape"):
        pointing_game(heat, masks[:, :16])


CAM_SIZE = 128  # ResNet's stride 32 gives a 4x4 map here; 64 px would give 2x2, too coarse to point
PATCH = 64
CELL = 32  # the CAM's cell: ResNet-18's layer-4 stride
THRESHOLD = 0.5  # pointing-game hit rate a working model must reach; random heatmaps must stay below half


def _twins(seed: int, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(healthy, sick, lesion mask) of one phantom patient at CAM_SIZE: only the lesion differs."""
    sick, mask = render_phantom("Consolidation", CAM_SIZE, np.random.default_rng([seed, i]))
    healthy, _ = render_phantom("Normal", CAM_SIZE, np.random.default_rng([seed, i]))
    return healthy, sick, mask


def _clear_twins(seed: int, n: int, min_contrast: float = 35.0):
    """n twin pairs whose lesion is clearly visible (mean grey-level rise inside the mask >= min_contrast)."""
    i = 0
    while n:
        healthy, sick, mask = _twins(seed, i)
        i += 1
        if (sick.astype(float) - healthy)[mask].mean() >= min_contrast:
            n -= 1
            yield healthy, sick, mask


def _patch_dataset(out: Path, seed: int, n_pairs: int, min_contrast: float):
    """64 px training windows on the 32 px cell grid of the whole-image CAM (offsets 0, 32, 64), so each
    training cell is a cell of the 4x4 map Grad-CAM++ explains, corner and edge cells included.

    Per twin pair: a window holding most of the lesion from the sick twin (Consolidation), the same
    window from the healthy twin (Normal: only the lesion differs) and a random grid window from the
    healthy twin (Normal: body edge, spine, heart, image corners). The model learns the lesion itself.
    """
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    offsets = np.arange(0, CAM_SIZE - PATCH + 1, CELL)
    paths, labels = [], []

    def save(pixels, top, left, label):
        paths.append(out / f"{len(paths):04d}-{label}.png")
        Image.fromarray(pixels[top:top + PATCH, left:left + PATCH], "L").save(paths[-1])
        labels.append(label)

    for healthy, sick, mask in _clear_twins(seed, n_pairs, min_contrast):
        cover = {(t, c): mask[t:t + PATCH, c:c + PATCH].sum() for t in offsets for c in offsets}
        windows = [w for w, n in cover.items() if n >= 0.8 * mask.sum()] or [max(cover, key=cover.get)]
        top, left = windows[rng.integers(len(windows))]
        save(sick, top, left, 1)
        save(healthy, top, left, 0)
        save(healthy, *rng.choice(offsets, size=2), 0)
    return paths, np.array(labels)


@pytest.mark.slow
def test_pointing_game_after_finetuning_beats_random_heatmaps(tmp_path):
    """Fine-tune Normal vs Consolidation, then point at lesions of held-out whole 128 px phantoms.

    Trained on whole small images, a from-scratch ResNet-18's layer-4 cells each see the entire
    image, and Grad-CAM++ peaks anywhere: measured hit rate 0.0 at 90% p(sick) (128 px twins, 120
    images, 10 epochs, no augmentation; ~2 CPU minutes). Its head stays near its random init and
    every layer-4 channel is active everywhere, so the map of the positively weighted channels is
    anatomy (image corners, body edge), and the lesion only adds a diffuse increment.
    Trained on 64 px windows at random offsets: 0.03, peaks on the image corners, which such
    windows almost never show as a corner. Windows on the CAM's 32 px cell grid make every
    training cell an inference cell, at a quarter of the cost per image of whole images.
    """
    train_paths, train_labels = _patch_dataset(tmp_path / "patches", seed=11, n_pairs=60, min_contrast=50.0)
    result = finetune(train_paths, train_labels, ["Normal", "Consolidation"], tmp_path / "run",
                      image_size=PATCH, epochs=15, batch_size=8, val_fraction=0.0, device="cpu",
                      progress=False, augment=True, seed=0)
    sick, masks = [], []
    for _, pixels, mask in _clear_twins(seed=12, n=40, min_contrast=50.0):
        sick.append(torch.from_numpy(pixels).float()[None] / 255.0)
        masks.append(mask)
    masks = np.array(masks)
    out = explain_batch(result.classifier, torch.stack(sick), class_indices=[1] * len(sick))
    tolerance = 8  # pixels: a quarter of the CAM's cell; 1/16 of the image (Zhang et al.'s 15 px at 224 px)
    hit_rate = pointing_game(out.heatmaps, masks, tolerance)
    exact = pointing_game(out.heatmaps, masks)
    rng = np.random.default_rng(0)
    random_rates = [pointing_game(rng.uniform(size=out.heatmaps.shape), masks, tolerance) for _ in range(20)]
    print(f"pointing game: model {hit_rate:.2f} (exact {exact:.2f}), "
          f"random mean {np.mean(random_rates):.3f} max {max(random_rates):.3f}, "
          f"p(sick) on whole images {out.probs[:, 1].mean():.2f}")
    # measured (40 held-out phantoms, 2 shared CPU cores, ~55 s): fine-tuned 0.68 (exact 0.30); random mean 0.060,
    # max 0.100 over 20 draws. p(sick) on whole images is low (~0.15): the lesion fills one of 16 cells
    # that the global pooling averages, while the model was trained on 4-cell windows; the map still points.
    assert max(random_rates) < THRESHOLD / 2
    assert hit_rate >= THRESHOLD
