"""Embeddings of images from a backbone: the unit vectors the FAISS index and diversity strategies use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from models.backbones import GreyBackbone, build_backbone, load_checkpoint
from models.data import GreyImageDataset, to_tensor
from models.runtime import inference_autocast, loader_workers, resolve_device
from store.errors import CxrAlError

DEFAULT_IMAGE_SIZE = 224


class ReadErrorsAsValues(GreyImageDataset):
    """GreyImageDataset whose items are (image or views, read-error message or ""): an unreadable file
    travels back from a loader worker as a value, so the caller raises a clean CxrAlError naming it
    (a worker's own exception would arrive wrapped in a traceback, and leave the worker to be
    killed after a 5-second timeout)."""

    def __getitem__(self, index: int):
        try:
            x, _ = super().__getitem__(index)
            return x, ""
        except CxrAlError as exc:
            blank = Image.new("L", (self.image_size, self.image_size))
            placeholder = self.transform(blank) if self.transform is not None else to_tensor(blank)
            return placeholder, str(exc) or f"{self.paths[index]}: unreadable image"


def raise_read_errors(errors: Sequence[str]) -> None:
    """Raise the first read error of a batch from ReadErrorsAsValues, if any."""
    for message in errors:
        if message:
            raise CxrAlError(message)


@contextlib.contextmanager
def _deterministic_cudnn(device: torch.device) -> Iterator[None]:
    """Fixed cuDNN algorithms while embedding, so the same images give the same vectors on a GPU too."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def embed_images(model: GreyBackbone, paths: Sequence[str | Path], *, image_size: int = DEFAULT_IMAGE_SIZE,
                 batch_size: int = 64, device: str | torch.device = "auto", progress: bool = True,
                 num_workers: int | None = None, embedding: str = "last") -> np.ndarray:
    """Embed image files with an already-loaded backbone (moved to the device): L2-normalised float32
    (N, D), in `paths` order. `embedding`: the pooled last block ("last") or several blocks joined
    ("multiscale", GreyBackbone.embedding)."""
    dev = resolve_device(device)
    dim = int(model.embedding_dim(embedding))
    if len(paths) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    if batch_size < 1:
        raise CxrAlError(f"batch size must be >= 1, got {batch_size}")
    workers = loader_workers(dev, num_workers)
    loader = DataLoader(ReadErrorsAsValues(paths, image_size), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=dev.type == "cuda")
    channels_last = dev.type == "cuda"
    was_training = model.training
    model = model.to(dev, memory_format=torch.channels_last) if channels_last else model.to(dev)
    model.eval()
    out = np.empty((len(paths), dim), dtype=np.float32)
    row = 0
    try:
        with torch.inference_mode(), _deterministic_cudnn(dev), inference_autocast(dev):
            for x, errors in tqdm(loader, desc="embed", unit="batch", disable=not progress):
                raise_read_errors(errors)
                x = x.to(dev, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                features = model.embedding(x, embedding)
                out[row:row + len(features)] = features.cpu().numpy()
                row += len(features)
    finally:
        model.train(was_training)
    return out


def embed_paths(checkpoint: Path | str | None, paths: Sequence[str | Path], *, backbone: str = "resnet18",
                init: str | Path = "random", image_size: int | None = None, batch_size: int = 64,
                device: str = "auto", progress: bool = True, num_workers: int | None = None,
                allow_download: bool = False, seed: int = 0, embedding: str = "last") -> np.ndarray:
    """Embed image files with a CXR-AL checkpoint (its own backbone and image size) or, without one,
    a fresh `backbone` built from `init` (random weights drawn from `seed`): L2-normalised float32 (N, D)."""
    if checkpoint is not None:
        model, payload = load_checkpoint(checkpoint)  # the checkpoint names its backbone
        size = image_size or int(payload.get("image_size") or DEFAULT_IMAGE_SIZE)
    else:
        with torch.random.fork_rng(devices=[]):  # a random-init baseline is the same every call
            torch.manual_seed(seed)
            model = build_backbone(backbone, init, allow_download=allow_download)
        size = image_size or DEFAULT_IMAGE_SIZE
    return embed_images(model, paths, image_size=size, batch_size=batch_size, device=device,
                        progress=progress, num_workers=num_workers, embedding=embedding)
