"""``nbnet plot RUN_ID``: a run's figures, drawn from what the run logged to MLflow.

The per-epoch curves are run metrics (``loss``, ``val_loss``, ``grad_norm_{l}``,
``act_mean_{l}``, ``act_std_{l}``, ``act_dead_{l}``...) and the validation split's evaluation
data is the run's ``plots/evaluation.json`` (:mod:`nbnet.viz.evaluation`), so :func:`plot_run`
draws the full set of PNGs from the run alone: no retraining, no model download.

Example
-------
>>> paths, notes = plot_run("0f3c...", "plots/0f3c")        # doctest: +SKIP
>>> [p.name for p in paths]                                  # doctest: +SKIP
['loss.png', 'grad_norms.png', 'activations.png', 'confusion_matrix.png', 'roc.png', 'summary.png']
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from nbnet import viz
from nbnet._sys.atomic import atomic_write
from nbnet.errors import NbnetError
from nbnet.experiment import tags as T
from nbnet.experiment import tracking

# Per-epoch metric keys drawn by nbnet plot (final scores such as val_f1 are logged once, at the end).
_EPOCH_KEYS = re.compile(r"^(loss|val_loss|val_accuracy|val_r2|epoch_time|grad_norm_\d+|act_(mean|std|dead)_\d+)$")


def plot_run(run_id: str, out_dir=None, *, uri: str | None = None) -> tuple[list[Path], list[str]]:
    """Write the PNGs of run ``run_id`` into ``out_dir`` (default ``./plots/RUN_ID``), each
    atomically. Returns (paths written, notes on what was skipped or substituted).

    A sweep's parent run has no per-epoch curves: its best trial's run is plotted instead, and
    the parent's Optuna figures (``study/*.png``) are copied beside them."""
    uri = _store_uri(uri)
    c = tracking.client(uri)
    notes: list[str] = []
    run, parent_id, study_pngs = _run_to_plot(c, run_id, uri, notes)
    rid = run.info.run_id
    series = fetch_series(c, run)
    if "loss" not in series:
        raise NbnetError(f"run {rid} has no per-epoch metrics (loss); nbnet plot needs a run made by nbnet train or "
                         "nbnet sweep")
    ev = _download_json(c, rid, viz.EVAL_ARTIFACT)
    if ev is None:
        notes.append(f"run {rid} has no {viz.EVAL_ARTIFACT} (a pruned or failed trial, or a run logged before nbnet "
                     "wrote it): no confusion matrix, ROC or predicted-vs-true plot")
    out = Path(out_dir) if out_dir is not None else Path("plots") / run_id
    if out.exists() and not out.is_dir():
        raise NbnetError(f"output {str(out)!r} is a file; pass a folder with -o")
    out.mkdir(parents=True, exist_ok=True)
    name = run.info.run_name or rid[:8]
    paths = []
    for fname, make in _figures(series, ev, name, rid, notes):
        path = out / fname
        viz.save(make(), path)
        paths.append(path)
    _write_atomic(out / viz.SUMMARY_FILE, viz.summary_png(series, ev, title=name))  # the panel the run logged
    paths.append(out / viz.SUMMARY_FILE)
    paths += _copy_study_pngs(c, parent_id, study_pngs, out, notes)
    return paths, notes


def fetch_series(c, run) -> dict:
    """The run's per-epoch metric histories as series ``{key: (epochs, values)}``. A step logged
    twice (the final ``val_loss``/``val_accuracy`` at the last epoch) keeps its per-epoch value."""
    out = {}
    for key in sorted(run.data.metrics):
        if not _EPOCH_KEYS.match(key):
            continue
        hist = sorted(c.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        steps, values, seen = [], [], set()
        for m in hist:
            if m.step not in seen:
                seen.add(m.step)
                steps.append(m.step)
                values.append(m.value)
        if steps:
            out[key] = (np.asarray(steps), np.asarray(values, dtype=float))
    return out


def _store_uri(uri: str | None) -> str:
    if uri is None and not os.environ.get("MLFLOW_TRACKING_URI") and tracking.project_store_file() is None:
        raise NbnetError(f"no tracking store here (no {Path.cwd() / tracking.STORE_FILE}); "
                         "run nbnet plot from the project folder "
                         "or set MLFLOW_TRACKING_URI")
    return uri or tracking.default_tracking_uri()


def _get_run(c, run_id: str, uri: str):
    try:
        return c.get_run(run_id)
    except Exception as e:  # MlflowException (not found, malformed id) or a store error
        if not tracking.not_found(e):
            raise tracking.store_error(f"reading run {run_id}", uri, e) from e
        raise NbnetError(f"run {run_id!r} not found in {uri}; check the id (nbnet best prints the best trial's)") from None


def _run_to_plot(c, run_id: str, uri: str, notes: list[str]):
    """(the run to draw, the sweep's parent run id or None, the parent's study PNG artifacts):
    ``run_id`` itself, or for a sweep's parent run its best trial's run."""
    run = _get_run(c, run_id, uri)
    tags = run.data.tags
    if not (tags.get(T.KIND) == "sweep" or (T.BEST_RUN_ID in tags and "loss" not in run.data.metrics)):
        return run, None, []
    best = tags.get(T.BEST_RUN_ID)
    if not best or best == "None":
        raise NbnetError(f"run {run_id} is a sweep's parent run with no completed trial; plot a trial's run instead")
    notes.append(f"run {run_id} is a sweep's parent run: plotted its best trial "
                 f"{tags.get(T.BEST_TRIAL, '?')} (run {best}) and copied the study figures")
    study_pngs: list[str] = []
    with contextlib.suppress(Exception):  # no study figures: the best trial's plots still come
        study_pngs = [a.path for a in c.list_artifacts(run_id, "study") if a.path.endswith(".png")]
    return _get_run(c, best, uri), run_id, study_pngs


def _figures(series: dict, ev: dict | None, name: str, rid: str, notes: list[str]) -> list[tuple[str, object]]:
    """(file name, figure maker) of each figure the run's data allows; what is missing goes to ``notes``."""
    figures = [("loss.png", lambda: viz.loss_curves(series, title=f"{name}: loss"))]
    if viz.layer_keys(series, "grad_norm"):
        figures.append(("grad_norms.png", lambda: viz.grad_norm_curves(series, title=f"{name}: gradient norm per layer")))
    if any(viz.layer_keys(series, k) for k in viz.ACT_STATS):
        figures.append(("activations.png", lambda: viz.activation_curves(series, title=f"{name}: hidden activations "
                                                                          "(validation sample)")))
    else:
        notes.append(f"run {rid} has no activation statistics (act_*): no activations.png")
    if ev and "confusion" in ev:
        figures.append(("confusion_matrix.png", lambda: viz.confusion_matrix(
            ev["confusion"], ev["classes"], title=f"{name}: confusion (validation, {ev.get('n', '?')} rows)")))
        if ev.get("roc", {}).get("curves"):
            figures.append(("roc.png", lambda: viz.roc_curve(ev["roc"])))
        elif ev.get("roc", {}).get("note"):
            notes.append(ev["roc"]["note"])
    elif ev and "y_true" in ev:
        figures.append(("pred_vs_true.png", lambda: viz.pred_vs_true(ev["y_true"], ev["y_pred"])))
    return figures


def _download_json(c, run_id: str, path: str) -> dict | None:
    with tempfile.TemporaryDirectory(prefix="nbnet-plot-") as tmp, tracking.quiet():  # no progress bar
        try:
            local = c.download_artifacts(run_id, path, tmp)
            return json.loads(Path(local).read_text())
        except Exception:  # absent (a run logged before evaluation.json existed) or unreadable
            return None


def _copy_study_pngs(c, parent_id: str | None, artifacts: list[str], out: Path, notes: list[str]) -> list[Path]:
    """Download the sweep parent's study figures into ``out`` as ``study_<name>.png``."""
    paths = []
    for art in artifacts:
        with tempfile.TemporaryDirectory(prefix="nbnet-plot-") as tmp, tracking.quiet():
            try:
                local = Path(c.download_artifacts(parent_id, art, tmp))
            except Exception:
                notes.append(f"could not download {art} of run {parent_id}")
                continue
            path = out / f"study_{local.name}"
            _write_atomic(path, local.read_bytes())
            paths.append(path)
    return paths


def _write_atomic(dst: Path, data: bytes) -> None:
    atomic_write(dst, lambda f: f.write(data), mode=0o644)  # figures are for sharing


__all__ = ["plot_run", "fetch_series"]
