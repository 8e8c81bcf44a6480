"""Optimizers: one step of each kernel against its formula with injected state; many steps and
whole-network training against torch.optim in float64 (skipped only when torch is absent)."""

from __future__ import annotations

import numpy as np
import pytest

import reference as R
from nbnet import MLPClassifier, MLPRegressor, optim
from nbnet.errors import NbnetError
from nbnet.kernels import cpu as K

N = 37


def _state(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=N).astype(dtype)
    g = rng.normal(size=N).astype(dtype)
    m = (rng.normal(size=N) * 0.1).astype(dtype)  # nonzero moments, as after earlier steps
    v = (rng.uniform(0.01, 0.2, size=N)).astype(dtype)
    return p, g, m, v


# --- one step against the formula -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "momentum,nesterov,wd", [(0.0, False, 0.0), (0.0, False, 0.1), (0.9, False, 0.0), (0.9, False, 0.1), (0.8, True, 0.05)]
)
def test_sgd_step_formula(momentum, nesterov, wd, dtype):
    p, g, buf, _ = _state(1, dtype)
    lr = 0.05
    P, G, BUF = (a.astype(np.float64) for a in (p, g, buf))
    d = G + wd * P  # torch.optim.SGD folds weight decay into the gradient
    if momentum == 0.0:
        want_p, want_buf = P - lr * d, BUF
    else:  # step t = 7: the injected buffer is a running one
        want_buf = momentum * BUF + d
        want_p = P - lr * (d + momentum * want_buf if nesterov else want_buf)
    K.sgd_step(p, g, buf, lr, momentum, nesterov, wd, 7)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(p, want_p, **tol)
    np.testing.assert_allclose(buf, want_buf, **tol)
    # the reference used by the epoch tests says the same
    ref_p, ref_buf = R.sgd(P, G, BUF, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    np.testing.assert_allclose(ref_p, want_p, rtol=1e-14)
    np.testing.assert_allclose(ref_buf, want_buf, rtol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_first_step_starts_the_buffer_at_the_gradient(nesterov):
    """torch.optim.SGD: at the first step buf = g (not mu*0 + g with dampening)."""
    p, g, buf, _ = _state(2)
    buf[:] = 123.0  # stale garbage must be ignored at t == 1
    want_p, want_buf = R.sgd(p, g, buf, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01, first=True)
    K.sgd_step(p, g, buf, 0.1, 0.9, nesterov, 0.01, 1)
    np.testing.assert_allclose(p, want_p, rtol=1e-14)
    np.testing.assert_allclose(buf, want_buf, rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 0.1), (True, 0.0), (True, 0.1)])
def test_adam_step_formula(decoupled, wd, dtype):
    p, g, m, v = _state(3, dtype)
    lr, b1, b2, eps, t = 1e-2, 0.8, 0.95, 1e-6, 6
    P, G, M, V = (a.astype(np.float64) for a in (p, g, m, v))
    if decoupled:  # AdamW, Loshchilov & Hutter 2019: decay the weights, not the gradient
        P = P * (1 - lr * wd)
    else:  # Adam with L2 folded into the gradient, as torch.optim.Adam(weight_decay=...)
        G = G + wd * P
    M = b1 * M + (1 - b1) * G
    V = b2 * V + (1 - b2) * G**2
    want = P - lr * (M / (1 - b1**t)) / (np.sqrt(V / (1 - b2**t)) + eps)
    K.adam_step(p, g, m, v, lr, b1, b2, eps, wd, decoupled, t)
    tol = dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(m, M, **tol)
    np.testing.assert_allclose(v, V, **tol)
    np.testing.assert_allclose(p, want, **tol)
    ref_p, ref_m, ref_v = R.adam(*_state(3), t, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, decoupled=decoupled)
    np.testing.assert_allclose(ref_p, want, rtol=1e-5 if dtype == np.float32 else 1e-13)


def test_adam_epsilon_sits_after_the_bias_corrected_root():
    """PyTorch/optax place eps after sqrt(v_hat); scikit-learn folds the correction into the step
    size (eps before the correction). With tiny v the two differ a lot: pin the PyTorch one."""
    p, g, m, v = (np.zeros(1) for _ in range(4))
    g[0] = 1e-7
    K.adam_step(p, g, m, v, 1.0, 0.9, 0.999, 1e-8, 0.0, False, 1)
    # m_hat = 1e-7, v_hat = 1e-14, sqrt = 1e-7 -> step = 1e-7 / (1e-7 + 1e-8)
    assert p[0] == pytest.approx(-1e-7 / (1e-7 + 1e-8), rel=1e-12)


def test_optimizer_step_dispatches_on_the_hyperparameter_vector():
    for name, mom, wd in [("sgd", 0.0, 0.1), ("momentum", 0.9, 0.0), ("nesterov", 0.9, 0.1), ("adam", None, 0.1), ("adamw", None, 0.1)]:
        kind, nest, mu = optim.resolve(name, mom, False)
        hp = optim.hyper_vector(lr=0.03, betas=(0.85, 0.99), eps=1e-7, weight_decay=wd, l2=0, momentum=mu,
                                clip_norm=None, dropout=0, noise=0, mixup=0)
        p, g, m, v = _state(4)
        p2, g2, m2, v2 = (a.copy() for a in (p, g, m, v))
        K.optimizer_step(p, g, m, v, kind, hp, nest, 3)
        if kind == K.OPT_SGD:
            K.sgd_step(p2, g2, m2, 0.03, mu, nest, wd, 3)
        else:
            K.adam_step(p2, g2, m2, v2, 0.03, 0.85, 0.99, 1e-7, wd, kind == K.OPT_ADAMW, 3)
        np.testing.assert_array_equal(p, p2)
        np.testing.assert_array_equal(m, m2)


def test_resolve_names_and_defaults():
    assert optim.resolve("sgd", None, False) == (K.OPT_SGD, False, 0.0)
    assert optim.resolve("momentum", None, False) == (K.OPT_SGD, False, 0.9)
    assert optim.resolve("nesterov", None, False) == (K.OPT_SGD, True, 0.9)
    assert optim.resolve("sgd", 0.5, True) == (K.OPT_SGD, True, 0.5)
    assert optim.resolve("adam", None, False)[0] == K.OPT_ADAM
    assert optim.resolve("adamw", None, False)[0] == K.OPT_ADAMW
    with pytest.raises(NbnetError, match="unknown optimizer"):
        optim.resolve("rmsprop", None, False)
    with pytest.raises(NbnetError, match="nesterov needs momentum"):
        optim.resolve("sgd", 0.0, True)
    with pytest.raises(NbnetError, match="momentum must be"):
        optim.resolve("momentum", 1.5, False)
    s = optim.OptState.zeros(5, np.float32)
    assert s.step == 0 and s.m.dtype == np.float32 and not s.m.any() and not s.v.any()


# --- N steps against torch.optim ----------------------------------------------------------------------
TORCH_CASES = {
    "sgd": (dict(momentum=0.0), dict(lr=0.002, weight_decay=0.01)),
    "momentum": (dict(momentum=0.9), dict(lr=0.001, momentum=0.9, weight_decay=0.01)),
    "nesterov": (dict(momentum=0.9, nesterov=True), dict(lr=0.001, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam": ({}, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.01)),
    "adamw": ({}, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1)),
}


def _torch_opt(torch, name, params, kw):
    if name in ("sgd", "momentum", "nesterov"):
        return torch.optim.SGD(params, **kw)
    return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(params, **kw)


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_many_steps_match_torch_optim(name):
    """200 steps on a Rosenbrock-like valley from identical float64 weights."""
    torch = pytest.importorskip("torch", reason="torch (the parity extra) is not installed")

    def f(w):  # a curved valley plus a quadratic bowl: gradients change direction and scale
        return (100 * (w[1::2] - w[::2] ** 2) ** 2 + (1 - w[::2]) ** 2).sum() + 0.5 * (w**2).sum()

    w0 = np.random.default_rng(5).normal(scale=0.5, size=40)
    tw = torch.tensor(w0.copy(), dtype=torch.float64, requires_grad=True)
    kw = TORCH_CASES[name][1]
    topt = _torch_opt(torch, name, [tw], kw)
    p, m, v = w0.copy(), np.zeros(40), np.zeros(40)
    mom = dict(TORCH_CASES[name][0]).get("momentum", 0.0)
    for t in range(1, 201):
        topt.zero_grad()
        f(tw).backward()
        topt.step()
        x = torch.tensor(p, dtype=torch.float64, requires_grad=True)
        f(x).backward()
        g = x.grad.numpy().copy()
        if name in ("sgd", "momentum", "nesterov"):
            K.sgd_step(p, g, m, kw["lr"], mom, kw.get("nesterov", False), kw["weight_decay"], t)
        else:
            K.adam_step(p, g, m, v, kw["lr"], *kw["betas"], kw["eps"], kw["weight_decay"], name == "adamw", t)
    diff = np.abs(p - tw.detach().numpy()).max()
    assert diff <= 1e-5, diff
    assert np.abs(p - w0).max() > 0.1, "the optimizer must actually have moved"


# --- whole-network training against a torch loop ----------------------------------------------------
class _Recorder:
    """Callback: the initial weights (on_train_begin) and the weights after each epoch."""

    def __init__(self):
        self.initial, self.per_epoch = None, []

    def on_train_begin(self, est):
        self.initial = est.get_weights()

    def on_epoch_end(self, epoch, logs):
        self.per_epoch.append(logs["loss"])


def _torch_train(torch, weights, X, y, act, loss, name, kw, epochs, l2=0.0):
    """Full-batch training loop from the given [W1, b1, ...]; returns (weights, losses)."""
    nn = torch.nn
    layers = []
    L = len(weights) // 2
    for l in range(L):
        W, b = weights[2 * l], weights[2 * l + 1]
        lin = nn.Linear(*W.shape).double()
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(W.T))
            lin.bias.copy_(torch.tensor(b))
        layers.append(lin)
        if l < L - 1:
            layers.append({"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}[act]())
    model = nn.Sequential(*layers)
    opt = _torch_opt(torch, name, model.parameters(), kw)
    Xt = torch.tensor(X, dtype=torch.float64)
    if loss == "cross_entropy":
        crit, yt = nn.CrossEntropyLoss(), torch.tensor(y, dtype=torch.long)
    elif loss == "binary_cross_entropy":
        crit, yt = nn.BCEWithLogitsLoss(), torch.tensor(y, dtype=torch.float64).reshape(-1, 1)
    else:
        crit, yt = nn.MSELoss(), torch.tensor(y, dtype=torch.float64).reshape(-1, 1)
    losses = []
    for _ in range(epochs):
        opt.zero_grad()
        data = crit(model(Xt), yt)
        pen = sum((lin.weight**2).sum() for lin in model if isinstance(lin, nn.Linear))
        (data + 0.5 * l2 * pen).backward()
        opt.step()
        losses.append(data.item())
    out = []
    for lin in model:
        if isinstance(lin, nn.Linear):
            out += [lin.weight.detach().numpy().T, lin.bias.detach().numpy()]
    return out, losses


@pytest.mark.parametrize(
    "name,loss,act,l2",
    [
        ("sgd", "cross_entropy", "tanh", 0.0),
        ("momentum", "binary_cross_entropy", "relu", 0.01),
        ("nesterov", "mse", "sigmoid", 0.0),
        ("adam", "cross_entropy", "relu", 0.01),
        ("adamw", "mse", "tanh", 0.0),
    ],
)
def test_full_batch_fit_matches_a_torch_loop(blobs, regression, name, loss, act, l2):
    torch = pytest.importorskip("torch", reason="torch (the parity extra) is not installed")
    nb_kw, t_kw = TORCH_CASES[name]
    t_kw = dict(t_kw, lr=t_kw["lr"] * 10)  # a network moves less than the valley: larger steps
    common = dict(activation=act, optimizer=name, learning_rate=t_kw["lr"], batch_size=None, epochs=6,
                  shuffle=False, dtype="float64", seed=3, l2=l2, weight_decay=t_kw["weight_decay"], n_threads=1, **nb_kw)
    if "betas" in t_kw:
        common.update(betas=t_kw["betas"], eps=t_kw["eps"])
    if loss == "mse":
        X, y = regression
        est = MLPRegressor((17, 5), **common)
    else:
        X, y = blobs
        if loss == "binary_cross_entropy":
            y = (y == 1).astype(int)
        est = MLPClassifier((17, 5), **common)
    rec = _Recorder()
    est.fit(X, y, callbacks=[rec])
    assert est.loss_ == loss
    want, torch_losses = _torch_train(torch, rec.initial, X, y, act, loss, name, t_kw, 6, l2)
    got = est.get_weights()
    diff = max(np.abs(a - b).max() for a, b in zip(got, want))
    assert diff <= 1e-5, diff
    moved = max(np.abs(a - b).max() for a, b in zip(got, rec.initial))
    assert moved > 1e-3
    if l2 == 0:  # the per-epoch loss is the data loss at the weights the step started from
        np.testing.assert_allclose(est.history_["loss"], torch_losses, rtol=1e-9)
