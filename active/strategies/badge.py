"""BADGE (Ash et al. 2020): batches that are both uncertain and diverse, by k-means++ seeding over
last-layer gradient embeddings. In fine-tune rounds the features are the round model's own
penultimate layer; in probe rounds the SSL embeddings the probe sees."""

from __future__ import annotations

import numpy as np

from active.strategies.base import (
    QueryInputs,
    Ranked,
    clip_budget,
    empty_ranked,
    require_embeddings,
    require_probs,
)


def badge(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
    """BADGE (Ash et al. 2020): k-means++ seeding over last-layer gradient embeddings
    g = (p - onehot(argmax p)) (x) features, so the batch is large-gradient (uncertain) and spread out;
    score = squared distance to the nearest earlier pick when chosen (the first: its squared norm)."""
    probs = require_probs(inputs, "badge")
    features = inputs.features if inputs.features is not None else require_embeddings(inputs, "badge")
    budget = clip_budget(inputs, budget)
    if budget == 0:
        return empty_ranked()
    # g_i is never materialised: it has C x F entries per image (8 GB for 1M images, 4 classes, 512-d).
    # For outer products <g_i, g_j> = <a_i, a_j> <f_i, f_j>, so each D^2 update costs one pass over the
    # features. That is why the seeding is written here instead of calling sklearn's kmeans_plusplus,
    # which needs the (N, C x F) matrix; the sampling itself is plain k-means++ (D^2 weighting, first
    # centre = largest gradient norm), as in the authors' code.
    a = probs.copy()
    a[np.arange(len(a)), probs.argmax(axis=1)] -= 1.0
    f = np.ascontiguousarray(features, dtype=np.float32)
    g_sq = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", f, f).astype(np.float64)
    selectable = ~inputs.labeled
    rng = np.random.default_rng(seed)

    picks = np.empty(budget, dtype=np.int64)
    scores = np.empty(budget, dtype=np.float64)
    first = int(np.argmax(np.where(selectable, g_sq, -np.inf)))
    picks[0], scores[0] = first, g_sq[first]
    min_d2 = np.full(len(a), np.inf)
    min_d2[~selectable] = 0.0
    for i in range(1, budget):
        p = int(picks[i - 1])
        d2 = g_sq + g_sq[p] - 2.0 * (a @ a[p]) * (f @ f[p]).astype(np.float64)
        np.minimum(min_d2, np.maximum(d2, 0.0), out=min_d2)
        min_d2[picks[:i]] = 0.0
        total = min_d2.sum()
        if total > 0 and np.isfinite(total):
            cumulative = np.cumsum(min_d2)
            nxt = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
            nxt = min(nxt, len(a) - 1)
        else:  # every remaining row coincides with a pick: any of them will do
            left = np.flatnonzero(selectable & (min_d2 == 0.0))
            left = np.setdiff1d(left, picks[:i])
            nxt = int(rng.choice(left))
        picks[i], scores[i] = nxt, min_d2[nxt]
    return Ranked(picks, scores)
