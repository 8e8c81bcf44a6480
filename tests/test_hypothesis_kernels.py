"""Property tests: the compiled kernels against a slow NumPy reference on random shapes (batch 1,
odd widths, zero to two hidden layers), every activation and loss, float32 and float64.

The reference is written from the textbook definitions (derivatives of the pre-activation, not of
the output as the kernels do) and runs in float64; float32 kernels are compared with a tolerance.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nbnet.kernels import cpu as K
from nbnet.model import Layout

SETTINGS = settings(max_examples=120, deadline=None)


# --- the reference (float64) ---------------------------------------------------------------------
def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


ACT = {
    "identity": (lambda z: z, lambda z: np.ones_like(z)),
    "relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(float)),
    "leaky_relu": (lambda z: np.where(z > 0, z, K.LEAKY_SLOPE * z), lambda z: np.where(z > 0, 1.0, K.LEAKY_SLOPE)),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * (1 - _sigmoid(z))),
    "elu": (lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))), lambda z: np.where(z > 0, 1.0, np.exp(np.minimum(z, 0)))),
    "softplus": (lambda z: np.logaddexp(0, z), _sigmoid),
}


def ref_loss_and_grads(X, Y, weights, act, loss, l2):
    """Mean loss (+ penalty-free data part) and gradients [dW1, db1, ...] of the batch mean."""
    f, df = ACT[act]
    A, Zs = [X], []
    L = len(weights) // 2
    for l in range(L):
        Z = A[-1] @ weights[2 * l] + weights[2 * l + 1]
        Zs.append(Z)
        A.append(f(Z) if l < L - 1 else Z)
    Z = A[-1]
    B, k = Z.shape
    if loss == "mse":
        value = np.mean(np.sum((Z - Y) ** 2, 1) / k)
        dZ = 2 * (Z - Y) / (B * k)
    elif loss == "cross_entropy":
        lse = np.logaddexp.reduce(Z, axis=1, keepdims=True)
        value = np.mean(np.sum(Y * (lse - Z), 1))
        dZ = (np.exp(Z - lse) * Y.sum(1, keepdims=True) - Y) / B
    else:  # binary cross-entropy on logits, summed over outputs
        value = np.mean(np.sum(np.logaddexp(0, Z) - Z * Y, 1))
        dZ = (_sigmoid(Z) - Y) / B
    grads = [None] * len(weights)
    for l in range(L - 1, -1, -1):
        grads[2 * l] = A[l].T @ dZ + l2 * weights[2 * l]
        grads[2 * l + 1] = dZ.sum(0)
        if l > 0:
            dZ = (dZ @ weights[2 * l].T) * df(Zs[l - 1])
    return value, grads


def ref_output(X, weights, act, loss):
    f, _ = ACT[act]
    A = X
    L = len(weights) // 2
    for l in range(L):
        Z = A @ weights[2 * l] + weights[2 * l + 1]
        A = f(Z) if l < L - 1 else Z
    if loss == "cross_entropy":
        return np.exp(A - np.logaddexp.reduce(A, axis=1, keepdims=True))
    if loss == "binary_cross_entropy":
        return _sigmoid(A)
    return A


# --- random problems -----------------------------------------------------------------------------
N_OUT = {"mse": (1, 4), "cross_entropy": (2, 5), "binary_cross_entropy": (1, 3)}


@st.composite
def problems(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    loss = draw(st.sampled_from(sorted(K.LOSSES)))
    act = draw(st.sampled_from(sorted(K.ACTIVATIONS)))
    B = draw(st.integers(1, 7))
    n_in = draw(st.integers(1, 7))
    hidden = tuple(draw(st.lists(st.integers(1, 9), max_size=2)))
    n_out = draw(st.integers(*N_OUT[loss]))
    l2 = draw(st.sampled_from([0.0, 0.1]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lay = Layout.build(n_in, hidden, n_out, act)
    params = (rng.normal(size=lay.n_params) * 0.8).astype(dtype)
    X = rng.normal(size=(B, n_in)).astype(dtype)
    if loss == "mse":
        Y = rng.normal(size=(B, n_out))
    elif loss == "cross_entropy":
        Y = np.eye(n_out)[rng.integers(n_out, size=B)]
    else:
        Y = rng.integers(0, 2, size=(B, n_out)).astype(float)
    return dict(dtype=dtype, loss=loss, act=act, lay=lay, params=params, X=X, Y=Y.astype(dtype), l2=l2)


def tol(dtype, ref):
    scale = max(1.0, float(np.max(np.abs(ref))) if np.size(ref) else 1.0)
    return dict(rtol=1e-9, atol=1e-10 * scale) if dtype == np.float64 else dict(rtol=2e-3, atol=2e-4 * scale)


def f64(p):
    return [w.astype(np.float64) for w in p["lay"].views(p["params"])]


@SETTINGS
@given(problems())
def test_forward_matches_reference(p):
    lay, dtype = p["lay"], p["dtype"]
    for loss_arg, name in ((-1, "mse"), (K.LOSSES[p["loss"]], p["loss"])):  # logits, then predictions
        out = np.empty((p["X"].shape[0], int(lay.sizes[-1])), dtype)
        K.forward(p["X"], p["params"], *lay.kernel_args(), loss_arg, out)
        ref = ref_output(p["X"].astype(np.float64), f64(p), p["act"], name)
        assert out.dtype == dtype
        np.testing.assert_allclose(out, ref, **tol(dtype, ref))


@SETTINGS
@given(problems())
def test_loss_and_gradient_match_reference(p):
    lay, dtype = p["lay"], p["dtype"]
    grads = np.full_like(p["params"], np.nan)  # every entry must be written
    value = K.batch_gradient(p["X"], p["Y"], p["params"], grads, *lay.kernel_args(), K.LOSSES[p["loss"]], p["l2"])
    ref_value, ref_grads = ref_loss_and_grads(p["X"].astype(np.float64), p["Y"].astype(np.float64), f64(p),
                                              p["act"], p["loss"], p["l2"])
    np.testing.assert_allclose(value, ref_value, **tol(dtype, ref_value))
    for g, r in zip(lay.views(grads), ref_grads):
        np.testing.assert_allclose(g, r, **tol(dtype, r))
    Xv, Yv = p["X"], p["Y"]
    ev = K.eval_loss(Xv, Yv, p["params"], *lay.kernel_args(), K.LOSSES[p["loss"]])
    np.testing.assert_allclose(ev, ref_value, **tol(dtype, ref_value))


@SETTINGS
@given(problems(), st.integers(1, 8), st.sampled_from([0.0, 0.5]))
def test_sgd_epoch_matches_sequential_reference_steps(p, batch, clip):
    """One compiled epoch without shuffling = plain SGD over the batches in order (batch sizes that
    do not divide n, batch 1, and gradient clipping included)."""
    lay, dtype = p["lay"], p["dtype"]
    X, Y = p["X"], p["Y"]
    n = X.shape[0]
    lr = 0.05
    hp = np.zeros(K.N_HP)
    hp[K.HP_LR], hp[K.HP_L2], hp[K.HP_CLIP] = lr, p["l2"], clip
    hp[K.HP_BETA1], hp[K.HP_BETA2], hp[K.HP_EPS] = 0.9, 0.999, 1e-8
    opt = np.zeros(K.N_OPT, np.int64)
    opt[K.OPT_KIND], opt[K.OPT_BATCH] = K.OPT_SGD, batch
    params = p["params"].copy()
    grads, m, v = np.zeros_like(params), np.zeros_like(params), np.zeros_like(params)
    stats = np.zeros(1 + lay.n_layers)
    K.train_epoch(X, Y, params, grads, m, v, *lay.kernel_args(), K.LOSSES[p["loss"]], hp, opt, K.seed_state(0), stats)

    ref = p["params"].astype(np.float64)
    total = 0.0
    for s in range(0, n, batch):
        e = min(s + batch, n)
        value, g = ref_loss_and_grads(X[s:e].astype(np.float64), Y[s:e].astype(np.float64),
                                      lay.views(ref), p["act"], p["loss"], p["l2"])
        total += value * (e - s)
        flat = np.concatenate([x.ravel() for x in g])
        if clip > 0:
            norm = np.sqrt(np.sum(flat**2))
            flat = flat * min(1.0, clip / (norm + 1e-6)) if norm > clip else flat
        ref = ref - lr * flat
    assert opt[K.OPT_STEP] == -(-n // batch)
    np.testing.assert_allclose(stats[0], total / n, **tol(dtype, total / n))
    np.testing.assert_allclose(params, ref, **tol(dtype, ref))


@SETTINGS
@given(st.sampled_from([np.float32, np.float64]), st.sampled_from(sorted(K.LOSSES)), st.integers(1, 5),
       st.floats(1.0, 1.0, allow_nan=False) | st.floats(1e2, 1e38))
def test_extreme_logits_keep_cross_entropies_finite(dtype, loss, k, magnitude):
    """log/exp are evaluated stably: no inf/NaN for huge logits in either dtype (MSE may
    overflow honestly: its loss *is* that large)."""
    if loss == "cross_entropy":
        k = max(k, 2)
    big = min(magnitude, float(np.finfo(dtype).max) / 8)
    rng = np.random.default_rng(k)
    Z = (rng.choice([-1.0, 1.0], size=(4, k)) * big).astype(dtype)
    Y = np.eye(k)[rng.integers(k, size=4)].astype(dtype) if loss != "mse" else np.zeros((4, k), dtype)
    dZ = np.empty_like(Z)
    value = K.loss_grad(Z, Y, K.LOSSES[loss], dZ)
    assert np.all(np.isfinite(dZ))
    if loss != "mse":
        assert np.isfinite(value) and value >= 0
    P = Z.copy()
    K.output_transform(P, K.LOSSES[loss])
    if loss != "mse":
        assert np.all(np.isfinite(P)) and np.all((P >= 0) & (P <= 1))
    if loss == "cross_entropy":
        np.testing.assert_allclose(P.sum(1), 1, rtol=1e-5)


def test_every_activation_and_loss_is_covered():
    assert set(ACT) == set(K.ACTIVATIONS)
    assert set(N_OUT) == set(K.LOSSES)
