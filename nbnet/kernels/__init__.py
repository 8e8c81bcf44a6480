"""The backend table: ``backend("cpu")`` or ``backend("cuda")`` returns a module of kernels with
the same names and argument order. CUDA is imported only when asked for."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import NbnetError

BACKENDS = ("cpu", "cuda")


def backend(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise NbnetError(f"unknown device {name!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}")


def cuda_available() -> bool:
    """True when numba's CUDA target finds a GPU (or the simulator is on)."""
    try:
        from numba import cuda
    except ImportError:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False
