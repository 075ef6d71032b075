"""Margin sampling: images where the latest model's two most likely classes are closest (Scheffer et al. 2001)."""

from __future__ import annotations

import numpy as np

from active.strategies.base import QueryInputs, Ranked, rank_by_scores, require_probs


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """1 - (best - second best class probability), per row: 1 for a tie between the top two classes."""
    p = np.asarray(probs, dtype=np.float64)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def margin(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
    """Rows with the smallest gap between the two most likely classes."""
    return rank_by_scores(margin_scores(require_probs(inputs, "margin")), inputs, budget)
