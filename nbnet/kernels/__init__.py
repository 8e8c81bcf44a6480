"""The backend table: ``backend("cpu")`` or ``backend("cuda")`` returns a module of kernels with
the same names and argument order. CUDA is imported only when asked for, so nbnet imports and
trains on machines without CUDA (or without numba's CUDA target) at all."""

from __future__ import annotations

import importlib
from types import ModuleType

from nbnet.errors import NbnetError

BACKENDS = ("cpu", "cuda")


def backend(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise NbnetError(f"unknown device {name!r}; choose one of {', '.join(BACKENDS)}, auto")
    if name == "cuda":
        _require_cuda()
    return importlib.import_module(f"{__name__}.{name}")


def cuda_simulator() -> bool:
    """True when numba's CUDA target runs as the simulator (``NUMBA_ENABLE_CUDASIM=1`` when
    ``numba.cuda`` was first imported); False without a CUDA target."""
    try:
        from numba import cuda
    except Exception:
        return False
    # decided once, at numba.cuda's first import: ask the module, not the environment
    return "simulator" in cuda.to_device.__module__


def cuda_available(simulator: bool = True) -> bool:
    """True when numba's CUDA target finds a GPU; with ``simulator``, also when the CUDA
    simulator is on (it runs the kernels, slowly, in Python)."""
    try:
        from numba import cuda
    except Exception:  # not installed, or numba-cuda without its CUDA bindings
        return False
    try:
        if cuda_simulator():
            return simulator
        return bool(cuda.is_available())
    except Exception:
        return False


def _require_cuda() -> None:
    try:
        from numba import cuda
    except Exception as e:
        raise NbnetError(
            f"device='cuda' needs numba's CUDA target, which did not import ({type(e).__name__}); "
            "install it with pip install 'nbnet[cuda]' or use device='cpu'"
        ) from None
    if not cuda_available():
        raise NbnetError(
            "device='cuda' but no CUDA GPU is usable here (no driver or no device); use device='cpu' or "
            "'auto', or set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels on the (slow) simulator"
        )
    del cuda


def _cache_dir() -> str:
    """Where numba caches nbnet's CPU kernels (``NUMBA_CACHE_DIR``, else next to the sources),
    or the temporary folder when that is not writable."""
    import os
    import tempfile

    import numba

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
        import os
        import time

        from nbnet._sys.locks import acquire

        t0 = time.perf_counter()
        self._fd = acquire(os.path.join(_cache_dir(), "nbnet-compile.lock"))
        self.waited = time.perf_counter() - t0
        return self

    def __exit__(self, *exc):
        from nbnet._sys.locks import release

        release(self._fd)
        return False


def cache_misses(module: ModuleType) -> int:
    """How many compiled functions of a CPU kernel module were compiled in this process rather
    than loaded from numba's on-disk cache (0 on other backends)."""
    import numba

    return sum(sum(d.stats.cache_misses.values()) for d in vars(module).values()
               if isinstance(d, numba.core.registry.CPUDispatcher))


def _serialize_cache_writes() -> None:
    """Make numba's on-disk cache safe for processes that compile at the same moment.

    numba saves an entry by reading the function's index, taking the first free data-file name,
    writing the index, then the data: two processes saving different entries (signatures) of one
    function at once can take the same name, and the index then points at the other entry's code,
    which a later process loads and runs. nbnet's processes do compile at once (sweep workers;
    ``kernels.compile_lock`` covers only the first compile of a process). Here every save holds an
    ``flock`` on ``.numba-cache-write.lock`` in the cache folder, re-reads the index under it, and
    writes the data before the index, so a reader never finds an entry whose file is missing.
    """
    import itertools
    import os

    from nbnet._sys.locks import acquire, release

    try:
        import fcntl  # noqa: F401  (no flock, no serialization: numba's own save)

        from numba.core.caching import IndexDataCacheFile
    except ImportError:  # pragma: no cover  (Windows, or another numba)
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


_serialize_cache_writes()
