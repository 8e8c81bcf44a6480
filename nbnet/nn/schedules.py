"""Learning-rate schedules: the rate of every optimizer step, computed before each epoch into the
array the epoch kernel reads (``train_epoch(..., lrs=...)``), so no step returns to Python.

=============  ==============================================================================
schedule       rate (``lr`` the estimator's ``learning_rate``; ``e`` epochs, ``s`` steps since
               the schedule started)
=============  ==============================================================================
constant       ``lr``
step           ``lr * lr_gamma ** (e // lr_step_size)`` (``torch.optim.lr_scheduler.StepLR``,
               stepped per epoch)
exponential    ``lr * lr_gamma ** e`` (``ExponentialLR``, stepped per epoch)
cosine         per step: ``lr_min + (lr - lr_min) * (1 + cos(pi * t / T)) / 2`` with ``T`` the
               steps of ``epochs`` epochs (``CosineAnnealingLR(T_max=T, eta_min=lr_min)``,
               stepped per batch); with ``warmup_epochs`` it first rises linearly from
               ``lr * WARMUP_START`` over that many epochs' steps and the cosine spans the
               rest (``SequentialLR(LinearLR(start_factor=WARMUP_START), CosineAnnealingLR)``);
               past ``T`` the rate stays at ``lr_min``. The other schedules ignore
               ``warmup_epochs`` (so a search may pair it with any schedule)
plateau        ``ReduceLROnPlateau(factor=lr_gamma, patience=lr_patience, min_lr=lr_min)``
               (mode min, relative threshold 1e-4, no cooldown) on the validation loss of every
               epoch, or on the training loss when there is no validation data
=============  ==============================================================================

A schedule starts with every ``fit`` (also a warm-started one) and runs on through
``partial_fit`` calls, so ``k`` calls of one epoch equal one call of ``k`` epochs. The plateau
rule's state is not stored: :meth:`Plateau.replay` rebuilds it from the losses in ``history_``,
so a warm start, a resumed checkpoint or a loaded model continue where training left off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nbnet.errors import NbnetError

SCHEDULES = ("constant", "step", "exponential", "cosine", "plateau")
WARMUP_START = 0.01  # the first warmup step runs at 1 % of the learning rate
PLATEAU_THRESHOLD = 1e-4  # ReduceLROnPlateau's default: an improvement is a relative drop of 1e-4
PLATEAU_EPS = 1e-8  # ReduceLROnPlateau's default: smaller reductions are ignored


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule, its options checked (see the module's table)."""

    name: str = "constant"
    lr: float = 1e-3  # the base rate (the estimator's learning_rate)
    epochs: int = 1  # the horizon of cosine
    warmup_epochs: int = 0  # cosine's linear warmup, in epochs (counted in steps); ignored by the others
    step_size: int = 10  # epochs between reductions of step
    gamma: float = 0.1  # the factor of step, exponential and plateau
    min_lr: float = 0.0  # cosine's floor and plateau's lower bound
    patience: int = 10  # plateau: epochs without improvement before a reduction

    @classmethod
    def from_params(cls, params: dict, prefix: str = "") -> "Schedule":
        """The schedule of an estimator's ``get_params()`` (or of an experiment's ``[train]``
        table, with ``prefix="train."`` naming the keys in errors); NbnetError with one line
        when an option is wrong."""
        name, k = params["schedule"], prefix
        if not isinstance(name, str) or name not in SCHEDULES:
            raise NbnetError(f"unknown {k}schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
        sched = cls(name, float(params["learning_rate"]), int(params["epochs"]),
                    _count(k + "warmup_epochs", params["warmup_epochs"], 0),
                    _count(k + "lr_step_size", params["lr_step_size"], 1), _number(k + "lr_gamma", params["lr_gamma"]),
                    _number(k + "lr_min", params["lr_min"]), _count(k + "lr_patience", params["lr_patience"], 0))
        if name in ("step", "exponential", "plateau") and not 0.0 < sched.gamma <= 1.0:
            raise NbnetError(f"{k}lr_gamma of the {name} schedule must be in (0, 1], got {sched.gamma}")
        if sched.min_lr < 0 or (name == "cosine" and sched.min_lr > sched.lr):
            raise NbnetError(f"{k}lr_min must be >= 0 and, for cosine, <= {k}learning_rate; got {sched.min_lr}")
        if name == "cosine" and sched.warmup_epochs and sched.warmup_epochs >= sched.epochs:
            raise NbnetError(f"{k}warmup_epochs ({sched.warmup_epochs}) must be fewer than {k}epochs ({sched.epochs})")
        return sched

    def rates(self, epoch: int, steps: int, plateau_lr: float | None = None) -> np.ndarray:
        """float64 (steps,): the rate of each step of epoch ``epoch`` (0-based, counted from the
        schedule's start) of ``steps`` steps; ``plateau_lr``: the plateau rule's current rate."""
        if self.name == "plateau":
            return np.full(steps, self.lr if plateau_lr is None else plateau_lr)
        if self.name == "step":
            return np.full(steps, self.lr * self.gamma ** (epoch // self.step_size))
        if self.name == "exponential":
            return np.full(steps, self.lr * self.gamma ** epoch)
        if self.name == "cosine":
            return self._cosine(epoch * steps + np.arange(steps), steps)  # the only one that uses warmup_epochs
        return np.full(steps, self.lr)

    def _cosine(self, s: np.ndarray, steps: int) -> np.ndarray:
        warm = self.warmup_epochs * steps
        T = max(self.epochs * steps - warm, 1)
        t = np.minimum(s - warm, T)
        out = self.min_lr + (self.lr - self.min_lr) * (1.0 + np.cos(math.pi * t / T)) / 2.0
        if warm:
            w = s < warm
            out[w] = self.lr * (WARMUP_START + (1.0 - WARMUP_START) * s[w] / warm)
        return out

    def plateau(self, history: dict, start: int) -> "Plateau | None":
        """The plateau rule after the epochs of ``history`` from index ``start`` (the schedule's
        first epoch); None for the other schedules."""
        if self.name != "plateau":
            return None
        rule = Plateau(self.lr, self.gamma, self.patience, self.min_lr)
        losses, val = history.get("loss", []), history.get("val_loss", [])
        for i in range(start, len(losses)):
            rule.step(epoch_metric(losses[i], val[i] if i < len(val) else None))
        return rule


def epoch_metric(loss, val_loss) -> float:
    """What the plateau rule watches: the validation loss, or the training loss without one."""
    if val_loss is not None and np.isfinite(val_loss):
        return float(val_loss)
    return float(loss)


class Plateau:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau`` in mode min with a relative threshold:
    after more than ``patience`` epochs without a relative improvement of 1e-4 over the best
    metric, the rate is multiplied by ``factor`` (not below ``min_lr``)."""

    def __init__(self, lr: float, factor: float, patience: int, min_lr: float):
        self.lr, self.factor, self.patience, self.min_lr = lr, factor, patience, min_lr
        self.best = math.inf
        self.bad_epochs = 0

    def step(self, metric: float) -> None:
        if metric < self.best * (1.0 - PLATEAU_THRESHOLD):
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            new = max(self.lr * self.factor, self.min_lr)
            if self.lr - new > PLATEAU_EPS:
                self.lr = new
            self.bad_epochs = 0


def _count(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise NbnetError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def _number(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
        raise NbnetError(f"{name} must be a finite number, got {v!r}")
    return float(v)
