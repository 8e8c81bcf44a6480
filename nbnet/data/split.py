"""Splits: train/validation (stratified, seeded), K-fold, leave-one-out, cross-validation."""

from __future__ import annotations

import time
import warnings

import numpy as np

from nbnet import metrics as M
from nbnet.errors import NbnetError


def train_val_split(n: int, fraction: float, y=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held_out) holding out ``fraction`` of ``n`` samples; stratified by ``y``
    when given (every class keeps at least one training sample). Seeded and deterministic."""
    if not 0.0 < fraction < 1.0:
        raise NbnetError(f"split fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    if y is None:
        perm = rng.permutation(n)
        k = max(1, int(round(n * fraction)))
        if k >= n:
            raise NbnetError(f"cannot hold out {fraction} of {n} samples and keep any for training")
        return np.sort(perm[k:]), np.sort(perm[:k])
    y = np.asarray(y)
    held = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * fraction))
        k = min(k, len(idx) - 1)
        held.append(idx[:k])
    held = np.sort(np.concatenate(held))
    if len(held) == 0:
        raise NbnetError(f"holding out {fraction} of {n} samples leaves no held-out sample; use more data")
    mask = np.ones(n, bool)
    mask[held] = False
    return np.flatnonzero(mask), held


def _check_n(n) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise NbnetError(f"number of samples must be a positive int, got {n!r}")
    return int(n)


def train_val_test_split(n: int, val: float, test: float, y=None, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted index arrays (train, val, test) holding out the fractions ``val`` and ``test`` of
    ``n`` samples (either may be 0: an empty array). Stratified by ``y`` when given: each class is
    split in the same proportions and keeps at least one training sample. Seeded."""
    n = _check_n(n)
    for name, f in (("val", val), ("test", test)):
        if not (isinstance(f, (int, float, np.number)) and 0.0 <= f < 1.0):
            raise NbnetError(f"{name} fraction must be in [0, 1), got {f!r}")
    if val + test >= 1.0:
        raise NbnetError(f"val + test = {val + test} leaves no training data; keep their sum below 1")
    rng = np.random.default_rng(seed)
    if y is None:
        groups = [np.arange(n)]
    else:
        y = np.asarray(y)
        if len(y) != n:
            raise NbnetError(f"y has {len(y)} labels for {n} samples; they must match")
        groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    tr, va, te = [], [], []
    for idx in groups:
        idx = rng.permutation(idx)
        m = len(idx)
        k_te = int(round(m * test))
        k_va = int(round(m * val))
        if y is None:  # a requested fraction always gets at least one sample
            k_te = max(k_te, int(test > 0))
            k_va = max(k_va, int(val > 0))
        while k_te + k_va >= m and (k_te or k_va):  # keep at least one training sample
            if k_va >= k_te and k_va:
                k_va -= 1
            else:
                k_te -= 1
        te.append(idx[:k_te])
        va.append(idx[k_te:k_te + k_va])
        tr.append(idx[k_te + k_va:])
    out = tuple(np.sort(np.concatenate(parts)).astype(np.int64) for parts in (tr, va, te))
    for name, f, part in (("val", val, out[1]), ("test", test, out[2])):
        if f > 0 and len(part) == 0:
            raise NbnetError(f"{name}={f} of {n} samples holds out no sample; use more data or a larger fraction")
    return out


def kfold_indices(n: int, k: int, y=None, shuffle: bool = True, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds as a list of sorted (train, test) index arrays; the test folds are disjoint and
    cover every sample. Without ``y`` the first ``n % k`` folds get one extra sample (as
    scikit-learn's ``KFold``); with ``y`` the folds are stratified with scikit-learn's
    ``StratifiedKFold`` allocation. For the same ``seed`` the folds equal scikit-learn's with
    ``random_state=seed`` (both shuffle with NumPy's legacy ``RandomState``)."""
    n = _check_n(n)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 2:
        raise NbnetError(f"cv must be an int >= 2 (or 'loo'), got {k!r}")
    if k > n:
        raise NbnetError(f"cv={k} folds is more than the {n} samples; use at most {n} folds or cv='loo'")
    rs = np.random.RandomState(seed) if shuffle else None
    fold_of = np.empty(n, np.int64)
    if y is None:
        order = np.arange(n)
        if shuffle:
            rs.shuffle(order)
        sizes = np.full(k, n // k)
        sizes[: n % k] += 1
        fold_of[order] = np.repeat(np.arange(k), sizes)
    else:
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != n:
            raise NbnetError(f"stratified folds need 1-D labels y of length {n}, got shape {y.shape}")
        _, first, inv = np.unique(y, return_index=True, return_inverse=True)
        _, class_perm = np.unique(first, return_inverse=True)
        enc = class_perm[inv.ravel()]  # classes numbered by first appearance, as scikit-learn does
        n_classes = len(first)
        counts = np.bincount(enc)
        if np.all(k > counts):
            raise NbnetError(f"cv={k} is larger than every class (largest has {counts.max()} samples); "
                             f"use fewer folds or stratified=False")
        if k > counts.min():
            warnings.warn(f"The least populated class in y has only {counts.min()} members, which is less than "
                          f"n_splits={k}.", UserWarning, stacklevel=2)
        y_order = np.sort(enc)
        allocation = np.asarray([np.bincount(y_order[i::k], minlength=n_classes) for i in range(k)])
        for c in range(n_classes):
            folds = np.arange(k).repeat(allocation[:, c])
            if shuffle:
                rs.shuffle(folds)
            fold_of[enc == c] = folds
    idx = np.arange(n)
    return [(idx[fold_of != f], idx[fold_of == f]) for f in range(k)]


def loo_indices(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-out: n folds, fold i tests sample i and trains on the rest."""
    n = _check_n(n)
    if n < 2:
        raise NbnetError("leave-one-out needs at least 2 samples")
    idx = np.arange(n)
    return [(np.delete(idx, i), idx[i:i + 1]) for i in range(n)]


def clone(estimator):
    """A fresh, unfitted copy with the same hyperparameters (``get_params``/``set_params``)."""
    return type(estimator)().set_params(**estimator.get_params())


def cross_validate(estimator, X, y, cv=5, stratified: bool = True, metrics=None, seed: int = 0,
                   sample_weight=None) -> dict:
    """K-fold or leave-one-out cross-validation of an nbnet (or scikit-learn style) estimator.

    Parameters
    ----------
    estimator : unfitted template; each fold trains a clone of it.
    X : array (n_samples, n_features); y : array (n_samples,)
    cv : number of folds (int >= 2) or ``"loo"``.
    stratified : stratify the folds by class (classifiers only).
    metrics : names from :data:`nbnet.metrics.METRICS` (default: accuracy and macro F1 for a
        classifier, R² and RMSE for a regressor).
    seed : shuffles the folds (the estimator keeps its own ``seed``).
    sample_weight : array (n_samples,), optional; each fold's fit gets the weights of its
        training rows (``fit(..., sample_weight=...)``); scores are unweighted.

    Returns
    -------
    dict with ``folds`` ({metric: [value per fold]}), ``mean`` and ``std`` ({metric: float};
    std with ddof=0), ``pooled`` ({metric: value over all out-of-fold predictions}: the useful
    summary for leave-one-out, whose one-sample folds leave R² and ROC AUC undefined),
    ``fit_time`` (seconds per fold), ``n_splits`` and ``splitter``.
    """
    X, y = np.asarray(X), np.asarray(y)
    is_clf = getattr(estimator, "_estimator_type", None) == "classifier"
    names = _check_cv_inputs(X, y, is_clf, metrics, sample_weight)
    folds, splitter = _cv_folds(cv, len(X), y, is_clf and stratified, seed)
    classes = np.unique(y) if is_clf else None
    need_proba = is_clf and any(name in M.NEEDS_PROBA for name in names)
    per_fold = {name: [] for name in names}
    fit_time = []
    oof_pred = np.empty(len(X), dtype=classes.dtype) if is_clf else np.empty(y.shape, dtype=y.dtype)
    oof_proba = np.zeros((len(X), len(classes))) if need_proba else None
    for train, test in folds:
        est = clone(estimator)
        t0 = time.perf_counter()
        if sample_weight is None:
            est.fit(X[train], y[train])
        else:
            est.fit(X[train], y[train], sample_weight=np.asarray(sample_weight)[train])
        fit_time.append(time.perf_counter() - t0)
        pred, proba = _predict_fold(est, X[test], classes, need_proba)
        oof_pred[test] = pred
        if proba is not None:
            oof_proba[test] = proba
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", M.UndefinedMetricWarning)  # NaN is recorded instead
            scores = M.score_predictions(names, y[test], pred, proba, classes)
        for name in names:
            per_fold[name].append(scores[name])
    return {
        "folds": per_fold,
        "mean": {k: float(np.mean(v)) for k, v in per_fold.items()},
        "std": {k: float(np.std(v)) for k, v in per_fold.items()},
        "pooled": M.score_predictions(names, y, oof_pred, oof_proba, classes),
        "fit_time": fit_time,
        "n_splits": len(folds),
        "splitter": splitter,
    }


def _check_cv_inputs(X: np.ndarray, y: np.ndarray, is_clf: bool, metrics, sample_weight=None) -> list[str]:
    """The metric names to score (checked against the estimator's kind), after checking X, y and
    the length of ``sample_weight`` (the fits check its values)."""
    if sample_weight is not None and np.shape(sample_weight) != (len(X),):
        raise NbnetError(f"sample_weight has shape {np.shape(sample_weight)} but X has {len(X)} samples; "
                         "pass one weight per sample")
    if X.ndim != 2:
        raise NbnetError(f"X must be 2-D (n_samples, n_features), got {X.ndim}-D")
    if len(y) != len(X):
        raise NbnetError(f"X has {len(X)} samples but y has {len(y)}; they must match")
    names = list(metrics or M.DEFAULT_METRICS["classification" if is_clf else "regression"])
    for name in names:
        M.get_metric(name)
        if name in M.NEEDS_PROBA and not is_clf:
            raise NbnetError(f"metric {name!r} needs class probabilities; use it with a classifier")
    return names


def _cv_folds(cv, n: int, y: np.ndarray, stratify: bool, seed: int) -> tuple[list, str]:
    """(list of (train, test) index arrays, the splitter's description) for ``cv``."""
    if isinstance(cv, str):
        if cv.lower() != "loo":
            raise NbnetError(f"cv must be a number of folds or 'loo', got {cv!r}")
        return loo_indices(n), "leave-one-out"
    folds = kfold_indices(n, cv, y if stratify else None, shuffle=True, seed=seed)
    return folds, f"{'stratified ' if stratify else ''}{cv}-fold"


def _predict_fold(est, X_test: np.ndarray, classes, need_proba: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(predicted labels or values, class probabilities (len(X_test), len(classes)) or None) of a
    fitted fold; a class absent from the fold's training data gets probability 0."""
    if not need_proba:
        return est.predict(X_test), None
    part = est.predict_proba(X_test)
    proba = np.zeros((len(X_test), len(classes)))
    proba[:, np.searchsorted(classes, est.classes_)] = part
    proba /= proba.sum(1, keepdims=True)  # float32 outputs sum to 1 only within ~1e-7
    return classes[proba.argmax(1)], proba
