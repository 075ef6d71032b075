"""Margin sampling."""

from __future__ import annotations

import numpy as np

from active.strategies import QueryInputs, entropy, margin


def test_margin_and_entropy_disagree_where_they_should() -> None:
    # a two-way tie (margin 0, lowish entropy) against a spread-out but decided row
    probs = np.array([[0.5, 0.5, 0.0, 0.0], [0.4, 0.2, 0.2, 0.2], [0.97, 0.01, 0.01, 0.01]])
    inputs = QueryInputs(labeled=np.zeros(3, bool), probs=probs)
    assert margin(inputs, 1).indices.tolist() == [0]
    assert entropy(inputs, 1).indices.tolist() == [1]
