"""The CUDA backend against the CPU kernels: each kernel, whole epochs and the estimator.

Runs on numba's CUDA simulator (no GPU needed): ``NUMBA_ENABLE_CUDASIM`` is set here, before
``numba.cuda`` is first imported, and taken back out of the environment right after, so other
tests and their subprocesses still see a machine without CUDA. The simulator runs every GPU
thread as a Python thread: shapes are tiny, but larger than one 4 x 4 tile / 16-thread block in
every dimension, so the multi-block paths run. ``NBNET_CUDA_TESTS=gpu`` runs the same tests on
a real GPU instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

if "numba.cuda" in sys.modules:
    _PRE_IMPORTED = True
else:
    _PRE_IMPORTED = False
    if os.environ.get("NBNET_CUDA_TESTS") != "gpu":
        _saved = os.environ.get("NUMBA_ENABLE_CUDASIM")
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        from numba.core import config as _numba_config

        _numba_config.reload_config()  # numba's built-in target reads its flag from numba's config
        try:
            import numba.cuda  # noqa: F401  (decides simulator or device, once per process)
        except Exception:
            pass
        finally:
            if _saved is None:
                del os.environ["NUMBA_ENABLE_CUDASIM"]
            else:
                os.environ["NUMBA_ENABLE_CUDASIM"] = _saved
            _numba_config.reload_config()

from nbnet import MLPClassifier, MLPRegressor, NbnetError, load, optim  # noqa: E402
from nbnet.kernels import cpu, cuda_available, cuda_simulator  # noqa: E402
from nbnet.model import Layout, init_params  # noqa: E402

if not cuda_available():
    if _PRE_IMPORTED:  # not a skip: CI must not lose these tests silently
        raise RuntimeError("numba.cuda was imported without the simulator before tests/test_cuda.py; run it in its own pytest process")
    pytest.skip("numba's CUDA target is not installed (pip install 'nbnet[cuda]')", allow_module_level=True)

from nbnet.kernels import cuda as G  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = (np.float64, np.float32)
# kernel-level agreement (different summation orders only)
KTOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}
# weights after a few epochs of training (the bar)
WTOL = {np.float64: 1e-9, np.float32: 1e-4}


@pytest.fixture(scope="module", autouse=True)
def _fast_simulator():
    """The simulator's block manager polls its threads; a short GIL switch interval makes
    ``syncthreads`` 3-5x cheaper."""
    old = sys.getswitchinterval()
    if G.SIMULATOR:
        sys.setswitchinterval(2e-4)
    yield
    sys.setswitchinterval(old)


def test_simulator_geometry_spans_several_blocks():
    assert cuda_simulator() == G.SIMULATOR
    if G.SIMULATOR:  # the shapes below rely on these
        assert (G.TILE, G.TPB, G.FORWARD_CHUNK) == (4, 16, 16)


def dev(a):
    return G.to_device(np.ascontiguousarray(a))


def host(a):
    return G.to_host(a)


def rand(rng, shape, dt, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dt)


# --- kernel by kernel ------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
def test_dense_forward_every_activation(dt):
    rng = np.random.default_rng(0)
    X, W, b = rand(rng, (9, 7), dt), rand(rng, (7, 6), dt), rand(rng, 6, dt)  # 3x2 blocks, 2 k-tiles
    Xd, Wd, bd = dev(X), dev(W), dev(b)
    for act in cpu.ACTIVATIONS.values():
        want = np.empty((9, 6), dt)
        cpu.dense_forward(X, W, b, act, want)
        got = dev(np.full((9, 6), np.nan, dt))
        G.dense_forward(Xd, Wd, bd, act, got)
        np.testing.assert_allclose(host(got), want, **KTOL[dt], err_msg=f"activation {act}")


@pytest.mark.parametrize("dt", DTYPES)
def test_bias_activation_and_derivatives_from_outputs(dt):
    rng = np.random.default_rng(1)
    Z, b, D = rand(rng, (5, 7), dt, 2.0), rand(rng, 7, dt), rand(rng, (5, 7), dt)  # 35 > 2 blocks of 16
    for act in cpu.ACTIVATIONS.values():
        A = Z.copy()
        cpu.bias_activation(A, b, act)
        Ad = dev(Z)
        G.bias_activation(Ad, dev(b), act)
        np.testing.assert_allclose(host(Ad), A, **KTOL[dt], err_msg=f"activation {act}")
        want = D.copy()
        cpu.activation_grad(A, want, act)
        Dd = dev(D)
        G.activation_grad(dev(A), Dd, act)
        np.testing.assert_allclose(host(Dd), want, **KTOL[dt], err_msg=f"derivative {act}")


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n_in", [7, 8])  # 8: the bias row of the dW GEMM sits alone in its tile
def test_dense_backward(dt, n_in):
    rng = np.random.default_rng(2)
    X, W, dZ = rand(rng, (9, n_in), dt), rand(rng, (n_in, 6), dt), rand(rng, (9, 6), dt)
    dW, db, dX = np.empty((n_in, 6), dt), np.empty(6, dt), np.empty((9, n_in), dt)
    cpu.dense_backward(X, W, dZ, dW, db, dX)
    gW, gb, gX = dev(np.zeros((n_in, 6), dt)), dev(np.zeros(6, dt)), dev(np.zeros((9, n_in), dt))
    G.dense_backward(dev(X), dev(W), dev(dZ), gW, gb, gX)
    for got, want in ((gW, dW), (gb, db), (gX, dX)):
        np.testing.assert_allclose(host(got), want, **KTOL[dt])
    gW2 = dev(np.zeros((n_in, 6), dt))
    G.dense_backward(dev(X), dev(W), dev(dZ), gW2, gb, dev(np.zeros((0, n_in), dt)))  # no dX (first layer)
    np.testing.assert_allclose(host(gW2), dW, **KTOL[dt])


@pytest.mark.parametrize("dt", DTYPES)
def test_losses_and_gradients(dt):
    rng = np.random.default_rng(3)
    Z = rand(rng, (18, 4), dt, 3.0)  # 18 rows: two blocks of 16
    Z[0] = [90.0, -90.0, 0.0, 1.0]  # log-sum-exp keeps extreme logits finite
    Z[1, 0] = -95.0
    onehot = np.eye(4, dtype=dt)[rng.integers(0, 4, 18)]
    cases = {
        cpu.LOSS_SOFTMAX_CE: (Z, onehot),
        cpu.LOSS_SIGMOID_BCE: (Z[:, :1].copy(), (rng.random((18, 1)) > 0.5).astype(dt)),
        cpu.LOSS_MSE: (Z, rand(rng, (18, 4), dt)),
    }
    for loss, (z, y) in cases.items():
        dz = np.empty_like(z)
        want = cpu.loss_grad(z, y, loss, dz)
        gz = dev(np.zeros_like(z))
        got = G.loss_grad(dev(z), dev(y), loss, gz)
        assert np.isfinite(got)
        np.testing.assert_allclose(got, want, rtol=1e-12 if dt == np.float64 else 1e-6, err_msg=f"loss {loss}")
        np.testing.assert_allclose(host(gz), dz, **KTOL[dt], err_msg=f"grad {loss}")
        only = G.loss_grad(dev(z), dev(y), loss, dev(np.zeros((0, 1), dt)))  # loss alone
        assert only == pytest.approx(got, rel=1e-12)


@pytest.mark.parametrize("dt", DTYPES)
def test_output_transform(dt):
    rng = np.random.default_rng(4)
    Z = rand(rng, (18, 3), dt, 4.0)
    for loss in (cpu.LOSS_SOFTMAX_CE, cpu.LOSS_SIGMOID_BCE, cpu.LOSS_MSE):
        want = Z.copy()
        cpu.output_transform(want, loss)
        got = dev(Z)
        G.output_transform(got, loss)
        np.testing.assert_allclose(host(got), want, **KTOL[dt], err_msg=f"loss {loss}")


def test_dropout_masks_from_the_device_generator():
    rng = np.random.default_rng(5)
    A = rand(rng, (8, 40), np.float32) + 3.0  # no zeros: a zero output means dropped
    p = 0.3
    masks = []
    for seed in (7, 7, 8):
        st = cpu.seed_state(seed)
        Ad, Md = dev(A), dev(np.zeros_like(A))
        G.dropout(Ad, Md, p, st)
        assert st[0] != cpu.seed_state(seed)[0], "the host state must advance"
        mask, out = host(Md), host(Ad)
        assert set(np.unique(mask)) == {np.float32(0.0), np.float32(1 / (1 - p))}
        np.testing.assert_allclose(out, A * mask, rtol=1e-6)
        assert 0.6 < np.mean(mask > 0) < 0.8  # keep rate 1 - p on 320 units
        masks.append(mask)
    np.testing.assert_array_equal(masks[0], masks[1])  # same seed, same mask
    assert not np.array_equal(masks[0], masks[2])


@pytest.mark.parametrize("dt", DTYPES)
def test_clip_grad_norm(dt):
    rng = np.random.default_rng(6)
    g = rand(rng, 37, dt)  # 3 blocks of 16, 2 reduction blocks
    for max_norm in (0.5, 100.0):
        want = g.copy()
        nw = cpu.clip_grad_norm(want, max_norm)
        gd = dev(g)
        ng = G.clip_grad_norm(gd, max_norm)
        assert ng == pytest.approx(nw, rel=1e-12 if dt == np.float64 else 1e-6)
        np.testing.assert_allclose(host(gd), want, **KTOL[dt])
    assert np.linalg.norm(host(gd)) == pytest.approx(np.linalg.norm(g), rel=1e-6)  # under the bound: untouched


@pytest.mark.parametrize("dt", DTYPES)
def test_optimizer_steps_with_injected_state(dt):
    rng = np.random.default_rng(7)
    n = 37
    p0, m0, v0 = rand(rng, n, dt), rand(rng, n, dt, 0.1), np.abs(rand(rng, n, dt, 0.01))
    grads = [rand(rng, n, dt) for _ in range(2)]
    steps = {
        "sgd": lambda K, p, g, m, v, t: K.sgd_step(p, g, m, 0.1, 0.0, False, 0.01, t),
        "momentum": lambda K, p, g, m, v, t: K.sgd_step(p, g, m, 0.1, 0.9, False, 0.01, t),
        "nesterov": lambda K, p, g, m, v, t: K.sgd_step(p, g, m, 0.1, 0.9, True, 0.0, t),
        "adam": lambda K, p, g, m, v, t: K.adam_step(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.01, False, t + 4),
        "adamw": lambda K, p, g, m, v, t: K.adam_step(p, g, m, v, 1e-2, 0.8, 0.99, 1e-6, 0.1, True, t + 4),
    }
    for name, step in steps.items():
        want = [p0.copy(), m0.copy(), v0.copy()]
        got = [dev(p0), dev(m0), dev(v0)]
        for t, g in enumerate(grads, start=1):  # t=1 is momentum's first step (buf = g)
            step(cpu, want[0], g, want[1], want[2], t)
            step(G, got[0], dev(g), got[1], got[2], t)
        for w, h in zip(want, got):
            np.testing.assert_allclose(host(h), w, **KTOL[dt], err_msg=name)


def _net(dt, hidden=(6, 5), n_in=6, n_out=3, act="tanh", seed=0):
    lay = Layout.build(n_in, hidden, n_out, act)
    return lay, init_params(lay, act, np.random.default_rng(seed), dt)


@pytest.mark.parametrize("dt", DTYPES)
def test_forward_eval_loss_and_batch_gradient(dt):
    rng = np.random.default_rng(8)
    lay, p = _net(dt)
    X, Y = rand(rng, (21, 6), dt), np.eye(3, dtype=dt)[rng.integers(0, 3, 21)]  # 21 rows: two forward chunks
    Xd, Yd, Pd = dev(X), dev(Y), dev(p)
    for loss in (-1, cpu.LOSS_SOFTMAX_CE):
        want = np.empty((21, 3), dt)
        cpu.forward(X, p, *lay.kernel_args(), loss, want)
        got = dev(np.zeros((21, 3), dt))
        G.forward(Xd, Pd, *lay.kernel_args(), loss, got)
        np.testing.assert_allclose(host(got), want, **KTOL[dt])
    want = cpu.eval_loss(X, Y, p, *lay.kernel_args(), cpu.LOSS_SOFTMAX_CE)
    assert G.eval_loss(Xd, Yd, Pd, *lay.kernel_args(), cpu.LOSS_SOFTMAX_CE) == pytest.approx(want, rel=1e-6)
    gw = np.zeros_like(p)
    lw = cpu.batch_gradient(X, Y, p, gw, *lay.kernel_args(), cpu.LOSS_SOFTMAX_CE, 0.01)
    gd = dev(np.zeros_like(p))
    lg = G.batch_gradient(Xd, Yd, Pd, gd, *lay.kernel_args(), cpu.LOSS_SOFTMAX_CE, 0.01)
    assert lg == pytest.approx(lw, rel=1e-6)
    np.testing.assert_allclose(host(gd), gw, **KTOL[dt])


# --- whole epochs: the same weights as the CPU backend --------------------------------------------
def _epochs(K, X, Y, p, lay, loss, hp, opt, seed, epochs, sw=None, lrs=None):
    st, opt, stats = cpu.seed_state(seed), opt.copy(), np.zeros(1 + lay.n_layers)
    d = K.to_device
    P, Gr, M, V = d(p.copy()), d(np.zeros_like(p)), d(np.zeros_like(p)), d(np.zeros_like(p))
    Xd, Yd = d(X), d(Y)
    hist = []
    for e in range(epochs):
        K.train_epoch(Xd, Yd, P, Gr, M, V, *lay.kernel_args(), loss, hp, opt, st, stats, sw,
                      None if lrs is None else lrs[e])
        hist.append(stats.copy())
    return dict(params=K.to_host(P).copy(), m=K.to_host(M).copy(), v=K.to_host(V).copy(), opt=opt, state=st,
                stats=np.array(hist))


def _hp(**kw):
    base = dict(lr=0.02, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l2=0.0, momentum=0.0, clip_norm=None,
                dropout=0.0, noise=0.0, mixup=0.0)
    base.update(kw)
    return optim.hyper_vector(**base)


PARITY = {
    # name: (dtype, hidden, activation, loss, optimizer kind, nesterov, batch, hyperparameters)
    "adam-l2-clip-ce-f64": (np.float64, (6, 5), "tanh", "ce", cpu.OPT_ADAM, 0, 8, dict(l2=1e-3, clip_norm=0.5)),
    "adam-l2-clip-ce-f32": (np.float32, (6, 5), "tanh", "ce", cpu.OPT_ADAM, 0, 8, dict(l2=1e-3, clip_norm=0.5)),
    "nesterov-wd-mse-f64": (np.float64, (6,), "relu", "mse", cpu.OPT_SGD, 1, 8, dict(momentum=0.9, weight_decay=1e-3)),
    "adamw-bce-f32": (np.float32, (6,), "elu", "bce", cpu.OPT_ADAMW, 0, 7, dict(weight_decay=0.05)),
    "fullbatch-sgd-mixup-f64": (np.float64, (5,), "softplus", "ce", cpu.OPT_SGD, 0, 20, dict(lr=0.1, mixup=0.4)),
}


@pytest.mark.parametrize("name", list(PARITY))
def test_train_epoch_parity_with_cpu(name):
    dt, hidden, act, loss, kind, nest, batch, hpkw = PARITY[name]
    rng = np.random.default_rng(9)
    n_out = {"ce": 3, "mse": 2, "bce": 1}[loss]
    lay, p = _net(dt, hidden, n_out=n_out, act=act)
    X = rand(rng, (20, 6), dt)
    if loss == "ce":
        Y = np.eye(3, dtype=dt)[rng.integers(0, 3, 20)]
    elif loss == "bce":
        Y = (rng.random((20, 1)) > 0.5).astype(dt)
    else:
        Y = rand(rng, (20, 2), dt)
    code = {"ce": cpu.LOSS_SOFTMAX_CE, "mse": cpu.LOSS_MSE, "bce": cpu.LOSS_SIGMOID_BCE}[loss]
    opt = np.array([kind, nest, batch, 0, 0, 0, 1], np.int64)
    hp = _hp(**hpkw)
    want = _epochs(cpu, X, Y, p, lay, code, hp, opt, 11, 2)
    got = _epochs(G, X, Y, p, lay, code, hp, opt, 11, 2)
    moved = np.abs(want["params"] - p).max()
    assert moved > 1e-3, "training must move the weights for the comparison to mean anything"
    np.testing.assert_allclose(got["params"], want["params"], rtol=0, atol=WTOL[dt])
    np.testing.assert_allclose(got["m"], want["m"], rtol=0, atol=WTOL[dt])
    np.testing.assert_allclose(got["stats"], want["stats"], rtol=1e-5 if dt == np.float32 else 1e-9)
    assert got["opt"][cpu.SETTING_STEP] == want["opt"][cpu.SETTING_STEP] == 2 * -(-20 // batch)
    assert got["state"][0] == want["state"][0], "the shuffle must consume the CPU's random stream"


WEIGHTED = {
    # name: (dtype, loss, optimizer kind, batch, hyperparameters); every case has row weights
    # (zeros included) and per-step learning rates
    "adam-ce-f64": (np.float64, "ce", cpu.OPT_ADAM, 8, dict(l2=1e-3)),
    "sgd-mixup-bce-f64": (np.float64, "bce", cpu.OPT_SGD, 7, dict(lr=0.1, mixup=0.4, momentum=0.9)),
    "adamw-clip-mse-f32": (np.float32, "mse", cpu.OPT_ADAMW, 8, dict(clip_norm=0.5, weight_decay=0.01)),
}


@pytest.mark.parametrize("name", list(WEIGHTED))
def test_weights_and_per_step_rates_match_the_cpu(name):
    """Sample weights and a per-step learning-rate array in the epoch: the CUDA weights equal the
    CPU's (mixup mixes the weights as it mixes the targets, on both)."""
    dt, loss, kind, batch, hpkw = WEIGHTED[name]
    rng = np.random.default_rng(21)
    n_out = {"ce": 3, "mse": 2, "bce": 1}[loss]
    lay, p = _net(dt, (6,), n_out=n_out, act="tanh")
    X = rand(rng, (20, 6), dt)
    Y = {"ce": lambda: np.eye(3, dtype=dt)[rng.integers(0, 3, 20)], "bce": lambda: (rng.random((20, 1)) > 0.5).astype(dt),
         "mse": lambda: rand(rng, (20, 2), dt)}[loss]()
    sw = rng.integers(0, 4, 20).astype(np.float64)
    code = {"ce": cpu.LOSS_SOFTMAX_CE, "mse": cpu.LOSS_MSE, "bce": cpu.LOSS_SIGMOID_BCE}[loss]
    opt = np.array([kind, 0, batch, 0, 0, 0, 1], np.int64)
    hp = _hp(**hpkw)
    steps = -(-20 // batch)
    lrs = hp[cpu.HP_LR] * np.linspace(1.0, 0.2, 2 * steps).reshape(2, steps)
    want = _epochs(cpu, X, Y, p, lay, code, hp, opt, 5, 2, sw, lrs)
    got = _epochs(G, X, Y, p, lay, code, hp, opt, 5, 2, sw, lrs)
    unweighted = _epochs(cpu, X, Y, p, lay, code, hp, opt, 5, 2)
    assert np.abs(want["params"] - unweighted["params"]).max() > 1e-4, "the weights and rates must change training"
    np.testing.assert_allclose(got["params"], want["params"], rtol=0, atol=WTOL[dt])
    np.testing.assert_allclose(got["stats"], want["stats"], rtol=1e-5 if dt == np.float32 else 1e-9)


@pytest.mark.parametrize("loss", ["ce", "bce", "mse"])
def test_weighted_loss_and_batch_gradient_match_the_cpu(loss):
    dt = np.float64
    rng = np.random.default_rng(22)
    n_out = {"ce": 3, "mse": 2, "bce": 1}[loss]
    code = {"ce": cpu.LOSS_SOFTMAX_CE, "mse": cpu.LOSS_MSE, "bce": cpu.LOSS_SIGMOID_BCE}[loss]
    lay, p = _net(dt, (6,), n_out=n_out)
    X = rand(rng, (19, 6), dt)
    Y = np.eye(n_out, dtype=dt)[rng.integers(0, n_out, 19)] if loss == "ce" else (rng.random((19, n_out)) > 0.5).astype(dt)
    w = rng.random(19) * 3
    Z = rand(rng, (19, n_out), dt)
    dz_cpu, dz_gpu = np.zeros_like(Z), dev(np.zeros_like(Z))
    want = cpu.weighted_loss_grad(Z, Y, w, code, dz_cpu)
    assert G.weighted_loss_grad(dev(Z), dev(Y), w, code, dz_gpu) == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(host(dz_gpu), dz_cpu, **KTOL[dt])
    gw, gd = np.zeros_like(p), dev(np.zeros_like(p))
    lw = cpu.batch_gradient(X, Y, p, gw, *lay.kernel_args(), code, 0.0, w)
    assert G.batch_gradient(dev(X), dev(Y), dev(p), gd, *lay.kernel_args(), code, 0.0, w) == pytest.approx(lw, rel=1e-12)
    np.testing.assert_allclose(host(gd), gw, **KTOL[dt])


def test_estimator_weights_and_schedule_on_cuda_match_cpu():
    rng = np.random.default_rng(23)
    X, y = rng.normal(size=(16, 5)), rng.integers(0, 2, 16)
    kw = dict(hidden_layer_sizes=(6,), epochs=2, batch_size=8, dtype="float64", seed=1, class_weight="balanced",
              schedule="cosine", warmup_epochs=1)
    sw = rng.random(16)
    a = MLPClassifier(device="cpu", **kw).fit(X, y, sample_weight=sw)
    b = MLPClassifier(device="cuda", **kw).fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(b.params_, a.params_, rtol=0, atol=1e-9)
    assert b.history_["lr"] == pytest.approx(a.history_["lr"], rel=1e-15)


def test_an_epoch_moves_only_the_shuffle_order_and_the_statistics(monkeypatch):
    """Data, weights and moments stay on the device: per epoch the host uploads the index order
    and reads back 1 + n_layers float64 numbers."""
    dt = np.float32
    rng = np.random.default_rng(15)
    lay, p = _net(dt, (6,))
    X, Y = rand(rng, (20, 6), dt), np.eye(3, dtype=dt)[rng.integers(0, 3, 20)]
    d = G.to_device
    bufs = [d(X), d(Y), d(p), d(np.zeros_like(p)), d(np.zeros_like(p)), d(np.zeros_like(p))]
    opt = np.array([cpu.OPT_ADAM, 0, 8, 0, 0, 0, 1], np.int64)
    args = (*bufs, *lay.kernel_args(), cpu.LOSS_SOFTMAX_CE, _hp(clip_norm=1.0), opt, cpu.seed_state(0), np.zeros(3))
    G.train_epoch(*args)  # first epoch allocates the cached work buffers
    up, down = [], []
    to_device, cls = G.cuda.to_device, type(bufs[0])
    copy_to_host, copy_to_device = cls.copy_to_host, cls.copy_to_device
    monkeypatch.setattr(G.cuda, "to_device", lambda a, *k, **kw: up.append(np.asarray(a).nbytes) or to_device(a, *k, **kw))
    monkeypatch.setattr(cls, "copy_to_device", lambda self, a, *k, **kw: up.append(np.asarray(a).nbytes) or copy_to_device(self, a, *k, **kw))
    monkeypatch.setattr(cls, "copy_to_host", lambda self, *k, **kw: down.append(self.nbytes) or copy_to_host(self, *k, **kw))
    G.train_epoch(*args)
    assert sum(up) == 20 * 8 + 3 * 8  # the shuffled order (int64) and the zeroed accumulators
    assert sum(down) == 3 * 8  # mean loss and two gradient norms


def test_device_randomness_is_reproducible_from_the_seed():
    """Dropout, input noise and image shifts use the device generator: not the CPU's numbers,
    but the same weights from the same seed, and different ones from another seed."""
    dt = np.float32
    rng = np.random.default_rng(10)
    lay, p = _net(dt, (6,), n_in=8, act="relu")
    X, Y = rand(rng, (20, 8), dt), np.eye(3, dtype=dt)[rng.integers(0, 3, 20)]
    opt = np.array([cpu.OPT_ADAM, 0, 8, 0, 2, 4, 1], np.int64)  # 2x4 "images": random shifts
    hp = _hp(dropout=0.3, noise=0.1, mixup=0.2)
    a = _epochs(G, X, Y, p, lay, cpu.LOSS_SOFTMAX_CE, hp, opt, 3, 1)
    b = _epochs(G, X, Y, p, lay, cpu.LOSS_SOFTMAX_CE, hp, opt, 3, 1)
    c = _epochs(G, X, Y, p, lay, cpu.LOSS_SOFTMAX_CE, hp, opt, 4, 1)
    plain = _epochs(G, X, Y, p, lay, cpu.LOSS_SOFTMAX_CE, _hp(), opt * np.array([1, 1, 1, 1, 0, 0, 1]), 3, 1)
    assert np.all(np.isfinite(a["params"])) and np.isfinite(a["stats"]).all()
    np.testing.assert_array_equal(a["params"], b["params"])
    assert np.abs(a["params"] - c["params"]).max() > 1e-5
    assert np.abs(a["params"] - plain["params"]).max() > 1e-5


# --- the estimator ---------------------------------------------------------------------------------
def _blobs(n, seed=12, k=3, d=6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = rng.standard_normal((n, d)) + 1.5 * np.eye(k, d)[y]
    return X, y


def test_estimator_on_cuda_matches_cpu_and_saves_for_cpu(tmp_path):
    X, y = _blobs(20)
    Xv, yv = _blobs(7, seed=13)
    kw = dict(hidden_layer_sizes=(6,), epochs=2, batch_size=8, learning_rate=0.05, dtype="float64", seed=1)
    on_cpu = MLPClassifier(device="cpu", **kw).fit(X, y, validation_data=(Xv, yv))
    on_gpu = MLPClassifier(device="cuda", **kw).fit(X, y, validation_data=(Xv, yv))
    for a, b in zip(on_gpu.get_weights(), on_cpu.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(on_gpu.history_[key], on_cpu.history_[key], rtol=1e-9)
    gpu_moments, cpu_moments = on_gpu.training_state().optimizer, on_cpu.training_state().optimizer
    np.testing.assert_allclose(gpu_moments.m, cpu_moments.m, atol=1e-9)  # moments came back from the device
    assert gpu_moments.step == cpu_moments.step == 6
    path = tmp_path / "gpu_model.nbnet"
    on_gpu.save(path)
    back = load(path)
    assert back.device == "cuda"  # the setting travels; prediction runs on the CPU kernels
    np.testing.assert_allclose(back.predict_proba(Xv), on_cpu.predict_proba(Xv), atol=1e-9)
    np.testing.assert_array_equal(back.predict(Xv), on_gpu.predict(Xv))


def test_regressor_early_stopping_on_cuda_float32():
    rng = np.random.default_rng(14)
    X = rng.standard_normal((22, 5))
    y = X @ rng.standard_normal(5) + 0.1 * rng.standard_normal(22)
    kw = dict(hidden_layer_sizes=(6,), epochs=3, batch_size=8, learning_rate=0.05, early_stopping=True,
              patience=1, validation_fraction=0.25, seed=2, dtype="float32")
    a = MLPRegressor(device="cpu", **kw).fit(X, y)
    b = MLPRegressor(device="cuda", **kw).fit(X, y)
    assert b.n_epochs_ == a.n_epochs_ and getattr(b, "best_epoch_", None) == getattr(a, "best_epoch_", None)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wb, wa, rtol=0, atol=1e-4)
    np.testing.assert_allclose(b.history_["val_loss"], a.history_["val_loss"], rtol=1e-4)


def test_set_train_device_cuda_reaches_the_cuda_backend():
    from nbnet.experiment import config as C

    cfg = C.apply_overrides(C.from_dict({}), ["train.device=cuda", "model.hidden_layer_sizes=[5]", "train.epochs=1",
                                              "train.batch_size=8"])
    kw = cfg.estimator_kwargs()
    assert kw["device"] == "cuda"
    X, y = _blobs(12)
    clf = MLPClassifier(**kw).fit(X, y)
    assert clf.resolved_device() == "cuda" and ("nbnet.kernels.cuda", "<f4") in _compiled_keys()
    assert np.isfinite(clf.history_["loss"][0])


def _compiled_keys():
    from nbnet.kernels import compile

    return compile.COMPILED


def test_auto_never_picks_the_simulator():
    if G.SIMULATOR:
        assert MLPClassifier(device="auto").resolved_device() == "cpu"
        assert cuda_available() and not cuda_available(simulator=False)


# --- machines without a GPU or without CUDA at all -----------------------------------------------
_NO_GPU_SCRIPT = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "no-target":
        sys.modules["numba.cuda"] = None  # as if numba's CUDA target were not installed
    import numpy as np
    from nbnet import MLPClassifier, NbnetError
    X = np.random.default_rng(0).standard_normal((30, 4)); y = np.arange(30) % 2
    clf = MLPClassifier((4,), epochs=2, device="auto").fit(X, y)
    print("auto", clf.score(X, y) >= 0.0)
    try:
        MLPClassifier((4,), epochs=1, device="cuda").fit(X, y)
        print("cuda trained?!")
    except NbnetError as e:
        print("error", str(e))
    """
)


@pytest.mark.parametrize("case", ["no-gpu", "no-target"])
def test_without_gpu_nbnet_runs_and_cuda_is_one_clear_error(case):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if case == "no-gpu" and not G.SIMULATOR:
        pytest.skip("this machine has a GPU: the no-GPU error cannot be seen here")
    r = subprocess.run([sys.executable, "-c", _NO_GPU_SCRIPT, case], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "auto True"
    assert lines[1].startswith("error device='cuda'") and len(lines) == 2
    assert ("nbnet[cuda]" if case == "no-target" else "NUMBA_ENABLE_CUDASIM=1") in lines[1]


# --- the real target: every kernel compiles to PTX (no GPU needed, only NVVM) ----------------------
_PTX_SCRIPT = textwrap.dedent(
    """
    import sys, types
    from numba import cuda, float32, float64, int64, uint64
    try:  # both NVVM (IR -> PTX) and NVRTC (supported architectures) must be loadable
        from numba.cuda.cudadrv import nvrtc, nvvm
        nvvm.NVVM()
        nvrtc.get_supported_ccs()
    except Exception as e:
        print("no NVVM/NVRTC:", type(e).__name__, str(e).splitlines()[0][:200]); sys.exit(3)
    import numba.cuda.dispatcher as disp
    if hasattr(disp, "get_current_device"):  # device functions ask for the GPU's compute capability
        disp.get_current_device = lambda: types.SimpleNamespace(compute_capability=(8, 0))
    from nbnet.kernels import cuda_kernels as G
    assert not G.SIMULATOR
    d1, d2, ix = float64[::1], float64[:, ::1], int64[::1]
    for f in (float32, float64):
        a1, a2 = f[::1], f[:, ::1]
        sigs = {
            "k_bias_act": (a2, a1, int64), "k_act_grad": (a2, a2, int64),
            "k_forward": (a2, a2, a1, int64, a2), "k_grad_w": (a2, a2, a2, f, a2, a1),
            "k_grad_x": (a2, a2, a2, a2, int64, f, int64, a2),
            "k_loss": (a2, a2, int64, int64, a2, d1, int64, d1, int64, float64), "k_output_transform": (a2, int64),
            "k_reduce_partial": (a1, ix, ix, int64, d2), "k_reduce_finish": (d2, d1, int64, int64, d1),
            "k_clip": (a1, d1, float64), "k_sgd": (a1, a1, a1, f, f, f, int64, int64),
            "k_adam": (a1, a1, a1, a1) + (f,) * 9, "k_dropout": (a2, a2, uint64, f, uint64, uint64),
            "k_gather": (a2, a2, ix, a2, a2),
            "k_gather_aug": (a2, a2, ix, a2, a2, int64, int64, float64, uint64, uint64, ix, f, f, int64),
        }
        missing = {n for n in dir(G) if n.startswith("k_")} - set(sigs)
        assert not missing, missing
        for name, sig in sigs.items():
            ptx, _ = cuda.compile_ptx(getattr(G, name).py_func, sig, cc=(8, 0))
            f64 = [l for l in ptx.splitlines() if ".f64" in l and not l.strip().startswith(".reg")]
            if f is float32 and name in HOT:
                assert not f64, (name, f64[:3])  # a float64 literal in a float32 hot loop
            print(name, f, "ok")
    print("all compiled")
    """
).replace("HOT", repr({"k_forward", "k_grad_w", "k_grad_x", "k_bias_act", "k_act_grad", "k_adam", "k_sgd",
                       "k_dropout", "k_gather"}))


@pytest.mark.slow
def test_every_kernel_compiles_for_the_gpu():
    """The simulator runs kernels as Python and checks no types; NVVM does. Catches what only a
    GPU would: non-constant shared-memory shapes, untyped constructs, float64 in float32 loops."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", _PTX_SCRIPT], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=600)
    if r.returncode == 3:
        pytest.skip(f"NVVM/NVRTC is not installed ({r.stdout.strip()}); pip install nvidia-nvvm nvidia-cuda-nvrtc to run this")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "all compiled" in r.stdout
