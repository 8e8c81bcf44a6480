"""CPU building blocks of one layer: activations, dense layers, losses, the output transform and
dropout, plus the per-layer views into the flat parameter buffer. Pure functions over arrays that
write into caller-allocated buffers (conventions: :mod:`nbnet.kernels.cpu`)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from nbnet.kernels.rng import rng_uniform
from nbnet.kernels.tables import (
    ACT_ELU, ACT_IDENTITY, ACT_LEAKY_RELU, ACT_RELU, ACT_SIGMOID, ACT_SOFTPLUS, ACT_TANH, CPU_JIT, LEAKY_SLOPE,
    LOSS_SIGMOID_BCE, LOSS_SOFTMAX_CE,
)


@njit(**CPU_JIT)
def layer_views(flat, w_off, b_off, sizes, l):
    """``(W_l, b_l)`` of layer ``l`` as views into the flat buffer: (n_in, n_out) and (n_out,)."""
    n_in, n_out = sizes[l], sizes[l + 1]
    W = flat[w_off[l]:w_off[l] + n_in * n_out].reshape((n_in, n_out))
    b = flat[b_off[l]:b_off[l] + n_out]
    return W, b


# --- activations -------------------------------------------------------------------------------
@njit(**CPU_JIT)
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


@njit(**CPU_JIT)
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
@njit(**CPU_JIT)
def dense_forward(X, W, b, act, out):
    """``out = act(X @ W + b)``. X: (batch, n_in), W: (n_in, n_out), b: (n_out,), out: (batch, n_out)."""
    np.dot(X, W, out)
    bias_activation(out, b, act)


@njit(**CPU_JIT)
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
@njit(**CPU_JIT)
def loss_grad(Z, Y, loss, dZ):
    """Loss of logits ``Z`` against targets ``Y`` (both (batch, k)); writes dLoss/dZ into ``dZ``.

    Returns the *sum* over the batch of the per-sample loss (float64); the gradient is of the
    batch *mean* (PyTorch's ``reduction='mean'``). Cross-entropies work on logits with
    log-sum-exp, so they stay finite for any logits. MSE averages over every element, as
    ``torch.nn.MSELoss`` does. Pass ``dZ`` with zero rows to compute the loss alone.
    """
    return loss_grad_rows(Z, Y, loss, dZ, Z.shape[0])


@njit(**CPU_JIT)
def loss_grad_rows(Z, Y, loss, dZ, B):
    """``loss_grad`` of a block of rows of a batch of ``B`` rows: the gradient is of the mean
    over all ``B``, so threads can each take a block of the batch."""
    return weighted_loss_grad_rows(Z, Y, np.empty(0), loss, dZ, 1.0 / B)


@njit(**CPU_JIT)
def weighted_loss_grad_rows(Z, Y, w, loss, dZ, inv):
    """Loss of a block of rows weighted by ``w`` (float64 (rows,); an empty ``w`` weighs every
    row 1): returns ``sum_i w_i * l_i`` (float64) and writes the gradient of ``inv * sum_i w_i *
    l_i`` into ``dZ`` (skipped when ``dZ`` has zero rows). With ``inv = 1 / sum of the batch's
    weights`` that is the gradient of the batch's weighted mean loss, ``torch``'s
    ``(w * loss(reduction="none")).sum() / w.sum()``; threads each take a block of the batch.
    Long by design: one loop per loss, each computing the loss and its gradient in one pass."""
    rows, k = Z.shape
    weighted = w.shape[0] > 0
    want_grad = dZ.shape[0] > 0
    total = 0.0
    if loss == LOSS_SOFTMAX_CE:
        for i in range(rows):
            wi = w[i] if weighted else 1.0
            f = Z.dtype.type(wi * inv)
            z = Z[i]
            mx = z[0]
            for j in range(1, k):
                mx = max(mx, z[j])
            s = 0.0
            for j in range(k):
                s += math.exp(z[j] - mx)
            lse = mx + math.log(s)
            ysum = 0.0
            li = 0.0
            for j in range(k):
                li += Y[i, j] * (lse - z[j])
                ysum += Y[i, j]
            total += wi * li
            if want_grad:
                for j in range(k):
                    dZ[i, j] = (math.exp(z[j] - lse) * ysum - Y[i, j]) * f
    elif loss == LOSS_SIGMOID_BCE:
        for i in range(rows):
            wi = w[i] if weighted else 1.0
            f = Z.dtype.type(wi * inv)
            li = 0.0
            for j in range(k):
                z = Z[i, j]
                y = Y[i, j]
                li += max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
                if want_grad:
                    if z >= 0:
                        p = 1.0 / (1.0 + math.exp(-z))
                    else:
                        e = math.exp(z)
                        p = e / (1.0 + e)
                    dZ[i, j] = (p - y) * f
            total += wi * li
    else:  # LOSS_MSE
        # The sum has a loop of its own: fused in one loop with the gradient's stores, LLVM may
        # vectorise (reassociate) it differently from the loss-alone loop, and the two totals then
        # differ in the last bit.
        for i in range(rows):
            li = 0.0
            for j in range(k):
                r = Z[i, j] - Y[i, j]
                li += r * r / k
            total += (w[i] if weighted else 1.0) * li
        if want_grad:
            for i in range(rows):
                scale = Z.dtype.type(2.0 * (w[i] if weighted else 1.0) * inv / k)
                for j in range(k):
                    dZ[i, j] = scale * (Z[i, j] - Y[i, j])
    return total


@njit(**CPU_JIT)
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
@njit(**CPU_JIT)
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


@njit(**CPU_JIT)
def dropout_grad(A, D, mask, p, act):
    """Backward of ``act`` followed by inverted dropout: ``D *= mask * act'(a)``, where the
    pre-dropout output ``a`` is recovered from the stored (scaled) ``A``."""
    keep = A.dtype.type(1.0 - p)
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            D[i, j] *= mask[i, j]
            A[i, j] *= keep  # undo the scaling; dropped units are 0 and their D is 0 already
    activation_grad(A, D, act)
