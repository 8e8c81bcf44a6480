"""CPU optimizer steps over the flat parameter buffer (or any slice of it), and the gradient
norms and clipping that come before them. ``nbnet.optim`` says which optimizer each code is."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from nbnet.kernels.tables import CPU_JIT, HP_BETA1, HP_BETA2, HP_EPS, HP_LR, HP_MOMENTUM, HP_WD, OPT_ADAMW, OPT_SGD


@njit(**CPU_JIT)
def sum_squares(g):
    s = 0.0
    for i in range(g.shape[0]):
        s += g[i] * g[i]
    return s


@njit(**CPU_JIT)
def clip_grad_norm(grads, max_norm):
    """Scale ``grads`` so their global L2 norm is at most ``max_norm``; returns the norm before."""
    norm = math.sqrt(sum_squares(grads))
    if norm > max_norm:
        grads *= grads.dtype.type(max_norm / (norm + 1e-6))
    return norm


@njit(**CPU_JIT)
def sgd_step(params, grads, buf, lr, momentum, nesterov, weight_decay, t):
    """SGD as ``torch.optim.SGD`` (dampening 0): ``g += wd*p``; ``buf = mu*buf + g`` (``buf = g``
    at the first step ``t == 1``); ``g = g + mu*buf`` (Nesterov) or ``buf``; ``p -= lr*g``.
    Momentum 0 is plain SGD (and full-batch GD when the batch is the whole set)."""
    dt = params.dtype.type
    sgd_apply(params, grads, buf, dt(lr), dt(momentum), dt(weight_decay), momentum == 0.0, nesterov, t == 1)


@njit(**CPU_JIT)
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


@njit(**CPU_JIT)
def adam_step(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, t):
    """Adam (Kingma & Ba 2015) in the PyTorch formulation, epsilon added after the bias-corrected
    root: ``p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``.

    ``decoupled=False``: ``torch.optim.Adam`` (``g += wd*p``). ``decoupled=True``: AdamW
    (Loshchilov & Hutter 2019), ``p *= 1 - lr*wd`` before the step, as ``torch.optim.AdamW``.
    """
    c = adam_coefficients(lr, beta1, beta2, eps, weight_decay, decoupled, t).astype(params.dtype)
    adam_apply(params, grads, m, v, c)


@njit(**CPU_JIT)
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


@njit(**CPU_JIT)
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


@njit(**CPU_JIT)
def optimizer_step(params, grads, m, v, kind, hp, nesterov, t):
    """One optimizer step of kind ``OPT_*`` with hyperparameters ``hp`` (see ``HP_*``)."""
    if kind == OPT_SGD:
        sgd_step(params, grads, m, hp[HP_LR], hp[HP_MOMENTUM], nesterov, hp[HP_WD], t)
    else:
        adam_step(params, grads, m, v, hp[HP_LR], hp[HP_BETA1], hp[HP_BETA2], hp[HP_EPS],
                  hp[HP_WD], kind == OPT_ADAMW, t)
