"""BALD on MC samples."""

from __future__ import annotations

import numpy as np
import pytest

from active.strategies import QueryInputs, bald, entropy
from tests.active.strategies.arrays import confident


def test_bald_picks_rows_where_mc_samples_disagree() -> None:
    n, t = 30, 8
    mc = np.tile(confident(n, seed=1), (t, 1, 1))
    mc[:, [3, 4]] = 0.25  # uniform in every sample: high entropy, but the samples agree (no mutual information)
    for row in (10, 20):  # samples flip between two one-hot predictions
        mc[:, row] = 0.0
        mc[::2, row, 0] = 1.0
        mc[1::2, row, 1] = 1.0
    inputs = QueryInputs(labeled=np.zeros(n, bool), probs=mc.mean(axis=0), mc_probs=mc)
    assert sorted(bald(inputs, 2).indices.tolist()) == [10, 20]
    assert set(entropy(inputs, 2).indices.tolist()) == {3, 4}  # what BALD avoids
    assert bald(inputs, 2).scores[0] == pytest.approx(np.log(2))
