"""One tracked training run: the estimator a config describes, fitted on the prepared data,
scored, and logged to MLflow with its costs, config, plots and model.

:func:`train_once` is what every sweep trial runs (:mod:`nbnet.experiment.trial`);
:func:`train_run` is ``nbnet train`` and :func:`rerun` is ``nbnet rerun``.

Example
-------
>>> from nbnet.experiment import config, run                           # doctest: +SKIP
>>> out = run.train_run(config.load_experiment("wine", ["train.epochs=3"]))  # doctest: +SKIP
>>> out["metrics"]["val_accuracy"], out["model_uri"]                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nbnet import viz
from nbnet._sys import cputime, interrupt
from nbnet.data.prepared import Data, clear_cache, prepare_data, preprocessed
from nbnet.errors import NbnetError
from nbnet.experiment import config as C
from nbnet.experiment import tags as T
from nbnet.experiment import resources, tracking
from nbnet.metrics import evaluate_estimator
from nbnet.nn import checkpoint
from nbnet.nn.estimator import MLPClassifier, MLPRegressor

#: The cost metrics of a run (and user attributes of a trial), summed on a sweep's parent run.
COST_KEYS = ("compile_seconds", "train_seconds", "cpu_seconds", "tracking_seconds", "compile_wait_seconds",
             "kernels_compiled")
#: The run artifact holding the resolved config, which :func:`rerun` trains from.
CONFIG_ARTIFACT = "config.json"


class Clock:
    """Accumulates wall seconds spent in tracking calls (for the ``tracking_seconds`` metric):
    ``with clock(): ...`` adds the block's time to ``clock.seconds``."""

    def __init__(self):
        self.seconds = 0.0

    @contextlib.contextmanager
    def __call__(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t


def build_estimator(cfg: C.ExperimentConfig, data: Data):
    """MLPClassifier or MLPRegressor (by the data's task) with the config's hyperparameters."""
    kw = cfg.estimator_kwargs()
    if cfg.train.shift_images:
        if data.dataset.image_shape is None:
            raise NbnetError(f"train.shift_images needs image-shaped data (e.g. builtin:digits); {cfg.data.source} is not")
        kw["image_shape"] = tuple(data.dataset.image_shape)
    cls = MLPClassifier if data.task == "classification" else MLPRegressor
    return cls(**kw)


@dataclass
class Fitted:
    """A fitted estimator whose results are not logged yet (:func:`fit_once`, then :func:`log_fitted`)."""

    cfg: C.ExperimentConfig
    data: Data
    est: object
    metrics: dict  # val_*/test_* scores, epochs, the cost metrics
    predictions: np.ndarray  # on the validation split
    run_id: str | None
    logger: tracking.MetricLogger | None
    own: bool  # the logger is fit_once's own: flushed when logging ends
    inputs: list = field(default_factory=list)
    tracked: float = 0.0  # seconds of tracking so far (the data sets, the logger's flushes)


def train_once(cfg: C.ExperimentConfig, *, run_id: str | None = None, callbacks=(), uri: str | None = None,
               data: Data | None = None, log_artifacts: bool = True, logger: tracking.MetricLogger | None = None,
               experiment_id: str | None = None):
    """Load/split the data, build the estimator from ``cfg`` and fit it (:func:`fit_once`), then
    log the results (:func:`log_fitted`).

    With ``run_id``, the run gets its data sets as inputs (before the fit: pruned and failed runs
    name their data too), per-epoch metrics, final validation/test metrics (also linked to the
    run's LoggedModel and to their split), cost metrics, ``config.json``, plots and the model,
    through ``logger`` (the caller's
    :class:`tracking.MetricLogger` for the run, left with its last batch buffered for the caller
    to send along with its own closing values: one store transaction at the end of a trial) or
    a logger of train_once's own, flushed here, also when training stops with an exception
    (pruned, diverged). Returns ``(estimator, metrics)`` where ``metrics`` holds ``val_*`` (and
    ``test_*``) scores, ``epochs`` and the cost metrics; its ``tracking_seconds`` are the
    seconds spent tracking inside train_once (store calls, plots, the model). ``experiment_id``
    (the run's) saves reading the run back when its model is logged.
    """
    fitted = fit_once(cfg, run_id=run_id, callbacks=callbacks, uri=uri, data=data, logger=logger)
    return log_fitted(fitted, uri=uri, log_artifacts=log_artifacts, experiment_id=experiment_id)


def fit_once(cfg: C.ExperimentConfig, *, run_id: str | None = None, callbacks=(), uri: str | None = None,
             data: Data | None = None, logger: tracking.MetricLogger | None = None) -> Fitted:
    """The first half of :func:`train_once`: the data sets recorded on the run, the fit with its
    per-epoch metrics and costs, the final scores. Nothing of the results is logged yet."""
    data = data or prepare_data(cfg)
    est = build_estimator(cfg, data)
    est.config_ = C.to_dict(cfg)
    spec, (pre, X_train, X_val) = est.preprocessing, preprocessed(est, data)
    est.set_params(preprocessing=None)  # trains on the cached transformed data; pre is put back after fit
    own = run_id is not None and logger is None
    if own:
        logger = tracking.MetricLogger(run_id, uri=uri)
    elif run_id is None:
        logger = None
    flushed0 = logger.seconds if logger else 0.0
    inputs, inputs_s = _log_inputs(run_id, data, uri) if logger else ([], 0.0)
    # act_mean/std/dead_{l} per epoch, added to logs before the logger sees them
    cbs = ([viz.ActivationStats(X_val), logger] if logger else []) + list(callbacks)

    def fit() -> None:
        est.fit(X_train, data.y_train, validation_data=(X_val, data.y_val), callbacks=cbs)
        est.use_preprocessor(pre, spec)

    cost = _fit_with_costs(est, fit, logger, flushed0, flush=own)
    metrics, pv = _final_scores(cfg, est, data)
    metrics.update(cost)
    tracked = (logger.seconds - flushed0) + inputs_s if logger else 0.0
    return Fitted(cfg, data, est, metrics, pv, run_id, logger, own, inputs, tracked)


def log_fitted(f: Fitted, *, uri: str | None = None, log_artifacts: bool = True,
               experiment_id: str | None = None):
    """The second half of :func:`train_once`: the config, plots and model of a :func:`fit_once`
    and its final scores, on its run (if any). Returns ``(estimator, metrics)``."""
    metrics, logger = f.metrics, f.logger
    metrics["tracking_seconds"] = 0.0
    if logger:
        step = int(f.est.n_epochs_)  # the run's latest value of val_* is the final score
        t, flushed = time.perf_counter(), logger.seconds
        if log_artifacts:
            _log_run_artifacts(f.run_id, f.cfg, f.est, f.data, uri, predictions=f.predictions, logger=logger,
                               experiment_id=experiment_id)
        for k, v in metrics.items():  # final scores, linked to the LoggedModel (its Models tab) and their split
            if k not in COST_KEYS:
                logger.log(k, v, step, model=logger.model_id is not None, dataset=tracking.datasets.metric_dataset(f.inputs, k))
        # flushes inside the block are in logger.seconds already
        work = time.perf_counter() - t - (logger.seconds - flushed)
        metrics["tracking_seconds"] = f.tracked + (logger.seconds - flushed) + work
        if f.own:
            logger.log("tracking_seconds", metrics["tracking_seconds"], step)
            logger.flush()
    return f.est, metrics


def _log_inputs(run_id: str, data: Data, uri: str | None) -> tuple[list, float]:
    """Record the data's splits as the run's inputs (the runs table's Dataset column), before the
    fit, so pruned and failed runs name their data too; returns (the data sets, seconds taken)."""
    t = time.perf_counter()
    inputs = tracking.datasets.split_datasets(data)
    tracking.datasets.log_inputs(run_id, inputs, uri=uri)
    return inputs, time.perf_counter() - t


def _fit_with_costs(est, fit, logger, flushed0: float, *, flush: bool) -> dict:
    """Run ``fit()``; return its cost metrics, logged at the last epoch by ``logger`` (if any;
    flushed when ``flush``), also when ``fit`` raises. ``flushed0``: the logger's seconds before
    the fit, so its flushes during the fit count as tracking, not training."""
    t0, c0 = time.perf_counter(), cputime.work_seconds()
    try:
        fit()
    finally:
        wall, cpu = time.perf_counter() - t0, max(0.0, cputime.work_seconds() - c0)
        compile_s = float(getattr(est, "compile_seconds_", 0.0))
        wait_s = float(getattr(est, "compile_wait_seconds_", 0.0))  # another worker was compiling
        in_fit = logger.seconds - flushed0 if logger else 0.0
        cost = {"compile_seconds": compile_s, "train_seconds": max(0.0, wall - compile_s - wait_s - in_fit),
                "cpu_seconds": cpu, "compile_wait_seconds": wait_s,
                "kernels_compiled": float(getattr(est, "kernels_compiled_", 0))}
        if logger:
            step = int(getattr(est, "n_epochs_", 0))
            for k, v in cost.items():
                logger.log(k, v, step)
            if flush:
                logger.flush()
    return cost


def _final_scores(cfg: C.ExperimentConfig, est, data: Data) -> tuple[dict, np.ndarray]:
    """(the fitted model's ``val_*``/``test_*`` scores, ``epochs`` and ``best_epoch``; its
    predictions on the validation split)."""
    extra = (cfg.search.metric[len("val_"):],)
    pv = est.predict_proba(data.X_val) if data.task == "classification" else est.predict(data.X_val)
    metrics = evaluate_estimator(est, data.X_val, data.y_val, data.task, "val_", extra, predictions=pv)
    if data.X_test is not None:
        metrics.update(evaluate_estimator(est, data.X_test, data.y_test, data.task, "test_", extra))
    metrics["epochs"] = int(est.n_epochs_)
    if getattr(est, "best_epoch_", None):
        metrics["best_epoch"] = int(est.best_epoch_)
    return metrics, pv


def _log_run_artifacts(run_id: str, cfg: C.ExperimentConfig, est, data: Data, uri: str | None, *, predictions=None,
                       logger: tracking.MetricLogger | None = None, experiment_id: str | None = None) -> str:
    """config.json, data/cleaning_report.json and plots/ in one upload, then the model
    (``predictions``: the estimator's on the validation split, if computed already)."""
    params = C.to_flat_dict(cfg)
    with tempfile.TemporaryDirectory(prefix="nbnet-run-") as tmp:
        Path(tmp, CONFIG_ARTIFACT).write_text(json.dumps(C.to_dict(cfg), indent=2))
        if data.cleaning_report:
            Path(tmp, "data").mkdir()
            Path(tmp, "data", "cleaning_report.json").write_text(json.dumps(data.cleaning_report, indent=2, default=str))
        viz.write_run_plots(Path(tmp, viz.ARTIFACT_DIR), est, data.X_val, data.y_val, data.task, title=cfg.name,
                            predictions=predictions)
        tracking.log_artifact(run_id, tmp, uri=uri)
    # the raw columns travel in the pyfunc model's config: the estimator was fitted on an array and
    # takes one by position (with feature_names_in_ it would warn at each of nbnet's own predicts)
    return tracking.log_model(run_id, est, data.X_val[:5], uri=uri, experiment_id=experiment_id,
                              params=params if experiment_id else None, logger=logger,
                              feature_names=list(data.dataset.feature_names),
                              categories=dict(data.dataset.categories or {}),
                              column_types=data.dataset.column_types)


# --- nbnet train -------------------------------------------------------------------------------
def train_run(cfg: C.ExperimentConfig, *, uri: str | None = None, register: bool = False, run_name: str = "train",
              checkpoint_every: int | None = None, callbacks=(), announce=None) -> dict:
    """One tracked training run with the config's fixed values (``nbnet train``). With
    ``register``, the model is registered under the experiment's name and becomes champion
    only if it beats the current one on ``search.metric``. ``callbacks``: more training
    callbacks (a progress display); ``announce(run_id, experiment_id, uri)`` is called once the
    run exists, before the first epoch.

    With ``checkpoint_every``, the fit writes an atomic checkpoint every that many epochs
    (:mod:`nbnet.nn.checkpoint`, under mlruns/checkpoints). Re-running the same command after a
    crash resumes from it with the same final weights; the dead run is marked KILLED and the new
    one carries the whole per-epoch history (the restored epochs are replayed to it)."""
    data = prepare_data(cfg)  # bad data fails before any store or run is created
    uri = uri or tracking.default_tracking_uri()
    exp_id = tracking.ensure_experiment(cfg.name, uri)
    tags = tracking.standard_tags(data_hash=data.hash, seed=cfg.train.seed)
    tags[T.KIND] = "train"
    ck_path = prev = None
    if checkpoint_every is not None:  # a killed `nbnet train` of this same config may have left one
        ck_path = checkpoint.config_checkpoint_path(cfg.name, C.to_dict(cfg), data.hash)
        prev = _resumable_checkpoint(ck_path, tags)
    run_id = tracking.start_run(exp_id, run_name=run_name, tags=tags, params=C.to_flat_dict(cfg), uri=uri)
    dead = (prev.get("extra") or {}).get("run_id") if prev else None
    if dead:
        with contextlib.suppress(Exception):  # the killed process could not close its run
            if tracking.client(uri).get_run(dead).info.status == "RUNNING":
                tracking.end_run(dead, "KILLED", uri=uri)
    ck = None
    if checkpoint_every is not None:
        ck = checkpoint.Checkpoint(ck_path, every=checkpoint_every, fingerprint=data.hash, extra={"run_id": run_id})
    if announce is not None:
        announce(run_id, exp_id, uri)
    with tracking.closing(run_id, uri):
        # Ctrl-C / SIGTERM: stop at the next epoch boundary, run KILLED; system metrics sampled meanwhile
        with interrupt.graceful(), resources.SystemMetrics(run_id, uri=uri):
            est, metrics = train_once(cfg, run_id=run_id, uri=uri, data=data,
                                      callbacks=([ck] if ck else []) + [*callbacks, interrupt.check])
        if ck is not None and ck.resumed_from_epoch:
            with tracking.MetricLogger(run_id, uri=uri) as replay:
                for epoch, logs in checkpoint.history_logs(est, ck.resumed_from_epoch):
                    replay(epoch, logs)
    out = {"run_id": run_id, "experiment_id": exp_id, "metrics": metrics, "model_uri": f"runs:/{run_id}/{tracking.MODEL_NAME}",
           "registered": None, "champion": False, "resumed_from_epoch": ck.resumed_from_epoch if ck is not None else 0}
    if register:
        version, promoted = tracking.register_champion(cfg.name, run_id, cfg.search.metric, cfg.direction(), uri=uri)
        out["registered"], out["champion"] = f"models:/{cfg.name}/{version}", promoted
    return out


def _resumable_checkpoint(ck_path, tags: dict) -> dict | None:
    """The checkpoint a killed ``nbnet train`` of this same config left at ``ck_path`` (its
    :func:`checkpoint.peek` summary), or None; ``tags`` gets where the new run resumes from."""
    prev = checkpoint.peek(ck_path)
    if prev:
        tags.update({T.RESUMED_FROM_RUN: str((prev.get("extra") or {}).get("run_id")),
                     T.RESUMED_FROM_EPOCH: str(prev.get("epoch"))})
    return prev


# --- nbnet rerun -------------------------------------------------------------------------------
def _run_config(run_id: str, uri: str) -> C.ExperimentConfig:
    c = tracking.client(uri)
    with tempfile.TemporaryDirectory(prefix="nbnet-rerun-") as tmp:
        try:
            path = c.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        except Exception:
            raise NbnetError(f"run {run_id} has no {CONFIG_ARTIFACT}; only runs made by nbnet train/sweep can be rerun") from None
        raw = json.loads(Path(path).read_text())
    return C.from_dict(raw, raw.get("name", "experiment"))


def rerun(run_id: str, *, uri: str | None = None) -> dict:
    """Retrain run ``run_id`` from its recorded config and seed as a new run (tag
    ``nbnet.rerun_of``), refusing if the data's hash changed. Compares the new weights with the
    original model's, bit for bit, and the per-epoch loss history."""
    if uri is None and not os.environ.get("MLFLOW_TRACKING_URI") and tracking.project_store_file() is None:
        raise NbnetError(f"no tracking store here (no {Path.cwd() / tracking.STORE_FILE}); "
                         "run nbnet rerun from the project folder "
                         "or set MLFLOW_TRACKING_URI")
    uri = uri or tracking.default_tracking_uri()
    c = tracking.client(uri)
    try:
        orig = c.get_run(run_id)
    except Exception as e:
        if not tracking.not_found(e):
            raise tracking.store_error(f"reading run {run_id}", uri, e) from e
        raise NbnetError(f"run {run_id!r} not found in {uri}; check the id (nbnet best prints it)") from None
    cfg = _run_config(run_id, uri)
    clear_cache()  # the data as it is now, not as this process loaded it earlier
    data = prepare_data(cfg)
    recorded = orig.data.tags.get(T.DATA_HASH)
    if recorded and recorded != data.hash:
        raise NbnetError(f"the data changed since run {run_id[:12]} (hash {recorded[:12]}… then, {data.hash[:12]}… now); "
                         f"restore {cfg.data.source} or train a new run with nbnet train")
    tags = tracking.standard_tags(data_hash=data.hash, seed=cfg.train.seed)
    tags.update({T.KIND: "rerun", T.RERUN_OF: run_id})
    new = tracking.start_run(orig.info.experiment_id, run_name=f"rerun-{orig.info.run_name or run_id[:8]}", tags=tags,
                             params=C.to_flat_dict(cfg), uri=uri)
    status = "FAILED"
    try:
        est, metrics = train_once(cfg, run_id=new, uri=uri, data=data)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.end_run(new, status, uri=uri)
    report = {"run_id": new, "rerun_of": run_id, "metric": cfg.search.metric,
              "value": metrics.get(cfg.search.metric), "original_value": orig.data.metrics.get(cfg.search.metric)}
    history = [m.value for m in sorted(c.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
    k = len(history)
    report["loss_history_identical"] = bool(k) and [float(x) for x in est.history_["loss"][:k]] == history
    report["loss_epochs_compared"] = k
    report.update(_compare_weights(run_id, orig.info.status, est))
    tracking.set_tags(new, {T.BIT_IDENTICAL: str(report["bit_identical"]).lower()}, uri=uri)
    return report


def _compare_weights(run_id: str, status: str, est) -> dict:
    """``bit_identical`` (None when run ``run_id`` has no model, with a ``note``) and, when the
    shapes match but the bits do not, ``max_abs_diff`` of ``est``'s weights and the run's model's."""
    try:
        old = tracking.load_model(f"runs:/{run_id}/{tracking.MODEL_NAME}")[0]
    except NbnetError:
        old = None
    if old is None:
        return {"bit_identical": None, "note": f"run {run_id[:12]} has no model ({status}); compared its loss history only"}
    a, b = old.get_weights(), est.get_weights()
    same = len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b))
    out = {"bit_identical": same}
    if not same and len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b)):
        out["max_abs_diff"] = float(max(np.max(np.abs(x.astype(np.float64) - y)) for x, y in zip(a, b)))
    return out
