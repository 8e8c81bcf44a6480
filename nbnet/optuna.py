"""Optuna for your own objectives around nbnet estimators: :class:`PruningCallback`, in the
style of Optuna's integration callbacks (``KerasPruningCallback``,
``PyTorchLightningPruningCallback``).

Example (docs/python.md runs it)
-------
>>> import optuna, nbnet                                                       # doctest: +SKIP
>>> from nbnet.optuna import PruningCallback                                   # doctest: +SKIP
>>> def objective(trial):                                                      # doctest: +SKIP
...     clf = nbnet.MLPClassifier((32,), epochs=30,
...                               learning_rate=trial.suggest_float("lr", 1e-4, 1e-1, log=True))
...     clf.fit(X_tr, y_tr, validation_data=(X_va, y_va),
...             callbacks=[PruningCallback(trial, monitor="val_accuracy")])
...     return clf.score(X_va, y_va)
>>> optuna.create_study(direction="maximize").optimize(objective, n_trials=20)  # doctest: +SKIP
"""

from __future__ import annotations

import warnings

import optuna

from nbnet.errors import NbnetError
from nbnet.experiment.trial import PruningReport


class PruningCallback(PruningReport):
    """Training callback (``fit(..., callbacks=[...])``) that reports ``monitor`` to ``trial``
    after every ``interval``-th epoch (``trial.report(value, step=epoch)``, epochs counted from
    1) and raises :class:`optuna.TrialPruned` when the study's pruner says so; the fit stops
    there, and Optuna records the trial PRUNED.

    trial : the :class:`optuna.trial.Trial` of the objective.
    monitor : a per-epoch log of the fit: ``val_loss`` (default), ``val_accuracy`` (classifier)
        or ``val_r2`` (regressor) with ``validation_data`` (or ``early_stopping``); ``loss``
        without. The study's direction must match it (minimize a loss, maximize a score).
    interval : report every that many epochs (1: every epoch).

    A ``monitor`` that the fit does not log gives one warning (Optuna's integrations do the
    same) and no pruning.
    """

    def __init__(self, trial: optuna.trial.Trial, monitor: str = "val_loss", interval: int = 1):
        if not isinstance(monitor, str) or not monitor:
            raise NbnetError(f"monitor must name a per-epoch log such as 'val_loss', got {monitor!r}")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise NbnetError(f"interval must be a positive int, got {interval!r}")
        super().__init__(trial, monitor)
        self.monitor = monitor
        self.interval = interval
        self.warned = False

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if epoch % self.interval:
            return
        if self.monitor not in logs:
            if not self.warned:
                self.warned = True
                warnings.warn(f"the metric {self.monitor!r} is not in the fit's per-epoch logs "
                              f"({', '.join(sorted(logs))}); pass validation_data or pick one of those",
                              stacklevel=2)
            return
        self(epoch, logs)


__all__ = ["PruningCallback"]
