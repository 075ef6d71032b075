"""Entropy sampling (and the other probability-only scores) on hand-made probabilities."""

from __future__ import annotations

import numpy as np

from active.strategies import QueryInputs, entropy, least_confidence, margin
from tests.active.strategies.arrays import confident


def test_uncertainty_strategies_pick_the_near_uniform_rows() -> None:
    probs = confident(100)
    unsure = np.array([5, 17, 42, 80])
    probs[unsure] = [[0.26, 0.25, 0.25, 0.24], [0.3, 0.3, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25], [0.28, 0.24, 0.24, 0.24]]
    inputs = QueryInputs(labeled=np.zeros(100, bool), probs=probs)
    for strategy in (least_confidence, margin, entropy):
        ranked = strategy(inputs, 4)
        assert sorted(ranked.indices.tolist()) == unsure.tolist(), strategy.__name__
        assert np.all(np.diff(ranked.scores) <= 0)
    assert entropy(inputs, 1).indices[0] == 42  # the exactly uniform row has the highest entropy
    assert least_confidence(inputs, 1).indices[0] == 42
    assert margin(inputs, 2).indices.tolist() == [17, 42]  # margin 0, ties broken by row


def test_uncertainty_never_picks_labeled_rows() -> None:
    probs = confident(20)
    probs[:3] = 0.25
    labeled = np.zeros(20, bool)
    labeled[[0, 2]] = True
    ranked = entropy(QueryInputs(labeled=labeled, probs=probs), 2)
    assert ranked.indices[0] == 1 and not labeled[ranked.indices].any()
