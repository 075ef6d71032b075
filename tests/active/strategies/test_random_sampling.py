"""Random sampling."""

from __future__ import annotations

import numpy as np

from active.strategies import QueryInputs, random_sampling


def test_random_is_reproducible_per_seed() -> None:
    inputs = QueryInputs(labeled=np.zeros(1000, bool))
    a, b, c = (random_sampling(inputs, 10, seed=s).indices for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
