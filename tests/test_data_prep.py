"""Preprocessing against scikit-learn's transformers, fitted on train only, saved without pickle,
and carried inside the model so that predict takes raw X; row cleaning and its report."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import decomposition, feature_selection, impute, preprocessing

import nbnet
from nbnet.data.prep import Preprocessor, clean, feature_stats, histogram_counts
from nbnet.errors import NbnetError
from nbnet.io import read_bundle, write_bundle


def one_line_error(fn, *args, match=None, **kwargs) -> str:
    with pytest.raises(NbnetError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n, d = 240, 9
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 20, d) + rng.normal(0, 5, d)
    X[:, 3] = 7.0  # constant column
    X[:, 5] = np.round(X[:, 5])  # discrete column (ties in the quantiles)
    y = (X[:, 0] + 0.5 * X[:, 1] > np.median(X[:, 0] + 0.5 * X[:, 1])).astype(int) + (X[:, 2] > 0)
    return X, y


def with_missing(X, frac=0.1, seed=1):
    X = X.copy()
    X[np.random.default_rng(seed).random(X.shape) < frac] = np.nan
    return X


# --- each step equals scikit-learn's ----------------------------------------------------------------
@pytest.mark.parametrize("scale, ref", [("standard", preprocessing.StandardScaler),
                                        ("minmax", preprocessing.MinMaxScaler),
                                        ("robust", preprocessing.RobustScaler)])
def test_scalers_equal_sklearn(data, scale, ref):
    X, _ = data
    tr, te = X[:200], X[200:]
    ours = Preprocessor(scale=scale).fit(tr)
    theirs = ref().fit(tr)
    np.testing.assert_allclose(ours.transform(te), theirs.transform(te), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.transform(tr), theirs.transform(tr), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strategy", ["mean", "median", "constant"])
def test_imputers_equal_sklearn(data, strategy):
    X, _ = data
    Xm = with_missing(X)
    ours = Preprocessor(impute=strategy, impute_value=-3.5).fit(Xm[:200])
    theirs = impute.SimpleImputer(strategy=strategy, fill_value=-3.5).fit(Xm[:200])
    np.testing.assert_allclose(ours.transform(Xm[200:]), theirs.transform(Xm[200:]), rtol=1e-13)
    assert ours.allows_nan and not Preprocessor(scale="standard").allows_nan


def test_all_missing_column_is_filled_with_zero():
    X = np.array([[1.0, np.nan], [2.0, np.nan], [4.0, np.nan]])
    out = Preprocessor(impute="mean").fit(X).transform(np.array([[np.nan, np.nan]]))
    np.testing.assert_array_equal(out, [[7 / 3, 0.0]])


def test_drop_constant(data):
    X, _ = data
    pre = Preprocessor(drop_constant=True).fit(X)
    assert pre.n_features_out_ == X.shape[1] - 1 and 3 not in pre.columns_
    assert pre.report_["constant_dropped"] == [3]
    np.testing.assert_array_equal(pre.transform(X), np.delete(X, 3, axis=1))


@pytest.mark.parametrize("threshold", [0.0, 1.0, 30.0])
def test_variance_threshold_equals_sklearn(data, threshold):
    X, _ = data
    ours = Preprocessor(variance_threshold=threshold).fit(X)
    theirs = feature_selection.VarianceThreshold(threshold).fit(X)
    np.testing.assert_array_equal(ours.columns_, np.flatnonzero(theirs.get_support()))
    np.testing.assert_array_equal(ours.transform(X), theirs.transform(X))


def test_variance_threshold_applies_to_scaled_data(data):
    X, _ = data
    # after standard scaling every non-constant column has variance 1
    pre = Preprocessor(scale="standard", variance_threshold=0.5).fit(X)
    assert pre.n_features_out_ == X.shape[1] - 1


@pytest.mark.parametrize("k", [1, 3, 9])
def test_select_k_classification_equals_sklearn(data, k):
    X, y = data
    ours = Preprocessor(select_k=k).fit(X, y)
    theirs = feature_selection.SelectKBest(feature_selection.f_classif, k=k)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # scikit-learn warns about the constant column
        theirs.fit(X, y)
    np.testing.assert_array_equal(ours.columns_, np.flatnonzero(theirs.get_support()))
    f_ref = np.asarray(feature_selection.f_classif(np.delete(X, 3, 1), y)[0])
    np.testing.assert_allclose(np.delete(ours.scores_, 3), f_ref, rtol=1e-10)
    assert ours.task_ == "classification"


def test_select_k_regression_equals_sklearn(data):
    X, _ = data
    rng = np.random.default_rng(5)
    y = X[:, 4] * 0.3 - X[:, 6] * 0.02 + rng.normal(size=len(X))
    Xv = np.delete(X, 3, 1)  # f_regression divides by zero on a constant column
    for k in (1, 2, 5):
        ours = Preprocessor(select_k=k).fit(Xv, y)
        theirs = feature_selection.SelectKBest(feature_selection.f_regression, k=k).fit(Xv, y)
        np.testing.assert_array_equal(ours.columns_, np.flatnonzero(theirs.get_support()))
        assert ours.task_ == "regression"
    r = np.array([np.corrcoef(Xv[:, j], y)[0, 1] for j in range(Xv.shape[1])])
    np.testing.assert_allclose(ours.scores_, np.abs(r), rtol=1e-10)


def test_select_k_task_can_be_forced(data):
    X, y = data
    as_float = y.astype(float)  # integral floats: inferred as classes, as the estimator would pass
    a = Preprocessor(select_k=2).fit(X, as_float)
    b = Preprocessor(select_k=2).fit(X, as_float, task="regression")
    assert a.task_ == "classification" and b.task_ == "regression"


@pytest.mark.parametrize("n_components", [1, 4, 0.5, 0.9, 0.999])
def test_pca_equals_sklearn(data, n_components):
    X, _ = data
    Xs = preprocessing.StandardScaler().fit_transform(np.delete(X, 3, 1))
    ours = Preprocessor(pca=n_components).fit(Xs[:200])
    theirs = decomposition.PCA(n_components, svd_solver="full").fit(Xs[:200])
    assert ours.n_features_out_ == theirs.n_components_
    np.testing.assert_allclose(ours.pca_components_, theirs.components_, atol=1e-9)
    np.testing.assert_allclose(ours.explained_variance_ratio_, theirs.explained_variance_ratio_, rtol=1e-9)
    np.testing.assert_allclose(ours.transform(Xs[200:]), theirs.transform(Xs[200:]), atol=1e-9)


def test_pca_wide_data_uses_svd_and_equals_sklearn():
    X = np.random.default_rng(3).normal(size=(12, 40))
    ours = Preprocessor(pca=5).fit(X)
    theirs = decomposition.PCA(5, svd_solver="full").fit(X)
    np.testing.assert_allclose(ours.transform(X), theirs.transform(X), atol=1e-9)


def test_full_pipeline_equals_sklearn_pipeline(data):
    X, y = data
    Xm = with_missing(X, 0.05)
    spec = {"impute": "median", "drop_constant": True, "scale": "robust", "variance_threshold": 0.01,
            "select_k": 6, "pca": 3}
    ours = Preprocessor.from_spec(spec).fit(Xm[:200], y[:200])
    steps = [impute.SimpleImputer(strategy="median"), feature_selection.VarianceThreshold(0.0),
             preprocessing.RobustScaler(), feature_selection.VarianceThreshold(0.01),
             feature_selection.SelectKBest(feature_selection.f_classif, k=6), decomposition.PCA(3, svd_solver="full")]
    from sklearn.pipeline import make_pipeline

    theirs = make_pipeline(*steps).fit(Xm[:200], y[:200])
    np.testing.assert_allclose(ours.transform(Xm[200:]), theirs.transform(Xm[200:]), atol=1e-9)
    assert ours.n_features_out_ == 3 and ours.n_features_in_ == X.shape[1]
    assert ours.feature_names_out() == ["pc0", "pc1", "pc2"]


def test_fitted_on_train_only(data):
    X, _ = data
    pre = Preprocessor(scale="standard").fit(X[:100])
    # statistics come from the rows it was fitted on, whatever is transformed later
    np.testing.assert_allclose(pre.center_, X[:100].mean(0))
    np.testing.assert_allclose(pre.transform(X[100:])[0], (X[100] - X[:100].mean(0)) / pre.scale_)


# --- statistics for drift monitoring ------------------------------------------------------------
def test_stats_are_raw_training_statistics(data):
    X, _ = data
    Xm = with_missing(X)
    pre = Preprocessor(impute="mean", scale="standard").fit(Xm)
    s = pre.stats_
    np.testing.assert_allclose(s["mean"], np.nanmean(Xm, 0))
    np.testing.assert_allclose(s["std"], np.nanstd(Xm, 0))
    np.testing.assert_array_equal(s["n_missing"], np.isnan(Xm).sum(0))
    assert s["edges"].shape == (X.shape[1], 11) and s["counts"].shape == (X.shape[1], 10)
    np.testing.assert_allclose(s["edges"][:, 0], np.nanmin(Xm, 0))
    np.testing.assert_allclose(s["edges"][:, -1], np.nanmax(Xm, 0))
    # every non-missing value falls in exactly one bin, and continuous columns split ~evenly
    np.testing.assert_array_equal(s["counts"].sum(1), len(X) - s["n_missing"])
    assert np.all(np.abs(s["counts"][0] - s["counts"][0].mean()) <= 2)
    assert int(s["n"][0]) == len(X)


def test_histogram_counts_bins_new_data_like_training():
    edges = np.array([[0.0, 1.0, 2.0, 3.0]])
    X = np.array([[-5.0], [0.0], [0.5], [1.0], [2.9], [3.0], [99.0], [np.nan]])
    # outer bins are open: values outside the training range land in the first/last bin
    np.testing.assert_array_equal(histogram_counts(X, edges), [[3, 1, 3]])
    stats = feature_stats(np.array([[1.0], [1.0], [1.0]]))
    assert stats["counts"].sum() == 3 and stats["std"][0] == 0
    empty = feature_stats(np.array([[np.nan], [np.nan]]))
    assert np.isnan(empty["mean"][0]) and empty["counts"].sum() == 0


# --- state: JSON + arrays, no pickle ------------------------------------------------------------
def test_state_round_trip_through_the_model_format(tmp_path, data):
    X, y = data
    Xm = with_missing(X, 0.05)
    pre = Preprocessor.from_spec({"impute": "mean", "drop_constant": True, "scale": "standard",
                                  "select_k": 5, "pca": 0.9}).fit(Xm, y)
    meta, arrays = pre.to_state()
    json.dumps(meta)  # JSON-able
    assert all(isinstance(a, np.ndarray) and not a.dtype.hasobject for a in arrays.values())
    write_bundle(tmp_path / "p.nbnet", {"estimator": "none", "prep": meta}, arrays)
    meta2, arrays2 = read_bundle(tmp_path / "p.nbnet")
    back = Preprocessor.from_state(meta2["prep"], arrays2)
    np.testing.assert_array_equal(back.transform(Xm), pre.transform(Xm))
    assert back.spec == pre.spec and back.n_features_out_ == pre.n_features_out_
    for k in pre.stats_:
        np.testing.assert_array_equal(back.stats_[k], pre.stats_[k])


def test_damaged_state_is_refused(data):
    X, y = data
    meta, arrays = Preprocessor(scale="standard", pca=2).fit(X).to_state()
    bad = dict(arrays, pca_components=arrays["pca_components"][:, :-1])
    one_line_error(Preprocessor.from_state, meta, bad, match="damaged")
    one_line_error(Preprocessor.from_state, meta, {k: v for k, v in arrays.items() if k != "center"}, match="missing")
    one_line_error(Preprocessor.from_state, dict(meta, version=99), arrays, match="newer or foreign")


# --- inside the model ---------------------------------------------------------------------------
def test_model_predicts_raw_X_identically_after_save_and_load(tmp_path, data):
    X, y = data
    Xm = with_missing(X, 0.05)
    spec = {"impute": "median", "drop_constant": True, "scale": "standard", "select_k": 6, "pca": 4}
    clf = nbnet.MLPClassifier((16,), epochs=5, seed=0, preprocessing=spec).fit(Xm[:200], y[:200])
    assert clf.n_features_in_ == X.shape[1] and clf.preprocessor_.n_features_out_ == 4
    clf.save(tmp_path / "clf.nbnet")
    back = nbnet.load(tmp_path / "clf.nbnet")
    np.testing.assert_array_equal(back.predict_proba(Xm[200:]), clf.predict_proba(Xm[200:]))
    np.testing.assert_array_equal(back.predict(Xm[200:]), clf.predict(Xm[200:]))
    # predict on raw X equals the network applied to the stored transformation of X
    Xt = clf.preprocessor_.transform(Xm[200:])
    inner = nbnet.MLPClassifier((16,), epochs=5, seed=0).fit(clf.preprocessor_.transform(Xm[:200]), y[:200])
    np.testing.assert_allclose(inner.predict_proba(Xt), clf.predict_proba(Xm[200:]), atol=1e-6)

    rng = np.random.default_rng(0)
    yr = X[:, 0] * 0.1 + rng.normal(size=len(X))
    reg = nbnet.MLPRegressor((8,), epochs=3, preprocessing={"scale": "minmax", "select_k": 3}).fit(X, yr)
    reg.save(tmp_path / "reg.nbnet")
    np.testing.assert_array_equal(nbnet.load(tmp_path / "reg.nbnet").predict(X), reg.predict(X))
    assert reg.preprocessor_.task_ == "regression"


def test_model_without_impute_refuses_nan(data):
    X, y = data
    clf = nbnet.MLPClassifier((4,), epochs=1, preprocessing={"scale": "standard"}).fit(X, y)
    one_line_error(clf.predict, with_missing(X), match="NaN")


# --- bad specs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, match", [
    ({"scaling": "standard"}, "unknown preprocessing option 'scaling'"),
    ({"scale": "zscore"}, "scale must be one of"),
    ({"impute": "mode"}, "impute must be one of"),
    ({"impute": "constant", "impute_value": "zero"}, "impute_value"),
    ({"drop_constant": "yes"}, "drop_constant"),
    ({"variance_threshold": -1}, "variance_threshold"),
    ({"select_k": 0}, "select_k must be a positive int"),
    ({"select_k": 2.5}, "select_k must be a positive int"),
    ({"pca": 1.0}, "pca must be"),
    ({"pca": 0}, "pca must be"),
    ({"pca": True}, "pca must be"),
    ([("scale", "standard")], "must be a table"),
])
def test_bad_spec(spec, match):
    one_line_error(Preprocessor.from_spec, spec, match=match)


def test_bad_fit_inputs(data):
    X, y = data
    one_line_error(Preprocessor(select_k=20).fit, X, y, match="select_k=20 is larger than the number of features")
    one_line_error(Preprocessor(drop_constant=True, select_k=9).fit, X, y, match="8 left")
    one_line_error(Preprocessor(select_k=2).fit, X, match="needs the targets")
    one_line_error(Preprocessor(pca=50).fit, X[:30], match="more than min")
    one_line_error(Preprocessor(variance_threshold=1e9).fit, X, match="removes every feature")
    one_line_error(Preprocessor(drop_constant=True).fit, np.ones((5, 3)), match="every column is constant")
    one_line_error(Preprocessor(scale="standard").fit, with_missing(X), match="NaN")
    Xi = X.copy()
    Xi[4, 2] = np.inf
    one_line_error(Preprocessor(impute="mean").fit, Xi, match="inf")
    pre = Preprocessor(scale="standard").fit(X)
    one_line_error(pre.transform, X[:, :4], match="fitted with 9")
    one_line_error(Preprocessor().transform, X, match="not fitted")
    one_line_error(
        nbnet.MLPClassifier((4,), epochs=1, preprocessing={"select_k": 99}).fit, X, y, match="select_k=99")


# --- clean ----------------------------------------------------------------------------------------
def test_clean_drops_nonfinite_and_duplicates():
    X = np.array([[1.0, 2.0], [np.nan, 1.0], [1.0, 2.0], [3.0, np.inf], [1.0, 2.0], [-0.0, 5.0], [0.0, 5.0], [4.0, 4.0]])
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    Xc, yc, report = clean(X, y)
    np.testing.assert_array_equal(Xc, [[1.0, 2.0], [1.0, 2.0], [0.0, 5.0], [4.0, 4.0]])  # order kept
    np.testing.assert_array_equal(yc, [0, 1, 0, 1])  # same X with another label is not a duplicate
    assert report == {"rows_in": 8, "rows_out": 4, "nonfinite_rows_dropped": 2, "inf_replaced": 0,
                      "missing_target_dropped": 0, "duplicates_dropped": 2}
    assert np.isnan(X[1, 0])  # the caller's array is untouched


def test_clean_impute_and_keep():
    X = np.array([[1.0, np.inf], [np.nan, 1.0], [2.0, 3.0], [2.0, 3.0]])
    y = np.array([0.5, 1.0, np.nan, 2.0])
    Xc, yc, report = clean(X, y, nan="impute", drop_duplicates=False)
    assert np.isnan(Xc[0, 1]) and len(Xc) == 3  # inf → NaN for the imputer; NaN target dropped
    assert report["inf_replaced"] == 1 and report["missing_target_dropped"] == 1
    Xk, _, report = clean(X, y, nan="keep")
    assert np.isinf(Xk[0, 1]) and report["rows_out"] == 3
    Xd, _, report = clean(np.array([[np.nan, 1.0], [np.nan, 1.0]]), ["a", "a"], nan="keep")
    assert len(Xd) == 1 and report["duplicates_dropped"] == 1  # NaN rows compare equal, as in pandas


def test_clean_string_labels_and_empty_result():
    X = np.array([[1.0], [1.0], [2.0]])
    _, yc, _ = clean(X, np.array(["a", "a", "b"]))
    assert yc.tolist() == ["a", "b"]
    msg = one_line_error(clean, np.array([[np.nan], [np.inf]]), np.array([0, 1]), match="no rows left")
    assert "nonfinite_rows_dropped=2" in msg
    one_line_error(clean, X, np.array([0, 1]), match="must match")
    one_line_error(clean, X, np.array([0, 1, 1]), nan="fill", match="nan must be")


def test_stats_of_large_data_use_a_sampled_quantile_grid():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(5000, 3))
    X[::7, 1] = np.nan
    s = feature_stats(X, max_rows=1000)
    exact = np.nanquantile(X, np.linspace(0, 1, 11), axis=0).T
    np.testing.assert_array_equal(s["edges"][:, [0, -1]], exact[:, [0, -1]])  # extremes exact
    assert np.abs(s["edges"][:, 1:-1] - exact[:, 1:-1]).max() < 0.15  # sampled deciles, close
    np.testing.assert_array_equal(s["counts"].sum(1), 5000 - np.isnan(X).sum(0))  # every row counted
    np.testing.assert_array_equal(s["counts"], histogram_counts(X, s["edges"]))
    assert np.all(np.abs(s["counts"] / s["counts"].sum(1, keepdims=True) - 0.1) < 0.03)
    np.testing.assert_allclose(s["mean"], np.nanmean(X, 0))


def test_docstring_examples_run():
    import doctest

    import nbnet.data.load
    import nbnet.data.prep
    import nbnet.metrics

    for module in (nbnet.data.load, nbnet.data.prep, nbnet.metrics):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_histogram_counts_equal_a_per_value_search_with_ties_nan_and_outliers():
    """Bin b holds the values with exactly b inner edges <= them (NaN counts nowhere), also with
    repeated edges (a column with few distinct values) and values outside the outer edges."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 6))
    X[:, 2] = rng.integers(0, 3, 500)  # three values: quantile edges repeat
    X[rng.random(X.shape) < 0.05] = np.nan
    edges = np.sort(rng.normal(size=(6, 11)), axis=1)
    edges[2] = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    X[0, :] = 1e6
    X[1, :] = -1e6
    want = np.zeros((6, 10), np.int64)
    for j in range(6):
        for v in X[:, j]:
            if not np.isnan(v):
                want[j, np.searchsorted(edges[j, 1:-1], v, side="right")] += 1
    np.testing.assert_array_equal(histogram_counts(X, edges), want)
    np.testing.assert_array_equal(histogram_counts(X, edges[:, [0, -1]]), [[len(X) - np.isnan(c).sum()] for c in X.T])


@pytest.mark.parametrize("spec", [dict(scale="standard"), dict(scale="standard", drop_constant=True),
                                  dict(scale="minmax", pca=3), dict(scale="standard", variance_threshold=0.0)])
def test_fit_reuses_the_drift_statistics(spec):
    """fit takes the mean, std and constant columns from the drift statistics it computes anyway
    (no second pass over X): the same reductions of X, as scikit-learn's scaler computes them,
    with and without a constant column."""
    from sklearn.preprocessing import StandardScaler

    X = np.random.default_rng(0).normal(size=(300, 7)) * [1, 2, 3, 4, 5, 6, 7]
    for Xc in (X, np.c_[X, np.full(300, 2.5)]):
        pre = Preprocessor(**spec).fit(Xc)
        keep = pre.columns_
        if spec == dict(scale="standard"):
            sk = StandardScaler().fit(Xc[:, keep])
            np.testing.assert_array_equal(pre.center_, Xc.mean(0))
            np.testing.assert_array_equal(pre.scale_, np.where(Xc.std(0) < 1e-15, 1.0, Xc.std(0)))
            np.testing.assert_allclose(pre.center_, sk.mean_, rtol=1e-14)
            np.testing.assert_allclose(pre.transform(Xc), sk.transform(Xc[:, keep]), rtol=1e-12, atol=1e-12)
        assert (7 in keep.tolist()) == (Xc.shape[1] == 8 and not spec.get("drop_constant")
                                        and spec.get("variance_threshold") is None)
        assert pre.center_ is not pre.stats_["mean"]
