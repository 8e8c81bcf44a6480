"""Classification and regression metrics in NumPy, equal to scikit-learn's (tested against it).

Conventions follow scikit-learn 1.9 so numbers can be compared across tools:

* Labels are sorted (``np.unique`` of y_true and y_pred together); confusion-matrix rows are the
  true labels and columns the predictions.
* precision/recall/F1 take ``average`` = ``"binary"`` (the ``pos_label`` class; the default),
  ``"macro"``, ``"weighted"`` (by support), ``"micro"`` or ``None`` (one value per class). A
  division by zero (a class never predicted, or never present) gives 0, as scikit-learn does with
  ``zero_division=0``, and no warning.
* roc_auc takes the scores of the positive class (the larger label) for binary targets, or
  class probabilities (n, n_classes) for one-vs-rest. With one class only in y_true it is
  undefined: scikit-learn returns NaN with an ``UndefinedMetricWarning``, and so does nbnet.
* log_loss clips probabilities to [eps, 1 - eps] (eps of their dtype) and uses natural logs.
* Regression metrics average multiple outputs uniformly; r2 of constant y_true is 1 for a perfect
  prediction and 0 otherwise; with fewer than two samples it is NaN (with a warning).

``METRICS`` maps the names used by experiment files, the CLI and the sweep to functions;
``direction(name)`` says whether a sweep should maximize or minimize it;
``default_metric(task)`` is the validation score a model of a task is judged on when nothing else
is recorded, and ``evaluate_estimator`` gives the scores a training run logs.

Example
-------
>>> f1([0, 1, 1, 0], [0, 1, 0, 0])
0.6666666666666666
>>> direction("val_log_loss")
'minimize'
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from nbnet.errors import NbnetError


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given data (e.g. ROC AUC with one class); NaN is returned."""


# --- input checks -----------------------------------------------------------------------------
def _labels(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise NbnetError(f"{name} must be 1-D class labels, got shape {y.shape}")
    if y.dtype.kind == "O":
        y = y.astype(str)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise NbnetError(f"{name} contains NaN or inf")
        if not np.all(y == np.round(y)):
            raise NbnetError(f"{name} holds continuous values; classification metrics need class labels")
    return y


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise NbnetError(f"y_true has {len(t)} samples but y_pred has {len(p)}; they must match")
    if len(t) == 0:
        raise NbnetError("y_true is empty; a metric needs at least one sample")
    if (t.dtype.kind in "US") != (p.dtype.kind in "US"):
        raise NbnetError("y_true and y_pred mix string and number labels; use one label type")
    return t, p


def _values(y, name: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise NbnetError(f"{name} must be 1-D or 2-D (n_samples, n_outputs), got {y.ndim}-D")
    if not np.all(np.isfinite(y)):
        raise NbnetError(f"{name} contains NaN or inf")
    return y


def _reg_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _values(y_true, "y_true"), _values(y_pred, "y_pred")
    if t.shape != p.shape:
        raise NbnetError(f"y_true has shape {t.shape[0], t.shape[1]} but y_pred has {p.shape[0], p.shape[1]}; they must match")
    if len(t) == 0:
        raise NbnetError("y_true is empty; a metric needs at least one sample")
    return t, p


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (scikit-learn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


# --- classification ----------------------------------------------------------------------------
def accuracy(y_true, y_pred) -> float:
    """Fraction of exact matches."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def confusion_matrix(y_true, y_pred, labels=None) -> np.ndarray:
    """(n_labels, n_labels) int64 counts; ``C[i, j]`` = samples of true label i predicted as j.
    ``labels`` (default: sorted labels of both) fixes the order; unlisted labels are ignored."""
    t, p = _pair(y_true, y_pred)
    labels = np.unique(np.concatenate([t, p])) if labels is None else np.asarray(labels)
    if labels.size == 0:
        raise NbnetError("labels is empty; pass at least one label")
    if not np.isin(t, labels).any():
        raise NbnetError("At least one label specified must be in y_true")
    lookup = {v: i for i, v in enumerate(labels.tolist())}
    ti = np.array([lookup.get(v, -1) for v in t.tolist()], np.int64)
    pi = np.array([lookup.get(v, -1) for v in p.tolist()], np.int64)
    ok = (ti >= 0) & (pi >= 0)
    L = len(labels)
    return np.bincount(ti[ok] * L + pi[ok], minlength=L * L).reshape(L, L).astype(np.int64)


_AVERAGES = ("binary", "macro", "weighted", "micro", None)


def precision_recall_f1_support(y_true, y_pred, *, average="binary", pos_label=1, labels=None):
    """``(precision, recall, f1, support)``: floats for an average, arrays for ``average=None``
    (support is None for an average, like scikit-learn's ``precision_recall_fscore_support``)."""
    if average not in _AVERAGES:
        raise NbnetError(f"average must be one of {_AVERAGES}, got {average!r}")
    t, p = _pair(y_true, y_pred)
    present = np.unique(np.concatenate([t, p]))
    if average == "binary":
        if len(present) > 2:
            raise NbnetError("Target is multiclass but average='binary'. Please choose another average setting, "
                             "one of [None, 'micro', 'macro', 'weighted'].")
        if pos_label not in present.tolist() and len(present) >= 2:
            raise NbnetError(f"pos_label={pos_label!r} is not a valid label. It should be one of {present.tolist()}")
        use = np.array([pos_label])
    else:
        use = present if labels is None else np.asarray(labels)
    tp = np.array([np.sum((t == c) & (p == c)) for c in use.tolist()], np.float64)
    pred_sum = np.array([np.sum(p == c) for c in use.tolist()], np.float64)
    true_sum = np.array([np.sum(t == c) for c in use.tolist()], np.float64)
    if average == "micro":
        tp, pred_sum, true_sum = tp.sum(keepdims=True), pred_sum.sum(keepdims=True), true_sum.sum(keepdims=True)
    precision = _divide(tp, pred_sum)
    recall = _divide(tp, true_sum)
    f = _divide(2 * tp, true_sum + pred_sum)
    if average is None:
        return precision, recall, f, true_sum.astype(np.int64)
    if average == "weighted":
        if true_sum.sum() == 0:
            return 0.0, 0.0, 0.0, None
        w = true_sum
    else:
        w = None
    return (float(np.average(precision, weights=w)), float(np.average(recall, weights=w)),
            float(np.average(f, weights=w)), None)


def precision(y_true, y_pred, *, average="binary", pos_label=1, labels=None):
    """tp / (tp + fp); see :func:`precision_recall_f1_support` for ``average``."""
    return precision_recall_f1_support(y_true, y_pred, average=average, pos_label=pos_label, labels=labels)[0]


def recall(y_true, y_pred, *, average="binary", pos_label=1, labels=None):
    """tp / (tp + fn); see :func:`precision_recall_f1_support` for ``average``."""
    return precision_recall_f1_support(y_true, y_pred, average=average, pos_label=pos_label, labels=labels)[1]


def f1(y_true, y_pred, *, average="binary", pos_label=1, labels=None):
    """2 tp / (2 tp + fp + fn); see :func:`precision_recall_f1_support` for ``average``."""
    return precision_recall_f1_support(y_true, y_pred, average=average, pos_label=pos_label, labels=labels)[2]


def _binary_auc(pos: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative) + ½ P(tie),
    by the Mann-Whitney rank sum (ties get their average rank)."""
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        warnings.warn("Only one class is present in y_true. ROC AUC score is not defined in that case.",
                      UndefinedMetricWarning, stacklevel=3)
        return float("nan")
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    rank_sum = avg_rank[inv.ravel()][pos].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true, y_score, *, average="macro", labels=None):
    """Area under the ROC curve.

    y_score : (n,) scores of the positive class (the larger of two labels), or (n, 2) whose
        column 1 is used, or (n, n_classes) probabilities (rows sum to 1) for one-vs-rest,
        averaged ``"macro"`` or ``"weighted"`` by prevalence (None: one value per class).
    labels : the classes of y_score's columns, sorted (default: the labels in y_true).
    """
    t = _labels(y_true, "y_true")
    s = np.asarray(y_score, dtype=np.float64)
    if len(s) != len(t):
        raise NbnetError(f"y_true has {len(t)} samples but y_score has {len(s)}; they must match")
    if not np.all(np.isfinite(s)):
        raise NbnetError("y_score contains NaN or inf")
    classes_true = np.unique(t)
    multiclass = len(classes_true) > 2 or (s.ndim == 2 and s.shape[1] > 2)
    if not multiclass:
        if s.ndim == 2:
            if s.shape[1] == 1:
                s = s[:, 0]
            elif s.shape[1] == 2:
                s = s[:, 1]
        if s.ndim != 1:
            raise NbnetError(f"y_score for a binary target must be 1-D or (n, 2), got shape {s.shape}")
        if labels is not None and len(labels) == 2:
            pos = t == np.asarray(labels)[1]
        else:
            pos = t == classes_true[-1]
        return _binary_auc(pos, s)
    if s.ndim != 2:
        raise NbnetError("y_score for a multiclass target must be probabilities of shape (n_samples, n_classes)")
    if not np.allclose(1, s.sum(axis=1)):
        raise NbnetError("Target scores need to be probabilities for multiclass roc_auc, i.e. they should sum up to 1.0 over classes")
    if average not in ("macro", "weighted", None):
        raise NbnetError(f"average must be one of ('macro', 'weighted', None) for multiclass roc_auc, got {average!r}")
    if labels is not None:
        classes = np.asarray(labels)
        if len(np.unique(classes)) != len(classes):
            raise NbnetError("Parameter 'labels' must be unique")
        if not np.array_equal(np.unique(classes), classes):
            raise NbnetError("Parameter 'labels' must be ordered")
        if len(classes) != s.shape[1]:
            raise NbnetError(f"Number of given labels, {len(classes)}, not equal to the number of columns in 'y_score', {s.shape[1]}")
        if len(np.setdiff1d(t, classes)):
            raise NbnetError("'y_true' contains labels not in parameter 'labels'")
    else:
        classes = classes_true
        if len(classes) != s.shape[1]:
            raise NbnetError("Number of classes in y_true not equal to the number of columns in 'y_score'")
    scores = np.array([_binary_auc(t == c, s[:, j]) for j, c in enumerate(classes.tolist())])
    if average is None:
        return scores
    if average == "weighted":
        weights = np.array([np.sum(t == c) for c in classes.tolist()], np.float64)
        scores[weights == 0] = 0.0  # an absent class (NaN AUC) has no weight, as in scikit-learn
        return float(np.average(scores, weights=weights))
    return float(np.mean(scores))


def log_loss(y_true, y_prob, *, labels=None) -> float:
    """Mean negative log-likelihood (natural log) of the true labels.

    y_prob : (n,) probability of the positive class (the larger label), or (n, n_classes)
        probabilities with columns in sorted label order.
    labels : every class label (needed when y_true holds only one of them).
    """
    t = _labels(y_true, "y_true")
    P = np.asarray(y_prob, dtype=np.float64)
    if len(P) != len(t):
        raise NbnetError(f"y_true has {len(t)} samples but y_prob has {len(P)}; they must match")
    if P.max() > 1:
        raise NbnetError(f"y_prob contains values greater than 1: {P.max()}")
    if P.min() < 0:
        raise NbnetError(f"y_prob contains values lower than 0: {P.min()}")
    if labels is not None:
        classes = np.unique(np.asarray(labels))
        undeclared = set(np.unique(t).tolist()) - set(classes.tolist())
        if undeclared:
            raise NbnetError(f"y_true contains values {undeclared} not belonging to the passed labels {list(labels)}.")
        if len(classes) == 1:
            raise NbnetError(f"The labels array needs to contain at least two labels, got {classes}.")
    else:
        classes = np.unique(t)
        if len(classes) == 1:
            raise NbnetError(f"y_true contains only one label ({classes[0]}). Please provide the list of all "
                             "expected class labels explicitly through the labels argument.")
    if P.ndim == 1:
        P = P[:, None]
    if P.shape[1] == 1:
        P = np.hstack([1 - P, P])
    if not np.all(np.isclose(P.sum(1), 1.0, rtol=np.sqrt(np.finfo(P.dtype).eps))):
        warnings.warn("The y_prob values do not sum to one. Make sure to pass probabilities.", UserWarning, stacklevel=2)
    if len(classes) != P.shape[1]:
        if labels is None:
            raise NbnetError(f"y_true and y_prob contain different number of classes: {len(classes)} vs {P.shape[1]}. "
                             f"Please provide the true labels explicitly through the labels argument. "
                             f"Classes found in y_true: {classes}")
        raise NbnetError(f"The number of classes in labels is different from that in y_prob. Classes found in labels: {classes}")
    eps = np.finfo(P.dtype).eps
    P = np.clip(P, eps, 1 - eps)
    idx = np.searchsorted(classes, t)
    return float(-np.mean(np.log(P[np.arange(len(t)), idx])))


# --- regression ---------------------------------------------------------------------------------
def mse(y_true, y_pred) -> float:
    """Mean squared error (outputs averaged uniformly)."""
    t, p = _reg_pair(y_true, y_pred)
    return float(np.mean((t - p) ** 2))


def rmse(y_true, y_pred) -> float:
    """Root mean squared error: the root of each output's MSE, averaged over outputs."""
    t, p = _reg_pair(y_true, y_pred)
    return float(np.mean(np.sqrt(np.mean((t - p) ** 2, axis=0))))


def mae(y_true, y_pred) -> float:
    """Mean absolute error (outputs averaged uniformly)."""
    t, p = _reg_pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def r2(y_true, y_pred) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot, averaged over outputs."""
    t, p = _reg_pair(y_true, y_pred)
    if len(t) < 2:
        warnings.warn("R^2 score is not well-defined with less than two samples.", UndefinedMetricWarning, stacklevel=2)
        return float("nan")
    ss_res = ((t - p) ** 2).sum(0)
    ss_tot = ((t - t.mean(0)) ** 2).sum(0)
    safe = np.where(ss_tot != 0, ss_tot, 1.0)
    out = np.where(ss_tot != 0, 1.0 - ss_res / safe, np.where(ss_res == 0, 1.0, 0.0))
    return float(out.mean())


# --- the name table -------------------------------------------------------------------------
def _avg(fn, average):
    def metric(y_true, y_pred):
        return fn(y_true, y_pred, average=average)

    metric.__name__ = f"{fn.__name__}_{average}"
    metric.__doc__ = f"{fn.__name__} with average={average!r}"
    return metric


METRICS = {
    "accuracy": accuracy,
    "precision": precision,
    "recall": recall,
    "f1": f1,
    **{f"{fn.__name__}_{a}": _avg(fn, a) for fn in (precision, recall, f1) for a in ("macro", "weighted", "micro")},
    "roc_auc": roc_auc,
    "roc_auc_ovr": roc_auc,
    "roc_auc_ovr_weighted": lambda y_true, y_score, labels=None: roc_auc(y_true, y_score, average="weighted", labels=labels),
    "log_loss": log_loss,
    "mse": mse,
    "rmse": rmse,
    "mae": mae,
    "r2": r2,
}
NEEDS_PROBA = frozenset({"roc_auc", "roc_auc_ovr", "roc_auc_ovr_weighted", "log_loss"})
CLASSIFICATION = tuple(k for k in METRICS if k not in ("mse", "rmse", "mae", "r2"))
REGRESSION = ("mse", "rmse", "mae", "r2")
_MINIMIZE = frozenset({"log_loss", "mse", "rmse", "mae", "loss"})
_PREFIXES = ("val_", "test_", "train_", "cv_")
DEFAULT_METRICS = {"classification": ("accuracy", "f1_macro"), "regression": ("r2", "rmse")}
#: What :func:`evaluate_estimator` scores a classifier on, by whether it has two classes.
RUN_CLASSIFICATION_METRICS = {
    True: ("accuracy", "precision", "recall", "f1", "f1_macro", "roc_auc", "log_loss"),
    False: ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc_ovr", "log_loss"),
}


def _base_name(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def direction(name: str) -> str:
    """``"maximize"`` or ``"minimize"`` for a metric name, with or without a ``val_``/``test_``/
    ``train_``/``cv_`` prefix (``loss`` and ``val_loss`` are minimized)."""
    base = _base_name(str(name))
    if base in _MINIMIZE:
        return "minimize"
    if base in METRICS:
        return "maximize"
    raise NbnetError(f"unknown metric {name!r}; choose one of {', '.join(list(METRICS) + ['loss'])}")


def get_metric(name: str):
    """The function for ``name``, or an NbnetError listing the valid names."""
    fn = METRICS.get(name)
    if fn is None:
        raise NbnetError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return fn


def score_predictions(names, y_true, y_pred=None, proba=None, classes=None) -> dict[str, float]:
    """Each metric of ``names`` from predictions (label/value metrics) and class probabilities
    ``proba`` (n, len(classes)) for the metrics in :data:`NEEDS_PROBA`."""
    out = {}
    for name in names:
        fn = get_metric(name)
        if name in NEEDS_PROBA:
            if proba is None:
                raise NbnetError(f"metric {name!r} needs class probabilities; it applies to classifiers only")
            out[name] = float(fn(y_true, proba, labels=None if classes is None else list(classes)))
        else:
            out[name] = float(fn(y_true, y_pred))
    return out


def evaluate(estimator, X, y, metrics=None) -> dict[str, float]:
    """Score a fitted estimator on (X, y) by the metric names (default: accuracy and macro F1 for
    a classifier, R² and RMSE for a regressor); predicts once and reuses the predictions."""
    is_clf = getattr(estimator, "_estimator_type", None) == "classifier"
    names = list(metrics or DEFAULT_METRICS["classification" if is_clf else "regression"])
    proba = None
    if is_clf and any(n in NEEDS_PROBA for n in names):
        proba = np.asarray(estimator.predict_proba(X), dtype=np.float64)
        proba /= proba.sum(1, keepdims=True)  # float32 outputs sum to 1 only within ~1e-7
    if proba is not None:
        y_pred = estimator.classes_[proba.argmax(1)]
    else:
        y_pred = estimator.predict(X)
    return score_predictions(names, y, y_pred, proba, getattr(estimator, "classes_", None))


# --- the scores of a training run -------------------------------------------------------------
def default_metric(task: str) -> str:
    """The validation score a model of ``task`` is judged on when none was chosen or recorded:
    ``val_accuracy`` (classification) or ``val_r2`` (regression), the one the training loop logs
    every epoch."""
    return "val_accuracy" if task == "classification" else "val_r2"


def check_metric_task(metric: str, task: str, source: str) -> None:
    """An NbnetError when the validation metric ``metric`` (``val_<name>``) does not apply to
    ``task`` data (read from ``source``, named in the message); ``val_loss`` applies to both."""
    base = metric[len("val_"):]
    if (task == "regression") != (base in REGRESSION) and base != "loss":
        fix = "val_r2 or val_rmse" if task == "regression" else "val_accuracy or val_f1"
        raise NbnetError(f"search.metric {metric!r} does not apply to {task} data ({source}); use {fix}")


def evaluate_estimator(est, X, y, task: str, prefix: str = "val_", extra=(), *, predictions=None) -> dict:
    """Scores of a fitted estimator on (X, y) as a training run logs them, keys ``prefix + name``:
    classification accuracy, precision/recall/F1 (binary, or macro/weighted), ROC-AUC, log-loss
    (:data:`RUN_CLASSIFICATION_METRICS`); regression MSE, RMSE, MAE, R²; plus ``loss`` (log-loss
    or MSE, the training objective without penalties) and any metric named in ``extra``. An
    undefined metric (e.g. F1 of pos_label 1 with string labels) is left out. ``predictions``:
    ``predict_proba(X)`` (classifier) or ``predict(X)`` (regressor), if already computed."""
    if predictions is None:
        predictions = est.predict_proba(X) if task == "classification" else est.predict(X)
    if task == "classification":
        proba = np.array(predictions, dtype=np.float64)
        proba /= proba.sum(1, keepdims=True)
        pred = est.classes_[proba.argmax(1)]
        wanted = RUN_CLASSIFICATION_METRICS[len(est.classes_) == 2] + tuple(n for n in extra if n in CLASSIFICATION)
    else:
        proba, pred = None, predictions
        wanted = REGRESSION + tuple(n for n in extra if n in REGRESSION)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined metrics → NaN, reported as missing
        for name in dict.fromkeys(wanted):
            try:
                v = score_predictions([name], y, pred, proba, getattr(est, "classes_", None))[name]
            except NbnetError:
                continue
            if math.isfinite(v):
                out[prefix + name] = v
    loss = "log_loss" if task == "classification" else "mse"
    if prefix + loss in out:
        out[prefix + "loss"] = out[prefix + loss]
    return out
