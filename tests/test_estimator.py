"""MLPClassifier / MLPRegressor: the scikit-learn protocol, weights, partial_fit, callbacks,
history, early stopping, reproducibility, labels, dtypes, threads and input validation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nbnet import MLPClassifier, MLPRegressor
from nbnet.errors import NbnetError

FAST = dict(epochs=3, batch_size=16, learning_rate=1e-2, n_threads=1)


def same_weights(a, b) -> bool:
    wa, wb = a.get_weights() if hasattr(a, "get_weights") else a, b.get_weights() if hasattr(b, "get_weights") else b
    return len(wa) == len(wb) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(wa, wb))


# --- scikit-learn protocol --------------------------------------------------------------------------------
def test_importing_nbnet_does_not_import_sklearn_mlflow_optuna_or_torch():
    code = "import sys, nbnet; print(','.join(m for m in ('sklearn', 'mlflow', 'optuna', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_get_set_params_and_clone():
    from sklearn.base import clone, is_classifier, is_regressor

    est = MLPClassifier((7, 3), activation="tanh", optimizer="nesterov", learning_rate=0.02, seed=5)
    params = est.get_params()
    assert params["hidden_layer_sizes"] == (7, 3) and params["optimizer"] == "nesterov" and params["seed"] == 5
    c = clone(est)
    assert c is not est and c.get_params() == params and not hasattr(c, "layout_")
    assert is_classifier(est) and is_regressor(MLPRegressor())
    assert est.set_params(learning_rate=0.5) is est and est.learning_rate == 0.5
    with pytest.raises(NbnetError, match="unknown parameter 'learnig_rate'"):
        est.set_params(learnig_rate=1)
    assert "activation='tanh'" in repr(est)


def test_cross_val_score_and_grid_search(blobs, regression):
    from sklearn.model_selection import GridSearchCV, cross_val_score

    X, y = blobs
    scores = cross_val_score(MLPClassifier((16,), epochs=15, learning_rate=1e-2, n_threads=1), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8
    gs = GridSearchCV(MLPClassifier((8,), epochs=5, n_threads=1), {"learning_rate": [1e-4, 3e-2]}, cv=2).fit(X, y)
    assert gs.best_params_ == {"learning_rate": 3e-2}
    assert gs.best_estimator_.predict(X).shape == (len(X),)
    Xr, yr = regression
    r2 = cross_val_score(MLPRegressor((32,), epochs=40, learning_rate=1e-2, n_threads=1), Xr, yr, cv=3)
    assert r2.min() > 0.5


def test_score_is_accuracy_and_r2(blobs, regression):
    from sklearn.metrics import accuracy_score, r2_score

    X, y = blobs
    clf = MLPClassifier((16,), **FAST).fit(X, y)
    assert clf.score(X, y) == pytest.approx(accuracy_score(y, clf.predict(X)))
    Xr, yr = regression
    Y2 = np.column_stack([yr, 2 * yr + 1])  # two outputs: R² averaged uniformly
    reg = MLPRegressor((16,), **FAST).fit(Xr, Y2)
    assert reg.predict(Xr).shape == (len(Xr), 2)
    assert reg.score(Xr, Y2) == pytest.approx(r2_score(Y2, reg.predict(Xr)), rel=1e-9)
    reg1 = MLPRegressor((16,), **FAST).fit(Xr, yr)
    assert reg1.predict(Xr).shape == (len(Xr),)
    assert reg1.score(Xr, yr) == pytest.approx(r2_score(yr, reg1.predict(Xr)), rel=1e-9)


# --- weights ---------------------------------------------------------------------------------------------------
def test_get_weights_shapes_and_copies(blobs):
    X, y = blobs
    clf = MLPClassifier((7, 4), **FAST).fit(X, y)
    W = clf.get_weights()
    assert [w.shape for w in W] == [(5, 7), (7,), (7, 4), (4,), (4, 3), (3,)]
    assert all(w.dtype == np.float32 for w in W)
    before = clf.predict_proba(X)
    W[0][:] = 0  # a copy: the model is untouched
    np.testing.assert_array_equal(clf.predict_proba(X), before)


def test_set_weights_validates_shapes(blobs):
    X, y = blobs
    with pytest.raises(NbnetError, match="not fitted"):
        MLPClassifier().set_weights([])
    clf = MLPClassifier((7,), **FAST).fit(X, y)
    W = clf.get_weights()
    for bad, match in [
        (W[:-1], "got 3 arrays, expected 4"),
        ([W[0].T, *W[1:]], "weight array 0 has shape"),
        ([W[0], W[1][:-1], *W[2:]], "weight array 1 has shape"),
        ([np.full_like(W[0], np.nan), *W[1:]], "finite"),
    ]:
        with pytest.raises(NbnetError, match=match) as e:
            clf.set_weights(bad)
        assert "\n" not in str(e.value)
    zero = [np.zeros_like(w) for w in W]
    clf.set_weights(zero)
    np.testing.assert_allclose(clf.predict_proba(X), 1 / 3)  # all logits zero


def test_set_weights_resets_the_optimizer(blobs):
    """Two models with different histories (and so different Adam moments), given the same
    weights, take exactly the same next epoch: the optimizer state was reset."""
    X, y = blobs
    kw = dict(epochs=2, batch_size=32, shuffle=False, n_threads=1)
    a = MLPClassifier((9,), **kw).fit(X, y)
    b = MLPClassifier((9,), **dict(kw, epochs=5)).fit(X, y)
    start = a.get_weights()
    assert b.training_state().optimizer.step > a.training_state().optimizer.step > 0
    for est in (a, b):
        est.set_weights(start)
        moments = est.training_state().optimizer
        assert moments.step == 0 and not moments.m.any() and not moments.v.any()
        est.partial_fit(X, y)
    assert same_weights(a, b)


# --- partial_fit ----------------------------------------------------------------------------------------------
def test_two_partial_fits_equal_a_two_epoch_fit(blobs):
    """partial_fit keeps the weights, the optimizer state (Adam moments, step count) and the
    shuffling state, so two calls are bit-identical to fit(epochs=2) with the same seed."""
    X, y = blobs
    kw = dict(batch_size=16, seed=4, n_threads=1, shuffle=True, dropout=0.2)
    full = MLPClassifier((12,), epochs=2, **kw).fit(X, y)
    inc = MLPClassifier((12,), epochs=1, **kw)
    inc.partial_fit(X, y)
    assert inc.n_epochs_ == 1 and inc.training_state().optimizer.step == 15  # ceil(240 / 16) steps
    inc.partial_fit(X, y)
    assert inc.n_epochs_ == 2 and inc.training_state().optimizer.step == 30 and len(inc.history_["loss"]) == 2
    assert same_weights(full, inc)
    # control: resetting the optimizer between the calls gives different weights
    ctl = MLPClassifier((12,), epochs=1, **kw)
    ctl.partial_fit(X, y)
    ctl.set_weights(ctl.get_weights())
    ctl.partial_fit(X, y)
    assert not same_weights(full, ctl)


def test_partial_fit_with_classes_given_up_front(blobs):
    X, y = blobs
    clf = MLPClassifier((8,), **FAST)
    first = y != 2
    clf.partial_fit(X[first], y[first], classes=[0, 1, 2])
    assert list(clf.classes_) == [0, 1, 2] and clf.predict_proba(X).shape == (len(X), 3)
    clf.partial_fit(X[~first], y[~first])  # class 2 arrives later
    with pytest.raises(NbnetError, match="label 7 not seen"):
        clf.partial_fit(X[:3], [0, 1, 7])
    with pytest.raises(NbnetError, match="features"):
        clf.partial_fit(X[:, :2], y)


# --- callbacks, history, verbose ---------------------------------------------------------------------------
def test_callbacks_receive_epoch_and_logs_and_can_stop(blobs):
    X, y = blobs
    seen = []

    def cb(epoch, logs):
        seen.append((epoch, logs))
        return epoch == 3  # stop after the third epoch

    class Obj:
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, epoch, logs):
            self.epochs.append(epoch)

    obj = Obj()
    clf = MLPClassifier((8, 5), epochs=10, n_threads=1).fit(X[:200], y[:200], validation_data=(X[200:], y[200:]), callbacks=[cb, obj])
    assert [e for e, _ in seen] == [1, 2, 3] and obj.epochs == [1, 2, 3]  # every callback still runs
    assert clf.n_epochs_ == 3 and len(clf.history_["loss"]) == 3
    logs = seen[-1][1]
    assert set(logs) == {"loss", "val_loss", "val_accuracy", "epoch_time", "lr", "grad_norm_0", "grad_norm_1", "grad_norm_2"}
    assert logs["loss"] == clf.history_["loss"][-1] and 0 <= logs["val_accuracy"] <= 1
    assert logs["val_accuracy"] == pytest.approx(clf.score(X[200:], y[200:]))


def test_history_contents(blobs):
    X, y = blobs
    clf = MLPClassifier((16, 8), epochs=6, learning_rate=1e-2, n_threads=1).fit(X, y)
    h = clf.history_
    assert set(h) == {"loss", "val_loss", "val_accuracy", "grad_norm", "lr", "epoch_time"}
    assert all(len(v) == 6 for v in h.values())
    assert np.isnan(h["val_loss"]).all() and np.isnan(h["val_accuracy"]).all()  # no validation data
    assert all(len(g) == 3 and min(g) > 0 for g in h["grad_norm"])  # one norm per layer
    assert min(h["epoch_time"]) > 0
    assert h["loss"][-1] < h["loss"][0] * 0.5
    reg = MLPRegressor((8,), epochs=2, n_threads=1, early_stopping=True).fit(X, y.astype(float))
    assert set(reg.history_) == {"loss", "val_loss", "val_r2", "grad_norm", "lr", "epoch_time"}
    assert np.isfinite(reg.history_["val_loss"]).all() and np.isfinite(reg.history_["val_r2"]).all()


def test_verbose_prints_one_line_per_epoch(blobs, capsys):
    X, y = blobs
    MLPClassifier((8,), epochs=4, verbose=True, n_threads=1).fit(X[:200], y[:200], validation_data=(X[200:], y[200:]))
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.strip()]
    assert len(lines) == 4
    for i, ln in enumerate(lines, 1):
        assert f"epoch   {i}/4" in ln and "loss" in ln and "val_accuracy" in ln and ln.endswith("s")
    MLPClassifier((8,), epochs=2, n_threads=1).fit(X, y)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# --- early stopping ---------------------------------------------------------------------------------------------
def test_early_stopping_restores_the_best_weights():
    """Random validation labels: the validation loss soon rises while the training loss falls.
    Training stops `patience` epochs after the best one and keeps that epoch's weights."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(240, 5)), rng.integers(0, 3, 240)
    Xv, yv = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    snaps = []
    clf = MLPClassifier((64,), epochs=80, batch_size=16, learning_rate=1e-2, early_stopping=True, patience=3, n_threads=1)
    clf.fit(X, y, validation_data=(Xv, yv), callbacks=[lambda epoch, logs: snaps.append(clf.get_weights())])
    vl = clf.history_["val_loss"]
    best = int(np.argmin(vl))
    assert clf.n_epochs_ < 80, "the validation loss must have stopped improving"
    assert clf.best_epoch_ == best + 1 and clf.n_epochs_ == best + 1 + 3
    assert same_weights(clf.get_weights(), snaps[best])
    assert not same_weights(clf.get_weights(), snaps[-1])
    Yv = np.eye(3)[yv]
    p = np.clip(clf.predict_proba(Xv), 1e-300, 1)
    assert -np.mean(np.sum(Yv * np.log(p), axis=1)) == pytest.approx(min(vl), rel=1e-4)


def test_early_stopping_holds_out_a_stratified_validation_fraction(blobs):
    X, y = blobs
    clf = MLPClassifier((8,), epochs=3, early_stopping=True, validation_fraction=0.25, n_threads=1).fit(X, y)
    assert np.isfinite(clf.history_["val_loss"]).all() and clf.best_epoch_ >= 1
    assert clf.training_state().optimizer.step == 3 * int(np.ceil(180 / 32))  # trained on the remaining 75 %


# --- reproducibility, initialisation, labels, dtypes, threads ---------------------------------------------------
def test_same_seed_same_data_same_threads_identical_weights(blobs):
    X, y = blobs
    kw = dict(epochs=3, batch_size=8, dropout=0.3, noise_std=0.05, n_threads=2)
    a = MLPClassifier((32, 16), seed=11, **kw).fit(X, y)
    b = MLPClassifier((32, 16), seed=11, **kw).fit(X, y)
    c = MLPClassifier((32, 16), seed=12, **kw).fit(X, y)
    assert same_weights(a, b)
    assert not same_weights(a, c)
    # a second fit of the same estimator starts over: fit is not a warm start
    assert same_weights(a.fit(X, y), b)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_initialisation_he_or_glorot_from_the_seed(activation):
    X, y = np.random.default_rng(1).normal(size=(50, 400)), np.arange(50) % 2
    got = {}

    class Grab:
        def on_train_begin(self, est):
            got.setdefault("w", est.get_weights())

    MLPClassifier((300,), activation=activation, epochs=1, seed=3, n_threads=1).fit(X, y, callbacks=[Grab()])
    W1, b1, W2, b2 = got["w"]
    assert not b1.any() and not b2.any()
    if activation == "relu":  # He normal: std sqrt(2 / fan_in)
        assert W1.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
        assert abs(W1.mean()) < 0.01 * np.sqrt(2 / 400) * 10
    else:  # Glorot uniform: U(-lim, lim), lim = sqrt(6 / (fan_in + fan_out))
        lim = np.sqrt(6 / 700)
        assert np.abs(W1).max() <= lim and np.abs(W1).max() > 0.99 * lim
        assert W1.std() == pytest.approx(lim / np.sqrt(3), rel=0.02)
    got.clear()
    MLPClassifier((300,), activation=activation, epochs=1, seed=3, n_threads=1).fit(X, y, callbacks=[Grab()])
    assert np.array_equal(got["w"][0], W1)


@pytest.mark.parametrize(
    "labels",
    [np.array(["cat", "dog", "emu"]), np.array([-7, 3, 1000]), np.array(["no", "yes"]), np.array([5, 2])],
)
def test_labels_of_any_ints_or_strings(blobs, labels):
    X, y = blobs
    k = len(labels)
    yl = labels[y % k]
    clf = MLPClassifier((16,), epochs=10, learning_rate=1e-2, n_threads=1).fit(X, yl)
    np.testing.assert_array_equal(clf.classes_, np.sort(labels))
    pred = clf.predict(X)
    assert pred.dtype.kind == labels.dtype.kind and set(pred) <= set(labels)
    P = clf.predict_proba(X)
    assert P.shape == (len(X), k) and np.allclose(P.sum(1), 1)
    np.testing.assert_array_equal(pred, clf.classes_[P.argmax(1)])
    assert clf.score(X, yl) > 0.6
    assert clf.loss_ == ("binary_cross_entropy" if k == 2 else "cross_entropy")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float32_and_float64(blobs, dtype):
    X, y = blobs
    clf = MLPClassifier((16,), epochs=10, learning_rate=1e-2, dtype=dtype, n_threads=1).fit(X, y)
    assert all(w.dtype == np.dtype(dtype) for w in clf.get_weights())
    assert clf.predict_proba(X).dtype == np.float64
    assert clf.score(X, y) > 0.9
    ref = MLPClassifier((16,), epochs=10, learning_rate=1e-2, dtype="float64", n_threads=1).fit(X, y)
    # float32 follows the float64 trajectory closely for a few epochs
    diff = max(np.abs(a.astype(np.float64) - b).max() for a, b in zip(clf.get_weights(), ref.get_weights()))
    assert diff < (1e-4 if dtype == "float32" else 1e-15)


@pytest.mark.parametrize("n", [1, 2])
def test_n_threads_sets_the_blas_limit_inside_fit(blobs, n):
    from threadpoolctl import threadpool_info

    X, y = blobs
    seen = []
    before = {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
    cb = lambda epoch, logs: seen.append({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})  # noqa: E731
    MLPClassifier((8,), epochs=2, n_threads=n).fit(X, y, callbacks=[cb])
    assert seen == [{n}, {n}]
    after = {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
    assert after == before  # restored when fit returns


def test_nbnet_num_threads_environment_variable(blobs, monkeypatch):
    from threadpoolctl import threadpool_info

    X, y = blobs
    seen = []
    monkeypatch.setenv("NBNET_NUM_THREADS", "1")
    cb = lambda epoch, logs: seen.append({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"})  # noqa: E731
    MLPClassifier((8,), epochs=1).fit(X, y, callbacks=[cb])
    assert seen == [{1}]
    monkeypatch.setenv("NBNET_NUM_THREADS", "many")
    with pytest.raises(NbnetError, match="NBNET_NUM_THREADS"):
        MLPClassifier((8,), epochs=1).fit(X, y)


# --- input validation -------------------------------------------------------------------------------------------
def _one_line_error(fn, match):
    with pytest.raises(NbnetError, match=match) as e:
        fn()
    assert str(e.value) and "\n" not in str(e.value)


GOOD_X = np.random.default_rng(0).normal(size=(20, 3))
GOOD_Y = np.arange(20) % 2


@pytest.mark.parametrize(
    "X,y,match",
    [
        (np.where(np.eye(20, 3) > 0, np.nan, GOOD_X), GOOD_Y, "NaN or inf"),
        (np.where(np.eye(20, 3) > 0, np.inf, GOOD_X), GOOD_Y, "NaN or inf"),
        (GOOD_X[:, 0], GOOD_Y, "must be 2-D.*Reshape your data"),
        (GOOD_X[None], GOOD_Y, "must be 2-D"),
        (GOOD_X, GOOD_Y[:-1], "20 samples but y has 19"),
        (np.array([["a", "b", "c"]] * 20), GOOD_Y, "must be numeric"),
        (np.array([[1.0, "a", 2.0]] * 20, dtype=object), GOOD_Y, "must be numeric"),
        (np.array([[1.0, None, 2.0]] * 20, dtype=object), GOOD_Y, "NaN"),  # None is missing
        ([[1.0, 2.0], [3.0]], [0, 1], "could not be read"),
        (GOOD_X, np.zeros(20), "only one class"),
        (GOOD_X, np.array(["x"] * 20), "only one class"),
        (np.zeros((0, 3)), np.zeros(0), r"0 sample\(s\) \(shape=\(0, 3\)\) while a minimum of 1 is required"),
        (np.zeros((20, 0)), GOOD_Y, r"0 feature\(s\) \(shape=\(20, 0\)\) while a minimum of 1 is required"),
        (GOOD_X + 1j, GOOD_Y, "Complex data not supported"),
        (GOOD_X, np.where(GOOD_Y > 0, np.nan, 0.0), "NaN or inf"),
        (GOOD_X, np.zeros((20, 2, 2)), "y must be 1-D"),
        (GOOD_X, None, "MLPClassifier requires y to be passed, but the target y is None"),
        (GOOD_X, GOOD_X[:, 0], "continuous values"),
    ],
)
def test_bad_training_input_raises_one_line(X, y, match):
    _one_line_error(lambda: MLPClassifier((4,), epochs=1).fit(X, y), match)


def test_sparse_input_is_refused_with_a_hint():
    from scipy import sparse

    _one_line_error(lambda: MLPClassifier((4,), epochs=1).fit(sparse.csr_matrix(GOOD_X), GOOD_Y), "sparse.*toarray")


def test_numbers_in_an_object_array_are_accepted():
    """A DataFrame with mixed column types gives an object array of numbers: that is numeric."""
    kw = dict(epochs=2, n_threads=1)
    a = MLPClassifier((4,), **kw).fit(GOOD_X.astype(object), GOOD_Y)
    b = MLPClassifier((4,), **kw).fit(GOOD_X, GOOD_Y)
    assert same_weights(a, b)
    np.testing.assert_array_equal(a.predict_proba(GOOD_X.astype(object)), b.predict_proba(GOOD_X))


def test_bad_regression_targets():
    _one_line_error(lambda: MLPRegressor((4,), epochs=1).fit(GOOD_X, np.array(["a"] * 20)), "numeric")
    _one_line_error(lambda: MLPRegressor((4,), epochs=1).fit(GOOD_X, np.full(20, np.inf)), "NaN or inf")


def test_bad_prediction_input_raises_one_line():
    clf = MLPClassifier((4,), epochs=1, n_threads=1).fit(GOOD_X, GOOD_Y)
    _one_line_error(lambda: MLPClassifier().predict(GOOD_X), "not fitted yet")
    _one_line_error(lambda: clf.predict(GOOD_X[:, :2]), "X has 2 features, but MLPClassifier is expecting 3 features")
    _one_line_error(lambda: clf.predict(GOOD_X[0]), r"Reshape your data: X.reshape\(1, -1\)")
    _one_line_error(lambda: clf.predict_proba(np.full((2, 3), np.nan)), "NaN")
    _one_line_error(lambda: clf.predict(np.zeros((0, 3))), "0 sample")
    _one_line_error(lambda: clf.predict(np.array([["1", "2", "x"]])), "numeric")
    _one_line_error(lambda: clf.fit(GOOD_X, GOOD_Y, validation_data=(GOOD_X[:, :2], GOOD_Y)), "features")


@pytest.mark.parametrize(
    "params,match",
    [
        (dict(hidden_layer_sizes=(4, 0)), "hidden_layer_sizes"),
        (dict(hidden_layer_sizes="big"), "hidden_layer_sizes"),
        (dict(activation="swish"), "unknown activation"),
        (dict(activation=["relu"]), "unknown activation"),
        (dict(optimizer="rmsprop"), "unknown optimizer"),
        (dict(learning_rate=0), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(learning_rate="fast"), "learning_rate"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(epochs=0), "epochs"),
        (dict(l2=-1), "l2"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout="half"), "dropout"),
        (dict(optimizer="momentum", momentum=1.0), "momentum"),
        (dict(optimizer="momentum", momentum="high"), "momentum"),
        (dict(optimizer="sgd", nesterov=True), "nesterov needs momentum"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(betas=0.9), "betas"),
        (dict(eps=0), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(clip_norm=0), "clip_norm"),
        (dict(validation_fraction=1.0), "validation_fraction"),
        (dict(validation_fraction=None), "validation_fraction"),
        (dict(patience=0), "patience"),
        (dict(seed=-1), "seed"),
        (dict(seed=None), "seed"),
        (dict(dtype="float16"), "dtype"),
        (dict(device="tpu"), "unknown device"),
        (dict(n_threads=0), "n_threads"),
        (dict(n_threads="all"), "n_threads"),
        (dict(image_shape=(2,)), "image_shape"),
    ],
)
def test_bad_hyperparameters_raise_one_line(params, match):
    _one_line_error(lambda: MLPClassifier(**{"epochs": 1, **params}).fit(GOOD_X, GOOD_Y), match)


# --- scikit-learn's error types ---------------------------------------------------------------------------------
def test_predict_before_fit_is_sklearn_not_fitted_error():
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    for est in (MLPClassifier(), MLPRegressor()):
        with pytest.raises(NotFittedError, match="not fitted yet") as e:
            est.predict(GOOD_X)
        assert isinstance(e.value, NbnetError) and "\n" not in str(e.value)
        assert not hasattr(est, "params_")  # an AttributeError as well, as scikit-learn's
        with pytest.raises(NotFittedError):
            check_is_fitted(est)
    check_is_fitted(MLPClassifier((4,), epochs=1).fit(GOOD_X, GOOD_Y))


def test_a_value_that_is_no_number_is_a_type_error():
    from nbnet.errors import DataTypeError

    X = GOOD_X.astype(object)
    X[0, 0] = {"foo": "bar"}
    with pytest.raises(TypeError, match="argument must be .* string.* number") as e:
        MLPClassifier((4,), epochs=1).fit(X, GOOD_Y)
    assert isinstance(e.value, DataTypeError) and isinstance(e.value, NbnetError) and "\n" not in str(e.value)


def test_a_column_vector_y_warns_for_a_classifier_only():
    import warnings

    from sklearn.exceptions import DataConversionWarning

    with pytest.warns(DataConversionWarning, match="A column-vector y was passed when a 1d array was expected"):
        a = MLPClassifier((4,), epochs=2, n_threads=1).fit(GOOD_X, GOOD_Y[:, None])
    b = MLPClassifier((4,), epochs=2, n_threads=1).fit(GOOD_X, GOOD_Y)
    assert same_weights(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a regressor takes (n, 1) as one output: nothing to warn about
        reg = MLPRegressor((4,), epochs=1, n_threads=1).fit(GOOD_X, GOOD_X[:, :1])
    assert reg.predict(GOOD_X).shape == (len(GOOD_X),)


def test_regression_targets_in_an_object_array_are_numbers():
    y = GOOD_X[:, 0]
    a = MLPRegressor((4,), epochs=2, n_threads=1).fit(GOOD_X, y.astype(object))
    b = MLPRegressor((4,), epochs=2, n_threads=1).fit(GOOD_X, y)
    assert same_weights(a, b)


# --- feature names ----------------------------------------------------------------------------------------------
@pytest.fixture
def frame():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(3)
    X = pd.DataFrame({"bill": rng.normal(size=60), "flipper": rng.normal(size=60), "mass": rng.normal(size=60)})
    y = (X["bill"] + 0.5 * X["mass"] > 0).astype(int).to_numpy()
    return X, y


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_fit_on_a_frame_learns_feature_names(cls, frame):
    X, y = frame
    est = cls((4,), epochs=2, n_threads=1).fit(X, y)
    assert isinstance(est.feature_names_in_, np.ndarray) and est.feature_names_in_.dtype == object
    assert est.feature_names_in_.tolist() == ["bill", "flipper", "mass"] and est.n_features_in_ == 3
    est.fit(X.to_numpy(), y)  # refitted on an array: the names are gone, as in scikit-learn
    assert not hasattr(est, "feature_names_in_")
    X.columns = [0, 1, 2]  # unnamed columns (a CSV read without a header) are no names
    assert not hasattr(cls((4,), epochs=1).fit(X, y), "feature_names_in_")


def test_a_frame_with_columns_in_another_order_is_reordered(frame):
    X, y = frame
    clf = MLPClassifier((4,), epochs=3, n_threads=1).fit(X, y)
    shuffled = X[["mass", "bill", "flipper"]]
    np.testing.assert_array_equal(clf.predict_proba(shuffled), clf.predict_proba(X))
    # the same columns by position would give other probabilities: the reorder is what makes them equal
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        assert not np.array_equal(clf.predict_proba(shuffled.to_numpy()), clf.predict_proba(X))
    assert clf.score(shuffled, y) == clf.score(X, y)


def test_missing_or_unknown_columns_are_one_clear_error(frame):
    X, y = frame
    clf = MLPClassifier((4,), epochs=1, n_threads=1).fit(X, y)
    _one_line_error(lambda: clf.predict(X[["bill", "mass"]]), r"lacks \['flipper'\]")
    _one_line_error(lambda: clf.predict(X.rename(columns={"mass": "weight"})),
                    r"lacks \['mass'\] and has unknown \['weight'\]; pass the columns \['bill', 'flipper', 'mass'\]")
    _one_line_error(lambda: clf.predict(X.assign(extra=1.0)), r"has unknown \['extra'\]")
    _one_line_error(lambda: clf.partial_fit(X[["bill", "mass"]], y), "lacks")


def test_arrays_are_taken_by_position_with_sklearns_warning(frame):
    X, y = frame
    clf = MLPClassifier((4,), epochs=2, n_threads=1).fit(X, y)
    with pytest.warns(UserWarning, match="X does not have valid feature names, but MLPClassifier was fitted with"):
        P = clf.predict_proba(X.to_numpy())
    np.testing.assert_array_equal(P, clf.predict_proba(X))
    plain = MLPClassifier((4,), epochs=2, n_threads=1).fit(X.to_numpy(), y)
    with pytest.warns(UserWarning, match="X has feature names, but MLPClassifier was fitted without feature names"):
        plain.predict(X)


def test_validation_frames_are_matched_by_name_and_the_holdout_is_not_warned_about(frame):
    import warnings

    X, y = frame
    kw = dict(epochs=2, n_threads=1)
    a = MLPClassifier((4,), **kw).fit(X, y, validation_data=(X[["mass", "flipper", "bill"]], y))
    b = MLPClassifier((4,), **kw).fit(X, y, validation_data=(X, y))
    assert a.history_["val_loss"] == b.history_["val_loss"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rows early stopping holds out of X are X's columns already
        c = MLPClassifier((4,), early_stopping=True, **kw).fit(X, y)
    assert len(c.history_["val_loss"]) == 2 and c.feature_names_in_.tolist() == X.columns.tolist()


def test_column_names_of_mixed_types_are_refused(frame):
    from nbnet.errors import DataTypeError

    X, y = frame
    X.columns = ["bill", 1, "mass"]
    with pytest.raises(DataTypeError, match="only supported if all input features have string names"):
        MLPClassifier((4,), epochs=1).fit(X, y)


def test_feature_names_are_saved_and_checked_after_load(frame, tmp_path):
    import nbnet
    from nbnet.io import read_bundle, write_bundle

    X, y = frame
    clf = MLPClassifier((4,), epochs=2, n_threads=1).fit(X, y)
    clf.save(tmp_path / "m.nbnet")
    meta, arrays = read_bundle(tmp_path / "m.nbnet")
    assert meta["feature_names_in"] == ["bill", "flipper", "mass"]
    back = nbnet.load(tmp_path / "m.nbnet")
    assert back.feature_names_in_.tolist() == ["bill", "flipper", "mass"] and back.feature_names_in_.dtype == object
    np.testing.assert_array_equal(back.predict_proba(X[["flipper", "mass", "bill"]]), clf.predict_proba(X))
    _one_line_error(lambda: back.predict(X[["bill", "mass"]]), "lacks")
    # a file written without the field (by an nbnet that did not save it) loads, and takes columns by position
    del meta["feature_names_in"]
    write_bundle(tmp_path / "old.nbnet", meta, arrays)
    old = nbnet.load(tmp_path / "old.nbnet")
    assert not hasattr(old, "feature_names_in_")
    np.testing.assert_array_equal(old.predict_proba(X.to_numpy()), clf.predict_proba(X))
    meta["feature_names_in"] = ["bill", "mass"]  # not one name per feature: a damaged file
    write_bundle(tmp_path / "bad.nbnet", meta, arrays)
    _one_line_error(lambda: nbnet.load(tmp_path / "bad.nbnet"), "feature_names_in")


def test_nbnet_predict_reads_a_file_by_the_names_of_a_frame_fitted_model(frame, tmp_path, capsys):
    import warnings

    import pandas as pd

    from nbnet.cli import main

    X, y = frame
    clf = MLPClassifier((4,), epochs=2, n_threads=1).fit(X, y)
    clf.save(tmp_path / "m.nbnet")
    X[["mass", "bill", "flipper"]].assign(id=range(len(X))).to_csv(tmp_path / "in.csv", index=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code = main(["predict", str(tmp_path / "m.nbnet"), str(tmp_path / "in.csv"), "-o", str(tmp_path / "p.csv")])
    assert code == 0 and not [w for w in seen if "feature names" in str(w.message)]  # read by name: no warning
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy(), clf.predict(X))


def test_the_sklearn_based_types_load_sklearn_only_when_used():
    code = ("import sys, nbnet, nbnet.errors as e; a = 'sklearn' in sys.modules\n"
            "try:\n    nbnet.MLPClassifier().predict([[1.0]])\nexcept e.NbnetError as x:\n    t = type(x)\n"
            "from sklearn.exceptions import NotFittedError\n"
            "print(a, t is e.NotFittedError, issubclass(t, NotFittedError))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]


# --- docs/library.md ---------------------------------------------------------------------------------------------
LIBRARY_MD = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def _doc_snippets(section: str) -> list[str]:
    """The ```python blocks of one ``## section`` of docs/library.md (its ### parts included)."""
    text = LIBRARY_MD.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_library_md_sklearn_snippets_run_as_written(tmp_path, monkeypatch):
    import nbnet

    pytest.importorskip("pandas")
    monkeypatch.chdir(tmp_path)  # the snippet saves cancer.nbnet in the working directory
    blocks = _doc_snippets("With scikit-learn")
    assert len(blocks) == 2
    ns: dict = {}
    for code in blocks:
        exec(compile(code, str(LIBRARY_MD), "exec"), ns)
    assert ns["scores"].shape == (3,) and ns["scores"].min() > 0.9
    grid = ns["grid"]
    assert set(grid.best_params_) == {"mlpclassifier__hidden_layer_sizes", "mlpclassifier__learning_rate"}
    X_test, y_test, clf = ns["X_test"], ns["y_test"], ns["clf"]
    assert grid.score(X_test, y_test) > 0.9
    assert grid.best_estimator_[-1].feature_names_in_.tolist() == X_test.columns.tolist()
    assert clf.feature_names_in_.tolist() == X_test.columns.tolist()
    np.testing.assert_array_equal(clf.predict_proba(X_test[X_test.columns[::-1]]), clf.predict_proba(X_test))
    assert nbnet.load(tmp_path / "cancer.nbnet").feature_names_in_.tolist() == X_test.columns.tolist()
