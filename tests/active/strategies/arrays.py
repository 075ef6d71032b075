"""Small synthetic arrays for the strategy tests."""

from __future__ import annotations

import numpy as np

from active.strategies import QueryInputs, Ranked


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n_clusters: int, per_cluster: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit embeddings, cluster of each row): tight clusters around random, far-apart centres."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_clusters, dim)))
    cluster = np.repeat(np.arange(n_clusters), per_cluster)
    return unit(centres[cluster] + spread * rng.standard_normal((len(cluster), dim))), cluster


def confident(n: int, n_classes: int = 4, seed: int = 0) -> np.ndarray:
    """Probabilities of a confident model: 0.97 on a random class."""
    rng = np.random.default_rng(seed)
    probs = np.full((n, n_classes), 0.03 / (n_classes - 1))
    probs[np.arange(n), rng.integers(n_classes, size=n)] = 0.97
    return probs


def assert_well_formed(ranked: Ranked, inputs: QueryInputs, budget: int) -> None:
    assert isinstance(ranked, Ranked)
    assert ranked.indices.dtype == np.int64 and ranked.scores.dtype == np.float64
    assert len(ranked.indices) == len(ranked.scores) == min(budget, int((~inputs.labeled).sum()))
    assert len(np.unique(ranked.indices)) == len(ranked.indices)
    assert ((ranked.indices >= 0) & (ranked.indices < inputs.n)).all()
    assert not inputs.labeled[ranked.indices].any()
