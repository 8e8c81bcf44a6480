"""A run's figures: what every tracked run logs, and ``nbnet plot RUN_ID``.

Per run (trial, ``nbnet train``, rerun) :func:`write_run_plots` writes, for the run's one
artifact upload (``nbnet.search``):

* ``plots/evaluation.json`` — the validation split's evaluation data (a few KB): for a
  classifier the class labels, the confusion counts and the ROC points (binary: the positive
  class, the larger label; more classes: one curve per class against the rest) with their AUC;
  for a regressor up to 500 (true, predicted) pairs of the first output;
* ``plots/summary.png`` — one small 2×2 panel: loss, gradient norms, activation std and dead
  units, and the confusion matrix / ROC / predicted-vs-true.

The per-epoch curves themselves are run metrics (``loss``, ``val_loss``, ``grad_norm_{l}``,
``act_mean_{l}``, ``act_std_{l}``, ``act_dead_{l}``...), so :func:`plot_run` draws the full set
of PNGs from the run alone: no retraining, no model download.

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
import time
from pathlib import Path

import numpy as np

from nbnet import viz
from nbnet.errors import NbnetError
from nbnet._sys.atomic import atomic_write

EVAL_FILE = "evaluation.json"
SUMMARY_FILE = "summary.png"
ARTIFACT_DIR = "plots"
EVAL_ARTIFACT = f"{ARTIFACT_DIR}/{EVAL_FILE}"
MAX_ROC_POINTS = 201  # per curve in evaluation.json; the AUC comes from the full curve
MAX_OVR_CLASSES = 30  # more classes: no one-vs-rest curves (the confusion matrix stays)
MAX_REGRESSION_POINTS = 500
# Per-epoch metric keys drawn by nbnet plot (final scores such as val_f1 are logged once, at the end).
_EPOCH_KEYS = re.compile(r"^(loss|val_loss|val_accuracy|val_r2|epoch_time|grad_norm_\d+|act_(mean|std|dead)_\d+)$")


# --- evaluation data (validation split) -----------------------------------------------------------
def roc_points(positive, score, *, max_points: int = MAX_ROC_POINTS) -> tuple[list, list, float | None]:
    """(fpr, tpr, auc) of scores ``score`` for the boolean truth ``positive``: one point per
    distinct threshold (ties share one), from (0, 0) to (1, 1); AUC by the trapezoid rule over
    the full curve (equal to the Mann-Whitney AUC, ties counting half). Longer curves are
    thinned to ``max_points`` evenly spaced thresholds. AUC is None with one class only."""
    pos = np.asarray(positive, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return [], [], None
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last row of each distinct score
    tps = np.cumsum(pos)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    auc = float(np.trapezoid(tpr, fpr))
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return [round(float(v), 5) for v in fpr], [round(float(v), 5) for v in tpr], auc


def _label(c):
    return c.item() if isinstance(c, np.generic) else c


def roc_data(y, proba: np.ndarray, classes) -> dict:
    """ROC curves of a classifier's probabilities ``proba`` (n, n_classes) for true labels ``y``:
    binary → one curve for ``classes[1]``; more classes → one-vs-rest per class (up to
    ``MAX_OVR_CLASSES``) and their unweighted mean AUC (``macro_auc``)."""
    y = np.asarray(y)
    classes = list(classes)
    if len(classes) == 2:
        fpr, tpr, auc = roc_points(y == classes[1], proba[:, 1])
        curves = [{"label": _label(classes[1]), "fpr": fpr, "tpr": tpr, "auc": auc}] if fpr else []
        return {"binary": True, "positive": _label(classes[1]), "curves": curves, "macro_auc": auc}
    if len(classes) > MAX_OVR_CLASSES:
        return {"binary": False, "curves": [], "note": f"{len(classes)} classes: no one-vs-rest curves"}
    curves = []
    for k, c in enumerate(classes):
        fpr, tpr, auc = roc_points(y == c, proba[:, k], max_points=101)
        if fpr:
            curves.append({"label": _label(c), "fpr": fpr, "tpr": tpr, "auc": auc})
    aucs = [c["auc"] for c in curves]
    return {"binary": False, "curves": curves, "macro_auc": float(np.mean(aucs)) if aucs else None}


def evaluation_data(est, X, y, task: str, *, predictions=None) -> dict:
    """JSON-ready evaluation of a fitted estimator on (X, y), the validation split: see the
    module docstring. ``n`` is the number of rows. ``predictions``: the estimator's own
    ``predict_proba(X)`` (classifier) or ``predict(X)`` (regressor), if already computed."""
    y = np.asarray(y)
    out: dict = {"version": 1, "split": "validation", "task": task, "n": int(len(y))}
    if task == "classification":
        classes = est.classes_
        proba = np.asarray(est.predict_proba(X) if predictions is None else predictions, dtype=np.float64)
        k = len(classes)
        idx_t = np.clip(np.searchsorted(classes, y), 0, k - 1)
        known = classes[idx_t] == y  # a label unseen in training has no row
        idx_p = proba.argmax(1)
        cm = np.bincount(idx_t[known] * k + idx_p[known], minlength=k * k).reshape(k, k)
        out.update(classes=[_label(c) for c in classes], confusion=cm.tolist(),
                   accuracy=float(np.mean(idx_p[known] == idx_t[known])) if known.any() else None,
                   roc=roc_data(y, proba, classes))
    else:
        pred = np.asarray(est.predict(X) if predictions is None else predictions, dtype=np.float64).reshape(len(y), -1)[:, 0]
        true = np.asarray(y, dtype=np.float64).reshape(len(y), -1)[:, 0]
        rows = np.arange(len(true))
        if len(rows) > MAX_REGRESSION_POINTS:
            rows = np.sort(np.random.default_rng(0).choice(len(rows), MAX_REGRESSION_POINTS, replace=False))
        out.update(output=0, y_true=[float(v) for v in true[rows]], y_pred=[float(v) for v in pred[rows]],
                   rmse=float(np.sqrt(np.mean((true - pred) ** 2))))
    return out


# --- what every tracked run logs ----------------------------------------------------------------
def write_run_plots(folder, est, X_val, y_val, task: str, *, title: str | None = None, predictions=None) -> dict:
    """Write ``evaluation.json`` and ``summary.png`` for a fitted estimator into ``folder`` (the
    run's ``plots/`` artifacts; see :func:`evaluation_data` for ``predictions``). Returns the
    seconds spent: ``{"evaluate": …, "render": …}``."""
    t0 = time.perf_counter()
    ev = evaluation_data(est, X_val, y_val, task, predictions=predictions)
    t1 = time.perf_counter()
    png = viz.summary_png(viz.series_from_history(est.history_), ev, title=title)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EVAL_FILE).write_text(json.dumps(ev, separators=(",", ":")))
    (folder / SUMMARY_FILE).write_bytes(png)
    return {"evaluate": t1 - t0, "render": time.perf_counter() - t1}


# --- nbnet plot RUN_ID ------------------------------------------------------------------------------
def _store_uri(uri: str | None) -> str:
    from nbnet.experiment import tracking

    if uri is None and not os.environ.get("MLFLOW_TRACKING_URI") and not (Path.cwd() / "mlruns" / "mlflow.db").is_file():
        raise NbnetError(f"no tracking store here ({Path.cwd() / 'mlruns'}); run nbnet plot from the project folder "
                         "or set MLFLOW_TRACKING_URI")
    return uri or tracking.default_tracking_uri()


def _get_run(c, run_id: str, uri: str):
    try:
        return c.get_run(run_id)
    except Exception:  # MlflowException (not found, malformed id) or a store error
        raise NbnetError(f"run {run_id!r} not found in {uri}; check the id (nbnet best prints the best trial's)") from None


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


def _download_json(c, run_id: str, path: str) -> dict | None:
    from nbnet.experiment.tracking import quiet

    with tempfile.TemporaryDirectory(prefix="nbnet-plot-") as tmp, quiet():  # no progress bar
        try:
            local = c.download_artifacts(run_id, path, tmp)
            return json.loads(Path(local).read_text())
        except Exception:  # absent (a run logged before evaluation.json existed) or unreadable
            return None


def plot_run(run_id: str, out_dir=None, *, uri: str | None = None) -> tuple[list[Path], list[str]]:
    """Write the PNGs of run ``run_id`` into ``out_dir`` (default ``./plots/RUN_ID``), each
    atomically. Returns (paths written, notes on what was skipped or substituted).

    A sweep's parent run has no per-epoch curves: its best trial's run is plotted instead, and
    the parent's Optuna figures (``study/*.png``) are copied beside them."""
    from nbnet.experiment import tracking

    uri = _store_uri(uri)
    c = tracking.client(uri)
    run = _get_run(c, run_id, uri)
    notes: list[str] = []
    study_pngs: list[str] = []
    tags = run.data.tags
    if tags.get("nbnet.kind") == "sweep" or ("best.run_id" in tags and "loss" not in run.data.metrics):
        best = tags.get("best.run_id")
        if not best or best == "None":
            raise NbnetError(f"run {run_id} is a sweep's parent run with no completed trial; plot a trial's run instead")
        notes.append(f"run {run_id} is a sweep's parent run: plotted its best trial "
                     f"{tags.get('best.trial', '?')} (run {best}) and copied the study figures")
        with contextlib.suppress(Exception):  # no study figures: the best trial's plots still come
            study_pngs = [a.path for a in c.list_artifacts(run_id, "study") if a.path.endswith(".png")]
        parent_id, run = run_id, _get_run(c, best, uri)
    else:
        parent_id = None
    rid = run.info.run_id
    series = fetch_series(c, run)
    if "loss" not in series:
        raise NbnetError(f"run {rid} has no per-epoch metrics (loss); nbnet plot needs a run made by nbnet train or "
                         "nbnet sweep")
    ev = _download_json(c, rid, EVAL_ARTIFACT)
    if ev is None:
        notes.append(f"run {rid} has no {EVAL_ARTIFACT} (a pruned or failed trial, or a run logged before nbnet wrote "
                     "it): no confusion matrix, ROC or predicted-vs-true plot")
    out = Path(out_dir) if out_dir is not None else Path("plots") / run_id
    if out.exists() and not out.is_dir():
        raise NbnetError(f"output {str(out)!r} is a file; pass a folder with -o")
    out.mkdir(parents=True, exist_ok=True)
    name = run.info.run_name or rid[:8]
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
    paths = []
    for fname, make in figures:
        path = out / fname
        viz.save(make(), path)
        paths.append(path)
    summary = viz.summary_png(series, ev, title=name)  # the same panel the run logged
    _write_atomic(out / SUMMARY_FILE, summary)
    paths.append(out / SUMMARY_FILE)
    for art in study_pngs:
        with tempfile.TemporaryDirectory(prefix="nbnet-plot-") as tmp, tracking.quiet():
            try:
                local = Path(c.download_artifacts(parent_id, art, tmp))
            except Exception:
                notes.append(f"could not download {art} of run {parent_id}")
                continue
            path = out / f"study_{local.name}"
            _copy_atomic(local, path)
            paths.append(path)
    return paths, notes


def _write_atomic(dst: Path, data: bytes) -> None:
    atomic_write(dst, lambda f: f.write(data), mode=0o644)  # figures are for sharing


def _copy_atomic(src: Path, dst: Path) -> None:
    _write_atomic(dst, src.read_bytes())


__all__ = ["write_run_plots", "plot_run", "evaluation_data", "roc_data", "roc_points", "fetch_series",
           "EVAL_ARTIFACT"]
