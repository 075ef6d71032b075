"""Class balancing wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from active.strategies import QueryInputs, class_balanced, random_sampling
from store.errors import CxrAlError
from tests.active.strategies.arrays import assert_well_formed, confident


def test_class_balanced_favours_rarely_labeled_classes() -> None:
    probs = confident(200, seed=3)
    inputs = QueryInputs(labeled=np.zeros(200, bool), probs=probs)
    predicted = probs.argmax(axis=1)
    balanced = class_balanced(random_sampling, [50, 50, 50, 0], factor=8)(inputs, 8, seed=0)
    assert_well_formed(balanced, inputs, 8)
    assert (predicted[balanced.indices] == 3).sum() >= 6  # class 3 has no labels: it gets most of the batch
    even = class_balanced(random_sampling, [0, 0, 0, 0], factor=8)(inputs, 8, seed=0)
    assert np.bincount(predicted[even.indices], minlength=4).tolist() == [2, 2, 2, 2]
    with pytest.raises(CxrAlError, match="classes"):
        class_balanced(random_sampling, [1, 2, 3])(inputs, 4)
