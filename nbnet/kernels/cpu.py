"""Numba CPU kernels: pure functions over arrays that write into caller-allocated buffers.

Conventions (shared with ``cuda.py``, which uses the same names and argument order):

* Activations ``Z`` and deltas are row-major ``(batch, width)`` arrays of the parameter dtype.
* All parameters live in one flat buffer. Layer ``l`` owns ``W_l`` of shape ``(n_in, n_out)``
  stored row-major at ``w_off[l]`` and ``b_l`` of shape ``(n_out,)`` right after it at
  ``b_off[l]``; ``sizes`` holds the widths ``[n_features, h_1, ..., n_outputs]``.
* Activation derivatives are written in terms of the activation's *output* (as scikit-learn
  does), so the backward pass needs no stored pre-activations.
* Randomness is an explicit ``uint64[1]`` SplitMix64 state: the same seed gives the same
  shuffles, dropout masks and augmentations.
* Scalars inside hot loops are cast to the array dtype first: a float64 literal in a float32
  loop stops vectorisation (see PERF_NOTES.md).

The thread budget is owned by :mod:`nbnet.kernels.threads`. ``train_epoch`` and ``forward`` run
fused kernels on numba's threads, each thread calling a single-threaded GEMM
(:mod:`nbnet.kernels.blas`); the ``*_reference`` kernels (and dropout/augmentation, which use
them) are serial loops whose GEMMs (``np.dot`` → BLAS) get the threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import get_num_threads, njit, prange

from nbnet.kernels import blas
from nbnet.kernels.blas import gemm
from nbnet.kernels.threads import parallel_guard

# --- name tables (codes are what the kernels see; names are what users type) -----------------
ACT_IDENTITY, ACT_RELU, ACT_LEAKY_RELU, ACT_TANH, ACT_SIGMOID, ACT_ELU, ACT_SOFTPLUS = range(7)
ACTIVATIONS = {
    "identity": ACT_IDENTITY,
    "relu": ACT_RELU,
    "leaky_relu": ACT_LEAKY_RELU,
    "tanh": ACT_TANH,
    "sigmoid": ACT_SIGMOID,
    "elu": ACT_ELU,
    "softplus": ACT_SOFTPLUS,
}
LEAKY_SLOPE = 0.01

LOSS_MSE, LOSS_SOFTMAX_CE, LOSS_SIGMOID_BCE = range(3)
LOSSES = {"mse": LOSS_MSE, "cross_entropy": LOSS_SOFTMAX_CE, "binary_cross_entropy": LOSS_SIGMOID_BCE}

OPT_SGD, OPT_ADAM, OPT_ADAMW = range(3)

# Indices into the float hyperparameter vector ``hp`` (float64) of ``train_epoch``.
HP_LR, HP_BETA1, HP_BETA2, HP_EPS, HP_WD, HP_L2, HP_MOMENTUM, HP_CLIP, HP_DROPOUT = range(9)
HP_NOISE, HP_MIXUP = 9, 10
N_HP = 11
# Indices into the int64 option vector ``opt`` of ``train_epoch``.
OPT_KIND, OPT_NESTEROV, OPT_BATCH, OPT_STEP, OPT_IMG_H, OPT_IMG_W, OPT_SHUFFLE = range(7)
N_OPT = 7

_JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "reassoc", "nsz", "arcp"})

# --- random numbers ----------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def seed_state(seed: int) -> np.ndarray:
    """Generator state (``uint64[1]``) for a seed."""
    return np.array([np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(0x5DEECE66D)], dtype=np.uint64)


@njit(**_JIT)
def rng_next(state):
    """SplitMix64 (Steele, Lea & Flood 2014): the next uint64, advancing ``state[0]``."""
    state[0] += _GOLDEN
    z = state[0]
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(**_JIT)
def rng_uniform(state):
    """Uniform float64 in [0, 1)."""
    return (rng_next(state) >> _S11) * (1.0 / 9007199254740992.0)


@njit(**_JIT)
def rng_below(state, n):
    """Uniform integer in [0, n)."""
    return np.int64(rng_uniform(state) * n)


@njit(**_JIT)
def rng_normal(state):
    """Standard normal (Box-Muller)."""
    u1 = 1.0 - rng_uniform(state)  # (0, 1]
    u2 = rng_uniform(state)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(**_JIT)
def rng_gamma(state, alpha):
    """Gamma(alpha, 1) by Marsaglia & Tsang (2000); alpha < 1 via the boost U**(1/alpha)."""
    boost = 1.0
    if alpha < 1.0:
        boost = (1.0 - rng_uniform(state)) ** (1.0 / alpha)
        alpha += 1.0
    d = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = rng_normal(state)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = 1.0 - rng_uniform(state)
        if math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v * boost


@njit(**_JIT)
def rng_beta(state, a, b):
    x = rng_gamma(state, a)
    y = rng_gamma(state, b)
    return x / (x + y)


@njit(**_JIT)
def shuffle(idx, state):
    """Fisher-Yates shuffle of ``idx`` in place."""
    for i in range(idx.shape[0] - 1, 0, -1):
        j = rng_below(state, i + 1)
        t = idx[i]
        idx[i] = idx[j]
        idx[j] = t


# --- activations -------------------------------------------------------------------------------
@njit(**_JIT)
def bias_activation(Z, b, act):
    """``Z[i, :] = act(Z[i, :] + b)`` in place. Z: (batch, n), b: (n,)."""
    zero = Z.dtype.type(0.0)
    one = Z.dtype.type(1.0)
    slope = Z.dtype.type(LEAKY_SLOPE)
    for i in range(Z.shape[0]):
        z = Z[i]
        if act == ACT_RELU:
            for j in range(z.shape[0]):
                t = z[j] + b[j]
                z[j] = t if t > zero else zero
        elif act == ACT_IDENTITY:
            for j in range(z.shape[0]):
                z[j] = z[j] + b[j]
        elif act == ACT_LEAKY_RELU:
            for j in range(z.shape[0]):
                t = z[j] + b[j]
                z[j] = t if t > zero else slope * t
        elif act == ACT_TANH:
            for j in range(z.shape[0]):
                z[j] = np.tanh(z[j] + b[j])
        elif act == ACT_SIGMOID:
            for j in range(z.shape[0]):
                z[j] = one / (one + np.exp(-(z[j] + b[j])))
        elif act == ACT_ELU:
            for j in range(z.shape[0]):
                t = z[j] + b[j]
                z[j] = t if t > zero else np.expm1(t)
        elif act == ACT_SOFTPLUS:
            for j in range(z.shape[0]):
                t = z[j] + b[j]
                z[j] = max(t, zero) + np.log1p(np.exp(-abs(t)))


@njit(**_JIT)
def activation_grad(A, D, act):
    """``D *= act'(·)`` in place, the derivative written in terms of the output ``A``."""
    zero = A.dtype.type(0.0)
    one = A.dtype.type(1.0)
    slope = A.dtype.type(LEAKY_SLOPE)
    for i in range(A.shape[0]):
        a = A[i]
        d = D[i]
        if act == ACT_RELU:
            for j in range(a.shape[0]):
                d[j] = d[j] if a[j] > zero else zero
        elif act == ACT_LEAKY_RELU:
            for j in range(a.shape[0]):
                d[j] = d[j] if a[j] > zero else slope * d[j]
        elif act == ACT_TANH:
            for j in range(a.shape[0]):
                d[j] *= one - a[j] * a[j]
        elif act == ACT_SIGMOID:
            for j in range(a.shape[0]):
                d[j] *= a[j] * (one - a[j])
        elif act == ACT_ELU:
            for j in range(a.shape[0]):
                d[j] = d[j] if a[j] > zero else d[j] * (a[j] + one)
        elif act == ACT_SOFTPLUS:
            for j in range(a.shape[0]):
                d[j] *= -np.expm1(-a[j])


# --- dense layers ------------------------------------------------------------------------------
@njit(**_JIT)
def dense_forward(X, W, b, act, out):
    """``out = act(X @ W + b)``. X: (batch, n_in), W: (n_in, n_out), b: (n_out,), out: (batch, n_out)."""
    np.dot(X, W, out)
    bias_activation(out, b, act)


@njit(**_JIT)
def dense_backward(X, W, dZ, dW, db, dX):
    """Gradients of a dense layer given ``dZ`` (grad w.r.t. the pre-activation, (batch, n_out)).

    Writes ``dW = X.T @ dZ`` (n_in, n_out), ``db = dZ.sum(0)`` (n_out,) and, when ``dX`` has
    rows, ``dX = dZ @ W.T`` (batch, n_in).
    """
    np.dot(X.T, dZ, dW)
    db[:] = 0
    for i in range(dZ.shape[0]):
        db += dZ[i]
    if dX.shape[0] > 0:
        np.dot(dZ, W.T, dX)


# --- losses ------------------------------------------------------------------------------------
@njit(**_JIT)
def loss_grad(Z, Y, loss, dZ):
    """Loss of logits ``Z`` against targets ``Y`` (both (batch, k)); writes dLoss/dZ into ``dZ``.

    Returns the *sum* over the batch of the per-sample loss (float64); the gradient is of the
    batch *mean* (PyTorch's ``reduction='mean'``). Cross-entropies work on logits with
    log-sum-exp, so they stay finite for any logits. MSE averages over every element, as
    ``torch.nn.MSELoss`` does. Pass ``dZ`` with zero rows to compute the loss alone.
    """
    return loss_grad_rows(Z, Y, loss, dZ, Z.shape[0])


@njit(**_JIT)
def loss_grad_rows(Z, Y, loss, dZ, B):
    """``loss_grad`` of a block of rows of a batch of ``B`` rows: the gradient is of the mean
    over all ``B``, so threads can each take a block of the batch."""
    rows, k = Z.shape
    inv = Z.dtype.type(1.0 / B)
    want_grad = dZ.shape[0] > 0
    total = 0.0
    if loss == LOSS_SOFTMAX_CE:
        for i in range(rows):
            z = Z[i]
            mx = z[0]
            for j in range(1, k):
                mx = max(mx, z[j])
            s = 0.0
            for j in range(k):
                s += math.exp(z[j] - mx)
            lse = mx + math.log(s)
            ysum = 0.0
            for j in range(k):
                total += Y[i, j] * (lse - z[j])
                ysum += Y[i, j]
            if want_grad:
                for j in range(k):
                    dZ[i, j] = (math.exp(z[j] - lse) * ysum - Y[i, j]) * inv
    elif loss == LOSS_SIGMOID_BCE:
        for i in range(rows):
            for j in range(k):
                z = Z[i, j]
                y = Y[i, j]
                total += max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
                if want_grad:
                    if z >= 0:
                        p = 1.0 / (1.0 + math.exp(-z))
                    else:
                        e = math.exp(z)
                        p = e / (1.0 + e)
                    dZ[i, j] = (p - y) * inv
    else:  # LOSS_MSE
        scale = Z.dtype.type(2.0 / (B * k))
        for i in range(rows):
            for j in range(k):
                r = Z[i, j] - Y[i, j]
                total += r * r / k
                if want_grad:
                    dZ[i, j] = scale * r
    return total


@njit(**_JIT)
def output_transform(Z, loss):
    """Logits → predictions in place: softmax (cross-entropy), sigmoid (binary), identity (MSE)."""
    one = Z.dtype.type(1.0)
    if loss == LOSS_SOFTMAX_CE:
        for i in range(Z.shape[0]):
            z = Z[i]
            mx = z.max()
            s = Z.dtype.type(0.0)
            for j in range(z.shape[0]):
                z[j] = np.exp(z[j] - mx)
                s += z[j]
            for j in range(z.shape[0]):
                z[j] /= s
    elif loss == LOSS_SIGMOID_BCE:
        for i in range(Z.shape[0]):
            for j in range(Z.shape[1]):
                Z[i, j] = one / (one + np.exp(-Z[i, j]))


# --- regularisation ----------------------------------------------------------------------------
@njit(**_JIT)
def dropout(A, mask, p, state):
    """Inverted dropout in place: keep each unit with probability 1-p and scale it by 1/(1-p).

    ``mask`` (same shape) receives 0 or 1/(1-p) so the backward pass can reuse it.
    """
    scale = A.dtype.type(1.0 / (1.0 - p))
    zero = A.dtype.type(0.0)
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            m = scale if rng_uniform(state) >= p else zero
            mask[i, j] = m
            A[i, j] *= m


@njit(**_JIT)
def dropout_grad(A, D, mask, p, act):
    """Backward of ``act`` followed by inverted dropout: ``D *= mask * act'(a)``, where the
    pre-dropout output ``a`` is recovered from the stored (scaled) ``A``."""
    keep = A.dtype.type(1.0 - p)
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            D[i, j] *= mask[i, j]
            A[i, j] *= keep  # undo the scaling; dropped units are 0 and their D is 0 already
    activation_grad(A, D, act)


@njit(**_JIT)
def sum_squares(g):
    s = 0.0
    for i in range(g.shape[0]):
        s += g[i] * g[i]
    return s


@njit(**_JIT)
def clip_grad_norm(grads, max_norm):
    """Scale ``grads`` so their global L2 norm is at most ``max_norm``; returns the norm before."""
    norm = math.sqrt(sum_squares(grads))
    if norm > max_norm:
        grads *= grads.dtype.type(max_norm / (norm + 1e-6))
    return norm


# --- optimizer steps over a flat buffer --------------------------------------------------------
@njit(**_JIT)
def sgd_step(params, grads, buf, lr, momentum, nesterov, weight_decay, t):
    """SGD as ``torch.optim.SGD`` (dampening 0): ``g += wd*p``; ``buf = mu*buf + g`` (``buf = g``
    at the first step ``t == 1``); ``g = g + mu*buf`` (Nesterov) or ``buf``; ``p -= lr*g``.
    Momentum 0 is plain SGD (and full-batch GD when the batch is the whole set)."""
    dt = params.dtype.type
    sgd_apply(params, grads, buf, dt(lr), dt(momentum), dt(weight_decay), momentum == 0.0, nesterov, t == 1)


@njit(**_JIT)
def sgd_apply(params, grads, buf, lr_, mu, wd, plain, nesterov, first):
    """The element loop of ``sgd_step`` with its scalars already in the array dtype; works on any
    slice of the flat buffers (the fused epoch steps each block right after its gradient)."""
    if plain:
        for i in range(params.shape[0]):
            params[i] -= lr_ * (grads[i] + wd * params[i])
    elif first:
        for i in range(params.shape[0]):
            g = grads[i] + wd * params[i]
            buf[i] = g
            params[i] -= lr_ * (g + mu * g if nesterov else g)
    else:
        for i in range(params.shape[0]):
            g = grads[i] + wd * params[i]
            b = mu * buf[i] + g
            buf[i] = b
            params[i] -= lr_ * (g + mu * b if nesterov else b)


@njit(**_JIT)
def adam_step(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, t):
    """Adam (Kingma & Ba 2015) in the PyTorch formulation, epsilon added after the bias-corrected
    root: ``p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``.

    ``decoupled=False``: ``torch.optim.Adam`` (``g += wd*p``). ``decoupled=True``: AdamW
    (Loshchilov & Hutter 2019), ``p *= 1 - lr*wd`` before the step, as ``torch.optim.AdamW``.
    """
    c = adam_coefficients(lr, beta1, beta2, eps, weight_decay, decoupled, t).astype(params.dtype)
    adam_apply(params, grads, m, v, c)


@njit(**_JIT)
def adam_coefficients(lr, beta1, beta2, eps, weight_decay, decoupled, t):
    """The scalars of one Adam step, computed once in float64 (cast them to the array dtype):
    ``[b1, b2, 1-b1, 1-b2, lr/(1-b1^t), 1/sqrt(1-b2^t), eps, decay, wd]``."""
    c = np.empty(9)
    c[0], c[1], c[2], c[3] = beta1, beta2, 1.0 - beta1, 1.0 - beta2
    c[4] = lr / (1.0 - beta1**t)
    c[5] = 1.0 / math.sqrt(1.0 - beta2**t)
    c[6] = eps
    if decoupled:
        c[7], c[8] = 1.0 - lr * weight_decay, 0.0
    else:
        c[7], c[8] = 1.0, weight_decay
    return c


@njit(**_JIT)
def adam_apply(params, grads, m, v, c):
    """The element loop of ``adam_step`` given ``adam_coefficients`` in the array dtype; works on
    any slice of the flat buffers."""
    b1, b2, omb1, omb2, step, inv_bc2, eps_, decay, wd = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
    for i in range(params.shape[0]):
        g = grads[i] + wd * params[i]
        mi = b1 * m[i] + omb1 * g
        vi = b2 * v[i] + omb2 * g * g
        m[i] = mi
        v[i] = vi
        params[i] = params[i] * decay - step * mi / (np.sqrt(vi) * inv_bc2 + eps_)


@njit(**_JIT)
def optimizer_step(params, grads, m, v, kind, hp, nesterov, t):
    """One optimizer step of kind ``OPT_*`` with hyperparameters ``hp`` (see ``HP_*``)."""
    if kind == OPT_SGD:
        sgd_step(params, grads, m, hp[HP_LR], hp[HP_MOMENTUM], nesterov, hp[HP_WD], t)
    else:
        adam_step(params, grads, m, v, hp[HP_LR], hp[HP_BETA1], hp[HP_BETA2], hp[HP_EPS],
                  hp[HP_WD], kind == OPT_ADAMW, t)


# --- whole network -----------------------------------------------------------------------------
@njit(**_JIT)
def layer_views(flat, w_off, b_off, sizes, l):
    n_in, n_out = sizes[l], sizes[l + 1]
    W = flat[w_off[l]:w_off[l] + n_in * n_out].reshape((n_in, n_out))
    b = flat[b_off[l]:b_off[l] + n_out]
    return W, b


@njit(**_JIT)
def forward_reference(X, params, w_off, b_off, sizes, acts, loss, out):
    """Network output for ``X`` (n, n_features) into ``out`` (n, n_outputs), in chunks.

    With ``loss >= 0`` the output transform of that loss is applied (probabilities); with
    ``loss == -1`` the raw logits are returned.
    """
    L = acts.shape[0]
    chunk = min(X.shape[0], 1024)
    bufs = [np.empty((chunk, sizes[l + 1]), params.dtype) for l in range(L - 1)]
    for s in range(0, X.shape[0], chunk):
        e = min(s + chunk, X.shape[0])
        inp = X[s:e]
        for l in range(L):
            W, b = layer_views(params, w_off, b_off, sizes, l)
            dst = out[s:e] if l == L - 1 else bufs[l][: e - s]
            dense_forward(inp, W, b, acts[l], dst)
            inp = dst
    if loss >= 0:
        output_transform(out, loss)


@njit(**_JIT)
def forward_stats(X, params, w_off, b_off, sizes, acts, stats):
    """Per hidden layer ``l``: ``stats[l] = (mean, std, fraction of exact zeros)`` of its
    activations over ``X`` (dead ReLUs show as zeros)."""
    L = acts.shape[0]
    inp = X
    for l in range(L - 1):
        W, b = layer_views(params, w_off, b_off, sizes, l)
        A = np.empty((X.shape[0], sizes[l + 1]), params.dtype)
        dense_forward(inp, W, b, acts[l], A)
        s = 0.0
        ss = 0.0
        zeros = 0
        for i in range(A.shape[0]):
            for j in range(A.shape[1]):
                a = A[i, j]
                s += a
                ss += a * a
                zeros += a == 0
        n = A.size
        mean = s / n
        stats[l, 0] = mean
        stats[l, 1] = math.sqrt(max(ss / n - mean * mean, 0.0))
        stats[l, 2] = zeros / n
        inp = A


@njit(**_JIT)
def gather_batch(X, Y, idx, Xb, Yb, hp, opt, state):
    """Copy rows ``idx`` of X and Y into the batch buffers, applying the augmentations:
    random ±1-pixel shifts of (h, w) images, Gaussian noise, then mixup (Zhang et al. 2018)."""
    bs = idx.shape[0]
    h, w = opt[OPT_IMG_H], opt[OPT_IMG_W]
    for i in range(bs):
        r = idx[i]
        Yb[i] = Y[r]
        if h > 0:
            dy = rng_below(state, 3) - 1
            dx = rng_below(state, 3) - 1
            for y in range(h):
                for x in range(w):
                    sy, sx = y - dy, x - dx
                    if 0 <= sy < h and 0 <= sx < w:
                        Xb[i, y * w + x] = X[r, sy * w + sx]
                    else:
                        Xb[i, y * w + x] = 0
        else:
            Xb[i] = X[r]
    noise = hp[HP_NOISE]
    if noise > 0:
        for i in range(bs):
            for j in range(Xb.shape[1]):
                Xb[i, j] += noise * rng_normal(state)
    alpha = hp[HP_MIXUP]
    if alpha > 0 and bs > 1:
        lam = rng_beta(state, alpha, alpha)
        perm = np.arange(bs)
        shuffle(perm, state)
        lx = Xb.dtype.type(lam)
        ox = Xb.dtype.type(1.0 - lam)
        Xm = Xb[:bs].copy()
        Ym = Yb[:bs].copy()
        for i in range(bs):
            Xb[i] = lx * Xm[i] + ox * Xm[perm[i]]
            Yb[i] = lx * Ym[i] + ox * Ym[perm[i]]


@njit(**_JIT)
def make_buffers(B, sizes, dt):
    """Work buffers for batches of up to ``B`` rows: A[0] the batch input, A[l+1] the output of
    layer l, dropout masks of the hidden layers, two ping-pong delta buffers and the targets."""
    L = sizes.shape[0] - 1
    A = [np.empty((B, sizes[l]), dt) for l in range(L + 1)]
    masks = [np.empty((B, sizes[l + 1]), dt) for l in range(L - 1)]
    maxw = sizes.max()
    D0 = np.empty(B * maxw, dt)
    D1 = np.empty(B * maxw, dt)
    Yb = np.empty((B, sizes[L]), dt)
    return A, masks, D0, D1, Yb


@njit(**_JIT)
def forward_backward(bs, params, grads, w_off, b_off, sizes, acts, loss, l2, p_drop, state, A, masks, D0, D1, Yb):
    """Forward and backward over the batch in ``A[0][:bs]`` with targets ``Yb[:bs]``.

    Writes the gradient of the batch-mean loss (+ 0.5*l2*||W||^2) into the flat ``grads``;
    returns the *sum* of the per-sample data losses (float64). ``p_drop > 0`` applies inverted
    dropout to every hidden layer with masks drawn from ``state``.
    """
    L = acts.shape[0]
    empty = np.empty((0, 1), params.dtype)
    l2_ = params.dtype.type(l2)
    for l in range(L):
        W, b = layer_views(params, w_off, b_off, sizes, l)
        out = A[l + 1][:bs]
        dense_forward(A[l][:bs], W, b, acts[l], out)
        if p_drop > 0 and l < L - 1:
            dropout(out, masks[l][:bs], p_drop, state)
    kout = sizes[L]
    D = D0[: bs * kout].reshape((bs, kout))
    total = loss_grad(A[L][:bs], Yb[:bs], loss, D)
    for l in range(L - 1, -1, -1):
        W, b = layer_views(params, w_off, b_off, sizes, l)
        dW, db = layer_views(grads, w_off, b_off, sizes, l)
        n_in = sizes[l]
        Dn = (D1 if (L - 1 - l) % 2 == 0 else D0)[: bs * n_in].reshape((bs, n_in))
        dense_backward(A[l][:bs], W, D, dW, db, Dn if l > 0 else empty)
        if l2 > 0:
            dW += l2_ * W
        if l > 0:
            if p_drop > 0:
                dropout_grad(A[l][:bs], Dn, masks[l - 1][:bs], p_drop, acts[l - 1])
            else:
                activation_grad(A[l][:bs], Dn, acts[l - 1])
        D = Dn
    return total


@njit(**_JIT)
def train_epoch_reference(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, opt, state, stats):
    """One epoch: shuffle, then for every mini-batch forward, backward and optimizer step.

    X: (n, n_features), Y: (n, n_outputs) targets (one-hot or soft for classification);
    params/grads/m/v: flat buffers; hp: float64[N_HP]; opt: int64[N_OPT], whose ``OPT_STEP``
    (the optimizer step count) is advanced in place; state: RNG state.
    Writes ``stats[0]`` = mean data loss over the epoch and ``stats[1 + l]`` = RMS over the
    batches of layer ``l``'s gradient norm (before clipping).
    """
    n = X.shape[0]
    L = acts.shape[0]
    B = min(opt[OPT_BATCH], n)
    kind, nesterov = opt[OPT_KIND], opt[OPT_NESTEROV] != 0
    clip = hp[HP_CLIP]
    A, masks, D0, D1, Yb = make_buffers(B, sizes, params.dtype)
    idx = np.arange(n)
    if opt[OPT_SHUFFLE]:
        shuffle(idx, state)
    layer_ss = np.zeros(L)
    total = 0.0
    n_batches = 0
    for s in range(0, n, B):
        e = min(s + B, n)
        gather_batch(X, Y, idx[s:e], A[0], Yb, hp, opt, state)
        total += forward_backward(e - s, params, grads, w_off, b_off, sizes, acts, loss, hp[HP_L2],
                                  hp[HP_DROPOUT], state, A, masks, D0, D1, Yb)
        for l in range(L):
            layer_ss[l] += sum_squares(grads[w_off[l]:b_off[l] + sizes[l + 1]])
        if clip > 0:
            clip_grad_norm(grads, clip)
        opt[OPT_STEP] += 1
        optimizer_step(params, grads, m, v, kind, hp, nesterov, opt[OPT_STEP])
        n_batches += 1
    stats[0] = total / n
    for l in range(L):
        stats[1 + l] = math.sqrt(layer_ss[l] / n_batches)


@njit(**_JIT)
def batch_gradient(X, Y, params, grads, w_off, b_off, sizes, acts, loss, l2):
    """Gradient of the mean loss over the whole (X, Y) (no dropout, no step) into ``grads``;
    returns the mean data loss. For tests, gradient checks and full-batch analysis."""
    n = X.shape[0]
    A, masks, D0, D1, Yb = make_buffers(n, sizes, params.dtype)
    A[0][:] = X
    Yb[:] = Y
    return forward_backward(n, params, grads, w_off, b_off, sizes, acts, loss, l2, 0.0,
                            np.zeros(1, np.uint64), A, masks, D0, D1, Yb) / n


def eval_loss(X, Y, params, w_off, b_off, sizes, acts, loss):
    """Mean loss of the network over (X, Y), without gradients (validation)."""
    Z = np.empty((X.shape[0], sizes[-1]), params.dtype)
    forward(X, params, w_off, b_off, sizes, acts, -1, Z)
    return loss_grad(Z, Y, loss, np.empty((0, 1), params.dtype)) / X.shape[0]


# --- fused, threaded kernels (the fast path) -----------------------------------------------------
# One thread pool: numba's threads split every mini-batch into T parts and each part calls a
# single-threaded GEMM (nbnet.kernels.blas) -- BLAS never starts threads of its own here.
# Two parallel regions per mini-batch:
#   rows:    thread t takes rows block t of the batch: gather, every layer's forward with bias and
#            activation fused, the loss gradient, and the backward deltas dX (no barrier needed:
#            row blocks are independent until the weight gradients).
#   params:  thread t takes rows block t of every layer's W (contiguous in the flat buffer):
#            dW = A.T @ D for those rows, the L2 term, the gradient-norm partial sum and, fused,
#            the optimizer step of that block while it is still in the thread's cache; and a
#            columns block of every bias.
# Work is split by part index, never by which thread runs it, and partial sums are added in
# part order: the same thread count gives bit-identical results.
_COL_ALIGN = 16  # columns blocks start on 64-byte boundaries (float32): no false sharing


@njit(**_JIT)
def _part(n, parts, t, align):
    """``[lo, hi)`` of part ``t`` of ``range(n)`` cut into ``parts``, cut points multiples of ``align``."""
    step = (n + parts - 1) // parts
    step = (step + align - 1) // align * align
    lo = min(t * step, n)
    return lo, min(lo + step, n)


@njit(**_JIT)
def _mat(buf, off, rows, cols):
    return buf[off:off + rows * cols].reshape((rows, cols))


@njit(**_JIT)
def _rows_pass(t, T, s, bs, B, X, Y, idx, params, w_off, b_off, sizes, acts, loss, Abuf, Dbuf, off, Yb, tot):
    """Rows block ``t``: gather, forward, loss gradient, backward deltas. ``tot[t]`` = loss sum."""
    r0, r1 = _part(bs, T, t, 1)
    if r1 <= r0:
        tot[t] = 0.0
        return
    L = acts.shape[0]
    A0 = _mat(Abuf, off[0], B, sizes[0])
    for i in range(r0, r1):  # element loops: a row assignment (A0[i] = X[r]) compiles numba's
        r = idx[s + i]           # shape-mismatch message formatting, ~1.5 s of every cold start
        for j in range(X.shape[1]):
            A0[i, j] = X[r, j]
        for j in range(Y.shape[1]):
            Yb[i, j] = Y[r, j]
    one, zero = 1.0, 0.0
    for l in range(L):
        W, b = layer_views(params, w_off, b_off, sizes, l)
        n_in, n_out = sizes[l], sizes[l + 1]
        Ain = _mat(Abuf, off[l], B, n_in)
        Aout = _mat(Abuf, off[l + 1], B, n_out)
        gemm(False, False, r1 - r0, n_out, n_in, one, Ain[r0], n_in, W, n_out, zero, Aout[r0], n_out)
        bias_activation(Aout[r0:r1], b, acts[l])
    k = sizes[L]
    DL = _mat(Dbuf, off[L], B, k)
    tot[t] = loss_grad_rows(_mat(Abuf, off[L], B, k)[r0:r1], Yb[r0:r1], loss, DL[r0:r1], bs)
    for l in range(L - 1, 0, -1):
        W, b = layer_views(params, w_off, b_off, sizes, l)
        n_in, n_out = sizes[l], sizes[l + 1]
        Dout = _mat(Dbuf, off[l + 1], B, n_out)
        Din = _mat(Dbuf, off[l], B, n_in)
        gemm(False, True, r1 - r0, n_in, n_out, one, Dout[r0], n_out, W, n_out, zero, Din[r0], n_in)
        activation_grad(_mat(Abuf, off[l], B, n_in)[r0:r1], Din[r0:r1], acts[l - 1])


@njit(**_JIT)
def _step_block(p, g, m, v, kind, c, plain, nesterov, first):
    if kind == OPT_SGD:
        sgd_apply(p, g, m, c[0], c[1], c[2], plain, nesterov, first)
    else:
        adam_apply(p, g, m, v, c)


@njit(**_JIT)
def _cols_pass(t, T, bs, B, params, grads, m, v, w_off, b_off, sizes, Abuf, Dbuf, off, l2, step, kind, c,
               plain, nesterov, first, ss):
    """Part ``t`` of every layer's parameters: rows block ``t`` of ``W`` (contiguous in the flat
    buffer) and columns block ``t`` of ``b``. Writes their gradients (+ L2), the squared norm into
    ``ss[t, l]`` and, when ``step``, applies the optimizer step to the block while it is hot."""
    L = sizes.shape[0] - 1
    l2_ = params.dtype.type(l2)
    for l in range(L):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0, b0 = w_off[l], b_off[l]
        Al = _mat(Abuf, off[l], B, n_in)
        Dl = _mat(Dbuf, off[l + 1], B, n_out)
        acc = 0.0
        r0, r1 = _part(n_in, T, t, 1)
        if r1 > r0:  # dW[r0:r1] = A[:, r0:r1].T @ D
            gemm(True, False, r1 - r0, n_out, bs, 1.0, Al[0, r0:], n_in, Dl[0], n_out, 0.0, grads[w0 + r0 * n_out:], n_out)
            o0, o1 = w0 + r0 * n_out, w0 + r1 * n_out
            g = grads[o0:o1]
            if l2 > 0:
                p = params[o0:o1]
                for j in range(g.shape[0]):
                    g[j] += l2_ * p[j]
            acc += sum_squares(g)
            if step:
                _step_block(params[o0:o1], g, m[o0:o1], v[o0:o1], kind, c, plain, nesterov, first)
        c0, c1 = _part(n_out, T, t, _COL_ALIGN)
        if c1 > c0:  # db[c0:c1] = column sums of D
            db = grads[b0 + c0:b0 + c1]
            db[:] = 0
            for i in range(bs):
                db += Dl[i, c0:c1]
            acc += sum_squares(db)
            if step:
                _step_block(params[b0 + c0:b0 + c1], db, m[b0 + c0:b0 + c1], v[b0 + c0:b0 + c1], kind, c, plain,
                            nesterov, first)
        ss[t, l] = acc


@njit(parallel=True, **_JIT)
def _batch_parallel(phase, T, s, bs, B, X, Y, idx, params, grads, m, v, w_off, b_off, sizes, acts, loss, Abuf, Dbuf,
                    off, Yb, tot, l2, step, kind, c, plain, nesterov, first, ss):
    """One parallel region over the T parts: ``phase`` 0 runs ``_rows_pass``, 1 ``_cols_pass``
    (one parallel function rather than two: each costs seconds of cold compile)."""
    for t in prange(T):
        if phase == 0:
            _rows_pass(np.int64(t), T, s, bs, B, X, Y, idx, params, w_off, b_off, sizes, acts, loss, Abuf, Dbuf, off,
                       Yb, tot)
        else:
            _cols_pass(np.int64(t), T, bs, B, params, grads, m, v, w_off, b_off, sizes, Abuf, Dbuf, off, l2, step,
                       kind, c, plain, nesterov, first, ss)


@njit(**_JIT)
def train_epoch_fused(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, opt, state, stats, T, clip):
    """``train_epoch`` on numba's threads with the single-threaded GEMM of ``nbnet.kernels.blas``,
    each mini-batch cut into ``T`` parts (pass ``numba.get_num_threads()``; results depend on ``T``
    only in the last bits of float sums, and not at all from run to run).

    Same arguments and results as ``train_epoch_reference``; no dropout or augmentation (the
    dispatcher ``train_epoch`` sends those to the reference). X, Y, params, grads, m, v share
    one dtype and are C-contiguous. ``clip``: the gradient-norm bound (``hp[HP_CLIP]``) or None;
    with None numba prunes the clipping path (the unfused step) and never compiles it. Always
    pass it: numba 0.68's cache confuses an omitted argument with an explicit None (a process
    that cached both variants and then loads the explicit-None one crashes), so it has no default.
    """
    n = X.shape[0]
    L = acts.shape[0]
    B = min(opt[OPT_BATCH], n)
    kind, nesterov = opt[OPT_KIND], opt[OPT_NESTEROV] != 0
    fuse_step = clip is None  # with clipping the step waits for the global gradient norm
    dt = params.dtype
    off = np.zeros(L + 2, np.int64)
    for l in range(L + 1):
        off[l + 1] = off[l] + B * sizes[l]
    Abuf = np.empty(off[L + 1], dt)
    Dbuf = np.empty(off[L + 1], dt)
    Yb = np.empty((B, sizes[L]), dt)
    idx = np.arange(n)
    if opt[OPT_SHUFFLE]:
        shuffle(idx, state)
    tot = np.zeros(T)
    ss = np.zeros((T, L))
    layer_ss = np.zeros(L)
    total = 0.0
    n_batches = 0
    c = np.zeros(9, dt)
    mom = hp[HP_MOMENTUM]
    plain = mom == 0.0
    l2 = hp[HP_L2]
    for s in range(0, n, B):
        bs = min(s + B, n) - s
        opt[OPT_STEP] += 1
        step_t = opt[OPT_STEP]
        _batch_parallel(np.int64(0), T, s, bs, B, X, Y, idx, params, grads, m, v, w_off, b_off, sizes, acts, loss,
                        Abuf, Dbuf, off, Yb, tot, l2, fuse_step, kind, c, plain, nesterov, step_t == 1, ss)
        for t in range(T):
            total += tot[t]
        if kind == OPT_SGD:
            c[0], c[1], c[2] = hp[HP_LR], mom, hp[HP_WD]
        else:
            coef = adam_coefficients(hp[HP_LR], hp[HP_BETA1], hp[HP_BETA2], hp[HP_EPS], hp[HP_WD],
                                     kind == OPT_ADAMW, step_t)
            for j in range(coef.shape[0]):
                c[j] = coef[j]
        _batch_parallel(np.int64(1), T, s, bs, B, X, Y, idx, params, grads, m, v, w_off, b_off, sizes, acts, loss,
                        Abuf, Dbuf, off, Yb, tot, l2, fuse_step, kind, c, plain, nesterov, step_t == 1, ss)
        for t in range(T):
            for l in range(L):
                layer_ss[l] += ss[t, l]
        if clip is not None:
            clip_grad_norm(grads, clip)
            optimizer_step(params, grads, m, v, kind, hp, nesterov, step_t)
        n_batches += 1
    stats[0] = total / n
    for l in range(L):
        stats[1 + l] = math.sqrt(layer_ss[l] / n_batches)


@njit(**_JIT)
def _forward_rows(ci, chunk, X, params, w_off, b_off, sizes, acts, loss, out):
    """Rows ``[ci*chunk, (ci+1)*chunk)`` of ``forward`` through every layer."""
    n = X.shape[0]
    L = acts.shape[0]
    r0 = ci * chunk
    r1 = min(r0 + chunk, n)
    rows = r1 - r0
    width = 1
    for l in range(1, L):
        width = max(width, sizes[l])
    bufs = np.empty((2, rows * width), params.dtype)
    inp = X[r0:r1]
    for l in range(L):
        W, b = layer_views(params, w_off, b_off, sizes, l)
        n_in, n_out = sizes[l], sizes[l + 1]
        dst = out[r0:r1] if l == L - 1 else bufs[l % 2, :rows * n_out].reshape((rows, n_out))
        gemm(False, False, rows, n_out, n_in, 1.0, inp[0], n_in, W, n_out, 0.0, dst[0], n_out)
        bias_activation(dst, b, acts[l])
        inp = dst
    if loss >= 0:
        output_transform(out[r0:r1], loss)


@njit(parallel=True, **_JIT)
def forward_fused(X, params, w_off, b_off, sizes, acts, loss, out):
    """``forward`` on numba's threads: blocks of 256 rows in parallel, each through every layer
    with the single-threaded GEMM. X, params and out share one dtype and are C-contiguous."""
    chunk = 256
    for ci in prange((X.shape[0] + chunk - 1) // chunk):
        _forward_rows(np.int64(ci), chunk, X, params, w_off, b_off, sizes, acts, loss, out)


def _fusable(arrays) -> bool:
    dt = arrays[0].dtype
    return blas.available() and dt in (np.float32, np.float64) and all(
        a.dtype == dt and a.flags.c_contiguous for a in arrays)


def train_epoch(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, opt, state, stats):
    """One epoch: shuffle, then for every mini-batch forward, backward and optimizer step.

    X: (n, n_features), Y: (n, n_outputs) targets (one-hot or soft for classification);
    params/grads/m/v: flat buffers; hp: float64[N_HP]; opt: int64[N_OPT], whose ``OPT_STEP``
    (the optimizer step count) is advanced in place; state: RNG state.
    Writes ``stats[0]`` = mean data loss over the epoch and ``stats[1 + l]`` = RMS over the
    batches of layer ``l``'s gradient norm (before clipping).

    Runs ``train_epoch_fused`` (threaded, fused) when a GEMM library is loaded and there is no
    dropout or augmentation, else ``train_epoch_reference`` (serial loops, ``np.dot``).
    """
    if (hp[HP_DROPOUT] == 0 and hp[HP_NOISE] == 0 and hp[HP_MIXUP] == 0 and opt[OPT_IMG_H] == 0
            and X.shape[0] > 0 and _fusable((X, Y, params, grads, m, v))):
        with parallel_guard(), blas.single_threaded():
            train_epoch_fused(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, opt, state, stats,
                              np.int64(get_num_threads()), hp[HP_CLIP] if hp[HP_CLIP] > 0 else None)
    else:
        train_epoch_reference(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, opt, state, stats)


def forward(X, params, w_off, b_off, sizes, acts, loss, out):
    """Network output for ``X`` (n, n_features) into ``out`` (n, n_outputs).

    With ``loss >= 0`` the output transform of that loss is applied (probabilities); with
    ``loss == -1`` the raw logits are returned. Threaded (``forward_fused``) when a GEMM library
    is loaded, else ``forward_reference``.
    """
    if X.shape[0] > 0 and _fusable((X, params, out)):
        with parallel_guard(), blas.single_threaded():
            forward_fused(X, params, w_off, b_off, sizes, acts, loss, out)
    else:
        forward_reference(X, params, w_off, b_off, sizes, acts, loss, out)


# --- host/device transfer (identity on the CPU; the CUDA backend copies) -----------------------
def to_device(a: np.ndarray) -> np.ndarray:
    return a


def to_host(a: np.ndarray) -> np.ndarray:
    return a
