"""What a finished sweep records on its parent run: the best trial's params and metric, the
trials' counts and summed costs, the parameter importances and study figures, ``trials.csv``."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from optuna.distributions import CategoricalDistribution

from nbnet import viz
from nbnet.experiment import tags as T
from nbnet.experiment import tracking
from nbnet.experiment.run import COST_KEYS
from nbnet.experiment.sweep.best import best_first


def counts(study) -> dict:
    """Trials by state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING), with the failed trials that were
    retried (a dead worker's, an interrupted one's) counted apart as STALE."""
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0, "STALE": 0}
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(T.TRIAL_RETRY_OF) for t in trials}  # also the heartbeat retries of an RDB study
    for t in trials:
        name = t.state.name
        if name == "FAIL" and (t.user_attrs.get(T.TRIAL_STALE) or t.number in retried):
            out["STALE"] += 1
        else:
            out[name] = out.get(name, 0) + 1
    return out


def summarize(result, metric: str, study, exp_id: str, parent: str, uri: str, n_before: int):
    """Fill ``result`` (a :class:`~nbnet.experiment.sweep.core.SweepResult`) from ``study`` and log
    the parent run's metrics, best-trial tags, figures and trials table. ``n_before``: the
    study's trials before this sweep ran. Returns the best trial, or None if none completed."""
    c = counts(study)
    result.n_complete, result.n_pruned, result.n_failed = c["COMPLETE"], c["PRUNED"], c["FAIL"] + c["STALE"]
    result.n_run = len(study.trials) - n_before
    result.trials = best_first(study, result.direction)
    best = result.trials[0] if result.trials and result.trials[0].state.name == "COMPLETE" else None
    sums = child_cost_sums(exp_id, parent, uri, study)
    metrics = {f"sum_{k}": v for k, v in sums.items()}
    metrics.update({"n_complete": result.n_complete, "n_pruned": result.n_pruned, "n_failed": result.n_failed})
    if best is not None:
        result.best_trial, result.best_value = best.number, float(best.value)
        result.best_params = dict(best.params)
        result.best_run_id = best.user_attrs.get(T.TRIAL_RUN_ID)
        metrics[f"best_{metric}"] = result.best_value
        tags = {T.BEST_TRIAL: best.number, T.BEST_RUN_ID: result.best_run_id}
        tags.update({f"{T.BEST_PARAM_PREFIX}{k}": v for k, v in best.params.items()})
        tracking.set_tags(parent, tags, uri=uri)
    tracking.log_metrics(parent, metrics, step=len(study.trials), uri=uri)
    log_study_artifacts(parent, study, uri)
    return best


def child_cost_sums(exp_id: str, parent: str, uri: str, study=None) -> dict:
    """The trials' cost metrics summed: from the study's ``costs`` user attributes when every
    finished trial has them (one read of the study), else from the child runs (every run read
    back from the store: ~20 ms a run)."""
    sums = dict.fromkeys(COST_KEYS, 0.0)
    done = [t for t in study.trials if t.state.is_finished()] if study is not None else None
    if done is not None and all(T.TRIAL_COSTS in t.user_attrs for t in done):
        for t in done:
            _add_costs(sums, t.user_attrs[T.TRIAL_COSTS])
        return sums
    c = tracking.client(uri)
    token = None
    while True:
        page = c.search_runs([exp_id], filter_string=f"tags.{T.MLFLOW_PARENT_RUN_ID} = '{parent}'", max_results=1000,
                             page_token=token)
        for r in page:
            _add_costs(sums, r.data.metrics)
        token = page.token
        if not token:
            break
    return sums


def _add_costs(sums: dict, values: dict) -> None:
    for k in COST_KEYS:
        v = values.get(k)
        if v is not None and math.isfinite(v):
            sums[k] += v


def param_importances(study, bins: int = 4) -> dict[str, float]:
    """Each parameter's share of the variance of the finished trials' objective values that its
    value alone explains (the correlation ratio η², first-order as in fANOVA's main effects, on the
    trials themselves rather than a fitted forest): trials grouped by choice (categorical), by
    value (numbers taking at most ``bins`` values) or by ``bins`` quantile bins (other numbers,
    log-scaled ones by their logarithm). Normalised to sum to 1,
    largest first; empty with fewer than 3 finished trials or no variance. Microseconds, where
    ``optuna.importance`` imports scikit-learn's forests (~0.7 s) at the end of every sweep."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None
            and math.isfinite(t.value)]
    y = np.array([t.value for t in done], float)
    if len(done) < 3 or not y.var() > 0:
        return {}
    out = {}
    for name in sorted({k for t in done for k in t.params}):
        rows = [i for i, t in enumerate(done) if name in t.params]
        groups = _groups(done[rows[0]].distributions[name], [done[i].params[name] for i in rows], bins)
        yy = y[rows]
        between = sum(len(g) * (g.mean() - y.mean()) ** 2 for g in (yy[groups == k] for k in np.unique(groups)))
        out[name] = between / (len(y) * y.var())
    total = sum(out.values())
    if not total > 0:
        return {}
    return dict(sorted(((k, float(v / total)) for k, v in out.items()), key=lambda kv: -kv[1]))


def _groups(dist, vals: list, bins: int) -> np.ndarray:
    """The group index of each value of one parameter (:func:`param_importances`)."""
    if isinstance(dist, CategoricalDistribution):
        return np.unique([dist.choices.index(v) for v in vals], return_inverse=True)[1]
    v = np.array(vals, float)
    v = np.log(v) if getattr(dist, "log", False) else v
    if len(np.unique(v)) <= bins:  # e.g. an int range of a few values: one group per value
        return np.unique(v, return_inverse=True)[1]
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, v, side="right")


def log_study_artifacts(parent: str, study, uri: str) -> None:
    """trials.csv and the study's figures (:func:`nbnet.viz.study_pngs`: optimisation history,
    parameter importances (:func:`param_importances`), parallel coordinates, intermediate values)
    on the parent run, in one upload."""
    with tempfile.TemporaryDirectory(prefix="nbnet-study-") as tmp:
        study.trials_dataframe().to_csv(Path(tmp, "trials.csv"), index=False)
        for name, png in viz.study_pngs(study, importances=param_importances(study)).items():
            Path(tmp, f"{name}.png").write_bytes(png)
        tracking.log_artifact(parent, tmp, "study", uri=uri)
