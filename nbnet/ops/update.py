"""Fine-tuning a registered model on new data (``nbnet update``), registered as ``challenger``.

``update(MODEL_URI, DATA)`` loads the model file — weights, the optimizer state (Adam/momentum
moments and step count) and the generator state — and trains it ``epochs`` more epochs on
DATA with :meth:`~nbnet.nn.estimator.MLPClassifier.partial_fit` (the estimators' trainer), so
training continues exactly where it stopped: the same optimizer settings (``--lr`` may change the
learning rate only), the same bias-correction step count, and the shuffling/dropout stream going
on from the stored generator state. Updating a model with the data it was trained on, for ``k``
epochs, gives the very weights a fit of ``epochs + k`` epochs would have given.

**Preprocessing is kept as fitted**: imputation, scaling, feature selection and PCA learned
from the original training data are applied unchanged to DATA (refitting them would change the
meaning of every input weight). Only the training statistics that drift monitoring compares
against (``Preprocessor.stats_``) are replaced by those of the update's training rows, so
``nbnet monitor`` of the updated model asks "does new data look like what this model last
learned from?".

A fraction of DATA (``val_fraction``; default the model's ``data.val_fraction``, stratified for
classifiers, seeded by ``data.split_seed``) is held out and scored every epoch; ``0`` trains on all
of it (no validation metric is then recorded, and the gate needs ``--data``).

The run goes to the registered model's experiment (tag ``nbnet.kind=update``) with params
``update.source_uri``, ``update.source_version``, ``update.epochs``, ``update.learning_rate``,
``update.val_fraction``, ``data.path``/``data.rows``/``data.hash``, per-epoch metrics
(``loss``, ``grad_norm_<l>``, ``epoch_time``, ``val_loss`` and the validation metrics),
the final ``val_*`` metrics, and the model (:func:`nbnet.experiment.tracking.log_model`, servable). It is
registered as a new version of the same model with the alias ``challenger`` — never
``champion``: promote it with ``nbnet promote NAME --version N`` (the gate).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nbnet._sys import interrupt
from nbnet.data.load import data_hash
from nbnet.data.prep import feature_stats
from nbnet.data.split import train_val_split
from nbnet.errors import NbnetError
from nbnet.experiment import tags as T
from nbnet.experiment import tracking
from nbnet.metrics import default_metric, evaluate_estimator
from nbnet.ops.labelled import load_labelled, task_of


class _Split(NamedTuple):
    """The update's training rows and held-out rows (None when nothing is held out)."""

    X: np.ndarray
    y: np.ndarray
    X_val: np.ndarray | None
    y_val: np.ndarray | None
    fraction: float


class _Metric(NamedTuple):
    """The registered model's metric: its key (``val_accuracy``...), direction and base name."""

    key: str
    direction: str
    extra: tuple  # the base name for evaluate_estimator's ``extra`` (empty for the loss)


def update(model_uri: str, data, *, target: str | None = None, epochs: int = 10, lr: float | None = None,
           val_fraction: float | None = None, uri: str | None = None, quiet: bool = True, callbacks=()) -> dict:
    """Warm-start ``model_uri`` on ``data`` for ``epochs`` epochs, log and register the result as
    ``challenger``; returns ``{"run_id", "name", "version", "source_version", "model_uri",
    "metrics", "metric_key", "promote_command", ...}``. ``callbacks``: more training callbacks
    (a progress display), called after the epoch's validation metrics are in its logs."""
    _check_options(epochs, lr)
    uri = uri or tracking.default_tracking_uri()
    ref = tracking.registry.resolve(model_uri, uri)
    if ref.name is None or ref.version is None:
        raise NbnetError(f"{model_uri} is not a registered model version; update models:/NAME@champion or "
                         "models:/NAME/N (register the run first with nbnet train --register)")
    est, (names, cats) = tracking.load_model(ref.uri, tracking_uri=uri)
    X, y, tcol = load_labelled(data, (names, cats), target, est, require_target=True)
    split = _split(est, X, y, val_fraction)
    metric = _metric_of(ref, est, uri)
    if lr is not None:
        est.set_params(learning_rate=float(lr), schedule="constant")  # --lr is the rate, not a schedule's base
    step0 = est.training_state().optimizer.step
    dh = data_hash(X, y)
    run_id = _start_run(ref, est, model_uri, data, tcol, split, metric, epochs, step0, len(X), dh, uri)
    tracking.datasets.log_inputs(run_id, _inputs(split), uri=uri)  # the runs table's Dataset column
    with tracking.closing(run_id, uri), tracking.MetricLogger(run_id, uri=uri) as logger:
        with interrupt.graceful():
            est.partial_fit(split.X, split.y, epochs=epochs,
                            callbacks=[_EpochReport(est, split, metric, logger, epochs, quiet), *callbacks])
        if est.preprocessor_ is not None:  # the drift reference: the data this model last learned from
            est.preprocessor_.stats_ = feature_stats(split.X)
        final = _final_metrics(est, split, metric, epochs, logger)
        tracking.log_model(run_id, est, split.X[:5], uri=uri, feature_names=names, categories=cats)
    version = _register(ref, run_id, metric, final.get(metric.key), uri)
    data_arg = f" --data {data}" + (f" --target {tcol}" if tcol and not str(data).endswith(".npz") else "")
    return {"run_id": run_id, "name": ref.name, "version": version, "source_version": ref.version,
            "model_uri": f"models:/{ref.name}/{version}",
            "alias_uri": f"models:/{ref.name}@{tracking.registry.CHALLENGER}",
            "metrics": final, "metric_key": metric.key, "val_fraction": split.fraction, "rows": len(X),
            "train_rows": len(split.X), "optimizer_step": (step0, est.training_state().optimizer.step),
            "learning_rate": est.learning_rate,
            "promote_command": f"nbnet promote {ref.name} --version {version}{data_arg}"}


def _check_options(epochs, lr) -> None:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise NbnetError(f"--epochs must be a positive integer, got {epochs!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
        raise NbnetError(f"--lr must be a positive number, got {lr!r}")


def _inputs(split: _Split) -> list[tuple]:
    """The update's data sets, as :func:`nbnet.experiment.tracking.datasets.log_inputs` takes them:
    the training rows and, when some are held out, the validation rows."""
    D = tracking.datasets
    out = [(D.dataset(split.X, split.y, "train"), D.TRAINING, None)]
    if split.X_val is not None:
        out.append((D.dataset(split.X_val, split.y_val, "val"), D.VALIDATION, "val_"))
    return out


def _split(est, X, y, val_fraction: float | None) -> _Split:
    """Hold out ``val_fraction`` of the rows (default the model's ``data.val_fraction``),
    stratified for classifiers as the training config says, seeded by ``data.split_seed``."""
    dcfg = (getattr(est, "config_", None) or {}).get("data") or {}
    vf = float(dcfg.get("val_fraction", 0.2)) if val_fraction is None else float(val_fraction)
    if not 0.0 <= vf < 1.0:
        raise NbnetError(f"--val-fraction must be in [0, 1), got {vf}")
    if vf == 0:
        return _Split(X, y, None, None, vf)
    strat = y if task_of(est) == "classification" and dcfg.get("stratify", True) else None
    tr, va = train_val_split(len(y), vf, strat, int(dcfg.get("split_seed", 0)))
    return _Split(X[tr], y[tr], X[va], y[va], vf)


def _metric_of(ref, est, uri: str) -> _Metric:
    """The metric the registered version was judged by (its tag, else the config's, else the
    task's default validation score) and its direction."""
    mv = tracking.client(uri).get_model_version(ref.name, str(ref.version))
    cfg = getattr(est, "config_", None) or {}
    key = tracking.registry.metric_key(mv, uri) or (cfg.get("search") or {}).get("metric") \
        or default_metric(task_of(est))
    base = key.split("_", 1)[1] if key.startswith("val_") else key
    return _Metric(key, tracking.registry.direction_of(mv, key), (base,) if base != "loss" else ())


def _start_run(ref, est, model_uri, data, tcol, split: _Split, metric: _Metric, epochs: int, step0: int,
               rows: int, dh: str, uri: str) -> str:
    """The update's MLflow run: the training config as the sweep's runs log it (comparable
    columns in the UI), what this run changed, then the update's own values."""
    cfg = getattr(est, "config_", None) or {}
    plain = {k: ({a: b for a, b in v.items() if a != "space"} if k == "search" else v)
             for k, v in cfg.items() if k != "name" and isinstance(v, dict)}
    params = dict(tracking.flatten(plain))
    params.update({"train.epochs": epochs, "train.learning_rate": est.learning_rate})
    params.update({"update.source_uri": str(model_uri), "update.source_version": ref.version,
                   "update.source_run_id": ref.run_id, "update.epochs": epochs,
                   "update.learning_rate": est.learning_rate, "update.val_fraction": split.fraction,
                   "update.optimizer": est.optimizer, "update.optimizer_step_before": step0,
                   "data.path": str(data), "data.target": tcol, "data.rows": rows, "data.train_rows": len(split.X),
                   "data.hash": dh, "search.metric": metric.key})
    tags = tracking.standard_tags(data_hash=dh, seed=est.seed)
    tags.update({T.KIND: "update", T.UPDATED_FROM: f"models:/{ref.name}/{ref.version}"})
    exp = tracking.ensure_experiment(ref.name, uri)
    return tracking.start_run(exp, run_name=f"update-v{ref.version}", tags=tags, params=params, uri=uri)


class _EpochReport:
    """The update's training callback: the validation metrics into the epoch's logs, the logs to
    the run, a console line unless quiet, then a clean stop if one was requested (Ctrl-C). The
    update's epochs count from 1 (the model's own count goes on from its fit)."""

    def __init__(self, est, split: _Split, metric: _Metric, logger, epochs: int, quiet: bool):
        self.est, self.split, self.metric, self.logger = est, split, metric, logger
        self.epochs, self.quiet = epochs, quiet
        self.before = est.n_epochs_

    def on_epoch_end(self, model_epoch: int, logs: dict) -> None:
        epoch = model_epoch - self.before
        if self.split.X_val is not None:
            logs.update(evaluate_estimator(self.est, self.split.X_val, self.split.y_val, task_of(self.est), "val_",
                                           self.metric.extra))
        self.logger(epoch, logs)
        if not self.quiet:
            shown = "  ".join(f"{k} {logs[k]:.4f}" for k in ("loss", "val_loss", self.metric.key) if k in logs)
            print(f"epoch {epoch:>3}/{self.epochs}  {shown}", flush=True)
        interrupt.check(epoch, logs)


def _final_metrics(est, split: _Split, metric: _Metric, epochs: int, logger) -> dict:
    """The updated model's ``val_*`` and ``train_*`` metrics, the epochs and the optimizer step,
    logged at the last epoch."""
    task = task_of(est)
    final = {}
    if split.X_val is not None:
        final = evaluate_estimator(est, split.X_val, split.y_val, task, "val_", metric.extra)
    final.update(evaluate_estimator(est, split.X, split.y, task, "train_", metric.extra))
    final["epochs"] = epochs
    final["optimizer_step"] = est.training_state().optimizer.step
    for k, v in final.items():
        logger.log(k, v, epochs)
    logger.flush()
    return final


def _register(ref, run_id: str, metric: _Metric, value, uri: str) -> int:
    """Register the run as a new version of the model with the alias ``challenger``; returns it."""
    version = int(tracking.registry.create_version(ref.name, run_id, uri).version)
    vtags = {T.METRIC_KEY: metric.key, T.DIRECTION: metric.direction, T.PROMOTED: "false",
             T.KIND: "update", T.UPDATED_FROM: str(ref.version),
             T.PROMOTION_REASON: "an update is a challenger; promote it with nbnet promote"}
    if value is not None:
        vtags[T.METRIC] = repr(float(value))
    c = tracking.client(uri)
    for k, v in vtags.items():
        c.set_model_version_tag(ref.name, str(version), k, v)
    c.set_registered_model_alias(ref.name, tracking.registry.CHALLENGER, str(version))
    return version


__all__ = ["update"]
