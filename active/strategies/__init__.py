"""Query strategies: pure functions over NumPy arrays that rank which unlabeled images to label next.

Every strategy has the signature `fn(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked`;
`select(name, inputs, budget)` runs one by its registry name and removes near-duplicates.
"""

from active.strategies.balancing import class_balanced
from active.strategies.base import QueryInputs, Ranked, StrategyFn
from active.strategies.diversity import coreset, k_center_greedy, typicality, typiclust
from active.strategies.hybrid import badge, hybrid
from active.strategies.probcover import probcover
from active.strategies.random_sampling import random_sampling
from active.strategies.selection import STRATEGIES, auto, near_duplicate_free, select
from active.strategies.uncertainty import (
    bald,
    bald_scores,
    entropy,
    entropy_scores,
    least_confidence,
    least_confidence_scores,
    margin,
    margin_scores,
)

__all__ = [
    "STRATEGIES", "QueryInputs", "Ranked", "StrategyFn", "auto", "badge", "bald", "bald_scores", "class_balanced",
    "coreset", "entropy", "entropy_scores", "hybrid", "k_center_greedy", "least_confidence",
    "least_confidence_scores", "margin", "margin_scores", "near_duplicate_free", "probcover", "random_sampling",
    "select",
    "typicality", "typiclust",
]
