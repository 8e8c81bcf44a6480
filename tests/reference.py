"""Slow, obvious NumPy references of nbnet's kernels (nbnet/kernels/cpu.py), written from the
formulas rather than from the kernels, always in float64. The kernel tests compare against these.

Shapes follow the kernels: activations and deltas are (batch, width); layer ``l`` has
``W_l`` (n_in, n_out) and ``b_l`` (n_out,); ``weights`` is ``[W1, b1, W2, b2, ...]``.
"""

from __future__ import annotations

import numpy as np

LEAKY_SLOPE = 0.01


def _f64(a):
    return np.asarray(a, dtype=np.float64)


# --- activations, from the pre-activation t -----------------------------------------------------
def act(name: str, t: np.ndarray) -> np.ndarray:
    t = _f64(t)
    if name == "identity":
        return t.copy()
    if name == "relu":
        return np.maximum(t, 0.0)
    if name == "leaky_relu":
        return np.where(t > 0, t, LEAKY_SLOPE * t)
    if name == "tanh":
        return np.tanh(t)
    if name == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * t))  # overflow-free logistic
    if name == "elu":
        return np.where(t > 0, t, np.expm1(np.minimum(t, 0.0)))
    if name == "softplus":
        return np.logaddexp(0.0, t)
    raise KeyError(name)


def act_deriv(name: str, t: np.ndarray) -> np.ndarray:
    """d act / d t at the pre-activation ``t`` (the kernels use the output instead)."""
    t = _f64(t)
    if name == "identity":
        return np.ones_like(t)
    if name == "relu":
        return (t > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(t > 0, 1.0, LEAKY_SLOPE)
    if name == "tanh":
        return 1.0 - np.tanh(t) ** 2
    if name == "sigmoid":
        s = act("sigmoid", t)
        return s * (1.0 - s)
    if name == "elu":
        return np.where(t > 0, 1.0, np.exp(np.minimum(t, 0.0)))
    if name == "softplus":
        return act("sigmoid", t)
    raise KeyError(name)


# --- losses: (sum over the batch of the per-sample loss, gradient of the batch mean) ------------
def log_softmax(Z: np.ndarray) -> np.ndarray:
    Z = _f64(Z)
    m = Z.max(axis=1, keepdims=True)
    return Z - m - np.log(np.exp(Z - m).sum(axis=1, keepdims=True))


def softmax(Z: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(Z))


def sigmoid(Z: np.ndarray) -> np.ndarray:
    return act("sigmoid", Z)


def loss(name: str, Z: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
    Z, Y = _f64(Z), _f64(Y)
    B, k = Z.shape
    if name == "cross_entropy":
        lsm = log_softmax(Z)
        total = -(Y * lsm).sum()
        grad = (np.exp(lsm) * Y.sum(axis=1, keepdims=True) - Y) / B
    elif name == "binary_cross_entropy":
        # -y log s(z) - (1-y) log(1-s(z)) = softplus(z) - y z
        total = (np.logaddexp(0.0, Z) - Y * Z).sum()
        grad = (sigmoid(Z) - Y) / B
    elif name == "mse":
        R = Z - Y
        total = (R**2).sum() / k  # per sample: mean over outputs
        grad = 2.0 * R / (B * k)  # torch.nn.MSELoss(reduction="mean")
    else:
        raise KeyError(name)
    return float(total), grad


def output_transform(name: str, Z: np.ndarray) -> np.ndarray:
    if name == "cross_entropy":
        return softmax(Z)
    if name == "binary_cross_entropy":
        return sigmoid(Z)
    return _f64(Z).copy()


# --- dense layers and whole networks ------------------------------------------------------------
def dense_forward(X, W, b, name):
    """(pre-activation, activation) of one layer."""
    T = _f64(X) @ _f64(W) + _f64(b)
    return T, act(name, T)


def dense_backward(X, W, dZ):
    """(dW, db, dX) given dZ, the gradient w.r.t. the pre-activation."""
    X, W, dZ = _f64(X), _f64(W), _f64(dZ)
    return X.T @ dZ, dZ.sum(axis=0), dZ @ W.T


def network_forward(X, weights, hidden_act: str, loss_name: str | None = None, masks=None):
    """Logits (or, with ``loss_name``, the output transform) of the MLP. ``masks[l]`` (already
    scaled by 1/(1-p)) multiplies hidden layer ``l``'s output: inverted dropout."""
    A = _f64(X)
    L = len(weights) // 2
    for l in range(L):
        W, b = weights[2 * l], weights[2 * l + 1]
        _, A = dense_forward(A, W, b, hidden_act if l < L - 1 else "identity")
        if masks is not None and l < L - 1:
            A = A * masks[l]
    return A if loss_name is None else output_transform(loss_name, A)


def network_gradient(X, Y, weights, hidden_act: str, loss_name: str, l2: float = 0.0, masks=None):
    """(mean data loss, gradients [dW1, db1, ...]) of mean loss + 0.5*l2*sum ||W||^2, by
    textbook backpropagation through the pre-activations."""
    L = len(weights) // 2
    acts, pres = [_f64(X)], []
    for l in range(L):
        W, b = weights[2 * l], weights[2 * l + 1]
        T, A = dense_forward(acts[-1], W, b, hidden_act if l < L - 1 else "identity")
        if masks is not None and l < L - 1:
            A = A * masks[l]
        pres.append(T)
        acts.append(A)
    total, D = loss(loss_name, acts[-1], Y)
    grads = [None] * (2 * L)
    for l in range(L - 1, -1, -1):
        W = _f64(weights[2 * l])
        dW, db, dX = dense_backward(acts[l], W, D)
        grads[2 * l] = dW + l2 * W
        grads[2 * l + 1] = db
        if l > 0:
            if masks is not None:
                dX = dX * masks[l - 1]
            D = dX * act_deriv(hidden_act, pres[l - 1])
    return total / X.shape[0], grads


# --- regularisation ---------------------------------------------------------------------------------
def clip_grad_norm(g: np.ndarray, max_norm: float) -> tuple[float, np.ndarray]:
    """torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1."""
    g = _f64(g)
    norm = float(np.sqrt((g**2).sum()))
    coef = max_norm / (norm + 1e-6)
    return norm, g * min(coef, 1.0)


# --- optimizers (torch.optim semantics, one step, state passed in and returned) ------------------
def sgd(p, g, buf, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0, first=False):
    """torch.optim.SGD, dampening 0: returns (new params, new momentum buffer)."""
    p, g = _f64(p), _f64(g)
    g = g + weight_decay * p
    if momentum == 0.0:
        return p - lr * g, _f64(buf)
    buf = g.copy() if first else momentum * _f64(buf) + g
    step = g + momentum * buf if nesterov else buf
    return p - lr * step, buf


def adam(p, g, m, v, t, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    """Adam (Kingma & Ba 2015) as torch.optim.Adam; AdamW (Loshchilov & Hutter 2019) as
    torch.optim.AdamW when ``decoupled``. ``t`` is the 1-based step. Returns (p, m, v)."""
    p, g, m, v = _f64(p), _f64(g), _f64(m), _f64(v)
    if decoupled:
        p = p * (1.0 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    m_hat = m / (1.0 - beta1**t)
    v_hat = v / (1.0 - beta2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v
