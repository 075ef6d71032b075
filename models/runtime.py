"""Where and how torch runs: the device, DataLoader workers, Lightning's precision, and Lightning kept quiet.

One copy of each choice for pretraining, embedding and fine-tuning."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

import torch

from store.errors import CxrAlError

LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
# expected on small CPU runs or from our own files; nothing a user should act on
QUIET_WARNINGS = (".*does not have many workers.*", ".*exists and is not empty.*", ".*treespec, LeafSpec.*",
                  ".*LeafSpec.*", ".*torch.nn.utils.weight_norm.*", ".*number of training batches.*",
                  ".*no `val_dataloader`.*")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")  # Lightning's names: fp32, bf16 autocast, fp16 autocast + scaler


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; an explicit CUDA device without a GPU is a user error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise CxrAlError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CxrAlError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CxrAlError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) present")
    elif dev.type != "cpu":
        raise CxrAlError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def loader_workers(device: torch.device, num_workers: int | None = None) -> int:
    """DataLoader worker processes: as asked, else some when a GPU waits for data, none on a small CPU box
    (decoding in workers would only compete with the model for the same cores)."""
    if num_workers is not None:
        return max(0, int(num_workers))
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, max(0, cores - 1))
    return min(4, max(0, cores // 2 - 1))


def trainer_precision(device: torch.device, precision: str | None = None) -> tuple[str, str]:
    """Lightning's (accelerator, precision) for a device: by default bf16 AMP on GPUs that have it (fp16 with a
    scaler on older ones), full fp32 on the CPU; `precision` asks for one of PRECISIONS instead (bf16-mixed also
    runs on the CPU, under CPU autocast)."""
    accelerator = "cuda" if device.type == "cuda" else "cpu"
    if precision is None:
        if device.type == "cuda":
            return accelerator, "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return accelerator, "32-true"
    if precision not in PRECISIONS:
        raise CxrAlError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "16-mixed" and device.type != "cuda":
        raise CxrAlError("16-mixed (fp16 with a loss scaler) needs a CUDA GPU; use bf16-mixed or 32-true on the CPU")
    if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CxrAlError("this GPU has no bfloat16; use 16-mixed or 32-true")
    return accelerator, precision


def inference_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for embedding and prediction, the half type training uses on this device (trainer_precision's
    default): bf16 on a GPU that has it, else fp16; off on the CPU."""
    _, precision = trainer_precision(device)
    if precision == "32-true":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16-mixed" else torch.float16)


def trainer_devices(device: torch.device, devices: int | str | list[int] | None = None) -> int | str | list[int]:
    """Lightning's `devices`: None -> the one resolved device (cuda:N -> [N]), so nothing runs on several GPUs
    unless asked; else as asked (it wins over an index in `device`): a count, a list of GPU indices, or 'auto'
    (every GPU of the node)."""
    if devices is None:
        return [device.index] if device.type == "cuda" and device.index is not None else 1
    return devices


def launched_world_size() -> int | None:
    """How many processes a launcher started for this job: torchrun's (and Lightning's own) WORLD_SIZE, else
    SLURM's task count outside interactive allocations (Lightning's rule); None when none did."""
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    if os.environ.get("SLURM_NTASKS") and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return int(os.environ["SLURM_NTASKS"])
    return None


def check_world_size(world_size: int) -> None:
    """CxrAlError when a launcher started another number of processes than a Trainer's devices x num_nodes:
    each would train alone (Lightning checks this only for DDP) and all would write the same files."""
    launched = launched_world_size()
    if launched is not None and launched != world_size:
        raise CxrAlError(f"the launcher started {launched} processes but devices x num_nodes is {world_size}: make "
                         "--devices the processes per node (torchrun --nproc_per_node, SLURM --ntasks-per-node) "
                         "and --num-nodes the number of nodes")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning without its banners ('GPU available', 'Tip' adverts) and expected warnings; progress bars stay."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def progress_callbacks(progress: bool) -> list:
    """The Trainer's progress bar: one bar for the training epochs and none for validation (Lightning's
    default draws a second, nested bar for each validation loop); nothing when progress is off."""
    if not progress:
        return []
    from pytorch_lightning.callbacks import TQDMProgressBar
    from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

    class TrainingOnlyBar(TQDMProgressBar):
        def init_validation_tqdm(self) -> Tqdm:
            return Tqdm(disable=True)  # created disabled: a bar disabled after creation has already drawn

    return [TrainingOnlyBar()]
