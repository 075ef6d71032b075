"""Query strategies: pure functions over NumPy arrays that rank which unlabeled images to label next.

Every strategy has the signature `fn(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked` and lives in
its own module; `registry.REGISTRY` lists them with the inputs each needs; `select(name, inputs, budget)`
runs one by name and keeps near-duplicates out of the batch.
"""

from active.strategies.auto import auto, choose_arm
from active.strategies.badge import badge
from active.strategies.balancing import class_balanced
from active.strategies.bald import bald, bald_scores
from active.strategies.base import QueryInputs, Ranked, StrategyFn
from active.strategies.coreset import coreset, k_center_greedy
from active.strategies.entropy import entropy, entropy_scores
from active.strategies.hybrid import hybrid
from active.strategies.least_confidence import least_confidence, least_confidence_scores
from active.strategies.margin import margin, margin_scores
from active.strategies.probcover import probcover
from active.strategies.random_sampling import random_sampling
from active.strategies.registry import REGISTRY, STRATEGIES, Strategy
from active.strategies.selection import near_duplicate_free, select
from active.strategies.typiclust import typicality, typiclust

__all__ = [
    "REGISTRY", "STRATEGIES", "QueryInputs", "Ranked", "Strategy", "StrategyFn", "auto", "badge", "bald",
    "bald_scores", "choose_arm", "class_balanced", "coreset", "entropy", "entropy_scores", "hybrid",
    "k_center_greedy", "least_confidence", "least_confidence_scores", "margin", "margin_scores",
    "near_duplicate_free", "probcover", "random_sampling", "select", "typicality", "typiclust",
]
