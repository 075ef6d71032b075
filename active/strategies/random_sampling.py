"""Random sampling: the baseline every other strategy has to beat."""

from __future__ import annotations

import numpy as np

from active.strategies.base import QueryInputs, Ranked, clip_budget, top_by_score


def random_sampling(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
    """`budget` selectable rows drawn uniformly without replacement (the same seed gives the same rows)."""
    budget = clip_budget(inputs, budget)
    rows = inputs.selectable
    keys = np.random.default_rng(seed).random(len(rows))
    return top_by_score(keys, rows, budget)
