"""The one place that owns the thread budget.

Two thread pools on the same cores (numba's and BLAS's) spin against each other: measured 40×
slower here (docs/performance.md). So exactly one pool works at a time:

* the fused kernels (``train_epoch_fused``, ``forward_fused``) run on **numba's** threads and call
  a single-threaded GEMM inside each thread's block (``nbnet.kernels.blas``);
* the reference kernels (augmentation, no GEMM library) run serial numba loops and give the
  threads to **BLAS** through ``np.dot``.

A mini-batch too small to split (:data:`SERIAL_BELOW`) runs its fused epoch on one thread.

``thread_budget(n)`` sets both limits for the duration of a fit or predict; ``n`` defaults to
``NBNET_NUM_THREADS``, then ``NUMBA_NUM_THREADS``, then the number of cores.

Threading layer: numba's ``tbb`` layer (PyPI ``tbb``) is chosen when present: it survives
``fork`` and concurrent calls from several Python threads (a server calling ``predict``). With
``workqueue`` two threads entering a parallel kernel at once abort the process and with GNU
``omp`` a forked child dies, so without tbb the fused kernels are entered one call at a time
(``parallel_guard``) and sweep workers must be spawned, not forked. ``NUMBA_THREADING_LAYER``
set by the user wins.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib
import os
import sys
import threading

import numba

from nbnet.errors import NbnetError


def _load_tbb_pool() -> None:
    """Load numba's tbb extension (ImportError when libtbb cannot be loaded): a probe, which is
    why it goes through importlib rather than an import statement."""
    importlib.import_module("numba.np.ufunc.tbbpool")


def _setup_threading_layer() -> str:
    """Make numba's tbb layer loadable (PyPI's libtbb lives in ``<prefix>/lib``, which is not on
    the loader path of numba's extension) and select it. Returns the layer asked for."""
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return numba.config.THREADING_LAYER
    try:
        _load_tbb_pool()
    except ImportError:
        libs = []
        for d in dict.fromkeys((os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib"))):
            libs += sorted(glob.glob(os.path.join(d, "libtbb.so.1[2-9]*")))
        for path in libs:
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                _load_tbb_pool()
                break
            except (OSError, ImportError):
                continue
        else:
            return numba.config.THREADING_LAYER
    numba.config.THREADING_LAYER = "tbb"
    return "tbb"


LAYER = _setup_threading_layer()
_ENTRY_LOCK = threading.Lock()


def parallel_guard():
    """Context for entering a numba-parallel kernel: nothing with tbb, a process-wide lock with a
    layer that cannot be entered from two threads at once."""
    return contextlib.nullcontext() if LAYER == "tbb" else _ENTRY_LOCK


#: Multiply-adds per mini-batch (rows × parameters) under which one thread trains faster than
#: several: waking the pool and the two barriers of each mini-batch then cost more than splitting
#: it saves (measured on the 2-core machine, docs/performance.md: 64-128-10 runs 1.85× faster on
#: one thread at batch 16, 1.3× at 64, and 1.6× slower at 128, 1.2 M multiply-adds).
SERIAL_BELOW = 1_000_000


def epoch_threads(batch_rows: int, n_params: int) -> int:
    """The threads (parts) for an epoch of mini-batches of ``batch_rows`` rows: numba's current
    count, or 1 under :data:`SERIAL_BELOW`."""
    return 1 if batch_rows * n_params < SERIAL_BELOW else numba.get_num_threads()


@contextlib.contextmanager
def numba_threads(n: int):
    """numba's thread count for this calling thread set to ``n`` within the block."""
    before = numba.get_num_threads()
    if n != before:
        numba.set_num_threads(n)
    try:
        yield n
    finally:
        if n != before:
            numba.set_num_threads(before)


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
    """``n_threads`` for numba's pool (fused kernels) and for BLAS (reference kernels' ``np.dot``);
    only one of them runs at a time. Yields the thread count."""
    from threadpoolctl import threadpool_limits  # heavy: imported on first use

    if n_threads is None:
        n_threads = default_threads()  # its own error names the environment variable
    try:
        n = int(n_threads)
    except (TypeError, ValueError):
        raise NbnetError(f"n_threads must be a positive int or None (all cores), got {n_threads!r}") from None
    if not 1 <= n <= 4096:
        raise NbnetError(f"n_threads must be between 1 and 4096, got {n}")
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # per calling thread
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield n
    finally:
        numba.set_num_threads(before)
