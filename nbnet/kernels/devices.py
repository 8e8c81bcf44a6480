"""Which devices this machine offers: numba's CUDA target, a GPU, or the CUDA simulator.

``numba.cuda`` is imported only when asked, so nbnet imports and trains on machines without CUDA
(or without numba's CUDA target) at all.
"""

from __future__ import annotations

from nbnet.errors import NbnetError


def cuda_simulator() -> bool:
    """True when numba's CUDA target runs as the simulator (``NUMBA_ENABLE_CUDASIM=1`` when
    ``numba.cuda`` was first imported); False without a CUDA target."""
    try:
        import numba.cuda as cuda  # heavy: the CUDA target, imported on first use
    except Exception:
        return False
    # decided once, at numba.cuda's first import: ask the module, not the environment
    return "simulator" in cuda.to_device.__module__


def cuda_available(simulator: bool = True) -> bool:
    """True when numba's CUDA target finds a GPU; with ``simulator``, also when the CUDA
    simulator is on (it runs the kernels, slowly, in Python)."""
    try:
        import numba.cuda as cuda  # heavy: the CUDA target, imported on first use
    except Exception:  # not installed, or numba-cuda without its CUDA bindings
        return False
    try:
        if cuda_simulator():
            return simulator
        return bool(cuda.is_available())
    except Exception:
        return False


def require_cuda() -> None:
    """Return when the CUDA backend can run here; else an NbnetError saying what is missing."""
    try:
        import numba.cuda  # noqa: F401  heavy: the CUDA target, imported on first use
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
