"""Torch datasets over image files: greyscale pixels from store/images.py, resized for the models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from store.images import load_resized


class GreyImageDataset(Dataset):
    """Images as (1, S, S) float tensors in [0, 1] (or whatever `transform` makes of a PIL 'L' image),
    with an integer target when labels are given (else -1)."""

    def __init__(self, paths: Sequence[str | Path], image_size: int, labels: Sequence[int] | None = None,
                 transform: Callable[[Image.Image], object] | None = None):
        self.paths = [str(p) for p in paths]
        self.image_size = int(image_size)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def load_pil(self, index: int) -> Image.Image:
        return Image.fromarray(load_resized(self.paths[index], self.image_size), "L")

    def __getitem__(self, index: int):
        img = self.load_pil(index)
        x = self.transform(img) if self.transform is not None else to_tensor(img)
        y = -1 if self.labels is None else int(self.labels[index])
        return x, y


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL 'L' image -> (1, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)
