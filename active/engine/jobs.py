"""Long jobs (SSL pretraining, embedding, training rounds) run from a snapshot, usually in a child process.

DESIGN: the process that owns the project database hands a job a snapshot (a JSON spec with the
image paths, ids and labels it needs), the job writes its results to files (checkpoint,
predictions Parquet, metrics JSON) and never touches the database; the owner records them.
`python -m active.engine.jobs SPEC.json` is the child's entry point; run_job() runs the same code in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from store.errors import CxrAlError

RESULT_NAME = "result.json"
ERROR_NAME = "error.txt"


class JobFailed(CxrAlError):
    """A child job ended with an error; the message carries the end of its traceback."""


# ----------------------------------------------------------------------------- tasks
def _pretrain(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    from models.augment import augment_preset
    from models.ssl import pretrain

    result = pretrain(spec["paths"], out, method=spec["method"], backbone=spec["backbone"], init=spec["init"],
                      epochs=spec["epochs"], batch_size=spec["batch_size"], image_size=spec["image_size"],
                      device=spec["device"], resume=spec.get("resume", False), seed=spec.get("seed", 0),
                      progress=spec.get("progress", True), max_steps=spec.get("max_steps"),
                      allow_download=spec.get("allow_download", False),
                      augment=augment_preset(spec.get("augment", "standard")))  # rounds before presets used standard
    return {"checkpoint": str(result.checkpoint), "losses": [float(x) for x in result.losses],
            "images_per_second": float(result.images_per_second), "device": str(result.device),
            "seconds": float(result.wall_seconds)}


def _embed(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    import time

    from models.embed import embed_paths

    start = time.perf_counter()
    vectors = embed_paths(spec.get("checkpoint"), spec["paths"], backbone=spec["backbone"], init=spec["init"],
                          image_size=spec["image_size"], batch_size=spec["batch_size"], device=spec["device"],
                          progress=spec.get("progress", True), allow_download=spec.get("allow_download", False))
    seconds = time.perf_counter() - start
    np.save(out / "vectors.npy", vectors.astype(np.float32))
    return {"vectors": str(out / "vectors.npy"), "count": int(len(vectors)), "dim": int(vectors.shape[1]),
            "images_per_second": len(vectors) / max(seconds, 1e-9)}


def _train(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Fit a probe or fine-tune on the labeled snapshot; predict every image; score the test split."""
    from models.metrics import classification_metrics

    classes = spec["classes"]
    all_ids = np.asarray(spec["all_ids"], dtype=np.int64)
    train_pos = np.asarray(spec["train_pos"], dtype=np.int64)  # positions into all_* arrays
    train_y = np.asarray(spec["train_y"], dtype=np.int64)
    extra: dict[str, Any] = {}
    if spec["mode"] == "probe":
        from models.probe import fit_probe

        vectors = np.load(spec["vectors"])
        probe = fit_probe(vectors[train_pos], train_y, n_classes=len(classes), seed=spec.get("seed", 0))
        probs = probe.predict_proba(vectors)
        if spec.get("checkpoint"):
            from models.backbones import load_checkpoint, save_checkpoint

            backbone, meta = load_checkpoint(spec["checkpoint"])
            head = probe.to_torch_head()
            save_checkpoint(out / "classifier.pt", backbone, head=head.state_dict(), head_kind="probe",
                            classes=classes, image_size=meta.get("image_size", spec["image_size"]))
            extra["checkpoint"] = str(out / "classifier.pt")
    elif spec["mode"] == "finetune":
        from models.finetune import finetune, load_classifier, predict_proba

        paths = spec["all_paths"]
        result = finetune([paths[i] for i in train_pos], train_y, classes, out, checkpoint=spec.get("checkpoint"),
                          backbone=spec["backbone"], init=spec["init"], image_size=spec["image_size"],
                          epochs=spec["epochs"], batch_size=spec["batch_size"], device=spec["device"],
                          seed=spec.get("seed", 0), progress=spec.get("progress", True),
                          mc_dropout=spec.get("mc_dropout", 0.0))
        classifier, _ = load_classifier(result.checkpoint)
        probs = predict_proba(classifier, paths, spec["image_size"], batch_size=spec["batch_size"],
                              device=spec["device"])
        if isinstance(probs, tuple):
            probs = probs[0]
        extra["checkpoint"] = str(result.checkpoint)
    else:
        raise CxrAlError(f"unknown training mode {spec['mode']!r}; use probe or finetune")
    probs = np.asarray(probs, dtype=np.float32)
    pd.DataFrame({"image_id": all_ids, "probs": list(probs)}).to_parquet(out / "predictions.parquet", index=False)
    metrics: dict[str, Any] = {"n_train": int(len(train_pos))}
    test_pos = np.asarray(spec["test_pos"], dtype=np.int64)
    if len(test_pos):
        metrics.update(classification_metrics(np.asarray(spec["test_y"]), probs[test_pos], classes,
                                              positive_class=spec.get("positive_class"),
                                              n_bootstrap=spec.get("n_bootstrap", 1000), seed=spec.get("seed", 0)))
    return {"predictions": str(out / "predictions.parquet"), "metrics": metrics, **extra}


TASKS = {"pretrain": _pretrain, "embed": _embed, "train": _train}


# ----------------------------------------------------------------------------- runners
def die_with_parent() -> None:
    """In a freshly forked child: ask Linux to SIGKILL it when its parent dies (prctl PR_SET_PDEATHSIG), so a
    job never runs on unrecorded after `kill -9` of the process that started it; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one job in this process; results go to spec['out_dir'] and are returned."""
    out = Path(spec["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    task = TASKS.get(spec["task"])
    if task is None:
        raise CxrAlError(f"unknown job {spec['task']!r}")
    result = task(spec, out)
    tmp = out / (RESULT_NAME + ".tmp")
    tmp.write_text(json.dumps(result, default=float))
    os.replace(tmp, out / RESULT_NAME)
    return result


def run_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a job in a child Python process (its progress goes to our stderr); JobFailed on error."""
    out = Path(spec["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT_NAME, ERROR_NAME):
        (out / stale).unlink(missing_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec, default=str))
    repo_root = str(Path(__file__).resolve().parents[2])
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "active.engine.jobs", str(spec_path)], env=env,
                          preexec_fn=die_with_parent)
    if proc.returncode != 0 or not (out / RESULT_NAME).exists():
        detail = (out / ERROR_NAME).read_text() if (out / ERROR_NAME).exists() else f"exit status {proc.returncode}"
        raise JobFailed(f"{spec['task']} job failed: {detail.strip().splitlines()[-1] if detail.strip() else detail}",
                        ) from None
    return json.loads((out / RESULT_NAME).read_text())


def main(argv: list[str] | None = None) -> int:
    """Child entry point: run the job described by SPEC.json; on error write error.txt and exit 1."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    try:
        run_job(spec)
    except BaseException as exc:  # the parent records any failure as a failed round
        (Path(spec["out_dir"]) / ERROR_NAME).write_text(traceback.format_exc() + f"\n{type(exc).__name__}: {exc}\n")
        print(f"cxr-al job: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
