#!/usr/bin/env python
"""Where an epoch of the fused CPU kernel goes: GEMM vs element-wise vs optimizer vs shuffle/gather.

Runs the real ``train_epoch`` (best of ``--reps`` epochs), then variants of its two parallel
regions per mini-batch that keep only one kind of work, built from the same pieces
(``nbnet.kernels.blas.gemm``, ``bias_activation``, ``loss_grad_rows``, ``activation_grad``,
``adam_apply``) with the same row/column split:

* ``sync``        the two parallel regions per batch with no work (launch + barrier cost);
* ``shuffle+gather`` the epoch's shuffle and the copy of each batch's rows;
* ``gemm``        forward, input-gradient and weight-gradient GEMMs;
* ``elementwise`` bias + activation, loss gradient, activation derivative, bias gradient, norms;
* ``optimizer``   the Adam step over every block.

Each variant includes the ``sync`` cost once, which is subtracted from it; the remainder of the
full epoch is reported as "other/interaction". Times are best-of-reps epoch seconds. On one thread
the real epoch launches no region (``cpu_fused.train_epoch_fused`` calls its passes directly), so
there ``sync`` is what the launches would cost, not part of the epoch.

    python scripts/profile_epoch.py --batch 32 --batch 512
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from numba import get_num_threads, njit, prange

from nbnet import optim
from nbnet.kernels import cpu as K
from nbnet.kernels.cpu_fused import COL_ALIGN, matrix_at, part_bounds
from nbnet.kernels.blas import gemm
from nbnet.kernels.threads import thread_budget
from nbnet.model import Layout, init_params

SYNC, GATHER, GEMM, ELEM, OPTIM = 0, 1, 2, 3, 4
NAMES = {SYNC: "sync", GATHER: "shuffle+gather", GEMM: "gemm", ELEM: "elementwise", OPTIM: "optimizer"}


@njit(cache=True)
def _rows(what, t, T, s, bs, B, X, Y, idx, params, w_off, b_off, sizes, acts, Abuf, Dbuf, off, Yb):
    r0, r1 = part_bounds(bs, T, t, 1)
    if r1 <= r0 or what == SYNC:
        return
    L = acts.shape[0]
    if what == GATHER:
        A0 = matrix_at(Abuf, off[0], B, sizes[0])
        for i in range(r0, r1):
            r = idx[s + i]
            A0[i] = X[r]
            Yb[i] = Y[r]
        return
    for l in range(L):
        W, b = K.layer_views(params, w_off, b_off, sizes, l)
        n_in, n_out = sizes[l], sizes[l + 1]
        Ain = matrix_at(Abuf, off[l], B, n_in)
        Aout = matrix_at(Abuf, off[l + 1], B, n_out)
        if what == GEMM:
            gemm(False, False, r1 - r0, n_out, n_in, 1.0, Ain[r0], n_in, W, n_out, 0.0, Aout[r0], n_out)
        else:
            K.bias_activation(Aout[r0:r1], b, acts[l])
    k = sizes[L]
    DL = matrix_at(Dbuf, off[L], B, k)
    if what == ELEM:
        K.loss_grad_rows(matrix_at(Abuf, off[L], B, k)[r0:r1], Yb[r0:r1], K.LOSS_SOFTMAX_CE, DL[r0:r1], bs)
    for l in range(L - 1, 0, -1):
        W, b = K.layer_views(params, w_off, b_off, sizes, l)
        n_in, n_out = sizes[l], sizes[l + 1]
        Dout = matrix_at(Dbuf, off[l + 1], B, n_out)
        Din = matrix_at(Dbuf, off[l], B, n_in)
        if what == GEMM:
            gemm(False, True, r1 - r0, n_in, n_out, 1.0, Dout[r0], n_out, W, n_out, 0.0, Din[r0], n_in)
        else:
            K.activation_grad(matrix_at(Abuf, off[l], B, n_in)[r0:r1], Din[r0:r1], acts[l - 1])


@njit(cache=True)
def _cols(what, t, T, bs, B, params, grads, m, v, w_off, b_off, sizes, Abuf, Dbuf, off, c):
    """The split of ``_cols_pass``: rows block t of every W (contiguous), columns block t of b."""
    if what == SYNC or what == GATHER:
        return
    L = sizes.shape[0] - 1
    for l in range(L):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0, b0 = w_off[l], b_off[l]
        Al = matrix_at(Abuf, off[l], B, n_in)
        Dl = matrix_at(Dbuf, off[l + 1], B, n_out)
        r0, r1 = part_bounds(n_in, T, t, 1)
        o0, o1 = w0 + r0 * n_out, w0 + r1 * n_out
        c0, c1 = part_bounds(n_out, T, t, COL_ALIGN)
        if what == GEMM:
            if r1 > r0:
                gemm(True, False, r1 - r0, n_out, bs, 1.0, Al[0, r0:], n_in, Dl[0], n_out, 0.0, grads[o0:], n_out)
        elif what == ELEM:
            acc = K.sum_squares(grads[o0:o1])
            if c1 > c0:
                db = grads[b0 + c0:b0 + c1]
                db[:] = 0
                for i in range(bs):
                    db += Dl[i, c0:c1]
                acc += K.sum_squares(db)
        else:
            if r1 > r0:
                K.adam_apply(params[o0:o1], grads[o0:o1], m[o0:o1], v[o0:o1], c)
            if c1 > c0:
                K.adam_apply(params[b0 + c0:b0 + c1], grads[b0 + c0:b0 + c1], m[b0 + c0:b0 + c1],
                             v[b0 + c0:b0 + c1], c)


@njit(parallel=True, cache=True)
def _region(phase, what, T, s, bs, B, X, Y, idx, params, grads, m, v, w_off, b_off, sizes, acts, Abuf, Dbuf, off, Yb, c):
    for t in prange(T):
        if phase == 0:
            _rows(what, np.int64(t), T, s, bs, B, X, Y, idx, params, w_off, b_off, sizes, acts, Abuf, Dbuf, off, Yb)
        else:
            _cols(what, np.int64(t), T, bs, B, params, grads, m, v, w_off, b_off, sizes, Abuf, Dbuf, off, c)


@njit(cache=True)
def _epoch_part(what, X, Y, params, grads, m, v, w_off, b_off, sizes, acts, B, T, state):
    n = X.shape[0]
    L = acts.shape[0]
    off = np.zeros(L + 2, np.int64)
    for l in range(L + 1):
        off[l + 1] = off[l] + B * sizes[l]
    Abuf = np.full(off[L + 1], 0.5, params.dtype)  # finite, positive activations and deltas
    Dbuf = np.full(off[L + 1], 1e-3, params.dtype)
    Yb = np.zeros((B, sizes[L]), params.dtype)
    idx = np.arange(n)
    if what == GATHER:
        K.shuffle(idx, state)
    step = 0
    for s in range(0, n, B):
        bs = min(s + B, n) - s
        step += 1
        c = K.adam_coefficients(1e-3, 0.9, 0.999, 1e-8, 0.0, False, step).astype(params.dtype)
        for phase in range(2):
            _region(np.int64(phase), what, T, s, bs, B, X, Y, idx, params, grads, m, v, w_off, b_off, sizes, acts,
                    Abuf, Dbuf, off, Yb, c)


def profile(batch: int, n: int, reps: int, hidden=(256, 128)) -> dict:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 784), dtype=np.float32)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    lay = Layout.build(784, hidden, 10, "relu")
    hp = optim.hyper_vector(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, l2=0, momentum=0,
                            clip_norm=None, dropout=0, noise=0, mixup=0)
    out = {}
    with thread_budget(None):
        T = get_num_threads()
        p = init_params(lay, "relu", np.random.default_rng(0), np.float32)
        g, m, v = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
        settings = np.array([K.OPT_ADAM, 0, batch, 0, 0, 0, 1], np.int64)
        st, stats = K.seed_state(0), np.zeros(1 + lay.n_layers)
        best = math.inf
        for _ in range(reps + 1):  # the first compiles (or loads the cache)
            t0 = time.perf_counter()
            K.train_epoch(X, Y, p, g, m, v, *lay.kernel_args(), K.LOSS_SOFTMAX_CE, hp, settings, st, stats)
            best = min(best, time.perf_counter() - t0)
        out["epoch"] = best
        for what in NAMES:
            q = init_params(lay, "relu", np.random.default_rng(0), np.float32)
            g2, m2, v2 = np.full_like(q, 1e-3), np.zeros_like(q), np.zeros_like(q)
            best = math.inf
            for _ in range(reps + 1):
                t0 = time.perf_counter()
                _epoch_part(what, X, Y, q, g2, m2, v2, *lay.kernel_args(), batch, T, K.seed_state(0))
                best = min(best, time.perf_counter() - t0)
            out[NAMES[what]] = best
    out["threads"] = T
    return out


def report(batch: int, r: dict, n: int) -> str:
    sync = r["sync"]
    parts = {k: max(r[k] - sync, 0.0) for k in ("shuffle+gather", "gemm", "elementwise", "optimizer")}
    parts["sync (2 regions/batch)"] = sync
    parts["other/interaction"] = r["epoch"] - sum(parts.values())
    lines = [f"batch {batch}: epoch {r['epoch'] * 1e3:.0f} ms ({n / r['epoch'] / 1e3:.0f} k samples/s, "
             f"{r['threads']} threads)", "", "| part | ms/epoch | share |", "|---|---:|---:|"]
    for k, val in parts.items():
        lines.append(f"| {k} | {val * 1e3:.0f} | {100 * val / r['epoch']:.0f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, action="append", help="batch size (repeatable); default 32 and 512")
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--reps", type=int, default=5, help="timed epochs per variant (best counts)")
    a = ap.parse_args(argv)
    for b in a.batch or [32, 512]:
        print(report(b, profile(b, a.n, a.reps), a.n), "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
