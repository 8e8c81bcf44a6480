"""The one place that owns the thread budget.

Two thread pools on the same cores (numba's and BLAS's) spin against each other: measured 40×
slower here (PERF_NOTES.md). nbnet's CPU kernels run their element-wise loops serially and give
every thread to BLAS, which does the GEMMs. ``thread_budget(n)`` sets that for the duration of a
fit or predict; ``n`` defaults to ``NBNET_NUM_THREADS``, then ``NUMBA_NUM_THREADS``, then the
number of cores.
"""

from __future__ import annotations

import contextlib
import os

from ..errors import NbnetError


def default_threads() -> int:
    for var in ("NBNET_NUM_THREADS", "NUMBA_NUM_THREADS"):
        val = os.environ.get(var)
        if val:
            try:
                n = int(val)
            except ValueError:
                raise NbnetError(f"{var}={val!r} is not an integer; set it to a thread count like 2") from None
            if n < 1:
                raise NbnetError(f"{var} must be at least 1, got {n}")
            return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def thread_budget(n_threads: int | None = None):
    """BLAS gets ``n_threads`` threads; numba's loops are serial. Yields the thread count."""
    from threadpoolctl import threadpool_limits

    if n_threads is None:
        n_threads = default_threads()  # its own error names the environment variable
    try:
        n = int(n_threads)
    except (TypeError, ValueError):
        raise NbnetError(f"n_threads must be a positive int or None (all cores), got {n_threads!r}") from None
    if not 1 <= n <= 4096:
        raise NbnetError(f"n_threads must be between 1 and 4096, got {n}")
    with threadpool_limits(limits=n, user_api="blas"):
        yield n
