"""What every tracked run logs about its validation split, from arrays (no MLflow).

Per run (trial, ``nbnet train``, rerun) :func:`write_run_plots` writes, for the run's one
artifact upload (:mod:`nbnet.experiment.run`):

* ``plots/evaluation.json`` — the validation split's evaluation data (a few KB): for a
  classifier the class labels, the confusion counts and the ROC points (binary: the positive
  class, the larger label; more classes: one curve per class against the rest) with their AUC;
  for a regressor up to 500 (true, predicted) pairs of the first output;
* ``plots/summary.png`` — one small 2×2 panel (:func:`nbnet.viz.summary.summary_png`): loss,
  gradient norms, activation std and dead units, and the confusion matrix / ROC /
  predicted-vs-true.

The per-epoch curves themselves are run metrics, so ``nbnet plot`` (:mod:`nbnet.ops.plot`) draws
the full set of figures from the run alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .series import series_from_history
from .summary import summary_png

EVAL_FILE = "evaluation.json"
SUMMARY_FILE = "summary.png"
ARTIFACT_DIR = "plots"
EVAL_ARTIFACT = f"{ARTIFACT_DIR}/{EVAL_FILE}"
MAX_ROC_POINTS = 201  # per curve in evaluation.json; the AUC comes from the full curve
MAX_OVR_CLASSES = 30  # more classes: no one-vs-rest curves (the confusion matrix stays)
MAX_REGRESSION_POINTS = 500


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
    """A class label as a plain Python value (JSON-ready)."""
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


def write_run_plots(folder, est, X_val, y_val, task: str, *, title: str | None = None, predictions=None) -> dict:
    """Write ``evaluation.json`` and ``summary.png`` for a fitted estimator into ``folder`` (the
    run's ``plots/`` artifacts; see :func:`evaluation_data` for ``predictions``). Returns the
    seconds spent: ``{"evaluate": …, "render": …}``."""
    t0 = time.perf_counter()
    ev = evaluation_data(est, X_val, y_val, task, predictions=predictions)
    t1 = time.perf_counter()
    png = summary_png(series_from_history(est.history_), ev, title=title)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EVAL_FILE).write_text(json.dumps(ev, separators=(",", ":")))
    (folder / SUMMARY_FILE).write_bytes(png)
    return {"evaluate": t1 - t0, "render": time.perf_counter() - t1}
