"""Linear probe and end-to-end fine-tuning on phantoms: accuracy, checkpoints, MC dropout, features, tiny sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.backbones import build_backbone, save_checkpoint
from models.data import GreyImageDataset
from models.finetune import (
    Classifier,
    extract_features,
    finetune,
    load_classifier,
    predict_outputs,
    predict_proba,
    stratified_split,
)
from models.probe import fit_probe, fit_probe_ensemble
from store.errors import CxrAlError
from store.phantoms import iter_phantoms, render_phantom

SIZE = 64
PAIR_CLASSES = ["Normal", "Consolidation"]


def paired_phantoms(out: Path, seed: int, n_pairs: int, size: int = SIZE, min_contrast: float = 35.0):
    """Normal/Consolidation twins of the same patient (only the lesion differs), lesion clearly visible.

    Twins leave the lesion as the only cue, so a randomly initialised network learns it in a few
    epochs; `min_contrast` (mean grey-level rise inside the mask) drops the faintest lesions.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths, labels, masks = [], [], []
    i = 0
    while len(paths) < 2 * n_pairs:
        sick, mask = render_phantom("Consolidation", size, np.random.default_rng([seed, i]))
        healthy, _ = render_phantom("Normal", size, np.random.default_rng([seed, i]))
        i += 1
        if (sick.astype(float) - healthy)[mask].mean() < min_contrast:
            continue
        for label, pixels, m in ((0, healthy, np.zeros_like(mask)), (1, sick, mask)):
            path = out / f"s{seed}-{i:04d}-{label}.png"
            Image.fromarray(pixels, "L").save(path)
            paths.append(path), labels.append(label), masks.append(m)
    return paths, np.array(labels), np.array(masks)


@pytest.fixture(scope="module")
def phantom_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    train = paired_phantoms(root / "train", seed=11, n_pairs=60)
    test = paired_phantoms(root / "test", seed=12, n_pairs=20)
    return train, test


@pytest.fixture(scope="module")
def finetuned(phantom_pairs, tmp_path_factory):
    """ResNet-18 from random init, 64 px, 96 train / 24 val images, 10 epochs (~1 min on 2 cores)."""
    (paths, labels, _), _ = phantom_pairs
    out = tmp_path_factory.mktemp("finetune")
    return finetune(paths, labels, PAIR_CLASSES, out, image_size=SIZE, epochs=10, batch_size=8,
                    val_fraction=0.2, patience=0, mc_dropout=0.3, device="cpu", progress=False,
                    augment=False, seed=0)


def test_finetune_beats_chance_on_held_out_phantoms(finetuned, phantom_pairs):
    _, (test_paths, test_labels, _) = phantom_pairs
    probs = predict_proba(finetuned.classifier, test_paths, SIZE, device="cpu")
    assert probs.shape == (40, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float((probs.argmax(axis=1) == test_labels).mean())
    # measured 0.xx (seed 0); chance is 0.5, and 28/40 right by luck has p < 0.01
    assert accuracy >= 0.7


def test_finetune_history_and_best_checkpoint(finetuned):
    assert finetuned.device == "cpu"
    assert (finetuned.n_train, finetuned.n_val) == (96, 24)
    assert [row["epoch"] for row in finetuned.history] == list(range(10))  # patience=0: no early stop
    val_losses = [row["val_loss"] for row in finetuned.history]
    assert finetuned.best_epoch == int(np.argmin(val_losses))  # ModelCheckpoint kept the best epoch
    assert finetuned.history[-1]["train_loss"] < finetuned.history[0]["train_loss"]
    assert finetuned.checkpoint.name == "classifier.pt" and finetuned.checkpoint.is_file()
    assert not (finetuned.checkpoint.parent / "lightning").exists()


def test_checkpoint_reloads_to_identical_predictions(finetuned, phantom_pairs):
    _, (test_paths, _, _) = phantom_pairs
    reloaded, meta = load_classifier(finetuned.checkpoint)
    assert meta["classes"] == PAIR_CLASSES
    assert meta["image_size"] == SIZE and meta["dropout"] == pytest.approx(0.3)
    assert meta["best_epoch"] == finetuned.best_epoch
    before = predict_proba(finetuned.classifier, test_paths, SIZE, device="cpu")
    after = predict_proba(reloaded, test_paths, SIZE, device="cpu")
    np.testing.assert_array_equal(before, after)


def test_mc_dropout_samples_vary_and_are_seeded(finetuned, phantom_pairs):
    _, (test_paths, _, _) = phantom_pairs
    paths = test_paths[:12]
    probs, samples = predict_proba(finetuned.classifier, paths, SIZE, device="cpu", mc_samples=8, seed=3)
    assert samples.shape == (8, 12, 2)
    np.testing.assert_allclose(samples.sum(axis=2), 1.0, atol=1e-5)
    assert samples.std(axis=0).mean() > 1e-3  # dropout really is on
    _, again = predict_proba(finetuned.classifier, paths, SIZE, device="cpu", mc_samples=8, seed=3)
    np.testing.assert_array_equal(samples, again)
    _, other = predict_proba(finetuned.classifier, paths, SIZE, device="cpu", mc_samples=8, seed=4)
    assert not np.array_equal(samples, other)
    # deterministic probabilities are unchanged by drawing samples (dropout off for them)
    np.testing.assert_allclose(probs, predict_proba(finetuned.classifier, paths, SIZE, device="cpu"), atol=1e-6)
    no_dropout = Classifier(build_backbone("resnet18"), 2, dropout=0.0)
    with pytest.raises(CxrAlError, match="mc_dropout"):
        predict_proba(no_dropout, paths, SIZE, device="cpu", mc_samples=2)


def test_extract_features_are_the_backbone_output(finetuned, phantom_pairs):
    _, (test_paths, _, _) = phantom_pairs
    feats = extract_features(finetuned.classifier, test_paths[:6], SIZE, batch_size=4, device="cpu")
    assert feats.shape == (6, 512) and feats.dtype == np.float32
    x = torch.stack([GreyImageDataset(test_paths[:6], SIZE)[i][0] for i in range(6)])
    with torch.no_grad():
        expected = finetuned.classifier.eval().backbone(x).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)


def test_probe_on_phantom_features_beats_chance(finetuned, phantom_pairs):
    (train_paths, train_labels, _), (test_paths, test_labels, _) = phantom_pairs
    train_x = predict_outputs(finetuned.classifier, train_paths, SIZE, device="cpu").features
    test_x = extract_features(finetuned.classifier, test_paths, SIZE, device="cpu")
    probe = fit_probe(train_x, train_labels, n_classes=2)
    accuracy = float((probe.predict_proba(test_x).argmax(axis=1) == test_labels).mean())
    assert accuracy >= 0.7  # measured 0.xx; chance 0.5


def _clusters(n_classes=4, n=200, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    y = rng.integers(0, n_classes, n)
    return centres[y] + 0.8 * rng.normal(size=(n, dim)), y


def test_probe_keeps_all_class_columns_with_an_unlabelled_class():
    x, y = _clusters()
    keep = y != 2  # class 2 has no labels yet
    probe = fit_probe(x[keep], y[keep], n_classes=4)
    probs = probe.predict_proba(x)
    assert probs.shape == (200, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs[:, 2].max() < 1e-6
    assert (probs.argmax(1) == y)[keep].mean() > 0.9


@pytest.mark.parametrize("labelled", [[0, 1, 2, 3], [0, 1, 3], [1, 3], [2]])
def test_probe_torch_head_reproduces_predict_proba(labelled):
    x, y = _clusters()
    keep = np.isin(y, labelled)
    probe = fit_probe(x[keep], y[keep], n_classes=4, C=0.5)
    head = probe.to_torch_head()
    with torch.no_grad():
        torch_probs = torch.softmax(head(torch.as_tensor(x, dtype=torch.float32)), dim=1).numpy()
    np.testing.assert_allclose(torch_probs, probe.predict_proba(x), atol=1e-5)
    if labelled == [2]:  # one labelled class: it is all the probe can say
        assert np.allclose(probe.predict_proba(x)[:, 2], 1.0)


def test_probe_is_seconds_and_rejects_bad_labels():
    x, y = _clusters(n_classes=4, n=2000, dim=512)
    probe = fit_probe(x, y, 4)
    assert probe.predict_proba(x[:5]).shape == (5, 4)
    with pytest.raises(ValueError, match="class indices"):
        fit_probe(x[:10], np.full(10, 7), 4)


def test_bootstrap_probe_ensemble_gives_seeded_differing_samples_over_every_class():
    x, y = _clusters(n=120)
    keep = y != 2  # class 2 unlabelled: it stays a zero column in every member
    base = fit_probe(x[keep], y[keep], n_classes=4)
    ensemble = fit_probe_ensemble(x[keep], y[keep], 4, n_members=6, base=base, seed=1)
    samples = ensemble.predict_samples(x)
    assert samples.shape == (6, 120, 4) and samples.dtype == np.float32
    np.testing.assert_allclose(samples.sum(axis=2), 1.0, atol=1e-5)
    assert samples[:, :, 2].max() < 1e-6
    assert all(np.array_equal(lr.classes_, base.seen) for lr in ensemble.members)  # no class dropped out
    assert not np.allclose(samples[0], samples[1])  # members differ
    assert np.abs(samples.mean(axis=0) - base.predict_proba(x)).mean() < 0.05  # ... around the probe
    again = fit_probe_ensemble(x[keep], y[keep], 4, n_members=6, seed=1).predict_samples(x)
    np.testing.assert_array_equal(again, samples)  # seeded
    one_class = fit_probe_ensemble(x[:5], np.full(5, 3), 4, n_members=3).predict_samples(x)
    assert one_class.shape == (3, 120, 4) and np.allclose(one_class[:, :, 3], 1.0)
    with pytest.raises(ValueError, match="at least one member"):
        fit_probe_ensemble(x, y, 4, n_members=0)


def test_stratified_split_keeps_a_training_image_per_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(18))
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 1, 0, 0]  # round(0.2*n), never the last
    assert set(labels[train]) == {0, 1, 2, 3}
    again = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(again[1], val)


def test_tiny_labelled_set_trains_without_validation(tmp_path):
    phantoms = list(iter_phantoms(8, seed=5, size=32))
    paths, labels = [], []
    classes = sorted({p.label for p in phantoms})
    for ph in phantoms:
        path = tmp_path / f"{ph.image_id}.png"
        Image.fromarray(ph.pixels, "L").save(path)
        paths.append(path), labels.append(classes.index(ph.label))
    result = finetune(paths, labels, classes, tmp_path / "run", image_size=32, epochs=2, batch_size=4,
                      balance="sampler", device="cpu", progress=False)
    assert result.n_val == 0 and result.n_train == 8
    assert len(result.history) == 2 and "val_loss" not in result.history[0]
    assert result.best_epoch == 1  # no validation: the last epoch is kept
    classifier, meta = load_classifier(result.checkpoint)
    assert meta["classes"] == classes
    assert predict_proba(classifier, paths, 32, device="cpu").shape == (8, 4)


def test_finetune_and_load_reject_bad_input(tmp_path):
    with pytest.raises(CxrAlError, match="class indices"):
        finetune([tmp_path / "a.png"], [5], ["Normal", "COVID-19"], tmp_path, device="cpu")
    with pytest.raises(CxrAlError, match="labelled images"):
        finetune([], [], ["Normal", "COVID-19"], tmp_path, device="cpu")
    backbone_only = save_checkpoint(tmp_path / "ssl.pt", build_backbone("resnet18"), method="simclr")
    with pytest.raises(CxrAlError, match="without a classifier head"):
        load_classifier(backbone_only)
