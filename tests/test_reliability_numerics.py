"""Numerical guards: divergence is reported with its epoch; extreme values stay finite where the
mathematics allows; float32 and float64 alike."""

from __future__ import annotations

import numpy as np
import pytest

from nbnet import MLPClassifier, MLPRegressor
from nbnet.errors import DivergedError, NbnetError

DTYPES = ["float32", "float64"]


def regression(n=64, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, X @ rng.normal(size=d) * 10


@pytest.mark.parametrize("dtype", DTYPES)
def test_exploding_loss_raises_diverged_at_epoch_k(dtype):
    X, y = regression()
    seen = []
    est = MLPRegressor((8,), optimizer="sgd", learning_rate=1.0, batch_size=None, epochs=200, dtype=dtype, seed=0)
    with pytest.raises(DivergedError) as exc:
        est.fit(X, y, callbacks=[lambda epoch, logs: seen.append(logs["loss"])])
    e = exc.value
    assert isinstance(e, NbnetError)
    # every epoch before k was finite and reported; epoch k is the first non-finite one
    assert e.epoch == len(seen) + 1 > 1
    assert all(np.isfinite(seen)) and seen[-1] > seen[0]
    assert f"diverged at epoch {e.epoch}" in str(e) and "\n" not in str(e)
    assert not np.isfinite(e.loss)
    assert est.n_epochs_ == e.epoch - 1


@pytest.mark.parametrize("dtype, lr", [("float32", 3e38), ("float64", 1e308)])
def test_weights_overflowing_in_the_last_step_are_divergence(dtype, lr):
    """The epoch's loss is computed before its last step: a step that overflows the weights must
    not hand back a model full of inf."""
    X, y = regression()
    with pytest.raises(DivergedError, match="diverged at epoch 1"):
        MLPRegressor((8,), optimizer="sgd", learning_rate=lr, batch_size=None, epochs=1, dtype=dtype).fit(X, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_divergence_in_a_classifier_with_huge_learning_rate(dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5)) * 1e3
    y = X[:, 0] > 0
    with pytest.raises(DivergedError, match=r"diverged at epoch \d+"):
        MLPClassifier((8,), optimizer="sgd", learning_rate=1e36 if dtype == "float32" else 1e306,
                      batch_size=4, epochs=50, dtype=dtype).fit(X, y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "sigmoid", "elu", "softplus", "identity"])
def test_extreme_inputs_give_finite_probabilities_and_losses(dtype, activation):
    """log/exp clamped: logits around 1e30 must not turn into inf - inf = NaN anywhere."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 4))
    y = rng.integers(0, 3, size=30)
    clf = MLPClassifier((5,), activation=activation, epochs=2, dtype=dtype, seed=0, n_threads=1).fit(X, y)
    Xbig = X * 1e28  # finite in float32, logits ~1e28-1e30
    P = clf.predict_proba(Xbig)
    assert np.all(np.isfinite(P)) and np.all((P >= 0) & (P <= 1))
    np.testing.assert_allclose(P.sum(1), 1, rtol=1e-5)
    # training on such data reports finite losses (the cross-entropy of huge logits is huge, not inf)
    losses = []
    MLPClassifier((5,), activation=activation, epochs=1, dtype=dtype, optimizer="sgd", learning_rate=1e-40,
                  seed=0, n_threads=1).fit(Xbig, y, callbacks=[lambda e, logs: losses.append(logs["loss"])])
    assert np.isfinite(losses[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_classifier_extreme_logits(dtype):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(20, 3))
    y = X[:, 0] > 0
    clf = MLPClassifier((4,), epochs=2, dtype=dtype, seed=0).fit(X, y)
    P = clf.predict_proba(X * 1e30)
    assert np.all(np.isfinite(P)) and np.all((P >= 0) & (P <= 1))
    np.testing.assert_allclose(P.sum(1), 1)


def test_values_beyond_float32_range_are_a_clear_error():
    X, y = regression()
    X[3, 1] = 1e39  # float32 max is 3.4e38
    with pytest.raises(NbnetError, match=r"beyond the float32 range \(first at row 3\)"):
        MLPRegressor((4,), epochs=1).fit(X, y)
    MLPRegressor((4,), epochs=1, dtype="float64", learning_rate=1e-30).fit(X, y)  # float64 holds it
    est = MLPRegressor((4,), epochs=1).fit(*regression())
    with pytest.raises(NbnetError, match="beyond the float32 range"):
        est.predict(X)
