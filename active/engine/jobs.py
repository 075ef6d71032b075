"""Long jobs (SSL pretraining, embedding, training rounds) run from a snapshot, usually in a child process.

DESIGN: the process that owns the project database hands a job a snapshot (a typed spec, PretrainJob, EmbedJob
or TrainJob, with the image paths, ids and labels it needs, written as JSON for the child), the job writes its
results to files (checkpoint, predictions Parquet, metrics JSON) and never touches the database; the owner
records them. `python -m active.engine.jobs SPEC.json` is the child's entry point; run_job() runs the same code
in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import typing
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from active.engine.artifacts import SAMPLE_FILES
from store.errors import CxrAlError

SPEC_NAME = "spec.json"
RESULT_NAME = "result.json"
ERROR_NAME = "error.txt"


class JobFailed(CxrAlError):
    """A child job ended with an error; the message carries the end of its traceback."""


# ----------------------------------------------------------------------------- specs
def _json_scalar(value: Any) -> Any:
    """NumPy scalars (an id taken from an array) as the Python numbers JSON knows."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a job spec field holds {type(value).__name__}, which JSON cannot carry")


TRAIN_MODES = ("probe", "finetune")  # probe: logistic regression on SSL embeddings; finetune: end to end
MC_SAMPLES = 10  # T probability samples a training round writes for BALD (bootstrap probes or MC-dropout passes)
FINETUNE_DROPOUT = 0.3  # dropout before a fine-tuned head: what MC dropout samples, so BALD has a spread to score


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What every job is handed: the folder its results go to and whether it shows progress. A subclass per task
    names its inputs; `python -m active.engine.jobs SPEC.json` reads one back with job_from_json."""

    task: ClassVar[str]
    out_dir: str = ""  # filled in by the round that runs the job, once it has an id
    progress: bool = True

    def run(self, out: Path) -> dict[str, Any]:
        """Do the work, write the result files under `out`, return what the owner records (JSON-serialisable)."""
        raise NotImplementedError

    def to_json(self) -> str:
        """The spec as the child reads it: its fields plus the task name."""
        return json.dumps({"task": self.task, **asdict(self)}, default=_json_scalar)


@dataclass(frozen=True, kw_only=True)
class PretrainJob(JobSpec):
    """SSL-pretrain a backbone on image files (labels are not used)."""

    task: ClassVar[str] = "pretrain"
    paths: tuple[str, ...]
    method: str
    backbone: str
    init: str
    epochs: int
    batch_size: int
    image_size: int
    augment: str  # a name in models.augment.AUGMENT_PRESETS
    device: str = "auto"
    resume: bool = False
    seed: int = 0
    max_steps: int | None = None
    allow_download: bool = False

    def run(self, out: Path) -> dict[str, Any]:
        from models.augment import augment_preset
        from models.ssl import pretrain

        result = pretrain(list(self.paths), out, method=self.method, backbone=self.backbone, init=self.init,
                          epochs=self.epochs, batch_size=self.batch_size, image_size=self.image_size,
                          device=self.device, resume=self.resume, seed=self.seed, progress=self.progress,
                          max_steps=self.max_steps, allow_download=self.allow_download,
                          augment=augment_preset(self.augment))
        return {"checkpoint": str(result.checkpoint), "losses": [float(x) for x in result.losses],
                "images_per_second": float(result.images_per_second), "device": str(result.device),
                "seconds": float(result.wall_seconds)}


@dataclass(frozen=True, kw_only=True)
class EmbedJob(JobSpec):
    """Embed image files with a backbone checkpoint (or, without one, an un-pretrained `backbone` from `init`)."""

    task: ClassVar[str] = "embed"
    paths: tuple[str, ...]
    checkpoint: str | None
    backbone: str
    init: str = "random"
    image_size: int | None = None  # None: the checkpoint's
    batch_size: int = 64
    device: str = "auto"
    allow_download: bool = False
    embedding: str = "last"  # models.backbones.EMBEDDINGS

    def run(self, out: Path) -> dict[str, Any]:
        from models.embed import embed_paths

        start = time.perf_counter()
        vectors = embed_paths(self.checkpoint, list(self.paths), backbone=self.backbone, init=self.init,
                              image_size=self.image_size, batch_size=self.batch_size, device=self.device,
                              progress=self.progress, allow_download=self.allow_download, embedding=self.embedding)
        seconds = time.perf_counter() - start
        np.save(out / "vectors.npy", vectors.astype(np.float32))
        return {"vectors": str(out / "vectors.npy"), "count": int(len(vectors)), "dim": int(vectors.shape[1]),
                "images_per_second": len(vectors) / max(seconds, 1e-9)}


@dataclass(frozen=True, kw_only=True)
class TrainJob(JobSpec):
    """Fit a probe (on saved embeddings) or fine-tune (on the images) with the labeled snapshot, predict every
    image, score the test split. Positions index the all_* arrays.

    Beside the predictions it writes what BALD and BADGE need, rows in all_ids order: mc_samples probability
    samples of every image (a bootstrap ensemble of probes, or MC-dropout passes of the fine-tuned network) and,
    when fine-tuning, the penultimate features."""

    task: ClassVar[str] = "train"
    mode: str  # one of TRAIN_MODES
    classes: tuple[str, ...]
    positive_class: str | None
    all_ids: tuple[int, ...]
    all_paths: tuple[str, ...]
    train_pos: tuple[int, ...]
    train_y: tuple[int, ...]  # class indices
    test_pos: tuple[int, ...] = ()
    test_y: tuple[int, ...] = ()
    vectors: str | None = None  # probe: .npy of the embeddings of all images, in all_ids order
    checkpoint: str | None = None  # SSL backbone to start from (finetune) or to pair with the probe head
    backbone: str = "resnet18"
    init: str = "random"
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    device: str = "auto"
    seed: int = 0
    n_bootstrap: int = 1000
    mc_samples: int = MC_SAMPLES  # 0: write no probability samples
    dropout: float = FINETUNE_DROPOUT  # finetune: dropout before the head (0: no MC-dropout samples)
    embedding: str = "last"  # probe: what `vectors` were embedded as (models.backbones.EMBEDDINGS), for explain

    def __post_init__(self) -> None:
        if self.mode not in TRAIN_MODES:
            raise CxrAlError(f"unknown training mode {self.mode!r}; use {' or '.join(TRAIN_MODES)}")
        if self.mode == "probe" and not self.vectors:
            raise CxrAlError("a probe training job needs the embeddings of every image (vectors)")
        if self.mc_samples < 0 or not 0.0 <= self.dropout < 1.0:
            raise CxrAlError(f"need mc_samples >= 0 and 0 <= dropout < 1, got {self.mc_samples} and {self.dropout}")

    def run(self, out: Path) -> dict[str, Any]:
        from models.metrics import classification_metrics

        classes = list(self.classes)
        train_pos = np.asarray(self.train_pos, dtype=np.int64)
        train_y = np.asarray(self.train_y, dtype=np.int64)
        extra: dict[str, Any] = {}
        features = mc_probs = None
        if self.mode == "probe":
            from models.probe import fit_probe, fit_probe_ensemble

            vectors = np.load(self.vectors)
            probe = fit_probe(vectors[train_pos], train_y, n_classes=len(classes), seed=self.seed)
            probs = probe.predict_proba(vectors)
            if self.mc_samples:
                mc_probs = fit_probe_ensemble(vectors[train_pos], train_y, len(classes), self.mc_samples, base=probe,
                                              seed=self.seed).predict_samples(vectors)
            if self.checkpoint:
                from models.backbones import load_checkpoint, save_checkpoint

                backbone, meta = load_checkpoint(self.checkpoint)
                save_checkpoint(out / "classifier.pt", backbone, head=probe.to_torch_head().state_dict(),
                                head_kind="probe", embedding=self.embedding, classes=classes,
                                image_size=meta.get("image_size", self.image_size))
                extra["checkpoint"] = str(out / "classifier.pt")
        else:
            from models.finetune import finetune, load_classifier, predict_outputs

            paths = list(self.all_paths)
            result = finetune([paths[i] for i in train_pos], train_y, classes, out, checkpoint=self.checkpoint,
                              backbone=self.backbone, init=self.init, image_size=self.image_size,
                              epochs=self.epochs, batch_size=self.batch_size, device=self.device, seed=self.seed,
                              progress=self.progress, mc_dropout=self.dropout)
            classifier = result.classifier if result.classifier is not None else load_classifier(result.checkpoint)[0]
            outputs = predict_outputs(classifier, paths, self.image_size, batch_size=self.batch_size,
                                      device=self.device, mc_samples=self.mc_samples if self.dropout > 0 else 0,
                                      seed=self.seed)
            probs, mc_probs, features = outputs.probs, outputs.mc_probs, outputs.features
            extra["checkpoint"] = str(result.checkpoint)
        probs = np.asarray(probs, dtype=np.float32)
        pd.DataFrame({"image_id": np.asarray(self.all_ids, dtype=np.int64), "probs": list(probs)}).to_parquet(
            out / "predictions.parquet", index=False)
        metrics: dict[str, Any] = {"n_train": int(len(train_pos))}
        test_pos = np.asarray(self.test_pos, dtype=np.int64)
        if len(test_pos):
            metrics.update(classification_metrics(np.asarray(self.test_y), probs[test_pos], classes,
                                                  positive_class=self.positive_class,
                                                  n_bootstrap=self.n_bootstrap, seed=self.seed))
        samples = self._write_samples(out, mc_probs, features)
        return {"predictions": str(out / "predictions.parquet"), "metrics": metrics, "samples": samples, **extra}

    def _write_samples(self, out: Path, mc_probs: np.ndarray | None, features: np.ndarray | None) -> dict[str, Any]:
        """Save the (T, N, C) samples and (N, F) features with the image ids of their rows; what was written."""
        if mc_probs is None and features is None:
            return {}
        samples: dict[str, Any] = {"kind": "bootstrap" if self.mode == "probe" else "mc_dropout",
                                   "T": 0 if mc_probs is None else int(mc_probs.shape[0])}
        for key, array in (("image_ids", np.asarray(self.all_ids, dtype=np.int64)), ("mc_probs", mc_probs),
                           ("features", features)):
            if array is not None:
                path = out / SAMPLE_FILES[key]
                np.save(path, array if key == "image_ids" else np.asarray(array, dtype=np.float32))
                samples[key] = str(path)
        return samples


JOBS: dict[str, type[JobSpec]] = {job.task: job for job in (PretrainJob, EmbedJob, TrainJob)}


def job_from_dict(data: dict[str, Any]) -> JobSpec:
    """The typed spec a dict describes (its 'task' names the class); CxrAlError for an unknown task or field."""
    data = dict(data)
    task = data.pop("task", None)
    cls = JOBS.get(task)
    if cls is None:
        raise CxrAlError(f"unknown job {task!r}; known jobs: {', '.join(JOBS)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CxrAlError(f"{task} job: unknown field(s) {', '.join(unknown)}")
    missing = sorted(f.name for f in fields(cls) if f.name not in data and f.default is MISSING
                     and f.default_factory is MISSING)
    if missing:
        raise CxrAlError(f"{task} job: missing field(s) {', '.join(missing)}")
    for name, value in data.items():  # JSON has lists where the spec keeps tuples
        if typing.get_origin(hints[name]) is tuple and isinstance(value, list):
            data[name] = tuple(value)
    return cls(**data)


def job_from_json(text: str) -> JobSpec:
    """Parse a spec written by JobSpec.to_json back into its class."""
    return job_from_dict(json.loads(text))


# ----------------------------------------------------------------------------- runners
def die_with_parent() -> Callable[[], None]:
    """A preexec_fn for a child that must not outlive the process starting it: in the freshly forked child it
    asks Linux to SIGKILL it when its parent dies (prctl PR_SET_PDEATHSIG), so a job never runs on unrecorded
    after `kill -9` of the process that started it; elsewhere a no-op. The parent's pid is taken before the
    fork, so a parent that is itself pid 1 (a container without an init) is not mistaken for a dead one."""
    parent = os.getpid()

    def arm() -> None:
        if not sys.platform.startswith("linux"):
            return
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return arm


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Run one job in this process; results go to spec.out_dir and are returned."""
    if not spec.out_dir:
        raise CxrAlError(f"{spec.task} job: no out_dir to write its results to")
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = spec.run(out)
    tmp = out / (RESULT_NAME + ".tmp")
    tmp.write_text(json.dumps(result, default=float))
    os.replace(tmp, out / RESULT_NAME)
    return result


def run_in_child(spec: JobSpec) -> dict[str, Any]:
    """Run a job in a child Python process that dies with this one (its progress goes to our stderr); JobFailed
    on error."""
    if not spec.out_dir:
        raise CxrAlError(f"{spec.task} job: no out_dir to write its results to")
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT_NAME, ERROR_NAME):
        (out / stale).unlink(missing_ok=True)
    spec_path = out / SPEC_NAME
    spec_path.write_text(spec.to_json())
    repo_root = str(Path(__file__).resolve().parents[2])
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "active.engine.jobs", str(spec_path)], env=env,
                          preexec_fn=die_with_parent())
    if proc.returncode != 0 or not (out / RESULT_NAME).exists():
        detail = (out / ERROR_NAME).read_text() if (out / ERROR_NAME).exists() else f"exit status {proc.returncode}"
        raise JobFailed(f"{spec.task} job failed: {detail.strip().splitlines()[-1] if detail.strip() else detail}",
                        ) from None
    return json.loads((out / RESULT_NAME).read_text())


def main(argv: list[str] | None = None) -> int:
    """Child entry point: run the job described by SPEC.json; on error write error.txt (in the job's out_dir, else
    next to the spec) and exit 1."""
    argv = sys.argv[1:] if argv is None else argv
    spec_path = Path(argv[0])
    out = spec_path.parent
    try:
        spec = job_from_json(spec_path.read_text())
        out = Path(spec.out_dir or out)
        run_job(spec)
    except BaseException as exc:  # the parent records any failure as a failed round
        out.mkdir(parents=True, exist_ok=True)
        (out / ERROR_NAME).write_text(traceback.format_exc() + f"\n{type(exc).__name__}: {exc}\n")
        print(f"cxr-al job: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
