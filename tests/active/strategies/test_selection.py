"""select: strategies by name, near-duplicates kept out."""

from __future__ import annotations

import numpy as np
import pytest

from active.strategies import (
    STRATEGIES,
    QueryInputs,
    entropy,
    near_duplicate_free,
    select,
)
from store.errors import CxrAlError
from tests.active.strategies.arrays import assert_well_formed, confident, unit


def test_select_drops_near_duplicates_and_backfills() -> None:
    rng = np.random.default_rng(12)
    emb = unit(rng.standard_normal((50, 16)))
    emb[1:8] = unit(emb[0] + 0.001 * rng.standard_normal((7, 16)))  # rows 0..7: one image, eight files
    emb[8] = unit(emb[40] + 0.001 * rng.standard_normal((1, 16)))[0]  # row 8 duplicates the labeled row 40
    probs = confident(50)
    probs[:10] = np.array([[0.25 + 0.005 * i, 0.25, 0.25, 0.25 - 0.005 * i] for i in range(10)])  # 0 most uncertain
    labeled = np.zeros(50, bool)
    labeled[40] = True
    inputs = QueryInputs(labeled=labeled, embeddings=emb, probs=probs)
    raw = select("entropy", inputs, 3, dedup_threshold=None)
    assert raw.indices.tolist() == [0, 1, 2]
    clean = select("entropy", inputs, 3)
    assert clean.indices.tolist() == [0, 9, int(entropy(inputs, 11).indices[10])]
    assert_well_formed(clean, inputs, 3)
    keep = near_duplicate_free(inputs.embeddings, np.arange(10), np.array([40]), 0.98)
    assert keep.tolist() == [True] + [False] * 8 + [True]


def test_select_fills_with_duplicates_only_when_the_pool_has_too_few_distinct_images() -> None:
    emb = unit(np.tile([[1.0, 0.0, 0.0]], (6, 1)) + 1e-4 * np.arange(18).reshape(6, 3))  # six copies of one image
    emb = np.concatenate([emb, unit(np.array([[0.0, 1.0, 0.0]]))])  # and one other image, ranked last
    probs = np.linspace([0.25, 0.75], [0.45, 0.55], 7)  # entropy ranks the rows 6, 5, ..., 0
    inputs = QueryInputs(labeled=np.zeros(7, bool), embeddings=emb, probs=probs)
    assert select("entropy", inputs, 2).indices.tolist() == [6, 5]  # enough distinct images: no copies
    batch = select("entropy", inputs, 4)  # only two distinct images exist: the best-ranked copies fill up
    assert batch.indices.tolist() == [6, 5, 4, 3]


def test_select_rejects_unknown_names_and_lists_valid_ones() -> None:
    inputs = QueryInputs(labeled=np.zeros(3, bool))
    with pytest.raises(CxrAlError, match="typiclust") as err:
        select("entropyy", inputs, 2)
    assert all(name in str(err.value) for name in STRATEGIES)


def test_near_duplicates_are_judged_around_the_pool_mean() -> None:
    """Embeddings that share one dominant direction (as SSL and untrained-backbone embeddings do) have raw
    cosines above 0.98 between distinct images; only a true copy may count as a duplicate."""
    rng = np.random.default_rng(3)
    emb = unit(np.array([30.0] + [0.0] * 15) + rng.standard_normal((40, 16)))  # distinct rows, raw cosine ~0.98
    emb[5] = unit(emb[4] + 1e-4 * rng.standard_normal((1, 16)))[0]  # row 5: a copy of row 4
    raw = emb[:10] @ emb[:10].T
    assert (raw[np.triu_indices(10, 1)] > 0.98).mean() > 0.5  # a raw threshold would call them duplicates
    keep = near_duplicate_free(emb, np.arange(10), np.array([20]), 0.98)
    assert keep.tolist() == [True] * 5 + [False] + [True] * 4
    probs = np.full((40, 2), 0.5)
    batch = select("random", QueryInputs(labeled=np.zeros(40, bool), embeddings=emb, probs=probs), 39, seed=1)
    assert not ({4, 5} <= set(batch.indices.tolist()))  # the pool has 39 distinct images: the copy stays out


def test_a_copy_is_a_duplicate_even_in_a_pool_of_two() -> None:
    emb = unit(np.array([[1.0, 0.2, 0.0], [1.0, 0.2, 1e-5]]))
    assert near_duplicate_free(emb, np.array([1]), np.array([0]), 0.98).tolist() == [False]
