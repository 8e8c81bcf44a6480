"""``nbnet.sweep(X, y, space=...)``: the CLI's sweep on data already in memory.

The arrays (or DataFrame) become an in-memory data set of the process
(:func:`nbnet.data.load.register_arrays`, spec ``memory:NAME@DIGEST``), written into an
experiment config like any file's spec; then :func:`nbnet.experiment.sweep.run_sweep` runs the
same tracked, resumable, prunable study as ``nbnet sweep``. Spawned workers get the prepared data
from this process (:class:`nbnet.data.prepared.SharedData`), not from a file.
"""

from __future__ import annotations

from pathlib import Path

from nbnet.data.load import load_dataset, register_arrays
from nbnet.errors import NbnetError
from nbnet.experiment import config as C
from nbnet.experiment import tracking
from nbnet.experiment.sweep.core import SweepResult, run_sweep
from nbnet.metrics import default_metric


def sweep_arrays(X, y, *, space: dict, trials: int = 20, metric: str | None = None, params: dict | None = None,
                 experiment: str | Path | None = None, name: str | None = None, data_name: str = "data",
                 task: str | None = None, categorical: list[str] | None = None, study_name: str | None = None,
                 storage: str | None = None, workers: int | str = 1, sampler: str | None = None, pruner: str | None = None,
                 tracking_uri: str | None = None, registered_model_name: str | None = None,
                 quiet: bool = False) -> SweepResult:
    """See :func:`nbnet.sweep`."""
    if not isinstance(space, dict) or not space:
        raise NbnetError('space must be a non-empty dict of dotted config paths, e.g. {"train.learning_rate": '
                         '{"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}')
    spec = register_arrays(X, y, name=data_name, task=task, categorical=categorical)
    cfg = sweep_config(spec, space=space, trials=trials, metric=metric, params=params, experiment=experiment, name=name)
    study_name = study_name or f"{cfg.name}-{spec.rsplit('@', 1)[1][:8]}"  # the same data resumes its own study
    result = run_sweep(cfg, workers=workers, study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                       uri=tracking_uri, register=registered_model_name is not None, quiet=quiet,
                       registered_model_name=registered_model_name)
    if result.best_run_id:
        uri = tracking_uri or tracking.default_tracking_uri()
        result.best_estimator = tracking.load_model(f"runs:/{result.best_run_id}/{tracking.MODEL_NAME}", uri)[0]
    return result


def sweep_config(spec: str, *, space: dict, trials: int, metric: str | None = None, params: dict | None = None,
                 experiment: str | Path | None = None, name: str | None = None) -> C.ExperimentConfig:
    """The experiment config of a sweep over the data spec ``spec``: ``experiment`` (a TOML
    file or the name of one in experiments/; default: every default) with ``spec`` as its data,
    ``space`` as its ``[search.space]``, ``trials``, ``metric`` (default: the experiment's, or
    the data's task's native score), ``params`` (dotted paths → fixed values) and ``name``."""
    base = C.load_experiment(experiment) if experiment is not None else C.from_dict({}, name=name or "sweep")
    raw = C.to_dict(base)
    raw["name"] = name or base.name
    raw["data"].update(source=spec, target=None, categorical=[], task=None)
    raw["search"].update(n_trials=int(trials), space=dict(space))
    if metric is not None or experiment is None:
        raw["search"]["metric"] = metric or default_metric(load_dataset(spec).task)
    cfg = C.from_dict(raw, raw["name"])
    if params is not None and not isinstance(params, dict):
        raise NbnetError(f'params must be a dict of dotted config paths, e.g. {{"train.epochs": 10}}, got {params!r}')
    return C.apply_overrides(cfg, [f"{k}={v!r}" for k, v in (params or {}).items()])  # what --set does
