"""nbnet: neural networks trained by Numba-compiled kernels, with tracked hyperparameter sweeps.

The public API: the two estimators, :func:`load`, :func:`sweep`, :func:`cross_validate` and the
error type; MLflow's and Optuna's conventions in :mod:`nbnet.mlflow` (``autolog``, ``log_model``,
``load_model``) and :mod:`nbnet.optuna` (``PruningCallback``). Everything else is reachable
through its package (see docs/architecture.md) but not advertised.
"""

from __future__ import annotations

import os

from nbnet.data.split import cross_validate
from nbnet.errors import NbnetError
from nbnet.io import MLFLOW_URI_PREFIXES
from nbnet.nn.estimator import MLPClassifier, MLPRegressor
from nbnet.nn.estimator import load as load_file
from nbnet.version import __version__

def load(path_or_uri: str | os.PathLike):
    """Load an estimator from a local model file, or from an MLflow URI (``models:/NAME@alias``,
    ``models:/NAME/3``, ``runs:/RUN_ID/model``)."""
    s = str(path_or_uri)
    if s.startswith(MLFLOW_URI_PREFIXES):
        from nbnet.experiment.tracking import download_model_file  # heavy: imports mlflow

        s = download_model_file(s)
    return load_file(s)


def sweep(X, y, *, space: dict, trials: int = 20, metric: str | None = None, params: dict | None = None,
          experiment: str | os.PathLike | None = None, name: str | None = None, data_name: str = "data",
          task: str | None = None, categorical: list[str] | None = None, study_name: str | None = None,
          storage: str | None = None, workers: int | str = 1, sampler: str | None = None, pruner: str | None = None,
          tracking_uri: str | None = None, registered_model_name: str | None = None, quiet: bool = False):
    """Run a tracked, resumable, prunable hyperparameter sweep on data in memory: ``nbnet sweep``
    with arrays instead of a data file. Returns the :class:`~nbnet.experiment.sweep.SweepResult`
    (``best_value``, ``best_params``, ``best_run_id``, ``trials``, ...) with ``best_estimator``,
    the best trial's fitted estimator.

    X : array (n, d), images (n, h, w) or a pandas DataFrame (text, category and bool columns,
        or those named in ``categorical``, one-hot encoded; NaN are missing values).
    y : array (n,) of labels (classification) or values (regression); ``task`` forces one.
    space : ``[search.space]`` of an experiment file as a dict: dotted config path → spec, e.g.
        ``{"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "model.hidden_layer_sizes": {"type": "categorical", "choices": [[64], [128, 64]]}}``.
    trials : trials in the study (counted over resumed calls). metric : ``val_*`` score to
        optimise (default: the experiment's, else ``val_accuracy`` / ``val_r2``).
    params : fixed values by dotted path, e.g. ``{"train.epochs": 10}`` (``--set`` of the CLI).
    experiment : a TOML file, or the name of one in experiments/, whose settings start the config
        (its data is replaced by X, y). name : the MLflow experiment (default ``"sweep"``).
    study_name, storage, workers, sampler, pruner : as ``nbnet sweep``'s options. The default
        study is ``<name>-<first 8 digits of the data's digest>``: the same data resumes it.
        ``workers`` is 1 unless given (the CLI's default is ``"auto"``, which picks workers and
        threads from the cores and the trial size). With ``workers`` > 1 or ``"auto"``, call this
        under ``if __name__ == "__main__":`` in a script (workers are spawned processes).
    tracking_uri : the MLflow store (default: nbnet's, as for the CLI).
    registered_model_name : register the best model under this name (``champion`` alias when it
        beats the current one); default: not registered.
    quiet : no progress lines.

    Example
    -------
    >>> from sklearn.datasets import load_wine                           # doctest: +SKIP
    >>> X, y = load_wine(return_X_y=True)                                # doctest: +SKIP
    >>> res = sweep(X, y, trials=8, params={"train.epochs": 20, "data.preprocessing.scale": "standard"},
    ...             space={"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}})  # doctest: +SKIP
    >>> res.best_value, res.best_estimator.predict(X[:3])                # doctest: +SKIP
    """
    from nbnet.experiment.sweep import sweep_arrays  # heavy: imports optuna and mlflow

    return sweep_arrays(X, y, space=space, trials=trials, metric=metric, params=params, experiment=experiment,
                        name=name, data_name=data_name, task=task, categorical=categorical, study_name=study_name,
                        storage=storage, workers=workers, sampler=sampler, pruner=pruner, tracking_uri=tracking_uri,
                        registered_model_name=registered_model_name, quiet=quiet)


__all__ = ["MLPClassifier", "MLPRegressor", "NbnetError", "cross_validate", "load", "sweep", "__version__"]
