"""The round policy: the one place that decides when a training round runs, and its settings."""

from __future__ import annotations

import numbers
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from active.engine.artifacts import BACKGROUND_LOG
from active.engine.labeling import validate_annotator
from active.engine.rounds import current_rounds, ground_truth
from store.db import LINGER_ENV
from store.errors import CxrAlError
from store.project import Project

REPO_ROOT = str(Path(__file__).resolve().parents[2])


def labels_since_last_train(project: Project, train_rounds: pd.DataFrame | None = None) -> int:
    """Labeled images added since the last successful training round started (`train_rounds`: the train
    rounds when the caller has just read them)."""
    rounds = project.db.rounds("train") if train_rounds is None else train_rounds
    done = rounds[rounds["status"] == "done"]
    return project.db.count_labeled_since(done["started_at"].iloc[-1] if len(done) else None, split="pool")


def round_due(project: Project) -> bool:
    """True when the round policy says a training round should start now."""
    every = int(project.round_policy["train_every"])
    if every <= 0:
        return False
    rounds = current_rounds(project, "train")
    if (rounds["status"] == "running").any():
        return False
    return labels_since_last_train(project, rounds) >= every


@dataclass(frozen=True)
class RoundOutcome:
    """What one trigger of run_round did: started (and finished or failed) a round, or nothing, and why."""

    started: bool
    message: str
    round_id: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    queued: int = 0


def run_round(project: Project, *, mode: str | None = None, epochs: int | None = None, device: str = "auto",
              seed: int = 0, if_due: bool = False, refresh: bool = True, in_child: bool = True,
              progress: bool = True) -> RoundOutcome:
    """The one way a training round runs (CLI `train`, the label path, Train now, the policy): single-flight
    under the project's round lock, recorded before its child starts, train -> predict -> refresh the queue.

    A second trigger while a round runs, or (if_due) when the policy says none is due, does nothing and
    says so. A failure is recorded as a failed round with its error and raised; labels are never touched."""
    from active.engine.queue import refresh_queue
    from active.engine.rounds import RoundBusy, project_lock, train

    try:
        with project_lock(project):
            if if_due and not round_due(project):
                return RoundOutcome(False, "no training round due")
            result = train(project, mode=mode, epochs=epochs, device=device, seed=seed, in_child=in_child,
                           progress=progress)
            queued = len(refresh_queue(project, seed=seed)) if refresh else 0
    except RoundBusy as exc:
        return RoundOutcome(False, str(exc))
    return RoundOutcome(True, f"round {result['round_id']} done", round_id=int(result["round_id"]),
                        metrics=result["metrics"], queued=queued)


def start_round_in_background(project: Project, *, if_due: bool = True) -> int | None:
    """Run run_round in a detached engine process (`python -m active.engine.background`); returns its pid, or
    None (nothing started) while a round holds the project's round lock. Output: artifacts/rounds/background.log.

    The lock is taken here and handed to the process, so triggers close together start one process at most;
    with if_due (the round policy fired) it re-checks the policy under that lock; without it (a lead's "Train
    now") it trains whatever the policy."""
    import subprocess
    import sys

    from active.engine.rounds import take_lock_for_child

    fd = take_lock_for_child(project)
    if fd is None:
        return None
    log_dir = project.artifacts / "rounds"
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "active.engine.background", str(project.root.resolve()), "--lock-fd", str(fd)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))}
    env.pop(LINGER_ENV, None)  # the round's child opens the database only now and then: it never keeps it open
    try:
        with open(log_dir / BACKGROUND_LOG, "ab") as log:
            proc = subprocess.Popen(command + (["--if-due"] if if_due else []), env=env, pass_fds=(fd,),
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=str(project.root.resolve()))
    finally:
        os.close(fd)  # the child holds the lock now (or, if it did not start, nobody)
    return proc.pid


_TRIGGER = threading.Lock()


def start_round_if_due(project: Project) -> int | None:
    """After a label: start a background round when the policy says one is due; its pid, else None.

    Never raises: a label is already stored when this runs, so a problem here must not look like a failed
    label (the round itself records its failures)."""
    if int(project.round_policy.get("train_every") or 0) <= 0 or not _TRIGGER.acquire(blocking=False):
        return None
    try:
        return start_round_in_background(project) if round_due(project) else None
    except CxrAlError:
        return None
    finally:
        _TRIGGER.release()


def start_training_now(project: Project, actor: str) -> int:
    """Train now: start a training round whatever the round policy, in a detached engine process; its pid.

    Refused while a round runs or is starting (the round lock is held), and when the labels cannot train a
    model (fewer than two classes)."""
    opened = current_rounds(project, "train")
    running = opened[opened["status"] == "running"]
    if len(running):
        row = running.iloc[-1]
        raise CxrAlError(f"training round {row['id']} is already running (since {row['started_at']:%H:%M:%S} "
                         "UTC); wait for it to finish")
    truth = ground_truth(project)
    pool = truth[truth["split"] == "pool"]
    if pool["label"].nunique() < 2:
        raise CxrAlError(f"a training round needs labels of at least two classes; have {len(pool)} labels of "
                         f"{pool['label'].nunique()} class(es)")
    pid = start_round_in_background(project, if_due=False)
    if pid is None:
        raise CxrAlError("a training round is already starting or running; wait for it to finish")
    project.db.log_event("train_requested", actor, pid=pid)
    return int(pid)


POLICY_LIMITS = {"train_every": (0, 100_000), "batch_size": (1, 1_000), "epochs": (1, 1_000)}


def _fraction(key: str, value: Any) -> float:
    """A share from 0 to 1 (a number, not a flag), or a CxrAlError naming the key."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise CxrAlError(f"{key} must be a number from 0 to 1, got {value!r}")
    return float(value)


def update_round_policy(project: Project, actor: str, *, train_every: int | None = None, mode: str | None = None,
                        strategy: str | None = None, batch_size: int | None = None, epochs: int | None = None,
                        random_share: float | None = None, double_read_fraction: float | None = None) -> dict[str, Any]:
    """Change the round policy (and the double-read fraction) in project.yaml, written atomically; every
    value is checked before anything is written, and the change is logged with who made it. Returns the
    new policy (with double_read_fraction).

    `random_share` is the part of every `auto` batch picked at random (the evidence auto chooses by, and the
    'is it paying off' estimate)."""
    from active.engine.jobs import TRAIN_MODES
    from active.strategies import STRATEGIES

    actor = validate_annotator(actor)
    policy = dict(project.round_policy)
    changes: dict[str, Any] = {}
    for key, value in (("train_every", train_every), ("batch_size", batch_size), ("epochs", epochs)):
        if value is None:
            continue
        low, high = POLICY_LIMITS[key]
        if isinstance(value, bool) or int(value) != value or not low <= int(value) <= high:
            raise CxrAlError(f"{key} must be a whole number from {low} to {high}, got {value!r}")
        changes[key] = int(value)
    if mode is not None:
        if mode not in TRAIN_MODES:
            raise CxrAlError(f"mode must be {' or '.join(TRAIN_MODES)}, got {mode!r}")
        changes["mode"] = mode
    if strategy is not None:
        if strategy not in STRATEGIES:
            raise CxrAlError(f"unknown query strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        changes["strategy"] = strategy
    if random_share is not None:
        changes["random_share"] = _fraction("random_share", random_share)
    fraction = project.config.get("double_read_fraction", 0.0)
    if double_read_fraction is not None:
        fraction = _fraction("double_read_fraction", double_read_fraction)
    before = {**policy, "double_read_fraction": project.config.get("double_read_fraction", 0.0)}
    policy.update(changes)
    before_config = dict(project.config)
    project.config = {**project.config, "round_policy": policy, "double_read_fraction": fraction}
    try:
        project.save_config()  # validated by the schema before anything is written
    except CxrAlError:
        project.config = before_config
        raise
    after = {**policy, "double_read_fraction": fraction}
    changed = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}
    if changed:
        project.db.log_event("round_policy_changed", actor, changes=changed)
    return after

