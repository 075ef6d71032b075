"""BADGE."""

from __future__ import annotations

import numpy as np

from active.strategies import QueryInputs, badge, entropy
from tests.active.strategies.arrays import assert_well_formed, clustered


def test_badge_returns_distinct_diverse_uncertain_rows() -> None:
    n_clusters, n_unsure, n_sure = 4, 40, 5
    emb, cluster = clustered(n_clusters, n_unsure + n_sure, 16, spread=0.05, seed=8)
    probs = np.empty((len(emb), 4))
    unsure = np.zeros(len(emb), bool)
    for c in range(n_clusters):  # in cluster c the model leans to class c; most rows are uncertain
        rows = np.flatnonzero(cluster == c)
        probs[rows[:n_unsure]] = np.roll([0.4, 0.2, 0.2, 0.2], c)
        probs[rows[n_unsure:]] = np.roll([0.997, 0.001, 0.001, 0.001], c)
        unsure[rows[:n_unsure]] = True
    inputs = QueryInputs(labeled=np.zeros(len(emb), bool), embeddings=emb, probs=probs)
    uncertain, covered = [], []
    for seed in range(20):
        ranked = badge(inputs, 4, seed=seed)
        assert_well_formed(ranked, inputs, 4)
        assert unsure[ranked.indices[0]]  # the first centre has the largest gradient
        uncertain.append(unsure[ranked.indices].mean())
        covered.append(len(set(cluster[ranked.indices])))
    assert np.mean(uncertain) >= 0.8
    assert np.mean(covered) >= 3.5  # entropy alone would take all four from one cluster
    assert len(set(cluster[entropy(inputs, 4).indices])) == 1


def test_badge_uses_features_when_given() -> None:
    emb, _ = clustered(2, 10, 4, spread=0.05, seed=9)
    probs = np.full((20, 2), 0.5)
    probs[:, 0] += np.linspace(0, 0.4, 20)
    probs[:, 1] = 1 - probs[:, 0]
    features = np.zeros((20, 3), np.float32)
    features[:, 0] = 1.0
    features[7, 0] = 50.0  # a huge feature norm makes row 7 the largest gradient
    inputs = QueryInputs(labeled=np.zeros(20, bool), embeddings=emb, probs=probs, features=features)
    assert badge(inputs, 1).indices.tolist() == [7]
