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
  loop stops vectorisation (see docs/performance.md).

This module is the CPU backend: it holds the whole-network kernels and re-exports the building
blocks, so that it offers every name of the CUDA backend. Where the rest lives:
:mod:`~nbnet.kernels.tables` (the name → code tables and vector layouts), :mod:`~nbnet.kernels.rng`
(the generator), :mod:`~nbnet.kernels.cpu_layers` (activations, dense layers, losses, dropout),
:mod:`~nbnet.kernels.cpu_optim` (gradient norms, clipping, optimizer steps) and
:mod:`~nbnet.kernels.cpu_fused` (the threaded fast path).

The thread budget is owned by :mod:`nbnet.kernels.threads`. ``train_epoch`` and ``forward`` run
fused kernels on numba's threads, each thread calling a single-threaded GEMM
(:mod:`nbnet.kernels.blas`); the ``*_reference`` kernels (and augmentation, which uses them) are
serial loops whose GEMMs (``np.dot`` → BLAS) get the threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from nbnet.kernels import blas
from nbnet.kernels.cpu_fused import batch_weight, forward_fused, train_epoch_fused
from nbnet.kernels.cpu_layers import (
    activation_grad, bias_activation, dense_backward, dense_forward, dropout, dropout_grad, layer_views, loss_grad,
    loss_grad_rows, output_transform, weighted_loss_grad_rows,
)
from nbnet.kernels.cpu_optim import (
    adam_apply, adam_coefficients, adam_step, clip_grad_norm, optimizer_step, sgd_apply, sgd_step, sum_squares,
)
from nbnet.kernels.rng import rng_below, rng_beta, rng_gamma, rng_next, rng_normal, rng_uniform, seed_state, shuffle
from nbnet.kernels.tables import (
    ACT_ELU, ACT_IDENTITY, ACT_LEAKY_RELU, ACT_RELU, ACT_SIGMOID, ACT_SOFTPLUS, ACT_TANH, ACTIVATIONS, CPU_JIT,
    HP_BETA1, HP_BETA2, HP_CLIP, HP_DROPOUT, HP_EPS, HP_L2, HP_LR, HP_MIXUP, HP_MOMENTUM, HP_NOISE, HP_WD,
    LEAKY_SLOPE, LOSS_MSE, LOSS_SIGMOID_BCE, LOSS_SOFTMAX_CE, LOSSES, N_HP, N_SETTINGS, OPT_ADAM, OPT_ADAMW, OPT_SGD,
    SETTING_BATCH, SETTING_IMG_H, SETTING_IMG_W, SETTING_NESTEROV, SETTING_OPTIMIZER, SETTING_SHUFFLE, SETTING_STEP,
)
from nbnet.kernels.threads import epoch_threads, numba_threads, parallel_guard


# --- whole network -----------------------------------------------------------------------------
@njit(**CPU_JIT)
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


@njit(**CPU_JIT)
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


@njit(**CPU_JIT)
def gather_batch(X, Y, sw, idx, Xb, Yb, wb, hp, settings, state):
    """Copy rows ``idx`` of X and Y (and of the row weights ``sw``, when not empty, into ``wb``)
    into the batch buffers, applying the augmentations: random ±1-pixel shifts of (h, w) images,
    Gaussian noise, then mixup (Zhang et al. 2018), which mixes the weights as it mixes targets."""
    bs = idx.shape[0]
    h, w = settings[SETTING_IMG_H], settings[SETTING_IMG_W]
    weighted = sw.shape[0] > 0
    for i in range(bs):
        r = idx[i]
        Yb[i] = Y[r]
        if weighted:
            wb[i] = sw[r]
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
        Wm = wb[:bs].copy() if weighted else wb[:0]
        for i in range(bs):
            Xb[i] = lx * Xm[i] + ox * Xm[perm[i]]
            Yb[i] = lx * Ym[i] + ox * Ym[perm[i]]
            if weighted:
                wb[i] = lam * Wm[i] + (1.0 - lam) * Wm[perm[i]]


@njit(**CPU_JIT)
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


@njit(**CPU_JIT)
def forward_backward(bs, params, grads, w_off, b_off, sizes, acts, loss, l2, p_drop, state, A, masks, D0, D1, Yb,
                     wb, inv):
    """Forward and backward over the batch in ``A[0][:bs]`` with targets ``Yb[:bs]`` and row
    weights ``wb[:bs]`` (float64; an empty ``wb``: every row weighs 1).

    Writes the gradient of ``inv * sum_i w_i * l_i`` (+ 0.5*l2*||W||^2) into the flat ``grads``
    (``inv = 1 / sum of the batch's weights``: the weighted batch-mean loss; 1/bs unweighted);
    returns the weighted *sum* of the per-sample data losses (float64). ``p_drop > 0`` applies
    inverted dropout to every hidden layer with masks drawn from ``state``.
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
    total = weighted_loss_grad_rows(A[L][:bs], Yb[:bs], wb[:bs] if wb.shape[0] > 0 else wb, loss, D, inv)
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


@njit(**CPU_JIT)
def train_epoch_reference(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, settings, state, stats, sw,
                          lrs):
    """One epoch: shuffle, then for every mini-batch forward, backward and optimizer step.

    X: (n, n_features), Y: (n, n_outputs) targets (one-hot or soft for classification);
    params/grads/m/v: flat buffers; hp: float64[N_HP]; settings: int64[N_SETTINGS], whose ``SETTING_STEP``
    (the optimizer step count) is advanced in place; state: RNG state; sw: float64 (n,) row
    weights (empty: every row weighs 1); lrs: float64 (n_batches,) the learning rate of each
    step of the epoch (empty: ``hp[HP_LR]`` for all).
    Writes ``stats[0]`` = (weighted) mean data loss over the epoch and ``stats[1 + l]`` = RMS over
    the batches of layer ``l``'s gradient norm (before clipping).
    """
    n = X.shape[0]
    L = acts.shape[0]
    B = min(settings[SETTING_BATCH], n)
    kind, nesterov = settings[SETTING_OPTIMIZER], settings[SETTING_NESTEROV] != 0
    clip = hp[HP_CLIP]
    A, masks, D0, D1, Yb = make_buffers(B, sizes, params.dtype)
    wb = np.empty(B if sw.shape[0] > 0 else 0)
    hpb = hp.copy()  # hpb[HP_LR]: this step's learning rate
    idx = np.arange(n)
    if settings[SETTING_SHUFFLE]:
        shuffle(idx, state)
    layer_ss = np.zeros(L)
    total = 0.0
    w_total = 0.0
    n_batches = 0
    for s in range(0, n, B):
        e = min(s + B, n)
        gather_batch(X, Y, sw, idx[s:e], A[0], Yb, wb, hp, settings, state)
        wsum, inv = batch_weight(wb[:e - s], np.arange(e - s)) if wb.shape[0] > 0 else batch_weight(sw, idx[s:e])
        w_total += wsum
        total += forward_backward(e - s, params, grads, w_off, b_off, sizes, acts, loss, hp[HP_L2],
                                  hp[HP_DROPOUT], state, A, masks, D0, D1, Yb, wb, inv)
        for l in range(L):
            layer_ss[l] += sum_squares(grads[w_off[l]:b_off[l] + sizes[l + 1]])
        if clip > 0:
            clip_grad_norm(grads, clip)
        settings[SETTING_STEP] += 1
        hpb[HP_LR] = lrs[n_batches] if lrs.shape[0] > 0 else hp[HP_LR]
        optimizer_step(params, grads, m, v, kind, hpb, nesterov, settings[SETTING_STEP])
        n_batches += 1
    stats[0] = total / w_total if w_total > 0 else 0.0
    for l in range(L):
        stats[1 + l] = math.sqrt(layer_ss[l] / n_batches)


@njit(**CPU_JIT)
def _batch_gradient(X, Y, params, grads, w_off, b_off, sizes, acts, loss, l2, sw):
    n = X.shape[0]
    A, masks, D0, D1, Yb = make_buffers(n, sizes, params.dtype)
    A[0][:] = X
    Yb[:] = Y
    wsum, inv = batch_weight(sw, np.arange(n))
    total = forward_backward(n, params, grads, w_off, b_off, sizes, acts, loss, l2, 0.0, np.zeros(1, np.uint64), A,
                             masks, D0, D1, Yb, sw, inv)
    return total * inv if wsum > 0 else 0.0


def batch_gradient(X, Y, params, grads, w_off, b_off, sizes, acts, loss, l2, sw=None):
    """Gradient of the (weighted) mean loss over the whole (X, Y) (no dropout, no step) into
    ``grads``; returns the mean data loss. ``sw``: float64 (n,) row weights or None. For tests,
    gradient checks and full-batch analysis."""
    return _batch_gradient(X, Y, params, grads, w_off, b_off, sizes, acts, loss, l2, _rows(sw))


def weighted_loss_grad(Z, Y, w, loss, dZ):
    """The weighted mean loss ``sum_i w_i l_i / sum_i w_i`` of logits ``Z`` against ``Y`` (both
    (batch, k)), with its gradient written into ``dZ`` (skipped when it has zero rows); ``w``:
    float64 (batch,) weights, not all zero. Returns the weighted *sum* ``sum_i w_i l_i``."""
    return weighted_loss_grad_rows(Z, Y, w, loss, dZ, 1.0 / float(np.sum(w)))


_NONE = np.empty(0)  # the "no weights" / "no per-step rates" argument of the epoch kernels


def _rows(a):
    """``a`` as a C-contiguous float64 vector, or the empty one for None."""
    return _NONE if a is None else np.ascontiguousarray(a, dtype=np.float64)


def eval_loss(X, Y, params, w_off, b_off, sizes, acts, loss, out=None):
    """Mean loss of the network over (X, Y), without gradients (validation). With ``out`` (n,
    n_outputs), the same forward pass also leaves the predictions (output transform applied) there."""
    Z = np.empty((X.shape[0], sizes[-1]), params.dtype) if out is None else out
    forward(X, params, w_off, b_off, sizes, acts, -1, Z)
    total = loss_grad(Z, Y, loss, np.empty((0, 1), params.dtype))
    if out is not None:
        output_transform(Z, loss)
    return total / X.shape[0]


def _fusable(arrays) -> bool:
    dt = arrays[0].dtype
    return blas.available() and dt in (np.float32, np.float64) and all(
        a.dtype == dt and a.flags.c_contiguous for a in arrays)


def train_epoch(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, settings, state, stats, sw=None,
                lrs=None):
    """One epoch: shuffle, then for every mini-batch forward, backward and optimizer step.

    X: (n, n_features), Y: (n, n_outputs) targets (one-hot or soft for classification);
    params/grads/m/v: flat buffers; hp: float64[N_HP]; settings: int64[N_SETTINGS], whose ``SETTING_STEP``
    (the optimizer step count) is advanced in place; state: RNG state.
    sw: host float64 (n,) row weights, or None (every row weighs 1): each batch's loss is the
    weighted mean ``sum w_i l_i / sum w_i``. lrs: host float64 (n_batches,), the learning rate of
    each step of the epoch (a schedule), or None (``hp[HP_LR]``).
    Writes ``stats[0]`` = (weighted) mean data loss over the epoch and ``stats[1 + l]`` = RMS over
    the batches of layer ``l``'s gradient norm (before clipping).

    Runs ``train_epoch_fused`` (threaded, fused; on one thread for mini-batches under
    :data:`~nbnet.kernels.threads.SERIAL_BELOW` multiply-adds) when a GEMM library is loaded and
    there is no augmentation, else ``train_epoch_reference`` (serial loops, ``np.dot``).
    """
    if (hp[HP_NOISE] == 0 and hp[HP_MIXUP] == 0 and settings[SETTING_IMG_H] == 0
            and X.shape[0] > 0 and _fusable((X, Y, params, grads, m, v))):
        T = epoch_threads(min(int(settings[SETTING_BATCH]), X.shape[0]), params.shape[0])
        with parallel_guard(), blas.single_threaded(), numba_threads(T):
            train_epoch_fused(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, settings, state, stats,
                              _rows(sw), _rows(lrs), np.int64(T), hp[HP_CLIP] if hp[HP_CLIP] > 0 else None)
    else:
        train_epoch_reference(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, settings, state, stats,
                              _rows(sw), _rows(lrs))


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


#: The backend's kernels and codes: the names :mod:`nbnet.kernels.cuda` offers too (plus the
#: CPU-only reference, fused and generator kernels that tests and the CUDA backend use).
__all__ = [
    # tables
    "ACT_ELU", "ACT_IDENTITY", "ACT_LEAKY_RELU", "ACT_RELU", "ACT_SIGMOID", "ACT_SOFTPLUS", "ACT_TANH", "ACTIVATIONS",
    "HP_BETA1", "HP_BETA2", "HP_CLIP", "HP_DROPOUT", "HP_EPS", "HP_L2", "HP_LR", "HP_MIXUP", "HP_MOMENTUM", "HP_NOISE",
    "HP_WD", "LEAKY_SLOPE", "LOSS_MSE", "LOSS_SIGMOID_BCE", "LOSS_SOFTMAX_CE", "LOSSES", "N_HP", "N_SETTINGS",
    "OPT_ADAM", "OPT_ADAMW", "OPT_SGD", "SETTING_BATCH", "SETTING_IMG_H", "SETTING_IMG_W", "SETTING_NESTEROV",
    "SETTING_OPTIMIZER", "SETTING_SHUFFLE", "SETTING_STEP",
    # generator
    "rng_below", "rng_beta", "rng_gamma", "rng_next", "rng_normal", "rng_uniform", "seed_state", "shuffle",
    # one layer
    "activation_grad", "bias_activation", "dense_backward", "dense_forward", "dropout", "dropout_grad",
    "layer_views", "loss_grad", "loss_grad_rows", "output_transform", "weighted_loss_grad", "weighted_loss_grad_rows",
    # optimizer steps
    "adam_apply", "adam_coefficients", "adam_step", "clip_grad_norm", "optimizer_step", "sgd_apply", "sgd_step",
    "sum_squares",
    # whole network
    "batch_gradient", "batch_weight", "eval_loss", "forward", "forward_backward", "forward_fused", "forward_reference",
    "forward_stats", "gather_batch", "make_buffers", "train_epoch", "train_epoch_fused", "train_epoch_reference",
    "to_device", "to_host",
]
