"""Least confidence: images whose most likely class the latest model believes least (Lewis & Gale 1994)."""

from __future__ import annotations

import numpy as np

from active.strategies.base import QueryInputs, Ranked, rank_by_scores, require_probs


def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    """1 - max class probability, per row."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def least_confidence(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
    """Rows whose most likely class has the lowest probability."""
    return rank_by_scores(least_confidence_scores(require_probs(inputs, "least-confidence")), inputs, budget)
