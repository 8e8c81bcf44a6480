"""MLflow for nbnet estimators in notebooks and scripts, in MLflow's own words.

* :func:`autolog` — after ``mlflow.sklearn.autolog``: every later ``fit`` / ``partial_fit``
  logs the estimator's params, its per-epoch metrics (batched: one store call per 10 s of
  training, and one at the end), the data set it was given (``mlflow.log_input``, context
  ``training``) and the model (the same pyfunc model a sweep logs), into the active run or a
  new one; the final metrics are linked to the model, so MLflow's Models tab shows them.
* :func:`log_model` / :func:`load_model` — after ``mlflow.<flavor>.log_model`` / ``load_model``:
  log an estimator you trained yourself, and get an nbnet estimator back (no pickle).

Runs go to MLflow's own tracking URI (``mlflow.set_tracking_uri``, ``MLFLOW_TRACKING_URI``)
and experiment (``mlflow.set_experiment``), as every MLflow flavor's do.

Example
-------
>>> import mlflow, nbnet.mlflow                                    # doctest: +SKIP
>>> nbnet.mlflow.autolog()                                         # doctest: +SKIP
>>> with mlflow.start_run():                                       # doctest: +SKIP
...     clf = nbnet.MLPClassifier((32,), epochs=5).fit(X, y)
>>> info = nbnet.mlflow.log_model(clf, name="model", input_example=X[:5])  # doctest: +SKIP
>>> same = nbnet.mlflow.load_model(info.model_uri)                 # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import mlflow
import numpy as np
from mlflow.models import get_model_info

from nbnet.data.load import data_hash
from nbnet.errors import NbnetError
from nbnet.experiment import tags as T
from nbnet.experiment import tracking
from nbnet.io import json_value
from nbnet.nn.callbacks import add_fit_hook, remove_fit_hook

#: The autolog run's name of the data set a fit was given (context ``training``).
DATASET_NAME = "train"


@dataclass(frozen=True)
class AutologConfig:
    """What :func:`autolog` was asked to log (MLflow's argument names)."""

    log_models: bool = True
    log_datasets: bool = True
    exclusive: bool = False
    silent: bool = False
    registered_model_name: str | None = None
    extra_tags: dict = field(default_factory=dict)


class _State:
    config: AutologConfig | None = None  # None: autolog is off


def autolog(log_models: bool = True, log_datasets: bool = True, disable: bool = False, exclusive: bool = False,
            silent: bool = False, registered_model_name: str | None = None, extra_tags: dict | None = None) -> None:
    """Log every later ``fit`` / ``partial_fit`` of an nbnet estimator to MLflow.

    Inside an active run (``with mlflow.start_run():``) a fit logs into it; otherwise it starts a
    run of its own and ends it when the fit ends (FINISHED, or FAILED / KILLED when the fit
    raises). Each fit logs the estimator's params (``get_params()``), its per-epoch logs as
    metrics at step = epoch (``loss``, ``val_loss``, ``val_accuracy`` / ``val_r2``, gradient
    norms, ...), tags (nbnet/numba/numpy versions, the data's digest, ``nbnet.kind=autolog``),
    then, after the fit:

    - ``log_datasets``: the fit's X and y as an MLflow data set named ``train`` with context
      ``training`` (``mlflow.log_input``), its digest from :func:`nbnet.data.load.data_hash`;
    - ``log_models``: the fitted estimator as ``model`` (:func:`log_model`; models from code,
      no pickle), with the last epoch's metrics linked to it; with ``registered_model_name``
      also registered under that name.

    ``disable=True`` turns autologging off again. ``exclusive=True`` never logs into a run the
    user started (only into runs of its own). ``silent=True`` suppresses the warnings a failed
    logging call would give (the fit itself never fails because of logging). ``extra_tags`` go
    on every run autolog starts. A fit that nbnet's own tracking logs already (a sweep trial,
    ``nbnet train``) is not logged twice.
    """
    if disable:
        _State.config = None
        remove_fit_hook(_fit_hook)
        return
    _State.config = AutologConfig(bool(log_models), bool(log_datasets), bool(exclusive), bool(silent),
                                  registered_model_name, dict(extra_tags or {}))
    add_fit_hook(_fit_hook)


def _fit_hook(estimator, method: str, X, y, callbacks):
    """The callbacks autolog adds to one fit (see :func:`nbnet.nn.callbacks.add_fit_hook`)."""
    cfg = _State.config
    if cfg is None or any(isinstance(cb, (tracking.MetricLogger, AutologRun)) for cb in callbacks):
        return None  # off, or this fit is tracked already
    if cfg.exclusive and mlflow.active_run() is not None:
        return None
    return [AutologRun(cfg, X, y)]


class AutologRun:
    """The training callback :func:`autolog` gives one fit: it opens (or joins) the run at
    ``on_train_begin``, logs each epoch through a :class:`tracking.MetricLogger` and logs the
    data set and the model at ``on_train_end``."""

    def __init__(self, cfg: AutologConfig, X, y):
        self.cfg, self.X, self.y = cfg, X, y
        self.hash: str | None = None  # data_hash of (X, y), computed once
        self.run_id: str | None = None
        self.owns_run = False
        self.logger: tracking.MetricLogger | None = None

    def on_train_begin(self, estimator) -> None:
        self._guard(self._begin, estimator)

    def _begin(self, estimator) -> None:
        uri = mlflow.get_tracking_uri()
        run = mlflow.active_run()
        if run is None:
            run = mlflow.start_run(tags={**self.cfg.extra_tags, T.KIND: "autolog"})
            self.owns_run = True
        self.run_id = run.info.run_id
        tracking.log_params(self.run_id, {k: json_value(v) for k, v in estimator.get_params().items()}, uri=uri)
        self.logger = tracking.MetricLogger(self.run_id, uri=uri)
        seed = estimator.get_params().get("seed")
        self.hash = data_hash(self.X, self.y)
        for k, v in tracking.standard_tags(data_hash=self.hash, seed=seed).items():
            self.logger.tag(k, v)
        self.logger.tag(T.KIND, "autolog")

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.logger is not None:
            self._guard(self.logger, epoch, logs)

    def on_train_end(self, estimator) -> None:
        try:
            if self.logger is not None:
                self._guard(self._end, estimator)
        finally:
            self._close("FINISHED")

    def on_exception(self, estimator, exc: BaseException) -> None:
        if self.logger is not None:
            self._guard(self.logger.flush)
        self._close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")

    def _end(self, estimator) -> None:
        logger, uri = self.logger, mlflow.get_tracking_uri()
        data = None
        if self.cfg.log_datasets:
            data = tracking.datasets.dataset(self.X, self.y, DATASET_NAME, digest=self.hash[:tracking.datasets.DIGEST_CHARS])
            tracking.datasets.log_inputs(self.run_id, [(data, tracking.datasets.TRAINING)], uri=uri)
        if self.cfg.log_models:
            tracking.log_model(self.run_id, estimator, _example(self.X, estimator), uri=uri, logger=logger)
            on_train = (data.name, data.digest) if data is not None else None
            # the last epoch's values, linked to the model (Models tab) and to the data they were computed on
            logger.link_latest(int(estimator.n_epochs_), lambda k: None if k.startswith("val_") else on_train)
            if self.cfg.registered_model_name:
                with tracking.quiet():
                    mlflow.register_model(f"models:/{logger.model_id}", self.cfg.registered_model_name)
        logger.flush()

    def _close(self, status: str) -> None:
        if self.owns_run:
            self.owns_run = False
            with contextlib.suppress(Exception):
                mlflow.end_run(status)

    def _guard(self, fn, *args) -> None:
        """Run a logging step; a failure is a warning (unless ``silent``), never the fit's error."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - autolog must not break the user's fit
            if not self.cfg.silent:
                warnings.warn(f"nbnet.mlflow.autolog could not log to MLflow: {type(e).__name__}: {e}".splitlines()[0],
                              stacklevel=3)


def _example(X, estimator):
    """The first rows of the fit's input, as the model's input example."""
    if hasattr(X, "iloc"):
        return X.iloc[:5]
    X = np.asarray(X)
    return X[:5] if X.ndim == 2 else np.zeros((1, estimator.n_features_in_))


# --- log_model / load_model ----------------------------------------------------------------------
def log_model(estimator, name: str = tracking.MODEL_NAME, *, input_example=None,
              registered_model_name: str | None = None, run_id: str | None = None):
    """Log a fitted nbnet estimator as an MLflow model named ``name`` and return MLflow's
    :class:`~mlflow.models.model.ModelInfo` (``model_uri``, ``model_id``, ``signature``, ...).

    The model is the same pyfunc model every sweep trial logs: the checksummed nbnet file, a code
    file that imports nbnet (no pickle), the signature of its raw input columns, and
    ``input_example`` (a DataFrame or an array; default: one row of zeros) as its example. It
    goes to run ``run_id``, else the active run, else a new run (ended after logging). With
    ``registered_model_name`` the model is also registered (a new version of that name).
    ``mlflow.pyfunc.load_model(info.model_uri)`` serves it; :func:`load_model` gives the
    estimator back.
    """
    if not hasattr(estimator, "n_features_in_"):
        raise NbnetError(f"log_model needs a fitted estimator; call fit first ({type(estimator).__name__} is not fitted)")
    if not isinstance(name, str) or not name or "/" in name:
        raise NbnetError(f"name must be a non-empty model name without '/', got {name!r}")
    uri = mlflow.get_tracking_uri()
    example = input_example if input_example is not None else np.zeros((1, estimator.n_features_in_))
    own = run_id is None and mlflow.active_run() is None
    if own:
        run_id = mlflow.start_run().info.run_id
    elif run_id is None:
        run_id = mlflow.active_run().info.run_id
    status = "FAILED"
    try:
        with tracking.MetricLogger(run_id, uri=uri) as logger:
            tracking.log_model(run_id, estimator, example, uri=uri, logger=logger, name=name)
        info = get_model_info(f"models:/{logger.model_id}")
        if registered_model_name:
            with tracking.quiet():
                mlflow.register_model(info.model_uri, registered_model_name)
        status = "FINISHED"
    finally:
        if own:
            mlflow.end_run(status)
    return info


def load_model(model_uri: str, dst_path: str | None = None):
    """The nbnet estimator (MLPClassifier / MLPRegressor) of an MLflow model URI:
    ``models:/<model_id>``, ``models:/NAME@alias``, ``models:/NAME/VERSION``,
    ``runs:/RUN_ID/model``. Reads the safe nbnet file (no pickle, no stored code is run).
    ``dst_path``: where to download it (default: a temporary folder)."""
    path, _ = tracking.download_model(str(model_uri), dst=dst_path, tracking_uri=mlflow.get_tracking_uri())
    return tracking.load_model(path)[0]


__all__ = ["AutologConfig", "AutologRun", "autolog", "load_model", "log_model"]
