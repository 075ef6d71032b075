"""Single-threaded numeric libraries on a busy machine."""

from __future__ import annotations

import os

import faiss

from active.strategies.threads import single_threaded_when_busy


def test_numeric_libraries_run_single_threaded_only_while_the_machine_is_busy(monkeypatch) -> None:
    faiss.omp_set_num_threads(2)
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    with single_threaded_when_busy():
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    with single_threaded_when_busy():
        assert faiss.omp_get_max_threads() == 2
