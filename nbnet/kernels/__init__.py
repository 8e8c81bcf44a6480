"""The backend table: ``backend("cpu")`` or ``backend("cuda")`` returns a module of kernels with
the same names and argument order. CUDA is imported only when asked for, so nbnet imports and
trains on machines without CUDA (or without numba's CUDA target) at all.

Importing this package makes numba's on-disk cache safe for processes that compile at the same
moment (:func:`nbnet.kernels.compile.serialize_cache_writes`), before any kernel compiles.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from nbnet.errors import NbnetError
from nbnet.kernels.compile import serialize_cache_writes
from nbnet.kernels.devices import cuda_available, cuda_simulator, require_cuda

BACKENDS = ("cpu", "cuda")


def backend(name: str) -> ModuleType:
    """The kernel module of device ``name`` (``cpu`` or ``cuda``)."""
    if name not in BACKENDS:
        raise NbnetError(f"unknown device {name!r}; choose one of {', '.join(BACKENDS)}, auto")
    if name == "cuda":
        require_cuda()
    return importlib.import_module(f"{__name__}.{name}")


serialize_cache_writes()

__all__ = ["BACKENDS", "backend", "cuda_available", "cuda_simulator"]
