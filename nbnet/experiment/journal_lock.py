"""A lock for Optuna's journal file that a killed process cannot leave behind.

Optuna's default journal lock is a symlink (or an ``O_EXCL`` file) next to the journal: portable
to old NFS, but a worker killed with SIGKILL while appending leaves it in place, and every other
process then waits Optuna's 30 s grace period, warning, before breaking it. ``flock(2)`` locks
belong to the open file and the kernel drops them when the process dies, so a dead worker costs
nothing. All nbnet processes lock nbnet's journals this way; a plain Optuna script writing to the
same journal at the same time would not be excluded (reading is fine).
"""

from __future__ import annotations

from nbnet._sys import locks as _locks

try:  # the base class is private in Optuna; JournalFileBackend only calls acquire() and release()
    from optuna.storages.journal._file import BaseJournalFileLock
except ImportError:  # pragma: no cover
    BaseJournalFileLock = object


class FlockJournalLock(BaseJournalFileLock):
    """Exclusive ``flock`` on ``<journal>.flock``, blocking until it is free."""

    def __init__(self, journal_path: str):
        self._path = journal_path + ".flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        self._fd = _locks.acquire(self._path)
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError("Error: did not possess lock")
        _locks.release(fd)


def journal_lock(journal_path: str):
    """The flock lock where ``fcntl`` exists (Linux, macOS), else None (Optuna's default)."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # Windows
        return None
    return FlockJournalLock(journal_path)
