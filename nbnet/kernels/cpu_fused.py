"""The fused, threaded CPU kernels (the fast path of ``cpu.train_epoch`` and ``cpu.forward``).

One thread pool: numba's threads split every mini-batch into T parts and each part calls a
single-threaded GEMM (:mod:`nbnet.kernels.blas`) -- BLAS never starts threads of its own here.
Two parallel regions per mini-batch (an epoch on one thread calls the two passes directly:
a region's launch takes the GIL and costs more than a small mini-batch's work):

* rows: thread t takes rows block t of the batch: gather, every layer's forward with bias,
  activation and dropout fused, the loss gradient, and the backward deltas dX (no barrier
  needed: row blocks are independent until the weight gradients).
* params: thread t takes rows block t of every layer's W (contiguous in the flat buffer):
  dW = A.T @ D for those rows, the L2 term, the gradient-norm partial sum and, fused, the
  optimizer step of that block while it is still in the thread's cache; and a columns block of
  every bias.

Work is split by part index, never by which thread runs it, and partial sums are added in part
order: the same thread count gives bit-identical results.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from nbnet.kernels.blas import gemm
from nbnet.kernels.cpu_layers import (
    activation_grad, bias_activation, layer_views, output_transform, weighted_loss_grad_rows,
)
from nbnet.kernels.cpu_optim import (
    adam_apply, adam_coefficients, clip_grad_norm, optimizer_step, sgd_apply, sum_squares,
)
from nbnet.kernels.rng import rng_at, rng_next, shuffle
from nbnet.kernels.tables import (
    CPU_JIT, HP_BETA1, HP_BETA2, HP_DROPOUT, HP_EPS, HP_L2, HP_LR, HP_MOMENTUM, HP_WD, OPT_ADAMW, OPT_SGD, SETTING_BATCH,
    SETTING_NESTEROV, SETTING_OPTIMIZER, SETTING_SHUFFLE, SETTING_STEP,
)

COL_ALIGN = 16  # columns blocks start on 64-byte boundaries (float32): no false sharing


@njit(**CPU_JIT)
def part_bounds(n, parts, t, align):
    """``[lo, hi)`` of part ``t`` of ``range(n)`` cut into ``parts``, cut points multiples of ``align``."""
    step = (n + parts - 1) // parts
    step = (step + align - 1) // align * align
    lo = min(t * step, n)
    return lo, min(lo + step, n)


@njit(**CPU_JIT)
def matrix_at(buf, off, rows, cols):
    """The (rows, cols) matrix stored row-major in the flat work buffer ``buf`` from ``off``."""
    return buf[off:off + rows * cols].reshape((rows, cols))


@njit(**CPU_JIT)
def _rows_pass(t, T, s, bs, B, X, Y, sw, idx, params, w_off, b_off, sizes, acts, loss, Abuf, Dbuf, off, Yb, wb, inv,
               tot, p, key, Sbuf):
    """Rows block ``t``: gather, forward, loss gradient, backward deltas. ``tot[t]`` = the block's
    (weighted) loss sum; ``sw`` the per-row weights of X (empty: none), gathered into ``wb``;
    ``inv`` = 1 / the batch's weight sum (1 / bs without weights). With dropout ``p`` > 0 the masks
    come from the counter-based stream ``key`` (:func:`dropout_rows`), and ``Sbuf`` (laid out as
    ``Abuf``) takes the undropped activations for the backward pass."""
    r0, r1 = part_bounds(bs, T, t, 1)
    if r1 <= r0:
        tot[t] = 0.0
        return
    L = acts.shape[0]
    A0 = matrix_at(Abuf, off[0], B, sizes[0])
    for i in range(r0, r1):  # element loops: a row assignment (A0[i] = X[r]) compiles numba's
        r = idx[s + i]           # shape-mismatch message formatting, ~1.5 s of every cold start
        for j in range(X.shape[1]):
            A0[i, j] = X[r, j]
        for j in range(Y.shape[1]):
            Yb[i, j] = Y[r, j]
        if sw.shape[0] > 0:
            wb[i] = sw[r]
    one, zero = 1.0, 0.0
    for l in range(L):
        W, b = layer_views(params, w_off, b_off, sizes, l)
        n_in, n_out = sizes[l], sizes[l + 1]
        Ain = matrix_at(Abuf, off[l], B, n_in)
        Aout = matrix_at(Abuf, off[l + 1], B, n_out)
        gemm(False, False, r1 - r0, n_out, n_in, one, Ain[r0], n_in, W, n_out, zero, Aout[r0], n_out)
        bias_activation(Aout[r0:r1], b, acts[l])
        if p > 0 and l < L - 1:
            dropout_rows(Aout[r0:r1], r0, l, key, p, Aout[:0], Aout[:0])
    k = sizes[L]
    DL = matrix_at(Dbuf, off[L], B, k)
    wrows = wb[r0:r1] if sw.shape[0] > 0 else wb[:0]
    tot[t] = weighted_loss_grad_rows(matrix_at(Abuf, off[L], B, k)[r0:r1], Yb[r0:r1], wrows, loss, DL[r0:r1], inv)
    for l in range(L - 1, 0, -1):
        W, b = layer_views(params, w_off, b_off, sizes, l)
        n_in, n_out = sizes[l], sizes[l + 1]
        Dout = matrix_at(Dbuf, off[l + 1], B, n_out)
        Din = matrix_at(Dbuf, off[l], B, n_in)
        gemm(False, True, r1 - r0, n_in, n_out, one, Dout[r0], n_out, W, n_out, zero, Din[r0], n_in)
        Al = matrix_at(Abuf, off[l], B, n_in)[r0:r1]
        if p > 0:  # A keeps the dropped-out values for the weight gradients: undrop into S
            Sl = matrix_at(Sbuf, off[l], B, n_in)[r0:r1]
            dropout_rows(Al, r0, l - 1, key, p, Din[r0:r1], Sl)
            Al = Sl
        activation_grad(Al, Din[r0:r1], acts[l - 1])


@njit(**CPU_JIT)
def dropout_rows(A, r0, layer, key, p, D, S):
    """Inverted dropout of rows ``r0 …`` of a batch's hidden layer ``layer`` output ``A`` (those
    rows): unit ``j`` of batch row ``i`` is kept, and scaled by 1 / (1 - p), when
    ``rng_at(key, layer · 2**40 + i · width + j) >= p``, whichever thread draws it.

    Forward (``D`` with no rows): ``A`` in place. Backward (``D`` the deltas of those rows, the
    same ``A``, ``layer`` and ``key``): ``D *= mask``, and ``S`` = the output before dropout
    (``A × (1 - p)``, 0 where dropped) for ``activation_grad``; ``A`` is left as it is (the weight
    gradients read it). One function for both: each compiled function costs cold-start time."""
    n = A.shape[1]
    scale = A.dtype.type(1.0 / (1.0 - p))
    keep = A.dtype.type(1.0 - p)
    zero = A.dtype.type(0.0)
    backward = D.shape[0] > 0
    for i in range(A.shape[0]):
        base = (layer << 40) + (r0 + i) * n
        for j in range(n):
            kept = rng_at(key, base + j) >= p
            if not backward:
                A[i, j] = A[i, j] * scale if kept else zero
            elif kept:
                D[i, j] *= scale
                S[i, j] = A[i, j] * keep
            else:
                D[i, j] = zero
                S[i, j] = zero


@njit(**CPU_JIT)
def batch_weight(sw, rows):
    """The sum of the weights ``sw`` of ``rows`` (``len(rows)`` when ``sw`` is empty: no
    weights) and its inverse (0 when the batch weighs 0: its data gradient is then 0)."""
    if sw.shape[0] == 0:
        return float(rows.shape[0]), 1.0 / rows.shape[0]
    s = 0.0
    for i in range(rows.shape[0]):
        s += sw[rows[i]]
    return s, (1.0 / s if s > 0 else 0.0)


@njit(**CPU_JIT)
def _step_block(p, g, m, v, kind, c, plain, nesterov, first):
    if kind == OPT_SGD:
        sgd_apply(p, g, m, c[0], c[1], c[2], plain, nesterov, first)
    else:
        adam_apply(p, g, m, v, c)


@njit(**CPU_JIT)
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
        Al = matrix_at(Abuf, off[l], B, n_in)
        Dl = matrix_at(Dbuf, off[l + 1], B, n_out)
        acc = 0.0
        r0, r1 = part_bounds(n_in, T, t, 1)
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
        c0, c1 = part_bounds(n_out, T, t, COL_ALIGN)
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


@njit(parallel=True, **CPU_JIT)
def _batch_parallel(phase, T, s, bs, B, X, Y, sw, idx, params, grads, m, v, w_off, b_off, sizes, acts, loss, Abuf,
                    Dbuf, off, Yb, wb, inv, tot, l2, step, kind, c, plain, nesterov, first, ss, p, key, Sbuf):
    """One parallel region over the T parts: ``phase`` 0 runs ``_rows_pass``, 1 ``_cols_pass``
    (one parallel function rather than two: each costs seconds of cold compile)."""
    for t in prange(T):
        if phase == 0:
            _rows_pass(np.int64(t), T, s, bs, B, X, Y, sw, idx, params, w_off, b_off, sizes, acts, loss, Abuf, Dbuf,
                       off, Yb, wb, inv, tot, p, key, Sbuf)
        else:
            _cols_pass(np.int64(t), T, bs, B, params, grads, m, v, w_off, b_off, sizes, Abuf, Dbuf, off, l2, step,
                       kind, c, plain, nesterov, first, ss)


@njit(**CPU_JIT)
def train_epoch_fused(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, settings, state, stats, sw, lrs, T,
                      clip):
    """``train_epoch`` on numba's threads with the single-threaded GEMM of ``nbnet.kernels.blas``,
    each mini-batch cut into ``T`` parts (the dispatcher passes ``epoch_threads(...)``, numba's
    thread count or 1 for small mini-batches; results depend on ``T``
    only in the last bits of float sums, and not at all from run to run).

    Same arguments (``sw``, ``lrs``: the per-row weights and per-step learning rates, float64,
    empty for none) and results as ``train_epoch_reference``, dropout included (its masks come
    from a key drawn from ``state`` per mini-batch, so they differ from the reference's, and not
    with ``T``); no augmentation (the dispatcher ``train_epoch`` sends that to the reference). X, Y, params, grads, m, v share
    one dtype and are C-contiguous. ``clip``: the gradient-norm bound (``hp[HP_CLIP]``) or None;
    with None numba prunes the clipping path (the unfused step) and never compiles it. Always
    pass it: numba 0.68's cache confuses an omitted argument with an explicit None (a process
    that cached both variants and then loads the explicit-None one crashes), so it has no default.

    Long by design: the whole epoch is one compiled loop, so the per-batch steps (two parallel
    regions, or with ``T`` = 1 two direct calls; the Adam coefficients, clipping) cost no Python
    call each.
    """
    n = X.shape[0]
    L = acts.shape[0]
    B = min(settings[SETTING_BATCH], n)
    kind, nesterov = settings[SETTING_OPTIMIZER], settings[SETTING_NESTEROV] != 0
    fuse_step = clip is None  # with clipping the step waits for the global gradient norm
    dt = params.dtype
    off = np.zeros(L + 2, np.int64)
    for l in range(L + 1):
        off[l + 1] = off[l] + B * sizes[l]
    Abuf = np.empty(off[L + 1], dt)
    Dbuf = np.empty(off[L + 1], dt)
    p = hp[HP_DROPOUT]
    Sbuf = np.empty(off[L + 1] if p > 0 else 0, dt)
    Yb = np.empty((B, sizes[L]), dt)
    wb = np.empty(B if sw.shape[0] > 0 else 0)
    idx = np.arange(n)
    if settings[SETTING_SHUFFLE]:
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
    hpb = hp.copy()  # hpb[HP_LR]: this step's learning rate
    w_total = 0.0
    for s in range(0, n, B):
        bs = min(s + B, n) - s
        settings[SETTING_STEP] += 1
        step_t = settings[SETTING_STEP]
        wsum, inv = batch_weight(sw, idx[s:s + bs])
        w_total += wsum
        key = rng_next(state) if p > 0 else np.uint64(0)
        if T == 1:  # no parallel region: its launch takes the GIL, and costs more than the work here
            _rows_pass(np.int64(0), T, s, bs, B, X, Y, sw, idx, params, w_off, b_off, sizes, acts, loss, Abuf, Dbuf,
                       off, Yb, wb, inv, tot, p, key, Sbuf)
        else:
            _batch_parallel(np.int64(0), T, s, bs, B, X, Y, sw, idx, params, grads, m, v, w_off, b_off, sizes, acts,
                            loss, Abuf, Dbuf, off, Yb, wb, inv, tot, l2, fuse_step, kind, c, plain, nesterov, step_t == 1,
                            ss, p, key, Sbuf)
        for t in range(T):
            total += tot[t]
        hpb[HP_LR] = lrs[n_batches] if lrs.shape[0] > 0 else hp[HP_LR]
        if kind == OPT_SGD:
            c[0], c[1], c[2] = hpb[HP_LR], mom, hp[HP_WD]
        else:
            coef = adam_coefficients(hpb[HP_LR], hp[HP_BETA1], hp[HP_BETA2], hp[HP_EPS], hp[HP_WD],
                                     kind == OPT_ADAMW, step_t)
            for j in range(coef.shape[0]):
                c[j] = coef[j]
        if T == 1:
            _cols_pass(np.int64(0), T, bs, B, params, grads, m, v, w_off, b_off, sizes, Abuf, Dbuf, off, l2, fuse_step,
                       kind, c, plain, nesterov, step_t == 1, ss)
        else:
            _batch_parallel(np.int64(1), T, s, bs, B, X, Y, sw, idx, params, grads, m, v, w_off, b_off, sizes, acts,
                            loss, Abuf, Dbuf, off, Yb, wb, inv, tot, l2, fuse_step, kind, c, plain, nesterov, step_t == 1,
                            ss, p, key, Sbuf)
        for t in range(T):
            for l in range(L):
                layer_ss[l] += ss[t, l]
        if clip is not None:
            clip_grad_norm(grads, clip)
            optimizer_step(params, grads, m, v, kind, hpb, nesterov, step_t)
        n_batches += 1
    stats[0] = total / w_total if w_total > 0 else 0.0
    for l in range(L):
        stats[1 + l] = math.sqrt(layer_ss[l] / n_batches)


@njit(**CPU_JIT)
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


@njit(parallel=True, **CPU_JIT)
def forward_fused(X, params, w_off, b_off, sizes, acts, loss, out):
    """``forward`` on numba's threads: blocks of 256 rows in parallel, each through every layer
    with the single-threaded GEMM. X, params and out share one dtype and are C-contiguous."""
    chunk = 256
    for ci in prange((X.shape[0] + chunk - 1) // chunk):
        _forward_rows(np.int64(ci), chunk, X, params, w_off, b_off, sizes, acts, loss, out)
