"""Uncertainty-then-diversity hybrid."""

from __future__ import annotations

import numpy as np

from active.strategies import QueryInputs, hybrid, margin
from tests.active.strategies.arrays import clustered, confident


def test_hybrid_is_both_uncertain_and_diverse() -> None:
    emb, cluster = clustered(4, 30, 16, spread=0.05, seed=10)
    probs = confident(len(emb), seed=2)
    unsure = np.zeros(len(emb), bool)
    for c in range(4):
        rows = np.flatnonzero(cluster == c)[:8]
        unsure[rows] = True
        probs[rows] = [0.3, 0.3, 0.2, 0.2] if c == 0 else [0.36, 0.24, 0.2, 0.2]  # cluster 0 the most uncertain
    inputs = QueryInputs(labeled=np.zeros(len(emb), bool), embeddings=emb, probs=probs)
    ranked = hybrid(inputs, 4, factor=8)
    assert unsure[ranked.indices].all()
    assert sorted(cluster[ranked.indices].tolist()) == [0, 1, 2, 3]
    assert set(cluster[margin(inputs, 4).indices]) == {0}  # uncertainty alone stays in one cluster
    labeled = np.zeros(len(emb), bool)
    labeled[np.flatnonzero(cluster == 1)[20:]] = True  # cluster 1 already has labels
    ranked = hybrid(QueryInputs(labeled=labeled, embeddings=emb, probs=probs), 3, factor=12)
    assert sorted(cluster[ranked.indices].tolist()) == [0, 2, 3]
