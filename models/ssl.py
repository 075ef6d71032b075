"""Self-supervised pretraining of a backbone on the unlabeled pool (SimCLR, MoCo v2, BYOL, SimSiam, DINO).

Losses, heads and momentum updates come from lightly; the loop, mixed precision, checkpoints and
multi-GPU / multi-node DDP from PyTorch Lightning. The recipe of the COVID-19 SSL-transfer papers
is ImageNet init -> SSL on the X-ray pool -> fine-tune: pass init="imagenet" for it.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
    SimSiamPredictionHead,
    SimSiamProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import CosineWarmupScheduler, cosine_schedule
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from models.augment import SSL_METHODS, XrayAugmentConfig, ssl_transform
from models.backbones import GreyBackbone, build_backbone, save_checkpoint
from models.embed import ReadErrorsAsValues, raise_read_errors
from models.runtime import (
    check_world_size,
    loader_workers,
    progress_callbacks,
    quiet_lightning,
    resolve_device,
    trainer_devices,
    trainer_precision,
)
from store.errors import CxrAlError

# (optimizer, base learning rate at batch 256): lightly's examples' settings, scaled linearly with
# the global batch (Goyal et al. 2017) so small CPU batches and large multi-GPU ones both train.
OPTIMIZERS = {"simclr": ("sgd", 0.06), "moco": ("sgd", 0.06), "byol": ("sgd", 0.06),
              "simsiam": ("sgd", 0.06), "dino": ("adamw", 0.001)}
MOCO_QUEUE = 4096  # MoCo v2 negatives; capped at the pool size (see pretrain)
LAST_CKPT = "last.ckpt"


@dataclass
class PretrainResult:
    """What a pretraining run produced and how fast it ran."""

    checkpoint: Path  # CXR-AL backbone checkpoint (models.backbones.load_checkpoint reads it)
    method: str
    losses: list[float]  # mean training loss per epoch (all epochs, including resumed ones)
    steps: int  # optimizer steps taken in this call
    images_per_second: float  # images (one per multi-view sample, all devices) per second of training
    wall_seconds: float  # the whole call, setup included
    device: str  # cpu | cuda
    lightning_checkpoint: Path | None = None  # out_dir/lightning/last.ckpt, for resume=True
    loss_csv: Path | None = None
    loss_png: Path | None = None
    extra: dict = field(default_factory=dict)


def default_lr(method: str, global_batch: int) -> float:
    """Learning rate for a method at a global batch size: base rate x batch / 256."""
    return OPTIMIZERS[method][1] * global_batch / 256


class SSLModule(pl.LightningModule):
    """What all methods share: views in, loss out, an optimizer with cosine decay, per-epoch mean loss."""

    momentum_range: tuple[float, float] | None = None  # (start, end) EMA factor of a momentum encoder

    def __init__(self, backbone: GreyBackbone, *, lr: float | None, channels_last: bool = False, **hparams):
        super().__init__()
        self.save_hyperparameters({"lr": lr, "backbone_name": backbone.name, **hparams})
        self.backbone = backbone
        self.lr = lr
        self.channels_last = channels_last
        self.epoch_losses: list[float] = []
        self.train_loss = MeanMetric()  # synchronised across DDP processes at epoch end
        self._pending_epoch = False
        self._steps_planned = 1

    # -- per method ---------------------------------------------------------------------------
    def compute_loss(self, views: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum copy) module pairs updated by EMA before every step."""
        return []

    def export_backbone(self) -> GreyBackbone:
        """The backbone to keep after pretraining."""
        return self.backbone

    # -- shared loop ------------------------------------------------------------------------
    def _total_steps(self) -> int:
        return max(1, int(self.trainer.estimated_stepping_batches))  # honours max_steps

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        views, errors = batch
        raise_read_errors(errors)
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        if self.momentum_range is not None:
            start, end = self.momentum_range
            m = cosine_schedule(self.global_step, self._steps_planned, start, end)
            for online, ema in self.momentum_pairs():
                update_momentum(online, ema, m=m)
        loss = self.compute_loss(views)
        self.train_loss.update(loss.detach().float())
        self._pending_epoch = True
        self.log("loss", loss.detach().float(), prog_bar=True, batch_size=views[0].shape[0])
        return loss

    def on_train_start(self) -> None:
        # a resumed run restores the scheduler's old length; stretch it to this run's epochs/steps
        total = self._steps_planned = self._total_steps()
        for config in self.trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, CosineWarmupScheduler):
                config.scheduler.max_epochs = total
                config.scheduler.warmup_epochs = min(config.scheduler.warmup_epochs, total)

    def _close_epoch(self) -> None:
        if self._pending_epoch:
            self.epoch_losses.append(float(self.train_loss.compute()))
            self.train_loss.reset()
            self._pending_epoch = False

    def on_train_epoch_end(self) -> None:
        self._close_epoch()

    def on_train_end(self) -> None:
        self._close_epoch()  # a run stopped by max_steps mid-epoch still reports that epoch

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cxr_al_epoch_losses"] = list(self.epoch_losses)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.epoch_losses = list(checkpoint.get("cxr_al_epoch_losses", []))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        method = self.hparams["method"]
        if self.lr is None:  # known only now: the global batch depends on how many processes DDP runs
            self.lr = default_lr(method, int(self.hparams["batch_size"]) * self.trainer.world_size)
        if OPTIMIZERS[method][0] == "adamw":
            optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.04)
        else:
            optimizer = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=5e-4)
        total = self._total_steps()
        scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=total // 10, max_epochs=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class SimCLRModule(SSLModule):
    """SimCLR: contrast two views of each image against the rest of the batch (NT-Xent)."""

    def __init__(self, backbone: GreyBackbone, *, lr: float | None, channels_last: bool = False, **hparams):
        super().__init__(backbone, lr=lr, channels_last=channels_last, **hparams)
        dim = backbone.feature_dim
        self.projection_head = SimCLRProjectionHead(dim, dim, 128)
        self.criterion = NTXentLoss(temperature=0.5, gather_distributed=True)

    def compute_loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        z0, z1 = (self.projection_head(self.backbone(v)) for v in views[:2])
        return self.criterion(z0, z1)


class MoCoModule(SSLModule):
    """MoCo v2: queries from the online encoder, keys from a momentum encoder, a queue of negatives."""

    momentum_range = (0.99, 1.0)

    def __init__(self, backbone: GreyBackbone, *, lr: float | None, channels_last: bool = False,
                 memory_bank_size: int = MOCO_QUEUE, **hparams):
        super().__init__(backbone, lr=lr, channels_last=channels_last, memory_bank_size=memory_bank_size, **hparams)
        dim = backbone.feature_dim
        self.projection_head = MoCoProjectionHead(dim, dim, 128)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NTXentLoss(temperature=0.2, memory_bank_size=(memory_bank_size, 128),
                                    gather_distributed=True)

    def momentum_pairs(self):
        return [(self.backbone, self.backbone_momentum), (self.projection_head, self.projection_head_momentum)]

    def compute_loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        query = self.projection_head(self.backbone(views[0]))
        with torch.no_grad():
            key = self.projection_head_momentum(self.backbone_momentum(views[1]))
        return self.criterion(query, key)


class BYOLModule(SSLModule):
    """BYOL: the online network predicts the momentum network's projection of the other view."""

    momentum_range = (0.99, 1.0)

    def __init__(self, backbone: GreyBackbone, *, lr: float | None, channels_last: bool = False, **hparams):
        super().__init__(backbone, lr=lr, channels_last=channels_last, **hparams)
        dim = backbone.feature_dim
        self.projection_head = BYOLProjectionHead(dim, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def momentum_pairs(self):
        return [(self.backbone, self.backbone_momentum), (self.projection_head, self.projection_head_momentum)]

    def _online(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x)))

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x))

    def compute_loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        x0, x1 = views[:2]
        p0, p1 = self._online(x0), self._online(x1)
        z0, z1 = self._target(x0), self._target(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


class SimSiamModule(SSLModule):
    """SimSiam: BYOL without a momentum encoder; a stop-gradient on the projections prevents collapse."""

    def __init__(self, backbone: GreyBackbone, *, lr: float | None, channels_last: bool = False, **hparams):
        super().__init__(backbone, lr=lr, channels_last=channels_last, **hparams)
        dim = backbone.feature_dim
        self.projection_head = SimSiamProjectionHead(dim, dim, 128)
        self.prediction_head = SimSiamPredictionHead(128, 64, 128)
        self.criterion = NegativeCosineSimilarity()

    def compute_loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        z0, z1 = (self.projection_head(self.backbone(v)) for v in views[:2])
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        return 0.5 * (self.criterion(z0.detach(), p1) + self.criterion(z1.detach(), p0))


class DINOModule(SSLModule):
    """DINO: a student matches a momentum teacher's centred, sharpened outputs across global and local crops."""

    momentum_range = (0.996, 1.0)

    def __init__(self, backbone: GreyBackbone, *, lr: float | None, channels_last: bool = False,
                 warmup_teacher_temp_epochs: int = 5, **hparams):
        super().__init__(backbone, lr=lr, channels_last=channels_last,
                         warmup_teacher_temp_epochs=warmup_teacher_temp_epochs, **hparams)
        dim = backbone.feature_dim
        # batch norm in the head: the DINO paper's setting for ResNet backbones
        self.student_head = DINOProjectionHead(dim, 2048, 256, 4096, batch_norm=True, freeze_last_layer=1)
        self.teacher_head = DINOProjectionHead(dim, 2048, 256, 4096, batch_norm=True)
        self.teacher_head.load_state_dict(self.student_head.state_dict())  # teacher starts as the student
        self.teacher_backbone = copy.deepcopy(backbone)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=4096, warmup_teacher_temp_epochs=warmup_teacher_temp_epochs)

    def momentum_pairs(self):
        return [(self.backbone, self.teacher_backbone), (self.student_head, self.teacher_head)]

    def export_backbone(self) -> GreyBackbone:
        return self.teacher_backbone  # DINO evaluates (and keeps) the teacher

    def compute_loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        global_views, local_views = views[:2], views[2:]
        n = global_views[0].shape[0]
        with torch.no_grad():
            teacher_out = self.teacher_head(self.teacher_backbone(torch.cat(global_views))).chunk(2)
        # one forward per resolution, as in the DINO reference code
        student_out = list(self.student_head(self.backbone(torch.cat(global_views))).chunk(2))
        if local_views:
            student_out += list(self.student_head(self.backbone(torch.cat(local_views))).split(n))
        return self.criterion(list(teacher_out), student_out, epoch=self.current_epoch)

    def on_after_backward(self) -> None:
        self.student_head.cancel_last_layer_gradients(current_epoch=self.current_epoch)


MODULES: dict[str, type[SSLModule]] = {"simclr": SimCLRModule, "moco": MoCoModule, "byol": BYOLModule,
                                        "simsiam": SimSiamModule, "dino": DINOModule}
assert set(MODULES) == set(SSL_METHODS)


class _ThroughputMeter(pl.Callback):
    """Counts images and optimizer steps between the first and the last training batch of this call."""

    def __init__(self):
        self.images = 0
        self.steps = 0
        self.seconds = 0.0
        self._start: float | None = None

    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.images += int(batch[0][0].shape[0]) * trainer.world_size
        self.steps += 1

    def on_train_end(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        if self._start is not None:
            self.seconds = time.perf_counter() - self._start


def _read_resume_hparams(ckpt: Path, method: str, backbone: str) -> dict:
    """Hyperparameters of the run being resumed; refuses a checkpoint of another method or backbone."""
    try:
        payload = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CxrAlError(f"cannot read {ckpt} to resume ({exc}); start afresh without --resume") from exc
    hp = dict(payload.get("hyper_parameters") or {})
    if hp.get("method") != method or hp.get("backbone_name") != backbone:
        raise CxrAlError(f"{ckpt} is a {hp.get('method')}/{hp.get('backbone_name')} run; cannot resume it as "
                         f"{method}/{backbone}. Use the same method and backbone, or another output folder.")
    return hp


def write_loss_curve(losses: Sequence[float], out_dir: Path, title: str) -> tuple[Path, Path]:
    """Write the per-epoch loss as out_dir/loss.csv and a plot out_dir/loss.png."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # object API + Agg canvas: no global backend switch

    csv_path, png_path = out_dir / "loss.csv", out_dir / "loss.png"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "loss"])
        writer.writerows([i + 1, f"{loss:.6g}"] for i, loss in enumerate(losses))
    fig = Figure(figsize=(5, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(1, len(losses) + 1), losses, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)
    return csv_path, png_path


def pretrain(paths: list[str], out_dir: Path, *, method: str = "simclr", backbone: str = "resnet18",
             init: str | Path = "random", epochs: int = 10, batch_size: int = 64, image_size: int = 224,
             lr: float | None = None, device: str = "auto", devices: int | str | list[int] | None = None,
             num_nodes: int = 1, strategy: str = "auto", precision: str | None = None, resume: bool = False,
             seed: int = 0, num_workers: int | None = None, augment: XrayAugmentConfig | None = None,
             progress: bool = True, max_steps: int | None = None, allow_download: bool = False) -> PretrainResult:
    """Pretrain a backbone self-supervised on image files and write out_dir/backbone.pt (plus
    Lightning's last.ckpt for resuming, loss.csv and loss.png).

    One device by default. `devices` (per node) x `num_nodes` processes train with DDP (`strategy`, e.g. ddp);
    under torchrun or SLURM every process runs this same call and only global rank 0 writes the files
    (docs/multi_gpu.md). `precision` overrides models.runtime.trainer_precision's choice (e.g. bf16-mixed)."""
    t_start = time.perf_counter()
    if method not in MODULES:
        raise CxrAlError(f"unknown SSL method {method!r}; choose from {', '.join(MODULES)}")
    if len(paths) < 2:
        raise CxrAlError(f"self-supervised pretraining needs at least 2 images, got {len(paths)}")
    if epochs < 1 or batch_size < 2 or image_size < 16:
        raise CxrAlError("need epochs >= 1, batch size >= 2 and image size >= 16")
    if max_steps is not None and max_steps < 1:
        raise CxrAlError(f"max_steps must be >= 1, got {max_steps}")
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "lightning"
    last_ckpt = ckpt_dir / LAST_CKPT
    hp: dict = {}
    if resume:
        if not last_ckpt.is_file():
            raise CxrAlError(f"nothing to resume: no {last_ckpt}. Run without --resume to start afresh.")
        hp = _read_resume_hparams(last_ckpt, method, backbone)

    dev = resolve_device(device)
    accelerator, precision = trainer_precision(dev, precision)
    devices = trainer_devices(dev, devices)
    pl.seed_everything(seed, workers=True, verbose=False)

    batch = min(batch_size, len(paths))  # a pool smaller than a batch still trains, as one batch
    dataset = ReadErrorsAsValues(paths, image_size, transform=ssl_transform(method, image_size, augment))
    workers = loader_workers(dev, num_workers)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=len(dataset) > batch,
                        num_workers=workers, persistent_workers=workers > 0, pin_memory=dev.type == "cuda")

    kwargs: dict = {"method": method, "init": str(hp.get("init", init)), "image_size": image_size,
                    "batch_size": batch, "seed": seed}
    if method == "moco":
        # a queue longer than the pool would hold stale keys of the very images being contrasted
        kwargs["memory_bank_size"] = int(hp.get("memory_bank_size", min(MOCO_QUEUE, len(paths))))
    checkpointing = ModelCheckpoint(dirpath=ckpt_dir, filename=Path(LAST_CKPT).stem, save_top_k=1,
                                    every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False)
    meter = _ThroughputMeter()
    with quiet_lightning():
        # on resume every weight comes from last.ckpt, so do not demand the original init's files
        net = build_backbone(backbone, "random" if resume else init, allow_download=allow_download)
        module = MODULES[method](net, lr=lr, channels_last=dev.type == "cuda", **kwargs)
        if dev.type == "cuda":
            module = module.to(memory_format=torch.channels_last)  # before Lightning moves and wraps it
        trainer = pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                             precision=precision, max_epochs=epochs, max_steps=max_steps or -1,
                             callbacks=[checkpointing, meter, *progress_callbacks(progress)], logger=False, default_root_dir=out_dir,
                             enable_progress_bar=progress, enable_model_summary=False,
                             sync_batchnorm=accelerator == "cuda",  # no-op on one GPU; SyncBN has no CPU kernel
                             log_every_n_steps=10)
        check_world_size(trainer.world_size)
        trainer.fit(module, train_dataloaders=loader, ckpt_path=last_ckpt if resume else None)

    losses = list(module.epoch_losses)
    if not all(math.isfinite(v) for v in losses):
        raise CxrAlError(f"{method} pretraining diverged (epoch losses {losses}); try a lower --lr")
    result = PretrainResult(
        checkpoint=out_dir / "backbone.pt", method=method, losses=losses, steps=meter.steps,
        images_per_second=meter.images / meter.seconds if meter.seconds > 0 else 0.0,
        wall_seconds=0.0, device=dev.type, lightning_checkpoint=last_ckpt,
        extra={"lr": module.lr, "batch_size": batch, "num_workers": workers, "world_size": trainer.world_size,
               "global_rank": trainer.global_rank, "precision": precision})
    if trainer.is_global_zero:
        exported = module.export_backbone().to("cpu", memory_format=torch.contiguous_format)
        save_checkpoint(result.checkpoint, exported, method=method, init=kwargs["init"],
                        epochs=len(losses), image_size=image_size, losses=losses,
                        steps=int(trainer.global_step), lr=module.lr, seed=seed)
        result.loss_csv, result.loss_png = write_loss_curve(losses, out_dir, f"{method} / {backbone}")
    trainer.strategy.barrier("pretrain-saved")  # under DDP no process returns before backbone.pt exists
    result.wall_seconds = time.perf_counter() - t_start
    return result
