"""Fixtures shared by the strategy tests."""

from __future__ import annotations

import faiss
import pytest


@pytest.fixture(autouse=True)
def single_faiss_thread():
    """These arrays are tiny: FAISS's OpenMP threads only add start-up cost, which on a busy 2-core machine
    grows a hundredfold (spinning threads wait for a core). Restored afterwards for other tests."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


