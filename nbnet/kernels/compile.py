"""Compiling the kernels: once per process and dtype, safely when many processes start at once.

* :func:`ensure_compiled` compiles (or loads from numba's on-disk cache) a backend's kernels on a
  tiny problem before the first epoch, so the first epoch's time is training only; on a cold
  cache the forward kernels compile in a child process meanwhile (:func:`compile_forward_elsewhere`).
* :class:`compile_lock`: of several processes starting at once (sweep workers) one compiles and
  writes numba's cache and the others then load it.
* :func:`serialize_cache_writes` makes numba's cache writes safe for processes that compile at
  the same moment; :mod:`nbnet.kernels` installs it on import, before any kernel compiles.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import NamedTuple

import numba
import numpy as np

from nbnet._sys import locks
from nbnet._sys.locks import acquire, release
from nbnet.kernels.rng import seed_state
from nbnet.kernels.tables import (
    ACT_IDENTITY, ACT_RELU, HP_BETA1, HP_BETA2, HP_EPS, LOSS_SOFTMAX_CE, N_HP, N_SETTINGS, OPT_ADAM, SETTING_BATCH,
    SETTING_OPTIMIZER, SETTING_SHUFFLE,
)

try:
    from numba.core.caching import IndexDataCacheFile
except ImportError:  # pragma: no cover  (another numba: its own save, unserialized)
    IndexDataCacheFile = None


def cache_dir() -> str:
    """Where numba caches nbnet's CPU kernels (``NUMBA_CACHE_DIR``, else next to the sources),
    or the temporary folder when that is not writable."""
    d = numba.config.CACHE_DIR or os.path.join(os.path.dirname(__file__), "__pycache__")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:
        return tempfile.gettempdir()
    return d if os.access(d, os.W_OK) else tempfile.gettempdir()


class compile_lock:
    """Exclusive ``flock`` around the first compile of a process, so that of several processes
    starting at once (sweep workers) one compiles and writes numba's cache and the others then
    load it, instead of each compiling the same kernels. The kernel drops the lock if the process
    dies. ``waited`` is the seconds spent waiting for another process."""

    def __enter__(self):
        t0 = time.perf_counter()
        self._fd = acquire(os.path.join(cache_dir(), "nbnet-compile.lock"))
        self.waited = time.perf_counter() - t0
        return self

    def __exit__(self, *exc):
        release(self._fd)
        return False


def cache_misses() -> int:
    """How many of nbnet's compiled CPU kernels were compiled in this process rather than loaded
    from numba's on-disk cache (CUDA kernels are not counted)."""
    modules = [m for name, m in list(sys.modules.items()) if name.startswith(__package__ + ".") and m is not None]
    dispatchers = {id(d): d for m in modules for d in vars(m).values()
                   if isinstance(d, numba.core.registry.CPUDispatcher)}
    return sum(sum(d.stats.cache_misses.values()) for d in dispatchers.values())


def serialize_cache_writes() -> None:
    """Make numba's on-disk cache safe for processes that compile at the same moment.

    numba saves an entry by reading the function's index, taking the first free data-file name,
    writing the index, then the data: two processes saving different entries (signatures) of one
    function at once can take the same name, and the index then points at the other entry's code,
    which a later process loads and runs. nbnet's processes do compile at once (sweep workers;
    :class:`compile_lock` covers only the first compile of a process). Here every save holds an
    ``flock`` on ``.numba-cache-write.lock`` in the cache folder, re-reads the index under it, and
    writes the data before the index, so a reader never finds an entry whose file is missing.
    Without ``flock`` (Windows) or with a numba whose cache differs, numba's own save stays.
    """
    if IndexDataCacheFile is None or not locks.AVAILABLE:
        return
    original = IndexDataCacheFile.save
    if getattr(original, "nbnet_locked", False) or not hasattr(IndexDataCacheFile, "_load_index"):
        return

    def save(self, key, data):
        try:
            fd = acquire(os.path.join(self._cache_path, ".numba-cache-write.lock"))
        except OSError:
            return original(self, key, data)
        try:
            overloads = self._load_index()
            name = overloads.get(key)
            if name is None:
                used = set(overloads.values())
                name = next(n for n in map(self._data_name, itertools.count(1)) if n not in used)
            self._save_data(name, data)
            overloads[key] = name
            self._save_index(overloads)
        finally:
            release(fd)

    save.nbnet_locked = True
    IndexDataCacheFile.save = save


# --- warming up: the kernels' types, not their sizes, decide what compiles --------------------
class CompileCost(NamedTuple):
    """What making a backend's kernels ready cost this process."""

    seconds: float  # compiling or loading from the cache (0: done earlier in this process)
    waited: float  # waiting for another process that held the compile lock
    compiled: int  # kernels compiled rather than loaded from numba's cache


#: (backend module name, dtype) pairs whose kernels this process has compiled or loaded.
COMPILED: set = set()


def _tiny_network(dtype):
    """A 2-2-2 ReLU network's kernel arguments and arrays of ``dtype``:
    ``(X (3, 2), Y (3, 2), params (12,), (w_off, b_off, sizes, acts))``."""
    sizes = np.array([2, 2, 2], np.int64)
    w_off, b_off = np.array([0, 6], np.int64), np.array([4, 10], np.int64)
    acts = np.array([ACT_RELU, ACT_IDENTITY], np.int64)
    return np.zeros((3, 2), dtype), np.zeros((3, 2), dtype), np.zeros(12, dtype), (w_off, b_off, sizes, acts)


def warm_epoch(backend: ModuleType, dtype) -> None:
    """Run ``backend.train_epoch`` once on the tiny network (Adam, batch 2, shuffled)."""
    X, Y, p, args = _tiny_network(dtype)
    hp = np.zeros(N_HP)
    hp[HP_BETA1], hp[HP_BETA2], hp[HP_EPS] = 0.9, 0.999, 1e-8
    settings = np.zeros(N_SETTINGS, np.int64)
    settings[SETTING_OPTIMIZER], settings[SETTING_BATCH], settings[SETTING_SHUFFLE] = OPT_ADAM, 2, 1
    dev = backend.to_device
    backend.train_epoch(dev(X), dev(Y), dev(p), dev(p.copy()), dev(p.copy()), dev(p.copy()), *args, LOSS_SOFTMAX_CE,
                        hp, settings, seed_state(0), np.zeros(1 + len(args[3])))


def warm_forward(backend: ModuleType, dtype) -> None:
    """Run ``backend.forward`` and ``backend.eval_loss`` (with and without the predictions, as
    the trainer's validation pass calls it) once on the tiny network."""
    X, Y, p, args = _tiny_network(dtype)
    dev = backend.to_device
    backend.forward(dev(X), dev(p), *args, LOSS_SOFTMAX_CE, dev(np.zeros((3, 2), dtype)))
    backend.eval_loss(dev(X), dev(Y), dev(p), *args, LOSS_SOFTMAX_CE)
    backend.eval_loss(dev(X), dev(Y), dev(p), *args, LOSS_SOFTMAX_CE, dev(np.zeros((3, 2), dtype)))


def compile_forward_elsewhere(backend: ModuleType, dtype):
    """On a cold numba cache, compile the forward kernels in a child process while this one
    compiles the epoch kernels: the two longest compiles (~9 s and ~2 s) run on two cores, and
    the cold start is the longer one. The child writes numba's on-disk cache (writes serialized
    by :func:`serialize_cache_writes`), which this process then loads. Returns the child
    (``Popen``), or None where it would not help: a warm cache, one core, a backend other than
    the CPU, a numba whose cache this cannot see, ``NBNET_PARALLEL_COMPILE=0``."""
    fused = getattr(backend, "forward_fused", None)  # only the CPU backend has it
    if fused is None or (os.cpu_count() or 1) < 2 or os.environ.get("NBNET_PARALLEL_COMPILE", "1") == "0":
        return None
    try:
        index = fused._cache._cache_file._index_path
    except AttributeError:  # another numba, or caching off
        return None
    if os.path.exists(index):
        return None
    code = (f"import sys; from nbnet.kernels import compile; import {backend.__name__} as backend; "
            "compile.warm_forward(backend, sys.argv[1])")
    try:
        return subprocess.Popen([sys.executable, "-c", code, np.dtype(dtype).name],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def cache_is_cold(backend: ModuleType) -> bool:
    """Whether ``backend``'s epoch kernel has no usable entry in numba's on-disk cache (a first
    run on this machine, a new cache folder, or kernels changed since they were cached): the next
    fit compiles for about 10 s instead of loading in a fraction of a second. False where this
    cannot be told (the CUDA backend, a numba whose cache this cannot see, caching off)."""
    fused = getattr(backend, "train_epoch_fused", None)  # only the CPU backend has it
    try:
        return not fused._cache._cache_file._load_index()  # {} when missing or stale (source changed)
    except (AttributeError, OSError, EOFError, ValueError):
        return False


def _warm_up(backend: ModuleType, dtype) -> None:
    helper = compile_forward_elsewhere(backend, dtype)
    warm_epoch(backend, dtype)
    if helper is not None:
        helper.wait()  # it wrote forward's cache entries: the calls below load them
    warm_forward(backend, dtype)


def ensure_compiled(backend: ModuleType, dtype) -> CompileCost:
    """Compile (or load from the on-disk cache) ``backend``'s kernels for ``dtype``, once per
    process, under :class:`compile_lock`."""
    key = (backend.__name__, np.dtype(dtype).str)
    if key in COMPILED:
        return CompileCost(0.0, 0.0, 0)
    with compile_lock() as lock:  # several processes starting at once: one compiles, the rest load
        misses = cache_misses()
        t0 = time.perf_counter()
        _warm_up(backend, dtype)
        seconds = time.perf_counter() - t0
        compiled = cache_misses() - misses
    COMPILED.add(key)
    return CompileCost(seconds, lock.waited, compiled)
