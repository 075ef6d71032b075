"""Backbones (torchvision ResNet-18/50, DenseNet-121) that take greyscale X-rays and return features."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from store.errors import CxrAlError

BACKBONES = {
    # name: (constructor, ImageNet weights enum, feature dim)
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V2, 2048),
    "densenet121": (torchvision.models.densenet121, torchvision.models.DenseNet121_Weights.IMAGENET1K_V1, 1024),
}
# the earlier blocks whose pooled features a "multiscale" embedding joins to the last one: (module path, channels)
EARLY_BLOCKS = {
    "resnet18": (("layer2", 128), ("layer3", 256)),
    "resnet50": (("layer2", 512), ("layer3", 1024)),
    "densenet121": (("features.denseblock2", 512), ("features.denseblock3", 1024)),
}
EMBEDDINGS = ("multiscale", "last")  # the pooled blocks an embedding is made of (models.embed)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GreyBackbone(nn.Module):
    """Feature extractor: (B, 1, H, W) greyscale in [0, 1] -> (B, D) pooled features.

    The grey channel is repeated to three and ImageNet-normalised, so ImageNet weights of the
    first convolution are used as they were trained (the recipe of the SSL transfer papers).
    """

    def __init__(self, name: str, trunk: nn.Module, feature_dim: int):
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        return self.trunk(x)

    def early_blocks(self, embedding: str = "last") -> list[str]:
        """Paths (in the trunk) of the blocks an embedding pools besides the last one: EARLY_BLOCKS for
        "multiscale", none for "last"."""
        if embedding not in EMBEDDINGS:
            raise CxrAlError(f"unknown embedding {embedding!r}; choose from {', '.join(EMBEDDINGS)}")
        return [path for path, _ in EARLY_BLOCKS[self.name]] if embedding == "multiscale" else []

    def embedding_dim(self, embedding: str = "last") -> int:
        """Length of an embedding: the last block's features, or ("multiscale") those of EARLY_BLOCKS joined."""
        channels = dict(EARLY_BLOCKS[self.name])
        return self.feature_dim + sum(channels[path] for path in self.early_blocks(embedding))

    def pooled_blocks(self, x: torch.Tensor, paths: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One forward pass: the average-pooled outputs of the trunk's submodules at `paths` (in that order) and
        the backbone's own output (the pooled last block), float32. The hooks are removed before returning."""
        pooled: dict[str, torch.Tensor] = {}
        hooks = [self.trunk.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, path=path: pooled.__setitem__(path, out.float().mean(dim=(2, 3)))) for path in paths]
        try:
            last = self(x).float()
        finally:
            for hook in hooks:
                hook.remove()
        return [pooled[path] for path in paths], last

    def embedding(self, x: torch.Tensor, embedding: str = "last") -> torch.Tensor:
        """(B, embedding_dim) unit vectors: the pooled last block, or ("multiscale") the average-pooled outputs of
        EARLY_BLOCKS and the last block, each L2-normalised, joined and normalised again (every block weighs the
        same in a cosine). A short SSL schedule leaves much of what separates findings in the middle blocks
        (docs/benchmarks.md, "Embedding: pooled blocks")."""
        early = self.early_blocks(embedding)
        if not early:
            return nn.functional.normalize(self(x).float(), dim=1)
        pooled, last = self.pooled_blocks(x, early)
        parts = [nn.functional.normalize(v, dim=1) for v in (*pooled, last)]
        return nn.functional.normalize(torch.cat(parts, dim=1), dim=1)

    def cam_target_layer(self) -> nn.Module:
        """The last convolutional block: where Grad-CAM++ looks."""
        if self.name.startswith("resnet"):
            return self.trunk.layer4[-1]
        return self.trunk.features.denseblock4


class EmbeddingNet(nn.Module):
    """A backbone as the embedding it gives (GreyBackbone.embedding): what a probe round's head is applied to, so
    nn.Sequential(EmbeddingNet(backbone, kind), probe head) maps images to the probe's logits."""

    def __init__(self, backbone: GreyBackbone, embedding: str = "last"):
        super().__init__()
        backbone.embedding_dim(embedding)  # refuses an unknown kind here, not at the first image
        self.backbone = backbone
        self.kind = embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.embedding(x, self.kind)

    def cam_target_layers(self) -> list[nn.Module]:
        """Every block the embedding pools (Grad-CAM++ averages their maps): the decision depends on all of them."""
        trunk = self.backbone.trunk
        return [*(trunk.get_submodule(path) for path in self.backbone.early_blocks(self.kind)),
                self.backbone.cam_target_layer()]


def _strip_head(name: str, model: nn.Module) -> nn.Module:
    if name.startswith("resnet"):
        model.fc = nn.Identity()
        return model
    # DenseNet: features -> relu -> pool -> classifier; keep the pooling, drop the classifier
    model.classifier = nn.Identity()
    return model


def imagenet_weights_path(name: str) -> Path:
    """Where torchvision caches the ImageNet weights of a backbone (TORCH_HOME/hub/checkpoints)."""
    weights = BACKBONES[name][1]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CxrAlError(f"cannot read weights file {path}: {exc}") from exc
    for key in ("backbone", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise CxrAlError(f"{path} does not hold a state dict")
    return obj


def build_backbone(name: str = "resnet18", init: str | Path = "random", *, allow_download: bool = False) -> GreyBackbone:
    """Build a backbone initialised randomly, from ImageNet (cached weights only, unless
    allow_download) or from a file (a CXR-AL checkpoint or a torchvision state dict)."""
    if name not in BACKBONES:
        raise CxrAlError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    ctor, weights, dim = BACKBONES[name]
    model = ctor(weights=None)
    init_str = str(init)
    if init_str == "imagenet":
        cached = imagenet_weights_path(name)
        if not cached.exists() and not allow_download:
            raise CxrAlError(
                f"ImageNet weights for {name} are not in the local cache ({cached}) and CXR-AL does not "
                f"download at run time. Put the file there (from {weights.url}), pass it with "
                f"--init /path/to/{cached.name}, or allow the download with --download-weights.")
        try:
            state = weights.get_state_dict(progress=False, check_hash=False)
        except Exception as exc:
            raise CxrAlError(f"could not load ImageNet weights for {name}: {exc}") from exc
        model.load_state_dict(state)
        return GreyBackbone(name, _strip_head(name, model), dim)
    if init_str != "random":
        path = Path(init_str)
        if not path.is_file():
            raise CxrAlError(f"--init {init_str}: no such weights file (use random, imagenet or a path)")
        state = _load_state(path)
        trunk = _strip_head(name, model)
        backbone = GreyBackbone(name, trunk, dim)
        # accept our own GreyBackbone state dicts ("trunk." prefix) and plain torchvision ones
        if any(k.startswith("trunk.") for k in state):
            state = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
        missing, unexpected = trunk.load_state_dict(state, strict=False)
        if missing:
            raise CxrAlError(f"{path} does not fit a {name}: {len(missing)} weights missing (e.g. {missing[0]})")
        return backbone
    return GreyBackbone(name, _strip_head(name, model), dim)


def save_checkpoint(path: Path | str, backbone: GreyBackbone, **meta) -> Path:
    """Write a CXR-AL checkpoint: the backbone's state dict plus metadata (method, image_size, head, classes ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": "cxr-al-checkpoint/1", "backbone_name": backbone.name,
               "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()}, **meta}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint under the real name
    return path


def load_checkpoint(path: Path | str) -> tuple[GreyBackbone, dict]:
    """Read a CXR-AL checkpoint back: (backbone with its weights, the whole payload as metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CxrAlError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CxrAlError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != "cxr-al-checkpoint/1":
        raise CxrAlError(f"{path} is not a CXR-AL checkpoint")
    backbone = build_backbone(payload["backbone_name"], "random")
    backbone.load_state_dict(payload["backbone"])
    return backbone, payload
