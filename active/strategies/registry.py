"""The one list of query strategies: the CLI's choices, the round policy form and the simulation read it.

Adding a strategy is one new file with `fn(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked`
and one line here saying which inputs it needs; the shared contract test then checks it.
"""

from __future__ import annotations

from dataclasses import dataclass

from active.strategies.auto import auto
from active.strategies.badge import badge
from active.strategies.bald import bald
from active.strategies.base import QueryInputs, StrategyFn
from active.strategies.coreset import coreset
from active.strategies.entropy import entropy
from active.strategies.hybrid import hybrid
from active.strategies.least_confidence import least_confidence
from active.strategies.margin import margin
from active.strategies.probcover import probcover
from active.strategies.random_sampling import random_sampling
from active.strategies.typiclust import typiclust

INPUTS = ("embeddings", "probs", "mc_probs")  # QueryInputs fields a strategy may need


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: the function, the QueryInputs fields it cannot work without, one line for humans."""

    fn: StrategyFn
    needs: tuple[str, ...]
    summary: str

    def ready(self, inputs: QueryInputs) -> bool:
        """True when every input the strategy needs is present."""
        return all(getattr(inputs, field) is not None for field in self.needs)


REGISTRY: dict[str, Strategy] = {
    "auto": Strategy(auto, (), "default: random share + the strategy the project's own labels favour"),
    "random": Strategy(random_sampling, (), "uniform at random (the baseline)"),
    "least-confidence": Strategy(least_confidence, ("probs",), "lowest top-class probability"),
    "margin": Strategy(margin, ("probs",), "smallest gap between the top two classes"),
    "entropy": Strategy(entropy, ("probs",), "most spread-out class distribution"),
    "bald": Strategy(bald, ("mc_probs",), "most disagreement between model samples"),
    "coreset": Strategy(coreset, ("embeddings",), "cover the embedding space (k-center greedy)"),
    "typiclust": Strategy(typiclust, ("embeddings",), "most typical image of uncovered clusters"),
    "probcover": Strategy(probcover, ("embeddings",), "greedy cover of purity balls"),
    "badge": Strategy(badge, ("probs", "embeddings"), "uncertain and diverse gradient embeddings"),
    "hybrid": Strategy(hybrid, ("probs", "embeddings"), "most uncertain, thinned to a diverse batch"),
}

STRATEGIES: dict[str, StrategyFn] = {name: s.fn for name, s in REGISTRY.items()}
