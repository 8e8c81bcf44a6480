"""nbnet's own exception types.

Every user mistake (a bad file, value, shape or name) raises :class:`NbnetError` with a single
line saying what is wrong and how to fix it. A store that cannot be read or written (MLflow, the
study's database or journal, a full disk) raises :class:`StoreError`, also one line. The CLI maps
them to the exit codes below.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # a check ran and failed: drift found, the promotion gate, rerun's bit-identity
EXIT_USER_ERROR = 2  # bad input: a file, value, shape or name
EXIT_STORE_ERROR = 3  # an internal or store failure: MLflow, the study storage, the disk
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM


class NbnetError(ValueError):
    """A user error: bad input, value, shape, name or file. The message is one line."""


class DivergedError(NbnetError):
    """Training produced a non-finite loss (the learning rate is usually too high)."""

    def __init__(self, epoch: int, loss: float):
        self.epoch = epoch
        self.loss = loss
        super().__init__(
            f"training diverged at epoch {epoch} (loss={loss}); lower the learning rate or set clip_norm"
        )


class StoreError(Exception):
    """A store could not be read or written: MLflow, the study storage, artifacts or the disk.

    The message is one line that names what failed and how to resume (usually: fix the store and
    run the same command again).
    """
