"""Rounds: pretraining, embedding and training jobs, each recorded in the project before its child starts."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from active.engine.artifacts import (
    EMBEDDINGS_NAME,
    INDEX_DIR,
    SAMPLE_FILES,
    artifact_path,
    embeddings_for,
    recorded_path,
)
from active.engine.jobs import EmbedJob, JobSpec, PretrainJob, TrainJob, run_in_child, run_job
from store.errors import CxrAlError
from store.export import labeled_set
from store.project import Project

LOCK_NAME = "round.lock"  # in artifacts/: held (flock) by the process running a round, released when it dies
_HELD: dict[str, tuple[int, int, int]] = {}  # lock path -> (thread id, depth, fd) for the locks this process holds
_HELD_GUARD = threading.Lock()


class RoundBusy(CxrAlError):
    """Another round of this project is running: a second trigger does nothing."""


@contextmanager
def project_lock(project: Project, *, wait_s: float = 2.0) -> Iterator[None]:
    """Hold the project's round lock (an flock on artifacts/round.lock) for one round; re-entrant in one thread.

    RoundBusy when another process or thread holds it for longer than wait_s. The kernel drops the lock when
    its process dies, kill -9 included, which is how a reader tells an abandoned 'running' round."""
    path = project.artifacts / LOCK_NAME
    key, me = str(path), threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] == me:
            _HELD[key] = (me, held[1] + 1, held[2])
            fd = None
        elif held is not None:
            raise RoundBusy("a round of this project is already running in this process; wait for it to finish")
        else:
            fd = -1
    if fd is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RoundBusy("a round of this project is already running; this trigger does nothing "
                                    "(see `cxr-al status`)") from None
                time.sleep(0.05)
        with _HELD_GUARD:
            _HELD[key] = (me, 1, fd)
    try:
        yield
    finally:
        with _HELD_GUARD:
            owner, depth, lock_fd = _HELD[key]
            if depth > 1:
                _HELD[key] = (owner, depth - 1, lock_fd)
            else:
                del _HELD[key]
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
                os.close(lock_fd)


def take_lock_for_child(project: Project) -> int | None:
    """The round lock taken on a new inheritable descriptor, to hand to a background round's process (which
    adopts it with adopt_lock); None when a round holds it. The caller closes its copy once the child runs."""
    path = project.artifacts / LOCK_NAME
    with _HELD_GUARD:
        if str(path) in _HELD:
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.set_inheritable(fd, True)
    return fd


def adopt_lock(project: Project, fd: int) -> None:
    """In a background round's process: take over the round lock its parent took (take_lock_for_child); it is
    held until this process ends."""
    os.set_inheritable(fd, False)
    with _HELD_GUARD:
        _HELD[str(project.artifacts / LOCK_NAME)] = (threading.get_ident(), 1, fd)


def round_lock_free(project: Project) -> bool:
    """True when no process (this one included) holds the project's round lock: no round can be running."""
    path = project.artifacts / LOCK_NAME
    with _HELD_GUARD:
        if str(path) in _HELD:
            return False
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def _run(spec: JobSpec, in_child: bool) -> dict[str, Any]:
    return run_in_child(spec) if in_child else run_job(spec)


def latest_round(project: Project, kind: str) -> dict[str, Any] | None:
    """The most recent successful round of a kind (pretrain | embed | train), or None."""
    rounds = project.db.rounds(kind)
    done = rounds[rounds["status"] == "done"]
    if done.empty:
        return None
    row = done.iloc[-1].to_dict()
    row["checkpoint"] = artifact_path(project, row.get("checkpoint"))
    return row


def _recorded(project: Project, kind: str, params: dict[str, Any], spec: JobSpec, in_child: bool,
              record: Callable[[int, dict[str, Any]], None]) -> dict[str, Any]:
    """Open a round, run its job, record the outputs with `record(round_id, result)` or mark it failed."""
    with project_lock(project):  # single-flight: taken, then the round recorded, before any child starts
        round_id = project.db.start_round(kind, {**params, "pid": os.getpid(), "host": socket.gethostname()})
        out_dir = spec.out_dir or project.artifacts.resolve() / "rounds" / f"{round_id:04d}-{kind}"
        spec = replace(spec, out_dir=str(out_dir))
        try:
            result = _run(spec, in_child)
            if result.get("checkpoint"):
                result = {**result, "checkpoint": recorded_path(project, result["checkpoint"])}
            record(round_id, result)
        except BaseException as exc:
            project.db.fail_round(round_id, f"{type(exc).__name__}: {exc}")
            raise
    return {"round_id": round_id, **result, "checkpoint": artifact_path(project, result.get("checkpoint"))}


# ----------------------------------------------------------------------------- pretraining
def pretrain(project: Project, *, method: str = "simclr", backbone: str | None = None, init: str = "random",
             epochs: int = 10, batch_size: int = 64, image_size: int | None = None, device: str = "auto",
             resume: bool = False, seed: int = 0, max_steps: int | None = None, in_child: bool = True,
             progress: bool = True, allow_download: bool = False, augment: str = "gentle") -> dict[str, Any]:
    """SSL-pretrain a backbone on every image of the project (labels are not used); `augment` names the
    view settings (models.augment.AUGMENT_PRESETS)."""
    from models.augment import augment_preset

    augment_preset(augment)  # an unknown name fails here, before a round is recorded
    images = project.db.images()
    if images.empty:
        raise CxrAlError("the project has no images yet; run `cxr-al ingest` first")
    backbone = backbone or project.config.get("backbone", "resnet18")
    image_size = image_size or int(project.config["image_size"])
    params = {"method": method, "backbone": backbone, "init": str(init), "epochs": epochs, "batch_size": batch_size,
              "image_size": image_size, "device": device, "seed": seed, "augment": augment}
    spec = PretrainJob(paths=tuple(images["path"]), resume=resume, max_steps=max_steps, progress=progress,
                       allow_download=allow_download, **params)
    if resume:
        spec = replace(spec, out_dir=resumable_pretrain_dir(project))
        params["resumed_from"] = recorded_path(project, spec.out_dir)

    def record(round_id: int, result: dict[str, Any]) -> None:
        metrics = {"final_loss": result["losses"][-1] if result["losses"] else None, "losses": result["losses"],
                   "images_per_second": result["images_per_second"], "device": result["device"],
                   "seconds": result["seconds"]}
        project.db.finish_round(round_id, checkpoint=result["checkpoint"], metrics=metrics)

    return _recorded(project, "pretrain", params, spec, in_child, record)


def resumable_pretrain_dir(project: Project) -> str:
    """The folder of the newest pretraining round that left a Lightning last.ckpt (what --resume continues)."""
    from models.ssl import LAST_CKPT

    for row in project.db.rounds("pretrain").sort_values("id", ascending=False).itertuples(index=False):
        folder = project.artifacts.resolve() / "rounds" / f"{int(row.id):04d}-pretrain"
        if (folder / "lightning" / LAST_CKPT).is_file():
            return str(folder)
    raise CxrAlError("nothing to resume: no earlier pretraining round left a checkpoint; run without --resume")


# ----------------------------------------------------------------------------- embeddings and index
def _file_tag(path: str | None, fallback: str) -> str:
    if not path:
        return fallback
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def embed(project: Project, *, checkpoint: str | None = None, init: str | None = None, batch_size: int = 64,
          device: str = "auto", in_child: bool = True, progress: bool = True,
          allow_download: bool = False) -> dict[str, Any]:
    """Embed every image not embedded yet with the latest SSL backbone (or `checkpoint`), then refresh the index.

    Without any pretraining run, `init` (random | imagenet | PATH) gives an un-pretrained backbone.
    """
    from store.embeddings import load_embeddings, merge_embeddings, save_embeddings
    from store.index import EmbeddingIndex

    if checkpoint is None and init is None:
        run = latest_round(project, "pretrain")
        if run is None:
            raise CxrAlError("no pretrained backbone yet: run `cxr-al pretrain` first, or pass --checkpoint PATH "
                             "or --init random|imagenet to embed with an un-pretrained backbone")
        checkpoint = run["checkpoint"]
    backbone = project.config.get("backbone", "resnet18")
    embedding = project.config.get("embedding", "last")
    tag = _file_tag(checkpoint, f"init:{init}:{backbone}")
    if embedding != "last":  # vectors of another recipe are never mixed with these (tags of "last" as before)
        tag += f"|{embedding}"
    images = project.db.images()
    path = project.artifacts / EMBEDDINGS_NAME
    old_ids = np.zeros(0, dtype=np.int64)
    if path.exists():
        old_ids, old_vectors, old_tag = load_embeddings(path)
        if old_tag != tag:
            old_ids = np.zeros(0, dtype=np.int64)  # a new backbone: embed everything again
    todo = images[~images["id"].isin(old_ids)]
    params = {"checkpoint": checkpoint, "init": init, "tag": tag, "embedding": embedding, "new": int(len(todo))}
    spec = EmbedJob(paths=tuple(todo["path"]), checkpoint=checkpoint, backbone=backbone, init=init or "random",
                    image_size=None if checkpoint else int(project.config["image_size"]), batch_size=batch_size,
                    device=device, progress=progress, allow_download=allow_download, embedding=embedding)

    def record(round_id: int, result: dict[str, Any]) -> None:
        vectors = np.load(result["vectors"]) if len(todo) else np.zeros((0, 1), np.float32)
        new_ids = todo["id"].to_numpy(dtype=np.int64)
        if len(old_ids):
            merge_embeddings(path, new_ids, vectors, tag)
        else:
            save_embeddings(path, new_ids, vectors, tag)
        ids, all_vectors, _ = load_embeddings(path)
        index = EmbeddingIndex.load_or_build(project.artifacts / INDEX_DIR, ids, all_vectors, tag)
        project.db.finish_round(round_id, checkpoint=recorded_path(project, checkpoint), metrics={
            "embedded": int(len(new_ids)), "embeddings": int(len(ids)), "dim": int(all_vectors.shape[1]),
            "index": index.kind, "images_per_second": result.get("images_per_second")})

    if todo.empty and path.exists():
        ids, vectors, _ = load_embeddings(path)
        index = EmbeddingIndex.load_or_build(project.artifacts / INDEX_DIR, ids, vectors, tag)
        return {"round_id": None, "count": 0, "embeddings": int(len(ids)), "index": index.kind}
    return _recorded(project, "embed", params, spec, in_child, record)


# ----------------------------------------------------------------------------- training rounds
def ground_truth(project: Project) -> pd.DataFrame:
    """Labels that count as truth (image_id, label, split): for training, the consensus of the pool's labels;
    for test metrics, only the held-out ground truth of test images: the hidden oracle label, else the label
    imported with the image at ingest. Labels annotators give a test image (source 'test-split') never count."""
    images = project.db.images()[["id", "split"]].rename(columns={"id": "image_id"})
    labels = labeled_set(project.db, split="pool")[["image_id", "label"]]
    oracle = project.db.oracle_labels()
    test_oracle = oracle[oracle["image_id"].isin(images.loc[images["split"] == "test", "image_id"])]
    current = project.db.current_labels()
    imported = current[(current["split"] == "test") & (current["source"] == "import")
                       & ~current["image_id"].isin(test_oracle["image_id"])]
    truth = pd.concat([labels, test_oracle, imported.drop_duplicates("image_id", keep="last")[["image_id", "label"]]])
    truth = truth[truth["label"].isin(project.classes)]
    return truth.merge(images, on="image_id")


def train(project: Project, *, mode: str | None = None, epochs: int | None = None, batch_size: int = 32,
          device: str = "auto", seed: int = 0, in_child: bool = True, progress: bool = True,
          n_bootstrap: int = 1000) -> dict[str, Any]:
    """A training round: fit on the current labels, predict every image, score the test split."""
    policy = project.round_policy
    mode = mode or policy["mode"]
    images = project.db.images()
    truth = ground_truth(project)
    train_rows = truth[truth["split"] == "pool"]
    if train_rows["label"].nunique() < 2:
        raise CxrAlError(f"a training round needs labels of at least two classes; have {len(train_rows)} labels "
                         f"of {train_rows['label'].nunique()} class(es)")
    test_rows = truth[truth["split"] == "test"]
    all_ids = images["id"].to_numpy(dtype=np.int64)
    pos = pd.Series(np.arange(len(all_ids)), index=all_ids)
    class_pos = {c: i for i, c in enumerate(project.classes)}
    pretrain_run = latest_round(project, "pretrain")
    vectors = None
    if mode == "probe":
        # embeds only images that have no embedding yet (none, usually)
        embed(project, in_child=in_child, progress=progress, init=None if pretrain_run else "random")
        vectors = project.artifacts / "train_vectors.npy"
        np.save(vectors, embeddings_for(project, all_ids))
    spec = TrainJob(
        mode=mode, classes=tuple(project.classes), positive_class=project.config["positive_class"],
        all_ids=tuple(all_ids.tolist()), all_paths=tuple(images["path"]),
        train_pos=tuple(pos.loc[train_rows["image_id"]].tolist()),
        train_y=tuple(class_pos[c] for c in train_rows["label"]),
        test_pos=tuple(pos.loc[test_rows["image_id"]].tolist()),
        test_y=tuple(class_pos[c] for c in test_rows["label"]), vectors=str(vectors) if vectors else None,
        checkpoint=pretrain_run["checkpoint"] if pretrain_run else None,
        backbone=project.config.get("backbone", "resnet18"), init="random",
        image_size=int(project.config["image_size"]), epochs=int(epochs or policy["epochs"]), batch_size=batch_size,
        device=device, seed=seed, progress=progress, n_bootstrap=n_bootstrap,
        embedding=project.config.get("embedding", "last"))  # embed() above just made the vectors so
    params = {"mode": mode, "n_train": len(train_rows), "n_test": len(test_rows), "epochs": spec.epochs}

    def record(round_id: int, result: dict[str, Any]) -> None:
        predictions = pd.read_parquet(result["predictions"])
        metrics = {"mode": mode, **result["metrics"]}
        if result.get("samples"):  # files for BALD and BADGE (active.engine.artifacts.round_samples reads them)
            metrics["samples"] = {key: recorded_path(project, value) if key in SAMPLE_FILES else value
                                  for key, value in result["samples"].items()}
        project.db.finish_round(round_id, checkpoint=result.get("checkpoint"), metrics=metrics,
                                predictions=predictions)

    return _recorded(project, "train", params, spec, in_child, record)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def reap_abandoned_rounds(project: Project, rounds: pd.DataFrame | None = None) -> list[int]:
    """Mark as failed the running rounds whose process on this machine is gone (killed, crashed, rebooted).

    Without this a round killed with -9 would stay 'running' and block the round policy for good."""
    rounds = project.db.rounds() if rounds is None else rounds
    running = rounds[rounds["status"] == "running"]
    if running.empty:
        return []
    lock_free = round_lock_free(project)
    reaped = []
    for row in running.itertuples():
        params = row.params
        pid, host = params.get("pid"), params.get("host")
        if pid is None or host != socket.gethostname():
            continue
        if _process_alive(int(pid)) and not lock_free:
            continue
        project.db.fail_round(int(row.id), f"the process running this round (pid {pid}) ended without "
                                           "finishing it (killed or crashed); the next round retries")
        reaped.append(int(row.id))
    return reaped


def current_rounds(project: Project, kind: str | None = None) -> pd.DataFrame:
    """The rounds (of one kind), oldest first, after abandoned running rounds are marked failed: what every
    view of running/finished rounds (label page, dashboard, round policy, Train now) reads."""
    rounds = project.db.rounds()
    if reap_abandoned_rounds(project, rounds):
        rounds = project.db.rounds()
    return rounds if kind is None else rounds[rounds["kind"] == kind].reset_index(drop=True)


def latest_predictions(project: Project) -> tuple[int | None, pd.DataFrame]:
    """(round id, predictions with image_id, probs, pred, confidence) of the latest training round."""
    last = latest_round(project, "train")
    if last is None:
        return None, pd.DataFrame(columns=["image_id", "probs", "pred", "confidence"])
    preds = project.db.predictions(int(last["id"]))
    probs = np.stack(preds["probs"].to_numpy()) if len(preds) else np.zeros((0, len(project.classes)))
    preds["pred"] = [project.classes[i] for i in probs.argmax(axis=1)] if len(preds) else []
    preds["confidence"] = probs.max(axis=1) if len(preds) else []
    return int(last["id"]), preds

