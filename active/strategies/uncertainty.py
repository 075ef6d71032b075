"""Uncertainty sampling: rank images by how unsure the latest model is about them.

The score functions work on any (N, C) probability array (like baal's heuristics), so they do not
care which model produced the probabilities. Higher score = more uncertain = wanted first.
"""

from __future__ import annotations

import numpy as np

from active.strategies.base import QueryInputs, Ranked, clip_budget, require_probs, top_by_score
from store.errors import CxrAlError

_EPS = 1e-12


def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    """1 - max class probability, per row."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """1 - (best - second best class probability), per row: 1 for a tie between the top two classes."""
    p = np.asarray(probs, dtype=np.float64)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of the predicted class distribution, per row."""
    p = np.asarray(probs, dtype=np.float64)
    return -(p * np.log(np.clip(p, _EPS, 1.0))).sum(axis=-1)


def bald_scores(mc_probs: np.ndarray) -> np.ndarray:
    """BALD mutual information (Houlsby et al. 2011) from (T, N, C) MC-dropout samples: the entropy of the
    mean prediction minus the mean entropy of the samples; high where the samples disagree."""
    mc = np.asarray(mc_probs, dtype=np.float64)
    return entropy_scores(mc.mean(axis=0)) - entropy_scores(mc).mean(axis=0)


def _rank_by(scores: np.ndarray, inputs: QueryInputs, budget: int) -> Ranked:
    rows = inputs.selectable
    return top_by_score(scores[rows], rows, clip_budget(inputs, budget))


def least_confidence(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
    """Rows whose most likely class has the lowest probability."""
    return _rank_by(least_confidence_scores(require_probs(inputs, "least-confidence")), inputs, budget)


def margin(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
    """Rows with the smallest gap between the two most likely classes."""
    return _rank_by(margin_scores(require_probs(inputs, "margin")), inputs, budget)


def entropy(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
    """Rows with the most spread-out predicted class distribution."""
    return _rank_by(entropy_scores(require_probs(inputs, "entropy")), inputs, budget)


def bald(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
    """Rows where MC-dropout samples disagree most (epistemic uncertainty)."""
    if inputs.mc_probs is None:
        raise CxrAlError("strategy 'bald' needs MC-dropout samples of the class probabilities (mc_probs), which the "
                         "latest model did not provide: use 'entropy' or 'margin', or predict with MC dropout")
    return _rank_by(bald_scores(inputs.mc_probs), inputs, budget)
