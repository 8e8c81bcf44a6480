"""The CPU kernels (nbnet/kernels/cpu.py) against central finite differences and against the slow
NumPy references in tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest

import reference as R
from nbnet import optim
from nbnet.kernels import cpu as K

ACTS = list(K.ACTIVATIONS)
LOSSES = list(K.LOSSES)
N_OUT = {"mse": 3, "cross_entropy": 3, "binary_cross_entropy": 1}
HIDDEN = {1: (17,), 2: (3, 1), 3: (1, 17, 3)}  # odd widths, a width-1 bottleneck
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def _objective(net, X, Y, loss, l2):
    """Mean data loss (what batch_gradient returns) + the L2 penalty it differentiates."""
    g = np.empty_like(net.params)
    data = K.batch_gradient(X, Y, net.params, g, *net.args, K.LOSSES[loss], l2)
    pen = 0.5 * l2 * sum(float(np.sum(W**2)) for W in net.weights[::2])
    return data + pen, g


def _numeric_grad(net, X, Y, loss, l2, h=1e-6):
    num = np.empty_like(net.params)
    p = net.params
    for i in range(p.size):
        old = p[i]
        p[i] = old + h
        fp, _ = _objective(net, X, Y, loss, l2)
        p[i] = old - h
        fm, _ = _objective(net, X, Y, loss, l2)
        p[i] = old
        num[i] = (fp - fm) / (2 * h)
    return num


# --- gradient checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTS)
def test_gradient_matches_central_differences(make_net, make_targets, activation, loss, depth):
    rng = np.random.default_rng(depth * 100 + LOSSES.index(loss) * 10 + ACTS.index(activation))
    net = make_net(3, HIDDEN[depth], N_OUT[loss], activation, seed=int(rng.integers(1 << 30)))
    X = rng.normal(size=(7, 3))
    Y = make_targets(loss, 7, N_OUT[loss], rng)
    for l2 in (0.0, 0.3):
        f, ana = _objective(net, X, Y, loss, l2)
        num = _numeric_grad(net, X, Y, loss, l2)
        assert np.abs(ana).max() > 1e-3, "a gradient check on an all-zero gradient proves nothing"
        np.testing.assert_allclose(ana, num, rtol=1e-5, atol=1e-7)
        # and the same loss and gradient as textbook backpropagation
        ref_loss, ref_grads = R.network_gradient(X, Y, net.weights, activation, loss, l2)
        assert f - 0.5 * l2 * sum(np.sum(W**2) for W in net.weights[::2]) == pytest.approx(ref_loss, rel=1e-12)
        for got, want in zip(net.layout.views(ana), ref_grads):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_float32_gradient_close_to_float64_reference(make_net, make_targets, loss):
    rng = np.random.default_rng(3)
    net = make_net(5, (17, 3), N_OUT[loss], "tanh", dtype=np.float32)
    X = rng.normal(size=(9, 5)).astype(np.float32)
    Y = make_targets(loss, 9, N_OUT[loss], rng).astype(np.float32)
    g = np.empty_like(net.params)
    val = K.batch_gradient(X, Y, net.params, g, *net.args, K.LOSSES[loss], 0.1)
    ref_loss, ref_grads = R.network_gradient(X, Y, net.weights, "tanh", loss, 0.1)
    assert val == pytest.approx(ref_loss, rel=1e-5)
    for got, want in zip(net.layout.views(g), ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::numba.NumbaPendingDeprecationWarning")  # lists from make_buffers
def test_dropout_backward_matches_finite_differences(make_net, make_targets):
    """forward_backward with dropout: the masks come from the RNG state, so resetting the state
    replays the same masks and the loss becomes a deterministic function of the weights."""
    rng = np.random.default_rng(11)
    net = make_net(4, (17, 3), 3, "tanh")
    X = rng.normal(size=(6, 4))
    Y = make_targets("cross_entropy", 6, 3, rng)
    s0 = K.seed_state(123)
    A, masks, D0, D1, Yb = K.make_buffers(6, net.layout.sizes, np.float64)

    def run(grads):
        A[0][:] = X
        Yb[:] = Y
        st = s0.copy()
        total = K.forward_backward(6, net.params, grads, *net.args, K.LOSS_SOFTMAX_CE, 0.0, 0.4, st, A, masks, D0, D1, Yb, np.empty(0), 1.0 / 6)
        return total / 6

    ana = np.empty_like(net.params)
    run(ana)
    drawn = [m.copy() for m in masks]
    assert any((m == 0).any() for m in drawn) and any((m > 1).any() for m in drawn)
    num = np.empty_like(net.params)
    scratch = np.empty_like(net.params)
    for i in range(net.params.size):
        old = net.params[i]
        net.params[i] = old + 1e-6
        fp = run(scratch)
        net.params[i] = old - 1e-6
        fm = run(scratch)
        net.params[i] = old
        num[i] = (fp - fm) / 2e-6
    np.testing.assert_allclose(ana, num, rtol=1e-5, atol=1e-8)
    _, ref = R.network_gradient(X, Y, net.weights, "tanh", "cross_entropy", masks=drawn)
    for got, want in zip(net.layout.views(ana), ref):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# --- single kernels against the reference ----------------------------------------------------------
def test_every_activation_has_a_reference_and_derivative():
    T = np.linspace(-2, 2, 9)
    for name in K.ACTIVATIONS:
        assert R.act(name, T).shape == T.shape and R.act_deriv(name, T).shape == T.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTS)
def test_bias_activation(activation, dtype):
    rng = np.random.default_rng(0)
    Z = (rng.normal(size=(5, 17)) * 3).astype(dtype)
    b = rng.normal(size=17).astype(dtype)
    want = R.act(activation, Z.astype(np.float64) + b)
    K.bias_activation(Z, b, K.ACTIVATIONS[activation])
    np.testing.assert_allclose(Z, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTS)
def test_activation_grad_from_the_output(activation, dtype):
    """The kernel gets the activation *output*; the reference differentiates at the input."""
    rng = np.random.default_rng(1)
    T = rng.uniform(-3, 3, size=(4, 17))
    T[np.abs(T) < 1e-3] = 0.5  # away from the kinks of relu/leaky_relu/elu
    A = R.act(activation, T).astype(dtype)
    D = rng.normal(size=T.shape).astype(dtype)
    want = D.astype(np.float64) * R.act_deriv(activation, T)
    K.activation_grad(A, D, K.ACTIVATIONS[activation])
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(D, want, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_forward_and_backward(dtype):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(9, 5)).astype(dtype)
    W = rng.normal(size=(5, 3)).astype(dtype)
    b = rng.normal(size=3).astype(dtype)
    out = np.empty((9, 3), dtype)
    K.dense_forward(X, W, b, K.ACT_TANH, out)
    np.testing.assert_allclose(out, R.dense_forward(X, W, b, "tanh")[1], rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    dZ = rng.normal(size=(9, 3)).astype(dtype)
    dW, db, dX = np.empty((5, 3), dtype), np.empty(3, dtype), np.empty((9, 5), dtype)
    K.dense_backward(X, W, dZ, dW, db, dX)
    for got, want in zip((dW, db, dX), R.dense_backward(X, W, dZ)):
        np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    # dX with zero rows: the first layer skips the input gradient
    dW2 = np.empty_like(dW)
    K.dense_backward(X, W, dZ, dW2, db, np.empty((0, 1), dtype))
    np.testing.assert_array_equal(dW2, dW)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_value_and_gradient(make_targets, loss, dtype):
    rng = np.random.default_rng(4)
    Z = (rng.normal(size=(11, N_OUT[loss])) * 2).astype(dtype)
    Y = make_targets(loss, 11, N_OUT[loss], rng)
    if loss == "cross_entropy":  # soft targets (label smoothing / mixup) too
        Y = 0.9 * Y + 0.1 / N_OUT[loss]
    Y = Y.astype(dtype)
    dZ = np.empty_like(Z)
    total = K.loss_grad(Z, Y, K.LOSSES[loss], dZ)
    want_total, want_grad = R.loss(loss, Z, Y)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    assert total == pytest.approx(want_total, rel=tol["rtol"])
    np.testing.assert_allclose(dZ, want_grad, **tol)
    # the loss alone (no gradient rows) is the same number
    assert K.loss_grad(Z, Y, K.LOSSES[loss], np.empty((0, 1), dtype)) == total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy"])
def test_cross_entropies_stay_finite_for_extreme_logits(loss, dtype):
    big = 3e38 if dtype == np.float32 else 1e300
    Z = np.array([[big, -big, 0.0], [-big, 1e4, -1e4], [1e4, 1e4, 1e4], [-50.0, 50.0, 800.0]], dtype)
    if loss == "binary_cross_entropy":
        Z = Z.reshape(-1, 1)
        Y = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 0, 0], dtype).reshape(-1, 1)
    else:
        Y = np.eye(3, dtype=dtype)[[1, 0, 2, 2]]
    dZ = np.empty_like(Z)
    total = K.loss_grad(Z, Y, K.LOSSES[loss], dZ)
    assert np.isfinite(total) and np.isfinite(dZ).all()
    want_total, want_grad = R.loss(loss, Z, Y)
    assert total == pytest.approx(want_total, rel=1e-6)
    np.testing.assert_allclose(dZ, want_grad, rtol=1e-6, atol=1e-7)
    P = Z.copy()
    K.output_transform(P, K.LOSSES[loss])
    assert np.isfinite(P).all() and (P >= 0).all() and (P <= 1).all()
    if loss == "cross_entropy":
        np.testing.assert_allclose(P.sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", LOSSES)
def test_output_transform(loss, dtype):
    rng = np.random.default_rng(5)
    Z = (rng.normal(size=(6, 3)) * 4).astype(dtype)
    want = R.output_transform(loss, Z)
    K.output_transform(Z, K.LOSSES[loss])
    np.testing.assert_allclose(Z, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_in_chunks_matches_reference(make_net, dtype):
    """2500 rows: three chunks of up to 1024, the last one partial."""
    net = make_net(6, (17, 3), 3, "relu", dtype=dtype)
    X = np.random.default_rng(6).normal(size=(2500, 6)).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    for loss, code in [(None, -1), ("cross_entropy", K.LOSS_SOFTMAX_CE), ("mse", K.LOSS_MSE)]:
        out = np.empty((2500, 3), dtype)
        K.forward(X, net.params, *net.args, code, out)
        np.testing.assert_allclose(out, R.network_forward(X, net.weights, "relu", loss), **tol)


def test_eval_loss_equals_batch_gradient_loss(make_net, make_targets):
    rng = np.random.default_rng(8)
    for loss in LOSSES:
        net = make_net(4, (5,), N_OUT[loss], "sigmoid")
        X = rng.normal(size=(13, 4))
        Y = make_targets(loss, 13, N_OUT[loss], rng)
        g = np.empty_like(net.params)
        assert K.eval_loss(X, Y, net.params, *net.args, K.LOSSES[loss]) == pytest.approx(
            K.batch_gradient(X, Y, net.params, g, *net.args, K.LOSSES[loss], 0.0), rel=1e-13)


def test_forward_stats(make_net):
    net = make_net(4, (17, 3), 2, "relu")
    X = np.random.default_rng(9).normal(size=(50, 4))
    stats = np.zeros((2, 3))
    K.forward_stats(X, net.params, *net.args, stats)
    A = X
    for l in range(2):
        _, A = R.dense_forward(A, net.weights[2 * l], net.weights[2 * l + 1], "relu")
        np.testing.assert_allclose(stats[l], [A.mean(), A.std(), np.mean(A == 0)], rtol=1e-10, atol=1e-12)


# --- randomness, dropout, clipping ----------------------------------------------------------------------
def test_rng_is_deterministic_from_the_seed():
    a, b, c = K.seed_state(5), K.seed_state(5), K.seed_state(6)
    xa = [K.rng_uniform(a) for _ in range(1000)]
    assert xa == [K.rng_uniform(b) for _ in range(1000)]
    assert xa != [K.rng_uniform(c) for _ in range(1000)]
    assert 0.0 <= min(xa) and max(xa) < 1.0 and abs(np.mean(xa) - 0.5) < 0.05
    idx1, idx2 = np.arange(50), np.arange(50)
    K.shuffle(idx1, K.seed_state(1))
    K.shuffle(idx2, K.seed_state(1))
    assert sorted(idx1) == list(range(50)) and (idx1 == idx2).all() and (idx1 != np.arange(50)).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics_and_inverted_scaling(p, dtype):
    rng = np.random.default_rng(10)
    A0 = rng.uniform(0.5, 1.5, size=(400, 251)).astype(dtype)  # 100 400 units
    A, mask = A0.copy(), np.empty_like(A0)
    st = K.seed_state(99)
    K.dropout(A, mask, p, st)
    kept = mask != 0
    n = A.size
    # fraction kept ~ Binomial(n, 1-p): within 5 standard deviations
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    scale = dtype(1.0 / (1.0 - p))
    assert set(np.unique(mask)) == {dtype(0), scale}
    np.testing.assert_array_equal(A[~kept], 0)
    np.testing.assert_allclose(A[kept], A0[kept] * scale, rtol=1e-6)
    # inverted dropout keeps the expected activation: the mean is preserved
    assert A.mean() == pytest.approx(A0.mean(), rel=0.02)
    # the same seed gives the same mask; the state advanced, so the next mask differs
    A2, mask2 = A0.copy(), np.empty_like(A0)
    K.dropout(A2, mask2, p, K.seed_state(99))
    np.testing.assert_array_equal(mask2, mask)
    K.dropout(A2, mask2, p, st)
    assert (mask2 != mask).any()


def test_dropout_grad():
    rng = np.random.default_rng(12)
    p = 0.3
    T = rng.normal(size=(8, 17))
    a = np.tanh(T)
    A, mask = a.copy(), np.empty_like(a)
    K.dropout(A, mask, p, K.seed_state(1))
    D = rng.normal(size=a.shape)
    want = D * mask * (1 - a**2)
    K.dropout_grad(A, D, mask, p, K.ACT_TANH)
    np.testing.assert_allclose(D, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm(dtype):
    g0 = np.random.default_rng(13).normal(size=101).astype(dtype)
    true_norm = float(np.linalg.norm(g0.astype(np.float64)))
    g = g0.copy()
    norm = K.clip_grad_norm(g, 1.0)
    want_norm, want = R.clip_grad_norm(g0, 1.0)
    assert norm == pytest.approx(true_norm, rel=1e-6) and norm == pytest.approx(want_norm, rel=1e-6)
    np.testing.assert_allclose(g, want, rtol=1e-5)
    assert np.linalg.norm(g) == pytest.approx(1.0, rel=1e-5)
    # below the threshold nothing changes
    g = g0.copy()
    assert K.clip_grad_norm(g, true_norm * 2) == pytest.approx(true_norm, rel=1e-6)
    np.testing.assert_array_equal(g, g0)


# --- the compiled epoch --------------------------------------------------------------------------------
def _hp(**kw):
    base = dict(lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l2=0.0, momentum=0.0,
                clip_norm=None, dropout=0.0, noise=0.0, mixup=0.0)
    base.update(kw)
    return optim.hyper_vector(**base)


def _opt(kind, batch, *, nesterov=False, shuffle=False, step=0):
    o = np.zeros(K.N_SETTINGS, np.int64)
    o[K.SETTING_OPTIMIZER], o[K.SETTING_NESTEROV], o[K.SETTING_BATCH], o[K.SETTING_STEP], o[K.SETTING_SHUFFLE] = kind, nesterov, batch, step, shuffle
    return o


def _reference_epoch(net, X, Y, loss, order, B, step_fn, l2=0.0, clip=None):
    """Python loop over the mini-batches of ``order`` with the NumPy reference gradient."""
    p = net.params.astype(np.float64).copy()
    lay = net.layout
    total, sq, nb = 0.0, np.zeros(lay.n_layers), 0
    for s in range(0, len(order), B):
        rows = order[s:s + B]
        mean_loss, grads = R.network_gradient(X[rows], Y[rows], lay.views(p), net.activation, loss, l2)
        total += mean_loss * len(rows)
        for l in range(lay.n_layers):
            sq[l] += np.sum(grads[2 * l] ** 2) + np.sum(grads[2 * l + 1] ** 2)
        g = np.empty_like(p)
        for dst, src in zip(lay.views(g), grads):
            dst[...] = src
        if clip is not None:
            _, g = R.clip_grad_norm(g, clip)
        nb += 1
        p = step_fn(p, g, nb)
    return p, total / len(order), np.sqrt(sq / nb)


@pytest.mark.parametrize("shuffle", [False, True])
def test_train_epoch_sgd_matches_python_loop(make_net, make_targets, shuffle):
    rng = np.random.default_rng(14)
    net = make_net(5, (17, 3), 3, "tanh")
    X = rng.normal(size=(23, 5))
    Y = make_targets("cross_entropy", 23, 3, rng)
    order = np.arange(23)
    if shuffle:
        K.shuffle(order, K.seed_state(4))  # the epoch shuffles with its state first
    state = {"buf": np.zeros(net.layout.n_params)}

    def step(p, g, t):
        p, state["buf"] = R.sgd(p, g, state["buf"], lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, first=t == 1)
        return p

    want_p, want_loss, want_norms = _reference_epoch(net, X, Y, "cross_entropy", order, 5, step, l2=0.02)
    m, v, g, stats = np.zeros_like(net.params), np.zeros_like(net.params), np.empty_like(net.params), np.zeros(4)
    opt = _opt(K.OPT_SGD, 5, nesterov=True, shuffle=shuffle)
    K.train_epoch(X, Y, net.params, g, m, v, *net.args, K.LOSS_SOFTMAX_CE,
                  _hp(momentum=0.9, weight_decay=0.01, l2=0.02), opt, K.seed_state(4), stats)
    assert opt[K.SETTING_STEP] == 5  # ceil(23 / 5) steps, counted in place
    np.testing.assert_allclose(net.params, want_p, rtol=1e-10, atol=1e-12)
    assert stats[0] == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(stats[1:], want_norms, rtol=1e-10)
    np.testing.assert_allclose(m, state["buf"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", [K.OPT_ADAM, K.OPT_ADAMW])
def test_train_epoch_adam_with_clipping_matches_python_loop(make_net, make_targets, kind):
    rng = np.random.default_rng(15)
    net = make_net(3, (17,), 1, "relu")
    X = rng.normal(size=(17, 3))
    Y = make_targets("binary_cross_entropy", 17, 1, rng)
    mv = {"m": np.zeros(net.layout.n_params), "v": np.zeros(net.layout.n_params)}

    def step(p, g, t):
        p, mv["m"], mv["v"] = R.adam(p, g, mv["m"], mv["v"], t + 3, lr=0.01, weight_decay=0.05,
                                     decoupled=kind == K.OPT_ADAMW)
        return p

    want_p, want_loss, _ = _reference_epoch(net, X, Y, "binary_cross_entropy", np.arange(17), 4, step, clip=0.5)
    m, v, g, stats = np.zeros_like(net.params), np.zeros_like(net.params), np.empty_like(net.params), np.zeros(3)
    opt = _opt(kind, 4, step=3)  # resumed: steps continue from 3, bias corrections use t = 4, 5, ...
    K.train_epoch(X, Y, net.params, g, m, v, *net.args, K.LOSS_SIGMOID_BCE,
                  _hp(lr=0.01, weight_decay=0.05, clip_norm=0.5), opt, K.seed_state(0), stats)
    assert opt[K.SETTING_STEP] == 3 + 5
    np.testing.assert_allclose(net.params, want_p, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m, mv["m"], rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(v, mv["v"], rtol=1e-9, atol=1e-15)
    assert stats[0] == pytest.approx(want_loss, rel=1e-12)


def test_full_batch_epoch_is_one_gradient_step(make_net, make_targets):
    rng = np.random.default_rng(16)
    net = make_net(4, (3,), 3, "sigmoid")
    X, Y = rng.normal(size=(19, 4)), make_targets("mse", 19, 3, rng)
    g = np.empty_like(net.params)
    loss0 = K.batch_gradient(X, Y, net.params, g, *net.args, K.LOSS_MSE, 0.0)
    want = net.params - 0.1 * g
    stats = np.zeros(3)
    z = np.zeros_like(net.params)
    opt = _opt(K.OPT_SGD, 10**9, shuffle=True)  # batch larger than n: one batch, shuffle irrelevant
    K.train_epoch(X, Y, net.params, np.empty_like(g), z, z.copy(), *net.args, K.LOSS_MSE, _hp(lr=0.1), opt, K.seed_state(0), stats)
    np.testing.assert_allclose(net.params, want, rtol=1e-12, atol=1e-14)
    assert stats[0] == pytest.approx(loss0, rel=1e-12) and opt[K.SETTING_STEP] == 1


def test_train_epoch_is_deterministic_from_its_state(make_net, make_targets):
    """Shuffle, dropout and augmentation noise all come from the state: same state, same result."""
    rng = np.random.default_rng(17)
    X = rng.normal(size=(40, 6)).astype(np.float32)
    Y = make_targets("cross_entropy", 40, 3, rng).astype(np.float32)
    hp = _hp(lr=0.01, dropout=0.3, noise=0.1, mixup=0.2)
    results = []
    for seed in (1, 1, 2):
        net = make_net(6, (17,), 3, "relu", dtype=np.float32)
        z = np.zeros_like(net.params)
        K.train_epoch(X, Y, net.params, z.copy(), z.copy(), z.copy(), *net.args, K.LOSS_SOFTMAX_CE, hp,
                      _opt(K.OPT_ADAM, 8, shuffle=True), K.seed_state(seed), np.zeros(3))
        results.append(net.params)
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], results[2])
