"""Property tests: the compiled kernels against a slow NumPy reference on random shapes (batch 1,
odd widths, zero to two hidden layers), every activation and loss, float32 and float64.

The reference (tests/reference.py) is written from the textbook definitions (derivatives of the
pre-activation, not of the output as the kernels do) and runs in float64; float32 kernels are
compared with a tolerance.
"""

from __future__ import annotations

import os
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import reference as R
from nbnet.kernels import cpu as K
from nbnet.model import Layout

# NBNET_HYPOTHESIS_EXAMPLES=5000 for a long hunt; the default keeps the suite fast
SETTINGS = settings(max_examples=int(os.environ.get("NBNET_HYPOTHESIS_EXAMPLES", 120)), deadline=None)


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
    for loss_arg, name in ((-1, None), (K.LOSSES[p["loss"]], p["loss"])):  # logits, then predictions
        out = np.empty((p["X"].shape[0], int(lay.sizes[-1])), dtype)
        K.forward(p["X"], p["params"], *lay.kernel_args(), loss_arg, out)
        ref = R.network_forward(p["X"], f64(p), p["act"], None if loss_arg == -1 else name)
        assert out.dtype == dtype
        np.testing.assert_allclose(out, ref, **tol(dtype, ref))


@SETTINGS
@given(problems())
def test_loss_and_gradient_match_reference(p):
    lay, dtype = p["lay"], p["dtype"]
    grads = np.full_like(p["params"], np.nan)  # every entry must be written
    value = K.batch_gradient(p["X"], p["Y"], p["params"], grads, *lay.kernel_args(), K.LOSSES[p["loss"]], p["l2"])
    ref_value, ref_grads = R.network_gradient(p["X"], p["Y"], f64(p), p["act"], p["loss"], p["l2"])
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
    opt = np.zeros(K.N_SETTINGS, np.int64)
    opt[K.SETTING_OPTIMIZER], opt[K.SETTING_BATCH] = K.OPT_SGD, batch
    params = p["params"].copy()
    grads, m, v = np.zeros_like(params), np.zeros_like(params), np.zeros_like(params)
    stats = np.zeros(1 + lay.n_layers)
    K.train_epoch(X, Y, params, grads, m, v, *lay.kernel_args(), K.LOSSES[p["loss"]], hp, opt, K.seed_state(0), stats)

    ref = p["params"].astype(np.float64)
    total = 0.0
    for s in range(0, n, batch):
        e = min(s + batch, n)
        with np.errstate(over="ignore", invalid="ignore"):  # diverging draws are assumed away below
            value, g = R.network_gradient(X[s:e], Y[s:e], lay.views(ref), p["act"], p["loss"], p["l2"])
        total += value * (e - s)
        flat = np.concatenate([x.ravel() for x in g])
        if clip > 0:
            norm, clipped = R.clip_grad_norm(flat, clip)
            flat = clipped if norm > clip else flat
        ref = ref - lr * flat
    # SGD at lr 0.05 on batches of 1 can genuinely blow up; that is not a kernel disagreement
    assume(np.all(np.abs(ref) < 1e4) and abs(total) < 1e6)  # (NaN fails these too)
    assert opt[K.SETTING_STEP] == -(-n // batch)
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
    t = np.linspace(-3, 3, 7)
    for name in K.ACTIVATIONS:  # the reference knows every activation the kernels know
        assert R.act(name, t).shape == t.shape and R.act_deriv(name, t).shape == t.shape
    assert set(N_OUT) == set(K.LOSSES)
