"""QueryInputs checks its arrays."""

from __future__ import annotations

import numpy as np
import pytest

from active.strategies import QueryInputs
from store.errors import CxrAlError


def test_query_inputs_check_shapes() -> None:
    with pytest.raises(CxrAlError, match="embeddings"):
        QueryInputs(labeled=np.zeros(3, bool), embeddings=np.ones((4, 2)))
    with pytest.raises(CxrAlError, match="probs"):
        QueryInputs(labeled=np.zeros(3, bool), probs=np.ones((3, 1)))
    with pytest.raises(CxrAlError, match="boolean"):
        QueryInputs(labeled=np.zeros(3, int))
    inputs = QueryInputs(labeled=np.zeros(2, bool), embeddings=np.array([[3.0, 4.0], [0.0, 2.0]]))
    np.testing.assert_allclose(np.linalg.norm(inputs.embeddings, axis=1), 1.0, rtol=1e-6)
