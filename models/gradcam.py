"""Grad-CAM++ heatmaps (pytorch-grad-cam) of a classifier's decision, their overlays, and the pointing game.

Works on a fine-tuned `Classifier` and on probe rounds (nn.Sequential(EmbeddingNet(backbone, kind),
probe.to_torch_head())): the target layer is the GreyBackbone's last convolutional block, and for a probe on a
"multiscale" embedding every block the embedding pools (pytorch-grad-cam averages their maps, each scaled to
[0, 1], at the input's size).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy.ndimage import distance_transform_edt
from torch import nn
from tqdm.auto import tqdm

from models.backbones import EmbeddingNet, GreyBackbone
from models.data import GreyImageDataset

COLORMAPS = {"jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO}


@dataclass
class Explanations:
    """Heatmaps of a batch of images with the class each explains and the model's probabilities."""

    heatmaps: np.ndarray  # (B, S, S) float32 in [0, 1]
    class_indices: np.ndarray  # (B,) int: the class each heatmap explains
    probs: np.ndarray  # (B, C) float32 softmax of the model's logits


def cam_target_layers(model: nn.Module) -> list[nn.Module]:
    """The layers Grad-CAM++ hooks: model.cam_target_layer() if it has one, else those of the EmbeddingNet or
    GreyBackbone it holds (an EmbeddingNet's come first: it holds a GreyBackbone itself)."""
    if hasattr(model, "cam_target_layer"):
        return [model.cam_target_layer()]
    for module in model.modules():
        if isinstance(module, EmbeddingNet):
            return module.cam_target_layers()
        if isinstance(module, GreyBackbone):
            return [module.cam_target_layer()]
    raise TypeError("explain needs a model containing a GreyBackbone (a Classifier or backbone + head)")


def _as_tensor(images: torch.Tensor | Sequence[str | Path], image_size: int | None) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, S, S), got {tuple(images.shape)}")
        return images.float()
    if image_size is None:
        raise ValueError("image_size is needed to read images from paths")
    dataset = GreyImageDataset(list(images), image_size)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def explain_batch(model: nn.Module, images: torch.Tensor | Sequence[str | Path], class_indices: Sequence[int] | None = None,
                  image_size: int | None = None, batch_size: int = 16, device: str | None = None,
                  progress: bool = False) -> Explanations:
    """Grad-CAM++ of many images in batches: heatmaps, explained classes and probabilities (the review page)."""
    x_all = _as_tensor(images, image_size)
    n = x_all.shape[0]
    if class_indices is not None and len(class_indices) != n:
        raise ValueError(f"{len(class_indices)} class indices for {n} images")
    was_training = model.training
    home = next(model.parameters()).device
    if device is not None:
        model = model.to(device)  # pytorch-grad-cam moves the inputs to the model's device
    heatmaps, classes, probs = [], [], []
    # not `with GradCAMPlusPlus(...)`: its __exit__ swallows IndexError (e.g. a class index out of range)
    cam = GradCAMPlusPlus(model=model, target_layers=cam_target_layers(model))  # sets eval mode
    try:
        for start in tqdm(range(0, n, batch_size), desc="grad-cam++", disable=not progress, leave=False):
            x = x_all[start:start + batch_size].clone().requires_grad_(True)  # grads flow even if frozen
            targets = None
            if class_indices is not None:
                targets = [ClassifierOutputTarget(int(c)) for c in class_indices[start:start + batch_size]]
            maps = cam(input_tensor=x, targets=targets)
            logits = cam.outputs.detach().float().cpu()
            heatmaps.append(np.clip(np.nan_to_num(maps, nan=0.0), 0.0, 1.0).astype(np.float32))
            probs.append(torch.softmax(logits, dim=1).numpy())
            chosen = logits.argmax(dim=1).numpy() if targets is None else [t.category for t in targets]
            classes.append(np.asarray(chosen, dtype=np.int64))
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)
        model.to(home)  # the caller's model stays where it was
    return Explanations(np.concatenate(heatmaps), np.concatenate(classes), np.concatenate(probs))


def explain(model: nn.Module, images: torch.Tensor | Sequence[str | Path], class_indices: Sequence[int] | None = None,
            image_size: int | None = None, batch_size: int = 16, device: str | None = None) -> np.ndarray:
    """Grad-CAM++ heatmaps (B, S, S) in [0, 1] for the given classes (None: each image's predicted class)."""
    return explain_batch(model, images, class_indices, image_size, batch_size, device).heatmaps


def overlay_png(grey_uint8: np.ndarray, heatmap: np.ndarray, out_path: str | Path | None = None,
                colormap: str = "jet", image_weight: float = 0.55) -> bytes:
    """PNG bytes of the heatmap coloured and blended over the X-ray (resized to the X-ray); also written to out_path."""
    grey = np.asarray(grey_uint8, dtype=np.uint8)
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if heat.shape != grey.shape:
        heat = cv2.resize(heat, (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_LINEAR)
    rgb = np.repeat(grey[..., None].astype(np.float32) / 255.0, 3, axis=2)
    blended = show_cam_on_image(rgb, heat, use_rgb=True, colormap=COLORMAPS[colormap], image_weight=image_weight)
    buf = io.BytesIO()
    Image.fromarray(blended, "RGB").save(buf, format="PNG", compress_level=1)  # 5x faster, ~1.3x larger
    data = buf.getvalue()
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_bytes(data)
    return data


def heatmap_peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, col) of the heatmap's maximum; among tied pixels the one nearest the image centre.

    A coarse CAM is upsampled bilinearly with edge clamping (cv2.resize in pytorch-grad-cam), so a
    maximal cell on the border becomes a plateau reaching from that cell's centre out to the image
    edge. The plateau's innermost pixel is the cell centre; its mean would sit halfway to the edge,
    off the body (this made every peak of a 2x2 or 4x4 layer-4 CAM miss the lungs).
    """
    heat = np.asarray(heatmap)
    top = np.argwhere(heat >= heat.max() - 1e-6)
    centre = (np.asarray(heat.shape, dtype=float) - 1.0) / 2.0
    inner = top[np.argmin(((top - centre) ** 2).sum(axis=1))]
    return int(inner[0]), int(inner[1])


def pointing_game(heatmaps: np.ndarray, masks: np.ndarray, tolerance: float = 0.0) -> float:
    """Hit rate: fraction of images whose heatmap peak lies in the lesion mask (within `tolerance` pixels).

    Images with an empty mask (no lesion) are skipped, as in Zhang et al.'s pointing game.
    """
    heatmaps, masks = np.asarray(heatmaps), np.asarray(masks, dtype=bool)
    if heatmaps.shape != masks.shape:
        raise ValueError(f"heatmaps {heatmaps.shape} and masks {masks.shape} differ in shape")
    hits = []
    for heat, mask in zip(heatmaps, masks, strict=True):
        if not mask.any():
            continue
        r, c = heatmap_peak(heat)
        if tolerance > 0:
            hits.append(distance_transform_edt(~mask)[r, c] <= tolerance)
        else:
            hits.append(bool(mask[r, c]))
    if not hits:
        raise ValueError("no image with a non-empty lesion mask to point at")
    return float(np.mean(hits))
