"""Fill the labeling queue: run a query strategy over the pool and hand out disjoint batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from active.engine.artifacts import embeddings_for, round_samples
from active.engine.rounds import latest_predictions, latest_round
from store.errors import CxrAlError
from store.project import Project

NOT_A_STRATEGY = ("double-read", "second-read", "pool-order")


def suggest(project: Project, n: int | None = None, *, strategy: str | None = None, annotator: str | None = None,
            seed: int = 0, double_read_fraction: float | None = None) -> pd.DataFrame:
    """Queue the n most useful pool images for an annotator (or for anyone) and return the new entries.

    Images already labeled, already waiting in someone's queue, or in the test split are never
    suggested, so annotators working at the same time get disjoint batches. A configurable
    fraction of each batch is instead taken from images another annotator labeled once, to
    measure agreement (double reading).
    """
    from active.strategies import QueryInputs, choose_arm, select

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
    arm_gains, reason = None, None
    seed = batch_seed(seed, round_id, int(unavailable.sum()))
    if n_new > 0 and (~unavailable).any():
        if strategy == "auto" and probs is not None and embeddings is not None:
            arm_gains = strategy_evidence(project, ids, embeddings, seed=seed)
        mc_probs, features = round_samples(project, round_id, ids) if probs is not None else (None, None)
        inputs = QueryInputs(labeled=unavailable, embeddings=embeddings, probs=probs, mc_probs=mc_probs,
                             features=features, arm_gains=arm_gains, random_share=float(policy["random_share"]))
        if strategy == "auto":
            reason = choose_arm(inputs)[1]
        ranked = select(strategy, inputs, n_new, seed=seed)
        names = ([f"{strategy}:{s}" for s in ranked.sources] if ranked.sources is not None
                 else [strategy] * len(ranked.indices))
        entries += [{"image_id": int(ids[i]), "annotator": annotator, "strategy": name, "score": float(s),
                     "model_round": round_id, "rank": r}
                    for r, (i, s, name) in enumerate(zip(ranked.indices, ranked.scores, names, strict=True))]
    entries += [{"image_id": int(i), "annotator": annotator, "strategy": "double-read", "score": 0.0,
                 "model_round": round_id, "rank": len(entries) + k} for k, i in enumerate(double)]
    db.add_to_queue(entries)
    chosen = sorted({e["strategy"] for e in entries} - {"double-read"})
    db.log_event("suggest", annotator, strategy=strategy, chosen=chosen, reason=reason, n=len(entries),
                 double_reads=len(double))
    return pd.DataFrame(entries, columns=["image_id", "annotator", "strategy", "score", "model_round", "rank"])


def batch_seed(seed: int, round_id: int | None, n_taken: int) -> int:
    """The seed of one batch: fixed by the caller's seed and the project's state (model round, images taken),
    so a repeated call gives the same batch while every new batch draws afresh. One fixed seed for every
    batch would put the random share at the same positions of the pool list each time (image ids follow
    ingest order, often one class folder after another)."""
    return int(np.random.default_rng([int(seed), int(round_id or 0), int(n_taken)]).integers(2**31))


def label_source(strategy: Any) -> str:
    """The strategy that picked a labeled image, as `auto`'s evidence counts it: an `auto` part by its own
    name ('auto:random' -> 'random'), anything not chosen by a strategy (double reads, pool order, imported
    labels) as ''."""
    if not isinstance(strategy, str) or strategy in NOT_A_STRATEGY:
        return ""
    return strategy.split(":", 1)[1] if strategy.startswith("auto:") else strategy


def strategy_evidence(project: Project, ids: np.ndarray, embeddings: np.ndarray, *, seed: int = 0
                      ) -> dict[str, np.ndarray]:
    """The measured value of each strategy's labels (engine.evidence.label_gains) on this project's labels."""
    from active.engine.evidence import label_gains

    origins = project.db.label_origins().drop_duplicates("image_id", keep="first")
    origins = origins[origins["label"].isin(project.classes)]
    row = pd.Series(np.arange(len(ids)), index=ids)
    origins = origins[origins["image_id"].isin(row.index)]
    if origins.empty:
        return {}
    class_index = {c: i for i, c in enumerate(project.classes)}
    return label_gains(embeddings[row.loc[origins["image_id"]].to_numpy()],
                       origins["label"].map(class_index).to_numpy(), origins["strategy"].map(label_source).to_numpy(),
                       len(project.classes), seed=seed)


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
