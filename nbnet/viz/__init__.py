"""Figures from arrays: a training run's curves, its evaluation data, the per-run summary panel,
a sweep's study figures, and the per-epoch activation statistics they show.

* :mod:`nbnet.viz.activations` — :class:`ActivationStats`, the training callback that records
  the activation mean, std and dead-unit fraction of every hidden layer.
* :mod:`nbnet.viz.series` — series ``{metric key: (epochs, values)}``, the input of every figure.
* :mod:`nbnet.viz.figures` — matplotlib figures (loss, gradient norms, activations, confusion
  matrix, ROC, predicted vs true) and :func:`save`.
* :mod:`nbnet.viz.evaluation` — the validation split's evaluation data and what every tracked run
  logs (:func:`write_run_plots`).
* :mod:`nbnet.viz.summary`, :mod:`nbnet.viz.study` — the per-run summary panel and the study
  figures, drawn with Pillow (:mod:`nbnet.viz.canvas`).

Nothing here imports MLflow or Optuna; :mod:`nbnet.ops.plot` reads a run's series from MLflow.

Example
-------
>>> fig = learning_curve({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "val_accuracy": [0.6, 0.8]})
>>> len(fig.axes)
2
"""

from __future__ import annotations

from .activations import MAX_SAMPLE_ROWS, ActivationStats, hidden_activation_stats
from .evaluation import (ARTIFACT_DIR, EVAL_ARTIFACT, EVAL_FILE, SUMMARY_FILE, evaluation_data, roc_data, roc_points,
                         write_run_plots)
from .figures import (activation_curves, confusion_matrix, grad_norm_curves, learning_curve, loss_curves, pred_vs_true,
                      roc_curve, save)
from .series import ACT_STATS, layer_keys, series_from_history
from .study import study_pngs
from .summary import summary_png

__all__ = ["ActivationStats", "hidden_activation_stats", "MAX_SAMPLE_ROWS", "series_from_history", "layer_keys",
           "ACT_STATS", "learning_curve", "loss_curves", "grad_norm_curves", "activation_curves", "confusion_matrix",
           "roc_curve", "pred_vs_true", "save", "summary_png", "study_pngs", "evaluation_data", "roc_data",
           "roc_points", "write_run_plots", "EVAL_FILE", "SUMMARY_FILE", "ARTIFACT_DIR", "EVAL_ARTIFACT"]
