"""Training callbacks: the protocol ``fit`` and the trainer speak, early stopping, the console line.

A callback is a plain callable ``callback(epoch, logs) -> bool | None`` or an object with any of
these methods (all optional):

* ``on_train_begin(estimator)``: before the first epoch (a checkpoint restores its state here);
* ``on_epoch_end(epoch, logs) -> bool | None``: after each epoch; True stops training. ``logs``
  holds ``loss``, ``lr``, ``grad_norm_{l}``, ``epoch_time`` and, with validation data, ``val_loss`` and
  ``val_accuracy`` / ``val_r2``. The callbacks of one epoch share one copy of ``logs``, so one
  may add values for those after it;
* ``on_train_end(estimator)``: after the last epoch of a fit that did not raise;
* ``on_exception(estimator, exc)``: the fit raised or was interrupted.

The trainer knows nothing of who is watching: trackers, pruners and checkpoints are callbacks.
Layers above may also watch every fit of the process: :func:`add_fit_hook` registers a hook
that ``fit`` and ``partial_fit`` ask for extra callbacks (``nbnet.mlflow.autolog`` does).
"""

from __future__ import annotations

import sys
from typing import Callable, NamedTuple

import numpy as np


class CallbackList:
    """The callbacks of one fit, called in order."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks or ())

    def train_begin(self, estimator) -> None:
        for cb in self.callbacks:
            if hasattr(cb, "on_train_begin"):
                cb.on_train_begin(estimator)

    def epoch_end(self, epoch: int, logs: dict) -> bool:
        """Call every callback with one shared copy of ``logs``; True when any asks to stop."""
        shared = dict(logs)
        stop = False
        for cb in self.callbacks:
            fn = getattr(cb, "on_epoch_end", None) or (cb if callable(cb) else None)
            if fn is not None:  # an object may implement only on_train_begin/end
                stop = bool(fn(epoch, shared)) or stop
        return stop

    def train_end(self, estimator) -> None:
        for cb in self.callbacks:
            if hasattr(cb, "on_train_end"):
                cb.on_train_end(estimator)

    def exception(self, estimator, exc: BaseException) -> None:
        for cb in self.callbacks:  # e.g. a Checkpoint releases its lock (and keeps its file)
            if hasattr(cb, "on_exception"):
                cb.on_exception(estimator, exc)


#: ``hook(estimator, method, X, y, callbacks) -> iterable of callbacks | None``, asked by every
#: ``fit`` / ``partial_fit`` (``method``) of the process before it trains (see :func:`add_fit_hook`).
FIT_HOOKS: list = []


def add_fit_hook(hook) -> None:
    """Register ``hook`` (once): every later ``fit`` / ``partial_fit`` calls
    ``hook(estimator, method, X, y, callbacks)`` with the raw inputs and the caller's callbacks,
    and puts the callbacks it returns (None: none) before the caller's, so a tracker sees each
    epoch's logs before a callback of the caller stops or aborts the fit."""
    if hook not in FIT_HOOKS:
        FIT_HOOKS.append(hook)


def remove_fit_hook(hook) -> None:
    """Unregister ``hook`` (nothing happens when it is not registered)."""
    if hook in FIT_HOOKS:
        FIT_HOOKS.remove(hook)


def with_fit_hooks(estimator, method: str, X, y, callbacks) -> list:
    """The callbacks of one fit: those the registered hooks add, then the caller's."""
    mine = list(callbacks or ())
    added: list = []
    for hook in list(FIT_HOOKS):
        added.extend(hook(estimator, method, X, y, tuple(added + mine)) or ())
    return added + mine


class EarlyStoppingState(NamedTuple):
    """Where early stopping stands; checkpoints save it so that a resumed fit stops where an
    uninterrupted one would."""

    best_loss: float = np.inf  # the lowest val_loss so far
    best_params: np.ndarray | None = None  # (n_params,) host copy of the weights of best_epoch
    best_epoch: int = 0
    wait: int = 0  # epochs since best_epoch without an improvement of min_delta


class EarlyStopping:
    """Stop when ``val_loss`` has not improved by more than ``min_delta`` for ``patience``
    epochs, keeping a copy of the best weights (``snapshot()`` returns the live weights on the
    host). ``state`` (an :class:`EarlyStoppingState`) continues a resumed fit."""

    def __init__(self, patience: int, min_delta: float, snapshot: Callable[[], np.ndarray],
                 state: EarlyStoppingState | None = None):
        self.patience = patience
        self.min_delta = min_delta
        self.snapshot = snapshot
        self.state = state or EarlyStoppingState()

    def on_epoch_end(self, epoch: int, logs: dict) -> bool:
        val_loss = logs["val_loss"]
        if val_loss < self.state.best_loss - self.min_delta:
            self.state = EarlyStoppingState(val_loss, self.snapshot(), epoch, 0)
            return False
        self.state = self.state._replace(wait=self.state.wait + 1)
        return self.state.wait >= self.patience


class ConsolePrinter:
    """One line per epoch on stderr: ``epoch   3/20  loss 0.4121  val_loss 0.4410  val_accuracy
    0.8800  0.02s`` (the estimators' ``verbose=True``)."""

    def __init__(self, epochs: int, score_key: str):
        self.epochs = epochs
        self.score_key = score_key

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        parts = [f"epoch {epoch:>3}/{self.epochs}", f"loss {logs['loss']:.4f}"]
        for key in ("val_loss", self.score_key):
            if key in logs:
                parts.append(f"{key} {logs[key]:.4f}")
        parts.append(f"{logs['epoch_time']:.2f}s")
        print("  ".join(parts), file=sys.stderr, flush=True)
