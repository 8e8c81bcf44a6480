"""The backend table: ``backend("cpu")`` or ``backend("cuda")`` returns a module of kernels with
the same names and argument order. CUDA is imported only when asked for, so nbnet imports and
trains on machines without CUDA (or without numba's CUDA target) at all."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import NbnetError

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
