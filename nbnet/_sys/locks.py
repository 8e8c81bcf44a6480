"""Exclusive ``flock(2)`` locks on files: the kernel drops them when the process dies, so a killed
process never leaves a stale lock behind. Used for Optuna's journal (``nbnet.experiment.sweep.storage``),
the first compile of a process and numba's cache writes (``nbnet.kernels.compile``) and checkpoints
(``nbnet.nn.checkpoint``)."""

from __future__ import annotations

import os

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no flock)
    fcntl = None

#: True where ``flock`` exists (POSIX); elsewhere :func:`acquire` locks nothing and returns None.
AVAILABLE = fcntl is not None


def acquire(path, *, blocking: bool = True) -> int | None:
    """Open ``path`` (created if missing) and lock it; return the descriptor, or None where
    ``fcntl`` does not exist (Windows: no locking). Non-blocking: BlockingIOError when held."""
    if fcntl is None:  # pragma: no cover
        return None
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int | None) -> None:
    """Close the descriptor, which releases its lock."""
    if fd is not None:
        os.close(fd)
