"""Run the numeric libraries single-threaded while the machine is oversubscribed.

On a busy machine (a training child or other jobs keeping every core busy) the BLAS and OpenMP
(FAISS) worker threads spin while they wait for a core. Measured on a 2-core machine at load 5-7,
coreset and TypiClust on a 100k pool took 1.9-3.1 s with two threads and 0.7-0.9 s with one,
burning a third of the CPU time. On an idle machine nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

_controller = None  # threadpoolctl's view of the loaded BLAS/OpenMP libraries, made on first use


def machine_is_busy() -> bool:
    """True when the 1-minute load average is at least the number of cores."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return False


@contextmanager
def single_threaded_when_busy() -> Iterator[None]:
    """Limit BLAS and OpenMP thread pools to one thread inside the block while the machine is busy."""
    global _controller
    if not machine_is_busy():
        yield
        return
    if _controller is None:
        import faiss  # noqa: F401  (loaded first, so its OpenMP and BLAS pools are seen)
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    with _controller.limit(limits=1):
        yield
