"""Procedural chest-radiograph phantoms with known lesion masks: the demo and test data.

Real X-rays cannot ship with the project, so every test and the demo draw these: a thorax,
two lung fields, ribs, clavicles, spine and heart shadow, varied in size, position,
rotation, contrast and noise. Classes differ only by a lesion pattern inside the lungs,
whose mask is kept so Grad-CAM++ can be checked against where the finding really is.
Lesion strength varies from obvious to subtle, so a model needs more than a handful of labels.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

PHANTOM_CLASSES = ("Normal", "Consolidation", "GroundGlass", "Interstitial")
DEFAULT_LESION_STRENGTH = (0.35, 1.0)


@dataclass(frozen=True)
class Phantom:
    """One generated radiograph: 8-bit pixels, its class and the binary lesion mask."""

    image_id: str
    label: str
    pixels: np.ndarray  # uint8, HxW
    mask: np.ndarray  # bool, HxW; all False for Normal


def _smooth_step(d: np.ndarray, width: float) -> np.ndarray:
    """1 inside (d<0), 0 outside, with a soft edge of the given width: shapes without aliasing."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def _ellipse(x, y, cx, cy, ax, ay, edge=0.03):
    d = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2) - 1.0
    return _smooth_step(d, edge)


def _blob(rng, x, y, cx, cy, r, size, sigma_frac=0.06):
    """An irregular filled blob around (cx, cy) of radius ~r: a thresholded smooth random field."""
    field = gaussian_filter(rng.standard_normal((size, size)), sigma=max(1.0, sigma_frac * size))
    field /= field.std() + 1e-9
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r
    return _smooth_step(d - 1.0 - 0.35 * field, 0.25)


def render_phantom(label: str, size: int, rng: np.random.Generator,
                   lesion_strength: tuple[float, float] = DEFAULT_LESION_STRENGTH) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom of class `label`; returns (uint8 pixels, bool lesion mask).

    Each lesion's strength is drawn uniformly from `lesion_strength` (1 = the reference opacity of
    its pattern): the default mixes obvious and subtle findings; larger values make easy data."""
    if label not in PHANTOM_CLASSES:
        raise ValueError(f"unknown phantom class {label!r}; choose from {PHANTOM_CLASSES}")
    low, high = lesion_strength
    if not 0.0 < low <= high:
        raise ValueError(f"lesion_strength must be (low, high) with 0 < low <= high, got {lesion_strength}")
    # separate streams: the same seed gives the same patient and detector whatever the lesion
    rng, lesion_rng, detector_rng = rng.spawn(3)
    lin = np.linspace(-1.0, 1.0, size)
    gx, gy = np.meshgrid(lin, lin)
    # patient pose: scale, rotation, shift (the whole anatomy moves together)
    scale = rng.uniform(0.88, 1.08)
    theta = np.deg2rad(rng.uniform(-7, 7))
    dx, dy = rng.normal(0, 0.04, size=2)
    c, s = np.cos(theta), np.sin(theta)
    x = (c * (gx - dx) + s * (gy - dy)) / scale
    y = (-s * (gx - dx) + c * (gy - dy)) / scale

    body = _ellipse(x, y, 0.0, 0.08, rng.uniform(0.78, 0.9), rng.uniform(0.95, 1.05), 0.06)
    img = 0.04 + 0.42 * body
    lung_w = rng.uniform(0.26, 0.33)
    lung_h = rng.uniform(0.55, 0.66)
    right = _ellipse(x, y, -0.37, -0.04, lung_w, lung_h, 0.05)
    left = _ellipse(x, y, 0.37, -0.04, lung_w * rng.uniform(0.9, 1.0), lung_h * rng.uniform(0.94, 1.0), 0.05)
    lungs = np.clip(right + left, 0, 1)
    img -= 0.27 * lungs
    # heart shadow over the medial left lung (image right), diaphragm domes
    heart = _ellipse(x, y, rng.uniform(0.08, 0.16), 0.3, rng.uniform(0.24, 0.32), rng.uniform(0.2, 0.27), 0.08)
    img += 0.22 * heart * body
    dome = _smooth_step(-(y - (0.58 - 0.25 * x**2 + rng.normal(0, 0.02))), 0.06)
    img += 0.2 * dome * lungs
    # spine and ribs
    spine = _smooth_step(np.abs(x) - 0.065, 0.03) * body
    vertebrae = 0.5 + 0.5 * np.cos(y * np.pi * 11 + rng.uniform(0, np.pi))
    img += (0.2 + 0.06 * vertebrae) * spine
    ribs = np.zeros_like(img)
    for k in range(9):
        y0 = -0.62 + k * 0.14 + rng.normal(0, 0.01)
        curve = y0 + 0.32 * (np.abs(x) - 0.1) ** 2 - 0.05 * np.abs(x)
        ribs += _smooth_step(np.abs(y - curve) - 0.018, 0.02) * (np.abs(x) > 0.08)
    img += rng.uniform(0.08, 0.14) * np.clip(ribs, 0, 1) * body
    for side in (-1, 1):  # clavicles
        clav = -0.7 + 0.12 * (side * x - 0.3) ** 2
        img += 0.12 * _smooth_step(np.abs(y - clav) - 0.025, 0.02) * (np.abs(x) > 0.1) * (np.abs(x) < 0.7)

    # anatomy-independent variation every class shares: uneven exposure, benign calcified dots
    img += 0.05 * gaussian_filter(rng.standard_normal((size, size)), sigma=size / 6) * 4
    for _ in range(rng.integers(0, 3)):
        cx, cy = rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.4)
        img += 0.18 * _ellipse(x, y, cx, cy, 0.015, 0.015, 0.01) * lungs

    lung_core = lungs > 0.5
    lesion = np.zeros_like(img)
    strength = lesion_rng.uniform(low, high)  # some findings are subtle
    if label == "Consolidation":
        side = lesion_rng.choice([-1.0, 1.0])
        cx = side * lesion_rng.uniform(0.28, 0.46)
        cy = lesion_rng.uniform(-0.1, 0.4)
        blob = _blob(lesion_rng, x, y, cx, cy, lesion_rng.uniform(0.1, 0.17), size)
        lesion = 0.3 * strength * blob
    elif label == "GroundGlass":
        patches = np.zeros_like(img)
        for side in (-1.0, 1.0):
            for _ in range(lesion_rng.integers(2, 4)):
                cx = side * lesion_rng.uniform(0.45, 0.6)
                cy = lesion_rng.uniform(-0.45, 0.45)
                patches = np.maximum(patches, _blob(lesion_rng, x, y, cx, cy, lesion_rng.uniform(0.08, 0.13), size))
        lesion = 0.14 * strength * gaussian_filter(patches, sigma=size / 90)
    elif label == "Interstitial":
        noise = lesion_rng.standard_normal((size, size))
        band = gaussian_filter(noise, size / 110) - gaussian_filter(noise, size / 45)
        band /= band.std() + 1e-9
        net = _smooth_step(np.abs(band) - 0.35, 0.3)  # thin lines where the band-pass crosses zero
        zone = _smooth_step(-(y - lesion_rng.uniform(-0.25, -0.05)), 0.2)  # lower and middle zones
        lesion = 0.11 * strength * net * zone
    lesion *= lungs
    img += lesion
    mask = (lesion > 0.02) & lung_core if label != "Normal" else np.zeros(img.shape, dtype=bool)
    if label == "Interstitial":  # the mask is the affected zone, not each thin line
        mask = gaussian_filter(lesion, size / 60) > 0.01 * strength
        mask &= lung_core

    # detector: contrast, gamma, quantum noise
    img = np.clip(img, 0, None)
    img = img * detector_rng.uniform(0.85, 1.15) + detector_rng.uniform(-0.03, 0.03)
    img = np.clip(img, 0, 1) ** detector_rng.uniform(0.85, 1.2)
    img += detector_rng.normal(0, detector_rng.uniform(0.01, 0.03), img.shape)
    pixels = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return pixels, mask


def iter_phantoms(n: int, seed: int = 0, size: int = 256, classes=PHANTOM_CLASSES,
                  lesion_strength: tuple[float, float] = DEFAULT_LESION_STRENGTH) -> Iterator[Phantom]:
    """Yield n phantoms with classes balanced and shuffled; the same seed gives the same images."""
    classes = tuple(classes)
    order = np.random.default_rng(seed).permutation(np.arange(n) % len(classes))
    for i in range(n):
        label = classes[order[i]]
        rng = np.random.default_rng([seed, i])
        pixels, mask = render_phantom(label, size, rng, lesion_strength)
        yield Phantom(f"ph{seed:03d}-{i:05d}", label, pixels, mask)


def write_phantom_dataset(out_dir: Path | str, n: int = 400, seed: int = 0, size: int = 256,
                          progress=None, lesion_strength: tuple[float, float] = DEFAULT_LESION_STRENGTH,
                          classes=PHANTOM_CLASSES) -> Path:
    """Write phantoms as OUT/images/<class>/<id>.png, OUT/masks/<id>.png and OUT/labels.csv."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for ph in iter_phantoms(n, seed=seed, size=size, classes=classes, lesion_strength=lesion_strength):
        rel = f"{ph.label}/{ph.image_id}.png"
        (out / "images" / ph.label).mkdir(exist_ok=True)
        Image.fromarray(ph.pixels, "L").save(out / "images" / rel)
        Image.fromarray((ph.mask * 255).astype(np.uint8), "L").save(out / "masks" / f"{ph.image_id}.png")
        rows.append((rel, ph.label))
        if progress is not None:
            progress(1)
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label"])
        w.writerows(rows)
    return out
