"""The round policy: the one place that decides when a training round runs, and its settings."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from active.engine.artifacts import BACKGROUND_LOG
from active.engine.labeling import validate_annotator
from active.engine.rounds import current_rounds, ground_truth
from store.db import utcnow
from store.errors import CxrAlError
from store.project import Project

TRAIN_REQUEST_GRACE = timedelta(seconds=90)  # a requested round should have opened by then


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


def start_round_in_background(project: Project, *, if_due: bool = True) -> int:
    """Start `cxr-al train PROJECT` as a detached process; returns its pid. Its output goes to
    artifacts/rounds/background.log.

    With if_due (the round policy fired) the process re-checks the policy (`--if-due`), so two triggers
    close together start at most one round; without it (a lead's "Train now") it trains whatever the policy."""
    import subprocess
    import sys

    log_dir = project.artifacts / "rounds"
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "active.delivery.cli", "train", str(project.root.resolve())]
    with open(log_dir / BACKGROUND_LOG, "ab") as log:
        proc = subprocess.Popen(command + (["--if-due"] if if_due else []),
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=str(Path(__file__).resolve().parents[2]))
    return proc.pid


def start_training_now(project: Project, actor: str) -> int:
    """Start a training round now, whatever the round policy, in a detached `cxr-al train` process; its pid.

    Refused while a training round runs or one was requested moments ago and has not opened yet, and when
    the labels cannot train a model (fewer than two classes)."""
    opened = current_rounds(project, "train")
    running = opened[opened["status"] == "running"]
    if len(running):
        row = running.iloc[-1]
        raise CxrAlError(f"training round {row['id']} is already running (since {row['started_at']:%H:%M:%S} "
                         "UTC); wait for it to finish")
    requests = project.db.events("train_requested", limit=1)
    if len(requests):
        requested_at = requests["logged_at"].iloc[0]
        opened_since = (opened["started_at"] >= requested_at).any() if len(opened) else False
        if not opened_since and utcnow() - requested_at < TRAIN_REQUEST_GRACE:
            raise CxrAlError("a training round was requested moments ago and is starting; wait for it to appear")
    truth = ground_truth(project)
    pool = truth[truth["split"] == "pool"]
    if pool["label"].nunique() < 2:
        raise CxrAlError(f"a training round needs labels of at least two classes; have {len(pool)} labels of "
                         f"{pool['label'].nunique()} class(es)")
    pid = start_round_in_background(project, if_due=False)
    project.db.log_event("train_requested", actor, pid=pid)
    return int(pid)


POLICY_LIMITS = {"train_every": (0, 100_000), "batch_size": (1, 1_000), "epochs": (1, 1_000)}


def update_round_policy(project: Project, actor: str, *, train_every: int | None = None, mode: str | None = None,
                        strategy: str | None = None, batch_size: int | None = None, epochs: int | None = None,
                        double_read_fraction: float | None = None) -> dict[str, Any]:
    """Change the round policy (and the double-read fraction) in project.yaml, written atomically; every
    value is checked before anything is written, and the change is logged with who made it. Returns the
    new policy (with double_read_fraction)."""
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
        if mode not in ("probe", "finetune"):
            raise CxrAlError(f"mode must be probe or finetune, got {mode!r}")
        changes["mode"] = mode
    if strategy is not None:
        if strategy not in STRATEGIES:
            raise CxrAlError(f"unknown query strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        changes["strategy"] = strategy
    fraction = project.config.get("double_read_fraction", 0.0)
    if double_read_fraction is not None:
        if not 0.0 <= float(double_read_fraction) <= 1.0:
            raise CxrAlError(f"double_read_fraction must be between 0 and 1, got {double_read_fraction!r}")
        fraction = float(double_read_fraction)
    before = {**policy, "double_read_fraction": project.config.get("double_read_fraction", 0.0)}
    policy.update(changes)
    project.config["round_policy"] = policy
    project.config["double_read_fraction"] = fraction
    project.save_config()
    after = {**policy, "double_read_fraction": fraction}
    changed = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}
    if changed:
        project.db.log_event("round_policy_changed", actor, changes=changed)
    return after

