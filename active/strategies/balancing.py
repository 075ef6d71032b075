"""Class balancing: steer any strategy towards images predicted as classes that have few labels so far."""

from __future__ import annotations

from collections import deque

import numpy as np

from active.strategies.base import (
    QueryInputs,
    Ranked,
    StrategyFn,
    clip_budget,
    empty_ranked,
    require_probs,
)
from store.errors import CxrAlError


def class_balanced(strategy: StrategyFn, label_counts: np.ndarray | list[int], *, factor: int = 4) -> StrategyFn:
    """Wrap a strategy: take its factor x budget best rows, then fill the batch class by class, always from
    the predicted class with the fewest labels so far (counting the batch), in the strategy's order."""
    counts = np.asarray(label_counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2 or (counts < 0).any():
        raise CxrAlError("label_counts must give a non-negative count for each of at least two classes")

    def balanced(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
        probs = require_probs(inputs, "class-balanced")
        if probs.shape[1] != len(counts):
            raise CxrAlError(f"label_counts has {len(counts)} classes, the predictions {probs.shape[1]}")
        budget = clip_budget(inputs, budget)
        if budget == 0:
            return empty_ranked()
        candidates = strategy(inputs, max(1, int(factor)) * budget, seed)
        predicted = probs[candidates.indices].argmax(axis=1)
        queues = [deque(np.flatnonzero(predicted == c).tolist()) for c in range(len(counts))]
        taken = counts.copy()
        chosen: list[int] = []
        while len(chosen) < budget and any(queues):
            # rarest class first; among equally rare ones, the class whose next candidate ranks best
            c = min((c for c in range(len(counts)) if queues[c]), key=lambda c: (taken[c], queues[c][0]))
            chosen.append(queues[c].popleft())
            taken[c] += 1
        return Ranked(candidates.indices[chosen], candidates.scores[chosen])

    balanced.__name__ = f"class_balanced_{getattr(strategy, '__name__', 'strategy')}"
    balanced.__doc__ = f"{getattr(strategy, '__name__', 'strategy')}, rebalanced towards rarely labeled classes."
    return balanced
