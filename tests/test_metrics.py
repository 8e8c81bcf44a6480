"""Every metric equals scikit-learn's on random inputs (hypothesis), including the edge cases: a
class never predicted, one class only in y_true, ties in scores, constant targets; where
scikit-learn raises, nbnet raises too (NbnetError is a ValueError), with one line."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as S

from nbnet import metrics as M
from nbnet.errors import NbnetError

SETTINGS = settings(max_examples=150, deadline=None)


def same(ours, theirs_fn):
    """Call scikit-learn; both must give the same value (NaN == NaN), or both raise ValueError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = theirs_fn()
    except ValueError:
        with pytest.raises(NbnetError) as info, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours()
        assert "\n" not in str(info.value)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours()
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(theirs, dtype=float), rtol=1e-10, atol=1e-12)


@st.composite
def label_pairs(draw, max_classes=5, strings=False):
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, max_classes))
    t = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    p = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    if strings:
        names = np.array(["ant", "bee", "cat", "dog", "eel"])
        t, p = names[t], names[p]
    return t, p


# --- label metrics --------------------------------------------------------------------------------
@SETTINGS
@given(label_pairs())
def test_accuracy_and_confusion_matrix(pair):
    t, p = pair
    same(lambda: M.accuracy(t, p), lambda: S.accuracy_score(t, p))
    same(lambda: M.confusion_matrix(t, p), lambda: S.confusion_matrix(t, p))
    labels = [3, 0, 1]
    same(lambda: M.confusion_matrix(t, p, labels=labels), lambda: S.confusion_matrix(t, p, labels=labels))


@SETTINGS
@given(label_pairs(strings=True))
def test_confusion_matrix_string_labels(pair):
    t, p = pair
    same(lambda: M.confusion_matrix(t, p), lambda: S.confusion_matrix(t, p))
    same(lambda: M.accuracy(t, p), lambda: S.accuracy_score(t, p))


AVERAGES = ["binary", "macro", "weighted", "micro", None]


@SETTINGS
@given(label_pairs(), st.sampled_from(AVERAGES), st.sampled_from(["precision", "recall", "f1"]))
def test_precision_recall_f1_equal_sklearn(pair, average, name):
    t, p = pair
    ours = getattr(M, name)
    theirs = {"precision": S.precision_score, "recall": S.recall_score, "f1": S.f1_score}[name]
    same(lambda: ours(t, p, average=average), lambda: theirs(t, p, average=average, zero_division=0))


@SETTINGS
@given(label_pairs(max_classes=2, strings=True), st.sampled_from(["ant", "bee"]))
def test_binary_with_string_pos_label(pair, pos):
    t, p = pair
    same(lambda: M.f1(t, p, pos_label=pos), lambda: S.f1_score(t, p, pos_label=pos, zero_division=0))
    # the default pos_label=1 is not a string label: both refuse when two labels are present
    same(lambda: M.precision(t, p), lambda: S.precision_score(t, p, zero_division=0))


def test_class_never_predicted_counts_as_zero():
    t = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 0, 1, 1, 1, 1])  # class 2 never predicted
    np.testing.assert_allclose(M.precision(t, p, average=None), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(M.recall(t, p, average=None), [1.0, 1.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for avg in ("macro", "weighted", "micro"):
            assert M.precision(t, p, average=avg) == S.precision_score(t, p, average=avg, zero_division=0)
            assert M.f1(t, p, average=avg) == S.f1_score(t, p, average=avg, zero_division=0)
    # a class predicted but never true: its recall is 0 (zero division) and it counts in the macro mean
    assert M.recall([0, 0], [0, 1], average="macro") == S.recall_score([0, 0], [0, 1], average="macro", zero_division=0)
    # all-negative binary data: tp = 0 → 0, no error
    assert M.f1([0, 0, 0], [0, 0, 0]) == 0.0 == S.f1_score([0, 0, 0], [0, 0, 0], zero_division=0)


def test_precision_recall_f1_support_per_class():
    t, p = [0, 1, 2, 2, 1], [0, 2, 2, 2, 1]
    ours = M.precision_recall_f1_support(t, p, average=None)
    theirs = S.precision_recall_fscore_support(t, p, average=None, zero_division=0)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b)


# --- probability metrics ----------------------------------------------------------------------------
@st.composite
def scored(draw, n_classes=None, ties=False, min_classes=2):
    n = draw(st.integers(1, 50))
    k = n_classes or draw(st.integers(min_classes, 5))
    t = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(k), size=n)
    if ties:
        P = np.round(P, 1)
        P /= P.sum(1, keepdims=True)
    return t, P


@SETTINGS
@given(scored(n_classes=2), st.booleans())
def test_binary_roc_auc_equals_sklearn(data, ties):
    t, P = data
    s = np.round(P[:, 1], 1) if ties else P[:, 1]  # rounded scores: many ties
    same(lambda: M.roc_auc(t, s), lambda: S.roc_auc_score(t, s))
    same(lambda: M.roc_auc(t, P), lambda: S.roc_auc_score(t, P[:, 1]))  # (n, 2): column 1


@SETTINGS
@given(scored(min_classes=3), st.sampled_from(["macro", "weighted"]))
def test_ovr_roc_auc_equals_sklearn(data, average):
    t, P = data
    same(lambda: M.roc_auc(t, P, average=average), lambda: S.roc_auc_score(t, P, multi_class="ovr", average=average))
    labels = list(range(P.shape[1]))
    same(lambda: M.roc_auc(t, P, average=average, labels=labels),
         lambda: S.roc_auc_score(t, P, multi_class="ovr", average=average, labels=labels))


@SETTINGS
@given(scored(ties=True, min_classes=3))
def test_ovr_roc_auc_with_ties(data):
    t, P = data
    labels = list(range(P.shape[1]))
    same(lambda: M.roc_auc(t, P, labels=labels), lambda: S.roc_auc_score(t, P, multi_class="ovr", labels=labels))


def test_roc_auc_single_class_is_nan_with_a_warning_as_sklearn():
    from sklearn.exceptions import UndefinedMetricWarning

    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(S.roc_auc_score([1, 1, 1], [0.1, 0.5, 0.9]))
    with pytest.warns(M.UndefinedMetricWarning, match="Only one class is present in y_true"):
        assert np.isnan(M.roc_auc([1, 1, 1], [0.1, 0.5, 0.9]))


def test_roc_auc_errors_match_sklearn():
    t = np.array([0, 1, 2, 1])
    bad = np.array([[0.5, 0.5, 0.5]] * 4)  # rows do not sum to 1
    same(lambda: M.roc_auc(t, bad), lambda: S.roc_auc_score(t, bad, multi_class="ovr"))
    P = np.full((4, 4), 0.25)  # 4 columns, 3 classes in y_true
    same(lambda: M.roc_auc(t, P), lambda: S.roc_auc_score(t, P, multi_class="ovr"))
    P3 = np.full((4, 3), 1 / 3)
    same(lambda: M.roc_auc(t, P3, labels=[2, 1, 0]), lambda: S.roc_auc_score(t, P3, multi_class="ovr", labels=[2, 1, 0]))
    same(lambda: M.roc_auc(t, P3, labels=[0, 1, 5]), lambda: S.roc_auc_score(t, P3, multi_class="ovr", labels=[0, 1, 5]))


@SETTINGS
@given(scored(), st.booleans())
def test_log_loss_equals_sklearn(data, with_labels):
    t, P = data
    labels = list(range(P.shape[1])) if with_labels else None
    same(lambda: M.log_loss(t, P, labels=labels), lambda: S.log_loss(t, P, labels=labels))


@SETTINGS
@given(scored(n_classes=2))
def test_binary_log_loss_from_positive_probability(data):
    t, P = data
    same(lambda: M.log_loss(t, P[:, 1]), lambda: S.log_loss(t, P[:, 1]))


def test_log_loss_edges():
    # one class only in y_true: the same error, fixed by passing labels
    same(lambda: M.log_loss([1, 1], [0.2, 0.3]), lambda: S.log_loss([1, 1], [0.2, 0.3]))
    same(lambda: M.log_loss([1, 1], [0.2, 0.3], labels=[0, 1]), lambda: S.log_loss([1, 1], [0.2, 0.3], labels=[0, 1]))
    # certain and wrong: clipped, finite
    same(lambda: M.log_loss([0, 1], [[0.0, 1.0], [1.0, 0.0]]), lambda: S.log_loss([0, 1], [[0.0, 1.0], [1.0, 0.0]]))
    same(lambda: M.log_loss([0, 1], [[1.5, -0.5], [0.5, 0.5]]), lambda: S.log_loss([0, 1], [[1.5, -0.5], [0.5, 0.5]]))
    same(lambda: M.log_loss([0, 1, 2], [[0.5, 0.5]] * 3), lambda: S.log_loss([0, 1, 2], [[0.5, 0.5]] * 3))
    same(lambda: M.log_loss([0, 3], [[0.5, 0.5]] * 2, labels=[0, 1]), lambda: S.log_loss([0, 3], [[0.5, 0.5]] * 2, labels=[0, 1]))
    with pytest.warns(UserWarning, match="do not sum to one"):
        M.log_loss([0, 1, 2], [[0.2, 0.2, 0.2]] * 3)


# --- regression ---------------------------------------------------------------------------------
@st.composite
def regression_pairs(draw):
    n = draw(st.integers(1, 40))
    m = draw(st.sampled_from([0, 1, 3]))  # 0: 1-D targets
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (n,) if m == 0 else (n, m)
    t = rng.normal(size=shape) * 10
    if draw(st.booleans()):
        t = np.round(t)  # ties
    if draw(st.integers(0, 4)) == 0:
        t = np.full(shape, 3.0)  # constant target
    p = t + rng.normal(size=shape) * draw(st.sampled_from([0.0, 0.1, 5.0]))
    return t, p


@SETTINGS
@given(regression_pairs())
def test_regression_metrics_equal_sklearn(pair):
    t, p = pair
    same(lambda: M.mse(t, p), lambda: S.mean_squared_error(t, p))
    same(lambda: M.rmse(t, p), lambda: S.root_mean_squared_error(t, p))
    same(lambda: M.mae(t, p), lambda: S.mean_absolute_error(t, p))
    same(lambda: M.r2(t, p), lambda: S.r2_score(t, p))


def test_r2_edges():
    assert M.r2([3.0, 3.0], [3.0, 3.0]) == 1.0 == S.r2_score([3.0, 3.0], [3.0, 3.0])
    assert M.r2([3.0, 3.0], [3.0, 2.0]) == 0.0 == S.r2_score([3.0, 3.0], [3.0, 2.0])
    with pytest.warns(M.UndefinedMetricWarning, match="less than two samples"):
        assert np.isnan(M.r2([1.0], [2.0]))


def test_regression_bad_input():
    same(lambda: M.mse([1.0, np.nan], [1.0, 2.0]), lambda: S.mean_squared_error([1.0, np.nan], [1.0, 2.0]))
    same(lambda: M.mae([1.0, 2.0], [1.0]), lambda: S.mean_absolute_error([1.0, 2.0], [1.0]))


def test_label_input_errors():
    same(lambda: M.accuracy([0, 1], [0]), lambda: S.accuracy_score([0, 1], [0]))
    same(lambda: M.f1([0.5, 1.0], [0.5, 1.0], average="macro"), lambda: S.f1_score([0.5, 1.0], [0.5, 1.0], average="macro"))
    same(lambda: M.accuracy(["a", "b"], [0, 1]), lambda: S.accuracy_score(["a", "b"], [0, 1]))
    with pytest.raises(NbnetError, match="average must be one of"):
        M.f1([0, 1], [0, 1], average="samples")


# --- table and directions ----------------------------------------------------------------------
def test_table_covers_the_issue_and_directions():
    for name in ("accuracy", "precision", "recall", "f1", "f1_macro", "f1_weighted", "precision_macro",
                 "recall_weighted", "roc_auc", "log_loss", "mse", "rmse", "mae", "r2"):
        assert name in M.METRICS
        assert M.direction(name) in ("maximize", "minimize")
    assert M.direction("accuracy") == "maximize" and M.direction("val_accuracy") == "maximize"
    assert M.direction("r2") == "maximize" and M.direction("test_r2") == "maximize"
    for name in ("log_loss", "mse", "rmse", "mae", "loss", "val_loss", "val_rmse", "cv_mse"):
        assert M.direction(name) == "minimize", name
    with pytest.raises(NbnetError, match="unknown metric 'auc'"):
        M.direction("auc")
    with pytest.raises(NbnetError, match="unknown metric"):
        M.get_metric("val_loss")


def test_table_functions_equal_sklearn_scorers():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, 80)
    p = rng.integers(0, 3, 80)
    P = rng.dirichlet(np.ones(3), 80)
    for avg in ("macro", "weighted", "micro"):
        assert M.METRICS[f"f1_{avg}"](t, p) == pytest.approx(S.f1_score(t, p, average=avg))
        assert M.METRICS[f"precision_{avg}"](t, p) == pytest.approx(S.precision_score(t, p, average=avg))
        assert M.METRICS[f"recall_{avg}"](t, p) == pytest.approx(S.recall_score(t, p, average=avg))
    assert M.METRICS["roc_auc_ovr_weighted"](t, P) == pytest.approx(
        S.roc_auc_score(t, P, multi_class="ovr", average="weighted"))
    scores = M.score_predictions(["accuracy", "log_loss", "roc_auc"], t, p, P, classes=[0, 1, 2])
    assert scores == pytest.approx({"accuracy": S.accuracy_score(t, p), "log_loss": S.log_loss(t, P),
                                    "roc_auc": S.roc_auc_score(t, P, multi_class="ovr")})
    with pytest.raises(NbnetError, match="needs class probabilities"):
        M.score_predictions(["roc_auc"], t, p)


def test_evaluate_a_fitted_model():
    import nbnet
    from nbnet.data.load import load_dataset

    ds = load_dataset("builtin:iris")
    clf = nbnet.MLPClassifier((8,), epochs=20, preprocessing={"scale": "standard"}).fit(ds.X, ds.y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 probabilities are renormalised: no sum warning
        got = M.evaluate(clf, ds.X, ds.y, ["accuracy", "f1_macro", "log_loss", "roc_auc"])
    P = clf.predict_proba(ds.X)
    assert got["accuracy"] == pytest.approx(S.accuracy_score(ds.y, clf.predict(ds.X)))
    assert got["log_loss"] == pytest.approx(S.log_loss(ds.y, P / P.sum(1, keepdims=True)))
    assert got["roc_auc"] == pytest.approx(S.roc_auc_score(ds.y, P / P.sum(1, keepdims=True), multi_class="ovr"))
    assert set(M.evaluate(clf, ds.X, ds.y)) == {"accuracy", "f1_macro"}
