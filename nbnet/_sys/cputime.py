"""CPU seconds of this process's own work, without those of its helper threads.

A sweep tracks one trial in a helper thread while the next trial trains
(:mod:`nbnet.experiment.sweep.pipeline`). ``time.process_time()`` counts both; a fit's
``cpu_seconds`` should count the fit. :func:`work_seconds` is the process's CPU time less what
the threads that ran inside :func:`helper` spent there, read from each live helper's own CPU
clock where the platform has one (Linux, the BSDs), else from the helper's own
``time.thread_time()`` when it ends.

>>> c0 = work_seconds()
>>> with helper():  # this block's CPU is not counted
...     _ = sum(range(10_000))
>>> work_seconds() >= c0
True
"""

from __future__ import annotations

import contextlib
import threading
import time

_lock = threading.Lock()
_live: dict[int, tuple[object, float]] = {}  # thread ident → (its CPU clock id or None, its CPU seconds at entry)
_done = 0.0  # CPU seconds that helpers spent inside helper() blocks that have ended


def _clock_of(ident: int):
    try:
        return time.pthread_getcpuclockid(ident)
    except (AttributeError, OSError):  # macOS, Windows
        return None


@contextlib.contextmanager
def helper():
    """The calling thread's CPU time inside this block is left out of :func:`work_seconds`."""
    global _done
    ident = threading.get_ident()
    clock = _clock_of(ident)
    start = time.thread_time()
    with _lock:
        _live[ident] = (clock, start)
    try:
        yield
    finally:
        with _lock:
            del _live[ident]
            _done += time.thread_time() - start


def work_seconds() -> float:
    """``time.process_time()`` less the CPU seconds spent in :func:`helper` blocks so far (those
    still running included where each thread's CPU clock can be read)."""
    with _lock:
        helpers = _done + sum(time.clock_gettime(clock) - t0 for clock, t0 in _live.values() if clock is not None)
        return time.process_time() - helpers
