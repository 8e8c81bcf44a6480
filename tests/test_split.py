"""Splits and cross-validation: folds are disjoint and cover every sample, equal scikit-learn's
KFold / StratifiedKFold / LeaveOneOut, and cross_validate reports per-fold metrics with mean ± std."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as S
from sklearn.model_selection import KFold, LeaveOneOut, StratifiedKFold

import nbnet
from nbnet.data.load import load_dataset
from nbnet.data.split import (
    clone, cross_validate, kfold_indices, loo_indices, train_val_split, train_val_test_split,
)
from nbnet.errors import NbnetError

SETTINGS = settings(max_examples=80, deadline=None)


def check_partition(folds, n):
    tests = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(tests), np.arange(n))  # disjoint and covering
    for tr, te in folds:
        assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == n
        assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)


@SETTINGS
@given(st.integers(2, 60), st.integers(2, 10), st.integers(0, 1000), st.booleans())
def test_kfold_equals_sklearn(n, k, seed, shuffle):
    if k > n:
        with pytest.raises(NbnetError, match=f"cv={k} folds is more than the {n} samples"):
            kfold_indices(n, k, seed=seed, shuffle=shuffle)
        return
    ours = kfold_indices(n, k, seed=seed, shuffle=shuffle)
    theirs = list(KFold(k, shuffle=shuffle, random_state=seed if shuffle else None).split(np.zeros(n)))
    check_partition(ours, n)
    assert len(ours) == k
    for (a, b), (c, d) in zip(ours, theirs):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


@SETTINGS
@given(st.lists(st.integers(0, 3), min_size=4, max_size=80), st.integers(2, 6), st.integers(0, 1000), st.booleans())
def test_stratified_kfold_equals_sklearn(labels, k, seed, shuffle):
    y = np.array(labels)
    n = len(y)
    skf = StratifiedKFold(k, shuffle=shuffle, random_state=seed if shuffle else None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = list(skf.split(np.zeros(n), y))
    except ValueError:
        with pytest.raises(NbnetError):
            kfold_indices(n, k, y, seed=seed, shuffle=shuffle)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = kfold_indices(n, k, y, seed=seed, shuffle=shuffle)
    check_partition(ours, n)
    for (a, b), (c, d) in zip(ours, theirs):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_stratified_folds_keep_class_proportions():
    y = np.repeat(["a", "b", "c"], [50, 30, 20])
    for _, te in kfold_indices(100, 5, y, seed=1):
        assert sorted(np.unique(y[te], return_counts=True)[1].tolist()) == [4, 6, 10]


def test_stratified_warns_on_a_small_class_and_refuses_when_all_are():
    y = np.array([0] * 10 + [1] * 2)
    with pytest.warns(UserWarning, match="least populated class"):
        kfold_indices(12, 3, y)
    with pytest.raises(NbnetError, match="larger than every class"):
        kfold_indices(6, 4, np.array([0, 0, 0, 1, 1, 1]))


def test_loo_equals_sklearn():
    ours = loo_indices(7)
    theirs = list(LeaveOneOut().split(np.zeros(7)))
    check_partition(ours, 7)
    for (a, b), (c, d) in zip(ours, theirs):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    with pytest.raises(NbnetError, match="at least 2"):
        loo_indices(1)


@SETTINGS
@given(st.integers(5, 200), st.sampled_from([0.0, 0.1, 0.25]), st.sampled_from([0.0, 0.15, 0.3]),
       st.integers(0, 99), st.booleans())
def test_train_val_test_split(n, val, test, seed, stratify):
    y = np.arange(n) % 3 if stratify else None
    try:
        tr, va, te = train_val_test_split(n, val, test, y=y, seed=seed)
    except NbnetError as e:
        assert "holds out no sample" in str(e)  # a tiny data set and a small fraction
        return
    both = np.concatenate([tr, va, te])
    assert np.array_equal(np.sort(both), np.arange(n))
    assert (len(va) == 0) == (val == 0) and (len(te) == 0) == (test == 0)
    assert abs(len(te) - n * test) <= 3 and abs(len(va) - n * val) <= 3
    if stratify:
        for part in (tr, va, te):
            if len(part) >= 30:
                counts = np.bincount(y[part], minlength=3)
                assert counts.max() - counts.min() <= 2
        assert set(np.unique(y[tr])) == {0, 1, 2}
    again = train_val_test_split(n, val, test, y=y, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))


def test_split_errors():
    with pytest.raises(NbnetError, match="leaves no training data"):
        train_val_test_split(10, 0.5, 0.5)
    with pytest.raises(NbnetError, match="val fraction"):
        train_val_test_split(10, -0.1, 0.2)
    with pytest.raises(NbnetError, match="must match"):
        train_val_test_split(10, 0.1, 0.2, y=[0, 1])
    with pytest.raises(NbnetError, match="cv must be an int >= 2"):
        kfold_indices(10, 1)
    with pytest.raises(NbnetError, match="positive int"):
        kfold_indices(0, 2)


def test_train_val_split_keeps_its_contract():
    tr, va = train_val_split(100, 0.2, np.arange(100) % 4, seed=0)
    assert len(va) == 20 and len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 100


# --- cross_validate -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def iris():
    return load_dataset("builtin:iris")


def small_clf(**kw):
    return nbnet.MLPClassifier((8,), epochs=15, learning_rate=0.01, preprocessing={"scale": "standard"}, **kw)


def test_cross_validate_classifier(iris):
    X, y = iris.X, iris.y
    out = nbnet.cross_validate(small_clf(), X, y, cv=5, metrics=["accuracy", "f1_macro", "log_loss", "roc_auc"])
    assert out["n_splits"] == 5 and out["splitter"] == "stratified 5-fold"
    assert len(out["fit_time"]) == 5
    for name in ("accuracy", "f1_macro", "log_loss", "roc_auc"):
        values = out["folds"][name]
        assert len(values) == 5 and all(np.isfinite(values))
        assert out["mean"][name] == pytest.approx(np.mean(values))
        assert out["std"][name] == pytest.approx(np.std(values))
    assert out["mean"]["accuracy"] > 0.7
    # the folds are exactly those of kfold_indices; each fold's score is the fold model's
    folds = kfold_indices(len(y), 5, y, seed=0)
    tr, te = folds[2]
    model = small_clf().fit(X[tr], y[tr])
    assert out["folds"]["accuracy"][2] == pytest.approx(S.accuracy_score(y[te], model.predict(X[te])))


def test_cross_validate_leaves_the_template_unfitted(iris):
    template = small_clf(seed=3)
    nbnet.cross_validate(template, iris.X, iris.y, cv=3)
    assert not hasattr(template, "layout_")
    copy = clone(template)
    assert copy is not template and copy.get_params() == template.get_params()


def test_cross_validate_regressor_and_loo():
    ds = load_dataset("builtin:diabetes")
    X, y = ds.X[:40], ds.y[:40] / 100
    reg = nbnet.MLPRegressor((8,), epochs=10, learning_rate=0.01, preprocessing={"scale": "standard"})
    out = cross_validate(reg, X, y, cv="loo", metrics=["r2", "mae"])
    assert out["n_splits"] == 40 and out["splitter"] == "leave-one-out"
    assert all(np.isnan(out["folds"]["r2"]))  # R² of one sample is undefined, as in scikit-learn
    assert len(out["folds"]["mae"]) == 40 and np.isfinite(out["mean"]["mae"])
    # pooled over the out-of-fold predictions: the meaningful LOO summary
    assert np.isfinite(out["pooled"]["r2"]) and out["pooled"]["mae"] == pytest.approx(out["mean"]["mae"])
    out = cross_validate(reg, X, y, cv=4)
    assert out["splitter"] == "4-fold" and set(out["mean"]) == {"r2", "rmse"}


def test_cross_validate_unstratified_classifier(iris):
    out = cross_validate(small_clf(), iris.X, iris.y, cv=3, stratified=False, metrics=["accuracy"])
    assert out["splitter"] == "3-fold"


def test_cross_validate_a_class_missing_from_a_training_fold():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    y = np.array([0] * 14 + [1] * 15 + [2])  # class 2 has one sample: one fold never trains on it
    with pytest.warns(UserWarning, match="least populated"):
        out = cross_validate(small_clf(), X, y, cv=3, metrics=["accuracy", "log_loss"])
    assert all(np.isfinite(out["folds"]["log_loss"]))


def test_cross_validate_errors(iris):
    X, y = iris.X[:10], iris.y[:10]
    with pytest.raises(NbnetError, match="cv=11 folds is more than the 10 samples"):
        cross_validate(small_clf(), X, y, cv=11, stratified=False)
    with pytest.raises(NbnetError, match="'loo'"):
        cross_validate(small_clf(), X, y, cv="lpo")
    with pytest.raises(NbnetError, match="unknown metric"):
        cross_validate(small_clf(), X, y, cv=2, metrics=["auc"])
    with pytest.raises(NbnetError, match="needs class probabilities"):
        cross_validate(nbnet.MLPRegressor(), X, y.astype(float), cv=2, metrics=["roc_auc"])
    with pytest.raises(NbnetError, match="must match"):
        cross_validate(small_clf(), X, y[:5], cv=2)
