"""Radiograph augmentations: one channel, the asked size, [0, 1], no flips by default, repeatable under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.augment import XrayAugmentConfig, ssl_transform, xray_view_transform
from store.errors import CxrAlError
from store.phantoms import iter_phantoms


@pytest.fixture(scope="module")
def radiograph() -> Image.Image:
    phantom = next(iter(iter_phantoms(1, seed=5, size=64)))
    return Image.fromarray(phantom.pixels, "L")


def _seeded_views(transform, image, seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    np.random.seed(seed)  # lightly's GaussianBlur draws from NumPy
    return transform(image)


@pytest.mark.parametrize("method", ["simclr", "moco", "byol", "simsiam", "dino"])
def test_views_are_one_channel_at_size_in_unit_range(method, radiograph):
    cfg = XrayAugmentConfig(local_views=2, blur_prob=1.0, gamma_prob=1.0)
    views = ssl_transform(method, 48, cfg)(radiograph)
    assert len(views) == (4 if method == "dino" else 2)
    for i, view in enumerate(views):
        size = 48 if i < 2 else round(48 * cfg.local_size_ratio)
        assert type(view) is torch.Tensor and view.dtype == torch.float32
        assert view.shape == (1, size, size)
        assert 0.0 <= float(view.min()) and float(view.max()) <= 1.0
    assert not torch.equal(views[0], views[1])  # two different random views


def test_views_repeat_under_a_seed_and_differ_across_seeds(radiograph):
    transform = ssl_transform("dino", 40, XrayAugmentConfig(local_views=1))
    a, b = _seeded_views(transform, radiograph, 7), _seeded_views(transform, radiograph, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = _seeded_views(transform, radiograph, 8)
    assert not torch.equal(a[0], c[0])


def test_rgb_input_becomes_one_channel(radiograph):
    view = xray_view_transform(32)(radiograph.convert("RGB"))
    assert view.shape == (1, 32, 32)


def test_no_horizontal_flip_by_default():
    # a left-right gradient keeps its direction in every view when flipping is off (laterality)
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1)), "L")
    quiet = dict(rotation_degrees=0.0, translate=0.0, jitter_prob=0.0, gamma_prob=0.0, blur_prob=0.0)
    transform = xray_view_transform(32, XrayAugmentConfig(**quiet))
    torch.manual_seed(0)
    for _ in range(20):
        v = transform(ramp)[0]
        assert float(v[:, -1].mean()) > float(v[:, 0].mean())
    flipping = xray_view_transform(32, XrayAugmentConfig(hflip_prob=1.0, **quiet))
    v = flipping(ramp)[0]
    assert float(v[:, -1].mean()) < float(v[:, 0].mean())


@pytest.mark.parametrize("bad", [dict(min_scale=0.0), dict(min_scale=0.9, max_scale=0.5),
                                 dict(hflip_prob=1.5), dict(gamma_range=(1.2, 0.8)), dict(local_views=-1)])
def test_bad_settings_are_user_errors(bad):
    with pytest.raises(CxrAlError):
        XrayAugmentConfig(**bad)


def test_unknown_method_is_a_user_error():
    with pytest.raises(CxrAlError, match="unknown SSL method"):
        ssl_transform("mae", 32)


def test_presets_are_valid_and_unknown_names_are_refused() -> None:
    from active.delivery.cli import build_parser
    from models.augment import AUGMENT_PRESETS, DEFAULT_PRESET, augment_preset

    assert augment_preset("gentle").min_scale > augment_preset("standard").min_scale
    with pytest.raises(CxrAlError, match="gentle"):
        augment_preset("strong")
    parser = build_parser()
    assert parser.parse_args(["pretrain", "proj"]).augment == DEFAULT_PRESET
    for name in AUGMENT_PRESETS:  # the CLI offers every preset ...
        assert parser.parse_args(["pretrain", "proj", "--augment", name]).augment == name
    with pytest.raises(SystemExit):  # ... and only those
        parser.parse_args(["pretrain", "proj", "--augment", "strong"])
    import inspect

    from active.engine.rounds import pretrain

    assert inspect.signature(pretrain).parameters["augment"].default == DEFAULT_PRESET
