"""Entropy sampling: images whose predicted class distribution is most spread out (Shannon 1948; Settles 2009).

Score functions take any (N, C) probability array (like baal's heuristics), so they do not care which
model produced it. Higher score = more uncertain = wanted first.
"""

from __future__ import annotations

import numpy as np

from active.strategies.base import QueryInputs, Ranked, rank_by_scores, require_probs

_EPS = 1e-12


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of the predicted class distribution, per row (over the last axis)."""
    p = np.asarray(probs, dtype=np.float64)
    return -(p * np.log(np.clip(p, _EPS, 1.0))).sum(axis=-1)


def entropy(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
    """Rows with the most spread-out predicted class distribution."""
    return rank_by_scores(entropy_scores(require_probs(inputs, "entropy")), inputs, budget)
