"""The epoch loop: one compiled kernel call per epoch on a backend, the epoch's logs, callbacks.

:class:`Trainer` holds a training state's buffers on the backend's device for a run of epochs;
before each epoch it computes the learning rate of every step (the schedule, into the kernel's
``lrs`` argument); after it, it builds the logs (training loss, learning rate, per-layer gradient
norms, validation loss and score, seconds) and hands them to the callbacks, which may stop the
run. It knows nothing of estimators' hyperparameters (an :class:`EpochPlan` carries what the
kernel needs), of Optuna or of MLflow: sweeps, trackers and checkpoints watch through callbacks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, NamedTuple

import numpy as np

from nbnet.errors import DivergedError
from nbnet.kernels.tables import (
    HP_LR, N_SETTINGS, SETTING_BATCH, SETTING_IMG_H, SETTING_IMG_W, SETTING_NESTEROV, SETTING_OPTIMIZER, SETTING_SHUFFLE,
    SETTING_STEP,
)
from nbnet.model import Layout
from nbnet.nn.callbacks import CallbackList, EarlyStoppingState
from nbnet.nn.schedules import Plateau, Schedule, epoch_metric
from nbnet.optim import OptState


class TrainingState(NamedTuple):
    """Everything training continues from (see ``MLPClassifier.training_state``)."""

    params: np.ndarray  # (n_params,) the flat weights, in the model's dtype (nbnet.model.Layout)
    optimizer: OptState  # step count and moment buffers (n_params,) each
    rng: np.ndarray  # (1,) uint64 SplitMix64 state of shuffles, dropout and augmentation
    early_stopping: EarlyStoppingState | None  # None: early stopping has not run
    epochs: int  # epochs trained so far


@dataclass(frozen=True)
class EpochPlan:
    """What the epoch kernel needs besides the data and the training state."""

    layout: Layout
    loss: int  # the loss code (nbnet.kernels.tables.LOSSES)
    hp: np.ndarray  # float64 (N_HP,) hyperparameters (nbnet.kernels.tables.HP_*)
    optimizer: int  # the optimizer code (nbnet.kernels.tables.OPT_*)
    nesterov: bool
    batch_size: int
    image_shape: tuple[int, int]  # (0, 0): no shift augmentation
    shuffle: bool
    l2: float  # the reported loss adds 0.5 * l2 * ||W||^2, as scikit-learn's does
    schedule: Schedule = Schedule()  # the learning-rate schedule (constant: hp[HP_LR] throughout)
    schedule_start: int = 0  # the epoch count where the schedule started (its epoch 0 is the next one)

    def steps(self, n: int) -> int:
        """Optimizer steps in an epoch over ``n`` rows."""
        return -(-n // min(self.batch_size, n))

    def rates(self, epoch: int, n: int, plateau: Plateau | None) -> np.ndarray | None:
        """The learning rate of each step of (1-based) ``epoch`` over ``n`` rows: float64
        (steps,), or None for a constant rate (the kernel reads ``hp[HP_LR]``)."""
        if self.schedule.name == "constant":
            return None
        return self.schedule.rates(epoch - 1 - self.schedule_start, self.steps(n),
                                   plateau.lr if plateau is not None else None)

    def settings(self, step: int) -> np.ndarray:
        """The int64 (N_SETTINGS,) settings vector of ``train_epoch`` at optimizer step ``step``."""
        s = np.zeros(N_SETTINGS, np.int64)
        s[SETTING_OPTIMIZER], s[SETTING_NESTEROV], s[SETTING_BATCH] = self.optimizer, self.nesterov, self.batch_size
        s[SETTING_STEP], s[SETTING_IMG_H], s[SETTING_IMG_W] = step, *self.image_shape
        s[SETTING_SHUFFLE] = self.shuffle
        return s


class Validation(NamedTuple):
    """Validation data, scored after every epoch."""

    X: np.ndarray  # (n_val, n_features) in the model's dtype
    Y: np.ndarray  # (n_val, n_outputs) encoded targets
    score: Callable[[np.ndarray, np.ndarray], float]  # (outputs, Y) -> the score
    score_key: str  # its name in the logs: val_accuracy, val_r2


class Trainer:
    """Runs epochs of ``backend.train_epoch`` over ``params``, ``optimizer`` and ``rng``, which it
    updates in place: on the CPU the kernels write them directly; on a GPU they live on the
    device during :meth:`run` and come back at its end (or on :meth:`sync`)."""

    def __init__(self, backend: ModuleType, plan: EpochPlan, params: np.ndarray, optimizer: OptState,
                 rng: np.ndarray):
        self.backend = backend
        self.plan = plan
        self.params, self.optimizer, self.rng = params, optimizer, rng
        dev = backend.to_device
        self._params_dev, self._grads_dev = dev(params), dev(np.zeros_like(params))
        self._m_dev, self._v_dev = dev(optimizer.m), dev(optimizer.v)

    def host_params(self) -> np.ndarray:
        """A host copy of the live weights."""
        return self.backend.to_host(self._params_dev).copy()

    def sync(self) -> None:
        """Copy the live device buffers into ``params`` and the optimizer's moments (nothing to
        do on the CPU, where they are the same arrays)."""
        for host, live in ((self.params, self._params_dev), (self.optimizer.m, self._m_dev),
                           (self.optimizer.v, self._v_dev)):
            if live is not host:
                host[:] = self.backend.to_host(live)

    def run(self, X: np.ndarray, Y: np.ndarray, n_epochs: int, *, first_epoch: int,
            val: Validation | None = None, callbacks: CallbackList | None = None,
            sample_weight: np.ndarray | None = None, plateau: Plateau | None = None) -> None:
        """Train ``n_epochs`` epochs numbered from ``first_epoch`` on X (n, n_features) and
        encoded targets Y (n, n_outputs), until a callback asks to stop. ``sample_weight``:
        float64 (n,) row weights or None; ``plateau``: the plateau schedule's rule, stepped
        after every epoch with its validation loss (the training loss without validation)."""
        dev = self.backend.to_device
        Xd, Yd = dev(X), dev(Y)
        val_dev = val._replace(X=dev(val.X), Y=dev(val.Y)) if val is not None else None
        settings = self.plan.settings(self.optimizer.step)
        callbacks = callbacks or CallbackList()
        try:
            for epoch in range(first_epoch, first_epoch + n_epochs):
                logs = self._epoch(Xd, Yd, settings, epoch, val_dev, val, sample_weight, plateau)
                self.optimizer.step = int(settings[SETTING_STEP])
                if plateau is not None:
                    plateau.step(epoch_metric(logs["loss"], logs.get("val_loss")))
                if callbacks.epoch_end(epoch, logs):
                    break
        finally:
            self.sync()

    def _epoch(self, Xd, Yd, settings, epoch: int, val_dev: Validation | None, val: Validation | None,
               sw: np.ndarray | None, plateau: Plateau | None) -> dict:
        """One kernel call and the epoch's logs."""
        t0 = time.perf_counter()
        lay, stats = self.plan.layout, np.zeros(1 + self.plan.layout.n_layers)
        rates = self.plan.rates(epoch, Xd.shape[0], plateau)
        self.backend.train_epoch(Xd, Yd, self._params_dev, self._grads_dev, self._m_dev, self._v_dev,
                                 *lay.kernel_args(), self.plan.loss, self.plan.hp, settings, self.rng, stats, sw, rates)
        train_loss = float(stats[0])
        if not np.isfinite(train_loss):
            raise DivergedError(epoch, train_loss)
        if self.plan.l2 > 0:  # report the penalised objective, as scikit-learn does
            weights = lay.views(self.backend.to_host(self._params_dev))[::2]
            train_loss += 0.5 * self.plan.l2 * sum(float(np.sum(w.astype(np.float64) ** 2)) for w in weights)
        logs = {"loss": train_loss, "lr": float(rates[-1]) if rates is not None else float(self.plan.hp[HP_LR])}
        for i, g in enumerate(stats[1:]):
            logs[f"grad_norm_{i}"] = float(g)
        if val_dev is not None:
            logs["val_loss"], outputs = self._validate(val_dev, val.Y)
            logs[val.score_key] = val.score(outputs, val.Y)
        logs["epoch_time"] = time.perf_counter() - t0
        return logs

    def _validate(self, val_dev: Validation, Y: np.ndarray) -> tuple[float, np.ndarray]:
        """(the mean loss, the predictions on the host) of the validation rows, from one forward pass."""
        b, lay = self.backend, self.plan.layout
        out = b.to_device(np.empty((Y.shape[0], lay.sizes[-1]), dtype=Y.dtype))
        loss = float(b.eval_loss(val_dev.X, val_dev.Y, self._params_dev, *lay.kernel_args(), self.plan.loss, out))
        return loss, b.to_host(out)
