"""nbnet's own exception types.

Every user mistake (a bad file, value, shape or name) raises :class:`NbnetError` with a single
line saying what is wrong and how to fix it. The CLI prints that line and exits with status 2.
"""

from __future__ import annotations


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
