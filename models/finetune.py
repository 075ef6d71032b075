"""End-to-end fine-tuning of a backbone + linear head on the labelled images (PyTorch Lightning).

A round's heavier model: GreyBackbone -> dropout -> Linear, trained with class-weighted
cross-entropy (or a balanced sampler), a stratified validation split with early stopping,
bf16 AMP and channels_last on a GPU, plain fp32 on the CPU. The result is one CXR-AL
checkpoint holding backbone, head, classes and image size; `predict_outputs` turns it into
probabilities, MC-dropout samples (BALD) and penultimate features (BADGE).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision.transforms import v2
from tqdm.auto import tqdm

from models.backbones import GreyBackbone, build_backbone, load_checkpoint, save_checkpoint
from models.data import GreyImageDataset
from models.runtime import (
    check_world_size,
    inference_autocast,
    loader_workers,
    progress_callbacks,
    quiet_lightning,
    resolve_device,
    trainer_devices,
    trainer_precision,
)
from store.errors import CxrAlError

CHECKPOINT_NAME = "classifier.pt"


class Classifier(nn.Module):
    """GreyBackbone -> dropout -> Linear: (B, 1, S, S) greyscale in [0, 1] -> (B, C) logits."""

    def __init__(self, backbone: GreyBackbone, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.feature_dim, n_classes)

    @property
    def dropout_p(self) -> float:
        return float(self.dropout.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))

    def cam_target_layer(self) -> nn.Module:
        """Where Grad-CAM++ looks: the backbone's last convolutional block."""
        return self.backbone.cam_target_layer()


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced: the checkpoint and how training went."""

    checkpoint: Path
    best_epoch: int  # 0-based epoch whose weights were kept
    history: list[dict]  # one dict per epoch: epoch, train_loss, val_loss, val_acc (when validated)
    device: str
    n_train: int
    n_val: int
    classifier: Classifier | None = field(default=None, repr=False)  # the trained model, on the CPU


@dataclass
class InferenceOutputs:
    """Model outputs for a list of images, in input order."""

    probs: np.ndarray  # (N, C) float32, dropout off
    features: np.ndarray  # (N, D) float32 penultimate features (backbone output)
    mc_probs: np.ndarray | None = None  # (T, N, C) float32 with dropout on, when asked for


def train_transform(image_size: int) -> v2.Compose:
    """Mild augmentation for radiographs: small crop/scale, small rotation, brightness/contrast; no flips
    (the heart is on the left: a flipped film is not a plausible patient)."""
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomRotation(7),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
    ])


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): round(n_c * val_fraction) of each class to validation, never a class's last image.

    Not sklearn's train_test_split(stratify=...): it raises on classes with a single image, and
    active learning starts with exactly such tiny labelled sets; here they simply stay in training.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_val = min(int(round(idx.size * val_fraction)), idx.size - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency class weights n / (k * n_c) (sklearn's 'balanced'); 1 for classes without labels."""
    from sklearn.utils.class_weight import compute_class_weight

    weights = np.ones(n_classes, dtype=np.float64)
    present = np.unique(labels)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


class ClassifierModule(pl.LightningModule):
    """Lightning wrapper: weighted cross-entropy, AdamW with a lower backbone learning rate, cosine schedule."""

    def __init__(self, classifier: Classifier, class_weights: torch.Tensor | None, lr: float,
                 backbone_lr: float, weight_decay: float, max_epochs: int, channels_last: bool = False):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(0),
                             persistent=False)
        self.lr, self.backbone_lr, self.weight_decay, self.max_epochs = lr, backbone_lr, weight_decay, max_epochs
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.classifier(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = self.class_weights.to(logits.dtype) if self.class_weights.numel() else None
        return F.cross_entropy(logits.float(), y, weight=weight)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self._loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", self._loss(logits, y), on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log("val_acc", acc, on_epoch=True, batch_size=x.shape[0], sync_dist=True)

    def configure_optimizers(self):
        groups = [{"params": self.classifier.backbone.parameters(), "lr": self.backbone_lr},
                  {"params": self.classifier.head.parameters(), "lr": self.lr}]
        opt = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.max_epochs))
        return {"optimizer": opt, "lr_scheduler": sched}


class EpochHistory(Callback):
    """Collects the epoch-level logged metrics (validation runs before on_train_epoch_end in Lightning 2)."""

    def __init__(self):
        self.rows: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module):
        row = {"epoch": int(trainer.current_epoch)}
        for key in ("train_loss", "val_loss", "val_acc"):
            if key in trainer.callback_metrics:
                row[key] = float(trainer.callback_metrics[key])
        self.rows.append(row)


def _loader(dataset, batch_size: int, *, sampler=None, shuffle=False, drop_last=False, num_workers=0,
            pin_memory=False, seed=0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle and sampler is None,
                      drop_last=drop_last, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))


def finetune(train_paths: Sequence[str | Path], train_y: Sequence[int], classes: Sequence[str],
             out_dir: str | Path, *, checkpoint: str | Path | None = None, backbone: str = "resnet18",
             init: str | Path = "random", image_size: int = 224, epochs: int = 10, batch_size: int = 32,
             lr: float = 1e-3, backbone_lr_factor: float | None = None, weight_decay: float = 1e-4,
             val_fraction: float = 0.2, balance: str = "weights", patience: int = 3, mc_dropout: float = 0.0,
             device: str = "auto", devices: int | str | list[int] | None = None, num_nodes: int = 1,
             strategy: str = "auto", precision: str | None = None, num_workers: int | None = None, seed: int = 0,
             progress: bool = True, augment: bool = True) -> FinetuneResult:
    """Fine-tune backbone + head on labelled images; writes OUT/classifier.pt and returns how it went.

    `checkpoint` starts from an SSL backbone checkpoint (else `backbone`/`init` as in
    build_backbone). `backbone_lr_factor` scales the head's lr for the backbone: default 0.1
    for pretrained weights (keep what SSL learned), 1.0 for a random init (it must learn).
    `devices`, `num_nodes`, `strategy` and `precision` as in models.ssl.pretrain: one device unless asked.
    """
    classes = [str(c) for c in classes]
    labels = np.asarray(train_y, dtype=np.int64).ravel()
    paths = [str(p) for p in train_paths]
    if len(paths) != labels.size or not paths:
        raise CxrAlError(f"fine-tuning needs labelled images: got {len(paths)} paths and {labels.size} labels")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise CxrAlError(f"labels must be class indices in [0, {len(classes)})")
    if balance not in ("weights", "sampler"):
        raise CxrAlError(f"balance must be 'weights' or 'sampler', not {balance!r}")
    if not 0.0 <= mc_dropout < 1.0:
        raise CxrAlError(f"mc_dropout must be in [0, 1), got {mc_dropout}")
    dev = resolve_device(device)
    device = str(dev)
    accelerator, precision = trainer_precision(dev, precision)
    devices = trainer_devices(dev, devices)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed, workers=True, verbose=False)

    if checkpoint is not None:
        net, _ = load_checkpoint(checkpoint)
        init_desc, pretrained = f"checkpoint:{checkpoint}", True
    else:
        net = build_backbone(backbone, init)
        init_desc, pretrained = str(init), str(init) != "random"
    classifier = Classifier(net, len(classes), dropout=mc_dropout)
    factor = backbone_lr_factor if backbone_lr_factor is not None else (0.1 if pretrained else 1.0)

    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    y_train = labels[train_idx]
    class_weights = None
    sampler = None
    if balance == "weights":
        class_weights = torch.tensor(balanced_class_weights(y_train, len(classes)), dtype=torch.float32)
    else:
        per_class = np.bincount(y_train, minlength=len(classes))
        sampler = WeightedRandomSampler(torch.as_tensor(1.0 / per_class[y_train], dtype=torch.double),
                                        num_samples=len(train_idx), replacement=True,
                                        generator=torch.Generator().manual_seed(seed))
    workers = loader_workers(dev, num_workers)
    pin = accelerator == "cuda"
    train_ds = GreyImageDataset([paths[i] for i in train_idx], image_size, y_train,
                                transform=train_transform(image_size) if augment else None)
    # a last batch of one image breaks BatchNorm in training mode: drop it (it is reshuffled next epoch)
    train_dl = _loader(train_ds, batch_size, sampler=sampler, shuffle=True,
                       drop_last=len(train_ds) % batch_size == 1 and len(train_ds) > 1,
                       num_workers=workers, pin_memory=pin, seed=seed)
    val_dl = None
    if val_idx.size:
        val_ds = GreyImageDataset([paths[i] for i in val_idx], image_size, labels[val_idx])
        val_dl = _loader(val_ds, batch_size, num_workers=workers, pin_memory=pin, seed=seed)

    use_cuda = accelerator == "cuda"
    if use_cuda:
        classifier = classifier.to(memory_format=torch.channels_last)
    module = ClassifierModule(classifier, class_weights, lr=lr, backbone_lr=lr * factor,
                              weight_decay=weight_decay, max_epochs=epochs, channels_last=use_cuda)

    work = out_dir / "lightning"
    history = EpochHistory()
    ckpt_cb = ModelCheckpoint(dirpath=work, filename="best", monitor="val_loss" if val_dl else None,
                              mode="min", save_top_k=1, save_weights_only=True, enable_version_counter=False)
    callbacks: list[Callback] = [history, ckpt_cb]
    if val_dl is not None and patience > 0:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=patience))
    n_batches = max(1, len(train_dl))
    with quiet_lightning():
        trainer = pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                             precision=precision, max_epochs=epochs, callbacks=callbacks + progress_callbacks(progress), logger=False,
                             default_root_dir=work, enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                             log_every_n_steps=min(50, n_batches))
        check_world_size(trainer.world_size)
        trainer.fit(module, train_dataloaders=train_dl, val_dataloaders=val_dl)

    best = torch.load(ckpt_cb.best_model_path, map_location="cpu", weights_only=False)
    module.load_state_dict(best["state_dict"])
    best_epoch = int(best["epoch"])
    classifier = module.classifier.to("cpu", memory_format=torch.contiguous_format).eval()
    ckpt_path = out_dir / CHECKPOINT_NAME
    trainer.strategy.barrier("finetune-best-loaded")  # under DDP every process has read best.ckpt before it goes
    if trainer.is_global_zero:
        save_checkpoint(ckpt_path, classifier.backbone, method="finetune", head=classifier.head.state_dict(),
                        classes=classes, image_size=int(image_size), dropout=float(mc_dropout),
                        best_epoch=best_epoch, history=history.rows, init=init_desc, seed=int(seed),
                        n_train=int(train_idx.size), n_val=int(val_idx.size))
        shutil.rmtree(work, ignore_errors=True)  # the Lightning copy duplicates classifier.pt
    return FinetuneResult(ckpt_path, best_epoch, history.rows, device, int(train_idx.size), int(val_idx.size),
                          classifier)


def load_classifier(path: str | Path) -> tuple[Classifier, dict]:
    """Read a fine-tuned classifier checkpoint: (Classifier in eval mode on the CPU, its metadata)."""
    backbone, meta = load_checkpoint(path)
    if "head" not in meta or "classes" not in meta:
        raise CxrAlError(f"{path} is a backbone checkpoint without a classifier head; fine-tune it first")
    classifier = Classifier(backbone, len(meta["classes"]), dropout=float(meta.get("dropout", 0.0)))
    classifier.head.load_state_dict(meta["head"])
    return classifier.eval(), meta


@torch.no_grad()
def predict_outputs(classifier: Classifier, paths: Sequence[str | Path], image_size: int, batch_size: int = 64,
                    device: str = "auto", mc_samples: int = 0, seed: int = 0, num_workers: int | None = None,
                    progress: bool = False) -> InferenceOutputs:
    """Probabilities, penultimate features and (mc_samples > 0) MC-dropout probabilities in one pass.

    MC dropout only touches the head's input, so the backbone runs once per image and the T
    dropout masks (seeded) are applied to its features: the same as T full stochastic passes.
    """
    if mc_samples > 0 and classifier.dropout_p <= 0.0:
        raise CxrAlError("this classifier was fine-tuned without dropout, so MC-dropout samples would all be "
                         "identical; fine-tune with mc_dropout > 0 (e.g. 0.3) to use BALD")
    dev = resolve_device(device)
    device, use_cuda = str(dev), dev.type == "cuda"
    home = next(classifier.parameters()).device
    classifier = classifier.to(device).eval()
    workers = loader_workers(dev, num_workers)
    loader = _loader(GreyImageDataset(paths, image_size), batch_size, num_workers=workers, pin_memory=use_cuda)
    probs, feats, mc = [], [], []
    with torch.random.fork_rng(devices=[torch.device(device)] if use_cuda else []):
        torch.manual_seed(seed)
        for x, _ in tqdm(loader, desc="predict", disable=not progress, leave=False):
            x = x.to(device, non_blocking=True)
            with inference_autocast(dev):
                f = classifier.backbone(x)
            f = f.float()
            feats.append(f.cpu())
            probs.append(torch.softmax(classifier.head(f), dim=1).cpu())
            if mc_samples > 0:
                drop = [classifier.head(F.dropout(f, classifier.dropout_p, training=True)) for _ in range(mc_samples)]
                mc.append(torch.softmax(torch.stack(drop), dim=2).cpu())
    classifier.to(home)
    return InferenceOutputs(torch.cat(probs).numpy(), torch.cat(feats).numpy(),
                            torch.cat(mc, dim=1).numpy() if mc_samples > 0 else None)


def predict_proba(classifier: Classifier, paths: Sequence[str | Path], image_size: int, batch_size: int = 64,
                  device: str = "auto", mc_samples: int = 0, seed: int = 0,
                  progress: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, C); with mc_samples > 0 also the (T, N, C) MC-dropout samples for BALD."""
    out = predict_outputs(classifier, paths, image_size, batch_size, device, mc_samples, seed, progress=progress)
    return (out.probs, out.mc_probs) if mc_samples > 0 else out.probs


def extract_features(classifier: Classifier, paths: Sequence[str | Path], image_size: int, batch_size: int = 64,
                     device: str = "auto", progress: bool = False) -> np.ndarray:
    """Penultimate (backbone) features (N, D) float32, e.g. for BADGE's gradient embeddings."""
    return predict_outputs(classifier, paths, image_size, batch_size, device, progress=progress).features
