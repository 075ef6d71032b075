"""The contract every registered strategy keeps: well-formed batches, clear errors for missing inputs,
reproducible per seed, and the registry's `needs` telling the truth."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from active.strategies import (
    REGISTRY,
    STRATEGIES,
    QueryInputs,
    near_duplicate_free,
    select,
)
from active.strategies.auto import RANDOM_ARM
from store.errors import CxrAlError
from tests.active.strategies.arrays import assert_well_formed, clustered, confident


def test_missing_inputs_raise_clear_errors() -> None:
    emb, _ = clustered(2, 5, 4, 0.1, seed=0)
    no_model = QueryInputs(labeled=np.zeros(10, bool), embeddings=emb)
    no_embeddings = QueryInputs(labeled=np.zeros(10, bool), probs=confident(10))
    for name in ("least-confidence", "margin", "entropy", "badge", "hybrid"):
        with pytest.raises(CxrAlError, match="trained model"):
            select(name, no_model, 2)
    for name in ("coreset", "typiclust", "probcover", "hybrid"):
        with pytest.raises(CxrAlError, match="embed"):
            select(name, no_embeddings, 2)
    with pytest.raises(CxrAlError, match="samples"):
        select("bald", no_embeddings, 2)
    with pytest.raises(CxrAlError, match="budget"):
        select("random", no_model, -1)


def test_budget_beyond_the_pool_returns_what_is_there() -> None:
    emb, _ = clustered(3, 4, 6, 0.1, seed=1)
    labeled = np.zeros(12, bool)
    labeled[:9] = True
    inputs = QueryInputs(labeled=labeled, embeddings=emb, probs=confident(12))
    for name in ("random", "entropy", "coreset", "typiclust", "probcover", "badge", "hybrid"):
        assert sorted(select(name, inputs, 50, dedup_threshold=None).indices.tolist()) == [9, 10, 11]
    assert len(select("entropy", QueryInputs(labeled=np.ones(4, bool), probs=confident(4)), 3).indices) == 0


@pytest.mark.parametrize("name", ["coreset", "typiclust", "probcover", "badge", "hybrid"])
def test_seeded_strategies_are_reproducible(name: str) -> None:
    emb, _ = clustered(5, 30, 96, 0.2, seed=13)
    inputs = QueryInputs(labeled=np.zeros(150, bool), embeddings=emb, probs=np.random.default_rng(0).dirichlet(
        np.ones(4), 150))
    first, again = select(name, inputs, 8, seed=5), select(name, inputs, 8, seed=5)
    np.testing.assert_array_equal(first.indices, again.indices)
    np.testing.assert_allclose(first.scores, again.scores)


@st.composite
def pools(draw: st.DrawFn) -> tuple[QueryInputs, int]:
    n = draw(st.integers(1, 40))
    dim = draw(st.integers(2, 12))
    n_classes = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim))
    if draw(st.booleans()):  # exact duplicate rows
        emb[rng.integers(n, size=n // 3)] = emb[0]
    labeled = rng.random(n) < draw(st.floats(0, 1))
    mc = rng.dirichlet(np.full(n_classes, draw(st.sampled_from([0.1, 1.0, 10.0]))), size=(3, n))
    inputs = QueryInputs(labeled=labeled, embeddings=emb, probs=mc.mean(axis=0), mc_probs=mc)
    return inputs, draw(st.integers(0, 50))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=pools(), seed=st.integers(0, 1000))
def test_every_strategy_returns_a_well_formed_batch(name: str, pool: tuple[QueryInputs, int], seed: int) -> None:
    inputs, budget = pool
    assert_well_formed(STRATEGIES[name](inputs, budget, seed), inputs, budget)
    assert_well_formed(select(name, inputs, budget, seed=seed, dedup_threshold=None), inputs, budget)
    deduped = select(name, inputs, budget, seed=seed)
    assert_well_formed(deduped, inputs, budget)
    # near-duplicates (of each other or of labeled rows) only when the whole ranking has too few distinct rows;
    # auto's random share is drawn as it comes, on purpose (an i.i.d. sample for the efficiency estimate), so only
    # the chosen picks are held to it
    whole = STRATEGIES[name](inputs, inputs.n, seed)
    chosen = deduped.indices if deduped.sources is None else deduped.indices[deduped.sources != RANDOM_ARM]
    if near_duplicate_free(inputs.embeddings, whole.indices, np.flatnonzero(inputs.labeled), 0.98).sum() >= budget:
        assert near_duplicate_free(inputs.embeddings, chosen, np.flatnonzero(inputs.labeled), 0.98).all()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_registry_says_which_inputs_each_strategy_needs(name: str) -> None:
    """With every input a strategy's registry line names it runs; without any one of them it raises a
    CxrAlError (never another exception), so the CLI and the round policy can offer only what will run."""
    emb, _ = clustered(4, 10, 8, 0.1, seed=2)
    mc = np.random.default_rng(1).dirichlet(np.ones(3), size=(4, 40))
    full = QueryInputs(labeled=np.zeros(40, bool), embeddings=emb, probs=mc.mean(axis=0), mc_probs=mc)
    spec = REGISTRY[name]
    assert spec.ready(full) and spec.summary
    assert_well_formed(select(name, full, 5, seed=1), full, 5)
    for field in spec.needs:
        missing = QueryInputs(**{f: getattr(full, f) for f in ("labeled", "embeddings", "probs", "mc_probs")
                                 if f != field})
        assert not spec.ready(missing)
        with pytest.raises(CxrAlError):
            select(name, missing, 5, seed=1)
    assert set(spec.needs) <= {"embeddings", "probs", "mc_probs"}
