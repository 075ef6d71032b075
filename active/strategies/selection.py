"""`select`: run a registered strategy by name and keep near-duplicates out of the batch."""

from __future__ import annotations

import faiss
import numpy as np

from active.strategies.base import QueryInputs, Ranked, StrategyFn, clip_budget, empty_ranked
from active.strategies.registry import STRATEGIES
from active.strategies.threads import single_threaded_when_busy
from store.errors import CxrAlError

CENTER_BLOCK = 65_536  # rows summed at a time for the pool mean


def pool_center(embeddings: np.ndarray) -> np.ndarray:
    """Mean embedding of the pool (float32), accumulated in float64 blocks without a copy of the pool.
    Zero (raw cosines) for pools of fewer than three rows, whose centred vectors would only point apart."""
    total = np.zeros(embeddings.shape[1], dtype=np.float64)
    if len(embeddings) < 3:
        return total.astype(np.float32)
    for start in range(0, len(embeddings), CENTER_BLOCK):
        total += embeddings[start:start + CENTER_BLOCK].sum(axis=0, dtype=np.float64)
    return (total / max(1, len(embeddings))).astype(np.float32)


def _centred_unit(rows: np.ndarray, center: np.ndarray) -> np.ndarray:
    x = np.array(rows, dtype=np.float32, order="C")  # one copy, then in place
    x -= center
    x /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)[:, None]
    return x


def near_duplicate_free(embeddings: np.ndarray, candidates: np.ndarray, taken: np.ndarray,
                        threshold: float, center: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask over candidates (in ranked order): True for each candidate whose cosine similarity to
    every taken row and to every earlier kept candidate is at most threshold.

    Cosines are taken after subtracting the pool's mean embedding (`center`, computed when not given).
    SSL and untrained embeddings share one dominant direction: on radiography2 half of all images have a
    raw cosine above 0.98 to some other image, and on phantom embeddings of an untrained backbone half of
    all pairs do, so a raw threshold called distinct patients duplicates. Centred, 3.8% of radiography2
    images have a neighbour above 0.98, and the closest pairs are the same radiograph saved twice."""
    if len(candidates) == 0:
        return np.zeros(0, dtype=bool)
    if center is None:
        center = pool_center(embeddings)
    x = _centred_unit(embeddings[candidates], center)
    keep = np.ones(len(candidates), dtype=bool)
    if len(taken):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(_centred_unit(embeddings[taken], center))
        sims, _ = index.search(x, 1)
        keep &= sims[:, 0] <= threshold
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, _, close = index.range_search(x, float(threshold))  # inner product > threshold
    for i in range(len(candidates)):
        if keep[i]:
            others = close[lims[i]:lims[i + 1]]
            earlier = others[others < i]
            if keep[earlier].any():
                keep[i] = False
    return keep


def select(name: str, inputs: QueryInputs, budget: int, seed: int = 0,
           dedup_threshold: float | None = 0.98) -> Ranked:
    """Run strategy `name` for a batch of min(budget, selectable rows) rows, free of near-duplicates of each
    other and of labeled rows (cosine > dedup_threshold around the pool mean, see near_duplicate_free; None
    turns that off, as does the absence of embeddings). Rejected rows are backfilled from further down the
    ranking; only when the whole pool has too few distinct rows does the batch fall back to the best-ranked
    duplicates."""
    if name not in STRATEGIES:
        raise CxrAlError(f"unknown query strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[name]
    budget = clip_budget(inputs, budget)
    if budget == 0:
        return empty_ranked()
    with single_threaded_when_busy():
        if getattr(strategy, "composes", False):  # a mix of strategies: each part is selected on its own
            def run(part: str, part_inputs: QueryInputs, part_budget: int, part_seed: int) -> Ranked:
                # a random part stays a uniform sample of the pool (its labels measure the others): no filter
                threshold = None if part == "random" else dedup_threshold
                return select(part, part_inputs, part_budget, part_seed, threshold)
            return strategy(inputs, budget, seed, run=run)
        if dedup_threshold is None or inputs.embeddings is None:
            return strategy(inputs, budget, seed)
        return _deduplicated(strategy, inputs, budget, seed, dedup_threshold)


def _deduplicated(strategy: StrategyFn, inputs: QueryInputs, budget: int, seed: int, threshold: float) -> Ranked:
    """The strategy's batch with near-duplicates replaced from further down its ranking (see `select`)."""
    available = int((~inputs.labeled).sum())
    taken = np.flatnonzero(inputs.labeled)
    center = pool_center(inputs.embeddings)
    ask = budget
    while True:
        ranked = strategy(inputs, ask, seed)
        keep = near_duplicate_free(inputs.embeddings, ranked.indices, taken, threshold, center)
        kept = np.flatnonzero(keep)[:budget]
        if len(kept) == budget:
            return Ranked(ranked.indices[kept], ranked.scores[kept])
        if ask >= available:
            # the pool holds too few distinct images (e.g. embeddings of an untrained backbone are all
            # alike): fill the batch with the best-ranked rejected rows rather than return a short one
            rest = np.flatnonzero(~keep)[: budget - len(kept)]
            order = np.sort(np.concatenate([kept, rest]))
            return Ranked(ranked.indices[order], ranked.scores[order])
        ask = min(available, 2 * ask + (budget - len(kept)))  # a longer ranking to backfill from
