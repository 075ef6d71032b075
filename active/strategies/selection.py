"""The strategy registry and `select`: run a strategy by name and keep near-duplicates out of the batch."""

from __future__ import annotations

import faiss
import numpy as np

from active.strategies.base import QueryInputs, Ranked, StrategyFn, clip_budget, empty_ranked
from active.strategies.diversity import coreset, typiclust
from active.strategies.hybrid import badge, hybrid
from active.strategies.random_sampling import random_sampling
from active.strategies.threads import single_threaded_when_busy
from active.strategies.uncertainty import bald, entropy, least_confidence, margin
from store.errors import CxrAlError


def auto(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
    """TypiClust while there is no model (cold start), then the uncertainty-then-diversity hybrid."""
    if inputs.probs is None:
        return typiclust(inputs, budget, seed)
    return hybrid(inputs, budget, seed)


STRATEGIES: dict[str, StrategyFn] = {
    "random": random_sampling,
    "least-confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
    "bald": bald,
    "coreset": coreset,
    "typiclust": typiclust,
    "badge": badge,
    "hybrid": hybrid,
    "auto": auto,
}


def near_duplicate_free(embeddings: np.ndarray, candidates: np.ndarray, taken: np.ndarray,
                        threshold: float) -> np.ndarray:
    """Boolean mask over candidates (in ranked order): True for each candidate whose cosine similarity to
    every taken row and to every earlier kept candidate is at most threshold."""
    if len(candidates) == 0:
        return np.zeros(0, dtype=bool)
    x = np.ascontiguousarray(embeddings[candidates], dtype=np.float32)
    keep = np.ones(len(candidates), dtype=bool)
    if len(taken):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(np.ascontiguousarray(embeddings[taken], dtype=np.float32))
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
    other and of labeled rows (cosine > dedup_threshold; None turns that off, as does the absence of
    embeddings). Rejected rows are backfilled from further down the ranking; only when the whole pool has
    too few distinct rows does the batch fall back to the best-ranked duplicates."""
    if name not in STRATEGIES:
        raise CxrAlError(f"unknown query strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[name]
    budget = clip_budget(inputs, budget)
    if budget == 0:
        return empty_ranked()
    with single_threaded_when_busy():
        if dedup_threshold is None or inputs.embeddings is None:
            return strategy(inputs, budget, seed)
        return _deduplicated(strategy, inputs, budget, seed, dedup_threshold)


def _deduplicated(strategy: StrategyFn, inputs: QueryInputs, budget: int, seed: int, threshold: float) -> Ranked:
    """The strategy's batch with near-duplicates replaced from further down its ranking (see `select`)."""
    available = int((~inputs.labeled).sum())
    taken = np.flatnonzero(inputs.labeled)
    ask = budget
    while True:
        ranked = strategy(inputs, ask, seed)
        keep = near_duplicate_free(inputs.embeddings, ranked.indices, taken, threshold)
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
