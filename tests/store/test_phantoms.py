"""The phantom generator: deterministic, balanced, lesions inside the lungs, learnable but not trivial."""

import numpy as np

from store.phantoms import PHANTOM_CLASSES, iter_phantoms, write_phantom_dataset


def test_same_seed_same_images_other_seed_other_images() -> None:
    a = list(iter_phantoms(8, seed=5, size=64))
    b = list(iter_phantoms(8, seed=5, size=64))
    c = list(iter_phantoms(8, seed=6, size=64))
    assert all(np.array_equal(x.pixels, y.pixels) and x.label == y.label for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.pixels, z.pixels) for x, z in zip(a, c, strict=True))


def test_classes_balanced_and_masks_match_classes() -> None:
    phantoms = list(iter_phantoms(40, seed=1, size=64))
    counts = {c: sum(p.label == c for p in phantoms) for c in PHANTOM_CLASSES}
    assert set(counts.values()) == {10}
    for p in phantoms:
        assert p.pixels.dtype == np.uint8 and p.pixels.shape == (64, 64)
        if p.label == "Normal":
            assert not p.mask.any()
        else:
            assert p.mask.sum() > 4, p.label


def test_lesions_change_pixels_only_inside_mask_region() -> None:
    # the same pose/noise seed with and without a lesion differs where the mask is
    from store.phantoms import render_phantom

    normal, _ = render_phantom("Normal", 96, np.random.default_rng(11))
    cons, mask = render_phantom("Consolidation", 96, np.random.default_rng(11))
    diff = np.abs(cons.astype(int) - normal.astype(int))
    assert mask.any()
    assert diff[mask].mean() > 3 * max(diff[~mask].mean(), 0.5)


def test_not_trivially_separable_by_mean_intensity() -> None:
    # a one-number rule (mean brightness) must not solve the task: images vary more than lesions add
    phantoms = list(iter_phantoms(200, seed=2, size=64))
    means = {c: np.array([p.pixels.mean() for p in phantoms if p.label == c]) for c in PHANTOM_CLASSES}
    spread = np.mean([m.std() for m in means.values()])
    gap = max(m.mean() for m in means.values()) - min(m.mean() for m in means.values())
    assert gap < 2 * spread


def test_dataset_layout(tmp_path) -> None:
    out = write_phantom_dataset(tmp_path / "d", n=8, seed=0, size=32)
    rows = (out / "labels.csv").read_text().strip().splitlines()
    assert rows[0] == "file,label" and len(rows) == 9
    rel, label = rows[1].split(",")
    assert (out / "images" / rel).is_file() and rel.split("/")[0] == label
    assert (out / "masks" / (rel.split("/")[1])).is_file()


def test_lesion_strength_scales_the_finding_and_is_validated() -> None:
    import pytest

    from store.phantoms import render_phantom

    normal, _ = render_phantom("Consolidation", 96, np.random.default_rng(3), lesion_strength=(1e-6, 1e-6))
    weak, mask = render_phantom("Consolidation", 96, np.random.default_rng(3), lesion_strength=(0.5, 0.5))
    strong, _ = render_phantom("Consolidation", 96, np.random.default_rng(3), lesion_strength=(2.0, 2.0))
    gain_weak = np.abs(weak.astype(int) - normal)[mask].mean()
    gain_strong = np.abs(strong.astype(int) - normal)[mask].mean()
    assert gain_strong > 2.5 * gain_weak > 0
    with pytest.raises(ValueError, match="lesion_strength"):
        render_phantom("Normal", 32, np.random.default_rng(0), lesion_strength=(1.0, 0.5))


def test_dataset_with_a_subset_of_classes(tmp_path) -> None:
    out = write_phantom_dataset(tmp_path, n=6, seed=2, size=32, classes=("Normal", "GroundGlass"))
    assert sorted(p.name for p in (out / "images").iterdir()) == ["GroundGlass", "Normal"]
    assert len(list((out / "images").rglob("*.png"))) == 6
