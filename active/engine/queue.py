"""Fill the labeling queue: run a query strategy over the pool and hand out disjoint batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from active.engine.artifacts import embeddings_for
from active.engine.rounds import latest_predictions, latest_round
from store.errors import CxrAlError
from store.project import Project


def suggest(project: Project, n: int | None = None, *, strategy: str | None = None, annotator: str | None = None,
            seed: int = 0, double_read_fraction: float | None = None) -> pd.DataFrame:
    """Queue the n most useful pool images for an annotator (or for anyone) and return the new entries.

    Images already labeled, already waiting in someone's queue, or in the test split are never
    suggested, so annotators working at the same time get disjoint batches. A configurable
    fraction of each batch is instead taken from images another annotator labeled once, to
    measure agreement (double reading).
    """
    from active.strategies import QueryInputs, select

    policy = project.round_policy
    n = int(n or policy["batch_size"])
    if n <= 0:
        raise CxrAlError("--n must be positive")
    strategy = strategy or policy["strategy"]
    fraction = float(project.config.get("double_read_fraction", 0.0) if double_read_fraction is None
                     else double_read_fraction)
    db = project.db
    pool = db.images("pool")
    if pool.empty:
        raise CxrAlError("the pool is empty: ingest images first")
    ids = pool["id"].to_numpy(dtype=np.int64)
    labels = db.current_labels()
    queued = db.open_queue()
    taken = set(labels["image_id"]) | set(queued["image_id"])
    unavailable = np.isin(ids, list(taken))

    n_double = int(round(n * fraction)) if annotator else 0
    double = _double_reads(labels, queued, annotator, n_double, seed) if n_double else []
    n_new = n - len(double)

    round_id, preds = latest_predictions(project)
    probs = None
    if round_id is not None and len(preds):
        by_id = dict(zip(preds["image_id"], preds["probs"], strict=True))
        if all(i in by_id for i in ids):
            probs = np.stack([np.asarray(by_id[i], dtype=np.float32) for i in ids])
    try:
        embeddings = embeddings_for(project, ids)
    except CxrAlError:
        embeddings = None
        if strategy not in ("random", "least-confidence", "margin", "entropy"):
            if strategy != "auto":
                raise
            strategy = "random" if probs is None else "entropy"  # no embeddings: the best we can do

    entries: list[dict[str, Any]] = []
    if n_new > 0 and (~unavailable).any():
        inputs = QueryInputs(labeled=unavailable, embeddings=embeddings, probs=probs)
        ranked = select(strategy, inputs, n_new, seed=seed)
        entries += [{"image_id": int(ids[i]), "annotator": annotator, "strategy": strategy, "score": float(s),
                     "model_round": round_id, "rank": r} for r, (i, s) in enumerate(zip(ranked.indices, ranked.scores,
                                                                                         strict=True))]
    entries += [{"image_id": int(i), "annotator": annotator, "strategy": "double-read", "score": 0.0,
                 "model_round": round_id, "rank": len(entries) + k} for k, i in enumerate(double)]
    db.add_to_queue(entries)
    db.log_event("suggest", annotator, strategy=strategy, n=len(entries), double_reads=len(double))
    return pd.DataFrame(entries, columns=["image_id", "annotator", "strategy", "score", "model_round", "rank"])


def refresh_queue(project: Project, *, seed: int = 0) -> pd.DataFrame:
    """After a training round: expire unassigned suggestions of older models and queue a fresh batch.

    Entries an annotator has claimed (the image on their screen) stay; the new batch is scored by
    the newest model with the round policy's strategy and batch size."""
    last = latest_round(project, "train")  # the model whose predictions the new batch is scored by
    round_id = None if last is None else int(last["id"])
    queued = project.db.open_queue()
    stale = queued[queued["annotator"].isna() & queued["strategy"].ne("second-read")
                   & (queued["model_round"].isna() | queued["model_round"].ne(round_id))]
    if len(stale):
        project.db.close_queue_entries([int(i) for i in stale["id"]], "expired")
    return suggest(project, seed=seed)


def _double_reads(labels: pd.DataFrame, queued: pd.DataFrame, annotator: str, n: int, seed: int) -> list[int]:
    """Pool images labeled by exactly one other (human) annotator and not queued: candidates for a second read."""
    human = labels[(labels["annotator"] != "import") & (labels["split"] == "pool")]
    counts = human.groupby("image_id")["annotator"].agg(list)
    candidates = [int(i) for i, who in counts.items() if len(who) == 1 and who[0] != annotator
                  and i not in set(queued["image_id"])]
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.permutation(candidates)[:n]] if candidates else []
