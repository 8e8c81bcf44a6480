"""CUDA kernels (``numba.cuda``) with the names and argument order of :mod:`nbnet.kernels.cpu`.

The public functions here are *launchers*: plain Python that validates nothing (the estimator
did), picks a launch configuration and starts ``@cuda.jit`` kernels on arrays that already live
on the device. Weights, gradients, optimizer moments, the training data and every work buffer
stay on the GPU for a whole fit. Per epoch the host uploads the shuffled index order (``n``
int64; with mixup also the per-batch permutations) and ``1 + n_layers`` zeroed accumulators, and
downloads ``1 + n_layers`` float64 statistics (mean loss, per-layer gradient norms); nothing else
crosses the bus (``tests/test_cuda.py`` counts the bytes).

Conventions are those of ``cpu.py`` (row-major ``(batch, width)`` activations, one flat
parameter buffer, derivatives written in terms of the activation's output). Differences:

* **Randomness.** The shuffle (and mixup's lambda and permutation) are drawn on the host from
  the same SplitMix64 ``state`` with the CPU kernels, so without dropout, noise or image shifts
  a CUDA fit sees exactly the CPU's batches and reaches the CPU's weights (to rounding).
  Dropout masks, Gaussian noise and image shifts come from a counter-based device generator (a
  murmur3-finalizer hash of ``(seed, stream, element)``, seeded from ``state`` once per epoch):
  reproducible from the seed and independent of the launch configuration, but not the CPU's
  numbers.
* **Summation order.** The GEMMs accumulate tile by tile in the parameter dtype; BLAS orders
  its sums differently, so CPU and CUDA agree to rounding (float32 ~1e-6 relative), not bit
  for bit. Reductions (loss, gradient norms) are two-stage and deterministic: no atomics.

The device code (``@cuda.jit`` kernels, the device generator, the launch geometry ``TILE``,
``TPB``, ...) lives in :mod:`nbnet.kernels.cuda_kernels`; this module is the backend's launchers.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import cuda

from nbnet.kernels.cuda_kernels import (
    FORWARD_CHUNK, MAX_BLOCKS, N_PARTS, SIMULATOR, STREAM_DROPOUT, TILE, TPB, k_act_grad, k_adam, k_bias_act, k_clip,
    k_dropout, k_forward, k_gather, k_gather_aug, k_grad_w, k_grad_x, k_loss, k_output_transform, k_reduce_finish,
    k_reduce_partial, k_sgd,
)
from nbnet.kernels.rng import rng_beta, rng_next, seed_state, shuffle
# re-exported: both backends speak the same codes
from nbnet.kernels.tables import (
    ACT_ELU, ACT_IDENTITY, ACT_LEAKY_RELU, ACT_RELU, ACT_SIGMOID, ACT_SOFTPLUS, ACT_TANH, ACTIVATIONS, HP_BETA1,
    HP_BETA2, HP_CLIP, HP_DROPOUT, HP_EPS, HP_L2, HP_LR, HP_MIXUP, HP_MOMENTUM, HP_NOISE, HP_WD, LEAKY_SLOPE, LOSS_MSE,
    LOSS_SIGMOID_BCE, LOSS_SOFTMAX_CE, LOSSES, N_HP, N_SETTINGS, OPT_ADAM, OPT_ADAMW, OPT_SGD, SETTING_BATCH,
    SETTING_IMG_H, SETTING_IMG_W, SETTING_NESTEROV, SETTING_OPTIMIZER, SETTING_SHUFFLE, SETTING_STEP,
)

_U64_0 = np.uint64(0)


# --- the host side of the device generator ---------------------------------------------------------
def _stream(ctr: int) -> np.uint64:
    """The first random stream of batch ``ctr`` (64 streams a batch)."""
    return np.uint64((ctr * 64) & 0xFFFFFFFF)


def _draw_seed(state) -> np.uint64:
    """A 32-bit device-generator seed drawn from the host's SplitMix64 ``state``."""
    return np.uint64(int(rng_next(state)) & 0xFFFFFFFF)


# --- launch helpers ---------------------------------------------------------------------------------
def _g1(n: int):
    return min(MAX_BLOCKS, max(1, -(-n // TPB))), TPB


def _g2(rows: int, cols: int):
    return (max(1, -(-cols // TILE)), max(1, -(-rows // TILE))), (TILE, TILE)


_DUMMY: dict = {}


def _dummy(dtype):
    """A (1, 1) device array for unused array arguments."""
    key = np.dtype(dtype).str
    if key not in _DUMMY:
        _DUMMY[key] = cuda.to_device(np.zeros((1, 1), dtype))
    return _DUMMY[key]


def _no_weights():
    """The float64 (1,) device array passed as the weights of an unweighted loss."""
    if "weights" not in _DUMMY:
        _DUMMY["weights"] = cuda.to_device(np.ones(1))
    return _DUMMY["weights"]


def _views(flat, w_off, b_off, sizes):
    """``[(W_l, b_l)]`` device views into the flat buffer."""
    out = []
    for l in range(len(sizes) - 1):
        a, b = int(sizes[l]), int(sizes[l + 1])
        w, o = int(w_off[l]), int(b_off[l])
        out.append((flat[w:w + a * b].reshape(a, b), flat[o:o + b]))
    return out


def _reduce(x, lo, hi, square, out, out_off, accumulate, last, partial):
    """Two launches: ``out[out_off + r]`` (+)= sum over ``x[lo[r]:hi[r]]`` for every range r."""
    R = partial.shape[0]
    k_reduce_partial[(N_PARTS, R), TPB](x, lo, hi, square, partial)
    k_reduce_finish[1, max(R, 1)](partial, out, out_off, accumulate, last)


class _Scratch:
    """Small device buffers for one-off reductions (loss sums, norms)."""

    def __init__(self, R: int = 1):
        self.partial = cuda.device_array((R, N_PARTS), np.float64)
        self.out = cuda.device_array(R, np.float64)
        self.last = cuda.device_array(R, np.float64)


def _sum(x, n: int, square: bool = False) -> float:
    """Sum (of squares) of ``x[:n]`` as a host float."""
    sc = _Scratch()
    rng = cuda.to_device(np.array([0], np.int64)), cuda.to_device(np.array([n], np.int64))
    _reduce(x, rng[0], rng[1], int(square), sc.out, 0, 0, sc.last, sc.partial)
    return float(sc.out.copy_to_host()[0])


# --- public kernels (same names and argument order as cpu.py) ---------------------------------------
def to_device(a):
    """A device copy of a host array (device arrays pass through)."""
    if not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host"):
        return a
    return cuda.to_device(np.ascontiguousarray(a))


def to_host(a) -> np.ndarray:
    """A host copy of a device array (host arrays pass through)."""
    if isinstance(a, np.ndarray):
        return a
    return a.copy_to_host()


def bias_activation(Z, b, act):
    """``Z[i, :] = act(Z[i, :] + b)`` in place. Z: (batch, n), b: (n,)."""
    k_bias_act[_g1(Z.shape[0] * Z.shape[1])](Z, b, int(act))


def activation_grad(A, D, act):
    """``D *= act'(·)`` in place, the derivative written in terms of the output ``A``."""
    k_act_grad[_g1(A.shape[0] * A.shape[1])](A, D, int(act))


def dense_forward(X, W, b, act, out):
    """``out = act(X @ W + b)`` (one tiled GEMM with the bias and activation fused in)."""
    k_forward[_g2(X.shape[0], W.shape[1])](X, W, b, int(act), out)


def dense_backward(X, W, dZ, dW, db, dX):
    """``dW = X.T @ dZ``, ``db = dZ.sum(0)`` and, when ``dX`` has rows, ``dX = dZ @ W.T``."""
    dt = W.dtype.type
    k_grad_w[_g2(W.shape[0] + 1, W.shape[1])](X, dZ, W, dt(0.0), dW, db)
    if dX.shape[0] > 0:
        k_grad_x[_g2(dZ.shape[0], W.shape[0])](dZ, W, dX, _dummy(W.dtype), 0, dt(1.0), ACT_IDENTITY, dX)


def loss_grad(Z, Y, loss, dZ):
    """Sum over the batch of the per-sample loss (host float64); writes dLoss/dZ of the batch
    *mean* into ``dZ`` unless it has zero rows. See :func:`nbnet.kernels.cpu.loss_grad`."""
    B = Z.shape[0]
    rows = cuda.device_array(B, np.float64)
    want = dZ.shape[0] > 0
    k_loss[_g1(B)](Z, Y, int(loss), int(want), dZ if want else _dummy(Z.dtype), rows, 0, _no_weights(), 0, 1.0 / B)
    return _sum(rows, B)


def weighted_loss_grad(Z, Y, w, loss, dZ):
    """The weighted mean loss's gradient into ``dZ`` (unless it has zero rows) and the weighted
    sum ``sum_i w_i l_i`` (host float64); ``w``: host float64 (batch,) weights, not all zero.
    See :func:`nbnet.kernels.cpu.weighted_loss_grad`."""
    B = Z.shape[0]
    w = np.ascontiguousarray(w, dtype=np.float64)
    rows = cuda.device_array(B, np.float64)
    want = dZ.shape[0] > 0
    k_loss[_g1(B)](Z, Y, int(loss), int(want), dZ if want else _dummy(Z.dtype), rows, 0, cuda.to_device(w), 1,
                   1.0 / float(w.sum()))
    return _sum(rows, B)


def output_transform(Z, loss):
    """Logits → predictions in place: softmax, sigmoid or identity."""
    if loss in (LOSS_SOFTMAX_CE, LOSS_SIGMOID_BCE):
        k_output_transform[_g1(Z.shape[0])](Z, int(loss))


def dropout(A, mask, p, state):
    """Inverted dropout in place; ``mask`` receives 0 or 1/(1-p). The mask comes from the
    device generator seeded by one draw from ``state`` (so it differs from the CPU's)."""
    seed = _draw_seed(state)
    _launch_dropout(A, mask, p, seed, np.uint64(0))


def _launch_dropout(A, mask, p, seed, stream):
    thresh = np.uint64(min(int(p * 4294967296.0), 4294967296))
    k_dropout[_g1(A.shape[0] * A.shape[1])](A, mask, thresh, A.dtype.type(1.0 / (1.0 - p)), seed, stream)


def clip_grad_norm(grads, max_norm):
    """Scale ``grads`` so their global L2 norm is at most ``max_norm``; returns the norm before."""
    sc = _Scratch()
    n = grads.shape[0]
    lo, hi = cuda.to_device(np.array([0], np.int64)), cuda.to_device(np.array([n], np.int64))
    _reduce(grads, lo, hi, 1, sc.out, 0, 0, sc.last, sc.partial)
    k_clip[_g1(n)](grads, sc.last, float(max_norm))
    return math.sqrt(float(sc.out.copy_to_host()[0]))


def sgd_step(params, grads, buf, lr, momentum, nesterov, weight_decay, t):
    """SGD as ``torch.optim.SGD`` (dampening 0); see :func:`nbnet.kernels.cpu.sgd_step`."""
    dt = params.dtype.type
    mode = 0 if momentum == 0.0 else (1 if t == 1 else 2)
    k_sgd[_g1(params.shape[0])](params, grads, buf, dt(lr), dt(momentum), dt(weight_decay), mode, int(bool(nesterov)))


def adam_step(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, t):
    """Adam (Kingma & Ba 2015), PyTorch formulation (epsilon after the bias-corrected root);
    ``decoupled``: AdamW (Loshchilov & Hutter 2019). See :func:`nbnet.kernels.cpu.adam_step`."""
    dt = params.dtype.type
    step = dt(lr / (1.0 - beta1**t))
    inv_bc2 = dt(1.0 / math.sqrt(1.0 - beta2**t))
    decay, wd = (dt(1.0 - lr * weight_decay), dt(0.0)) if decoupled else (dt(1.0), dt(weight_decay))
    k_adam[_g1(params.shape[0])](params, grads, m, v, dt(beta1), dt(beta2), dt(1.0 - beta1), dt(1.0 - beta2),
                                  step, inv_bc2, dt(eps), decay, wd)


def optimizer_step(params, grads, m, v, kind, hp, nesterov, t):
    """One optimizer step of kind ``OPT_*`` with hyperparameters ``hp`` (see ``HP_*``)."""
    if kind == OPT_SGD:
        sgd_step(params, grads, m, hp[HP_LR], hp[HP_MOMENTUM], nesterov, hp[HP_WD], t)
    else:
        adam_step(params, grads, m, v, hp[HP_LR], hp[HP_BETA1], hp[HP_BETA2], hp[HP_EPS], hp[HP_WD],
                  kind == OPT_ADAMW, t)


# --- whole network ------------------------------------------------------------------------------------
class _Workspace:
    """Device work buffers for batches of up to ``B`` rows (the arrays of cpu.make_buffers), plus
    the per-sample loss of an epoch, the per-layer ranges of the flat buffer and reduction
    scratch. Cached: an estimator's epochs reuse one."""

    def __init__(self, B, n, sizes, w_off, b_off, dtype):
        L = len(sizes) - 1
        self.A = [cuda.device_array((B, int(sizes[l])), dtype) for l in range(L + 1)]
        self.masks = [cuda.device_array((B, int(sizes[l + 1])), dtype) for l in range(L - 1)]
        maxw = int(max(sizes))
        self.D = [cuda.device_array(B * maxw, dtype), cuda.device_array(B * maxw, dtype)]
        self.Yb = cuda.device_array((B, int(sizes[L])), dtype)
        self.row_loss = cuda.device_array(n, np.float64)
        self.lo = cuda.to_device(np.asarray(w_off, np.int64))
        self.hi = cuda.to_device(np.asarray(b_off, np.int64) + np.asarray(sizes[1:], np.int64))
        self.loss_lo = cuda.to_device(np.array([0], np.int64))
        self.loss_hi = cuda.to_device(np.array([n], np.int64))
        self.partial = cuda.device_array((L, N_PARTS), np.float64)
        self.partial1 = cuda.device_array((1, N_PARTS), np.float64)
        self.acc = cuda.device_array(1 + L, np.float64)  # [loss sum, per-layer sums of grad**2]
        self.batch_ss = cuda.device_array(L, np.float64)
        self.last1 = cuda.device_array(1, np.float64)
        self.zeros = np.zeros(1 + L)


_WORKSPACES: dict = {}
_FWD: dict = {}
_CACHE_LOCK = threading.Lock()


def _cached(store: dict, key, make):
    """``store[key]``, made on first use. Keyed by thread too (two fits in two threads must not
    share buffers); a sweep moves through architectures, so only the 4 newest are kept (a fit
    holds its own reference while it runs)."""
    key = (threading.get_ident(),) + key
    with _CACHE_LOCK:
        hit = store.get(key)
    if hit is None:
        hit = make()
        with _CACHE_LOCK:
            while len(store) >= 4:
                store.pop(next(iter(store)))
            store[key] = hit
    return hit


def _workspace(B, n, sizes, w_off, b_off, dtype) -> _Workspace:
    key = (int(B), int(n), tuple(int(s) for s in sizes), np.dtype(dtype).str)
    return _cached(_WORKSPACES, key, lambda: _Workspace(B, n, sizes, w_off, b_off, dtype))


def forward(X, params, w_off, b_off, sizes, acts, loss, out):
    """Network output for ``X`` (n, n_features) into ``out`` (n, n_outputs), in chunks of rows.

    ``loss >= 0`` applies that loss's output transform; ``loss == -1`` leaves the logits.
    """
    L = len(acts)
    n = X.shape[0]
    chunk = min(n, FORWARD_CHUNK)
    layers = _views(params, w_off, b_off, sizes)
    bufs = _forward_buffers(chunk, sizes, params.dtype)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        inp = X[s:e]
        for l in range(L):
            W, b = layers[l]
            dst = out[s:e] if l == L - 1 else (bufs[l] if e - s == chunk else bufs[l][: e - s])
            dense_forward(inp, W, b, acts[l], dst)
            inp = dst
    if loss >= 0:
        output_transform(out, loss)


def _forward_buffers(chunk, sizes, dtype):
    key = (int(chunk), tuple(int(s) for s in sizes[1:-1]), np.dtype(dtype).str)
    return _cached(_FWD, key, lambda: [cuda.device_array((int(chunk), int(w)), dtype) for w in sizes[1:-1]])


def _forward_backward(bs, ws, layers, glayers, acts, loss, l2, p_drop, seed, stream, row_off, wd, use_w, inv):
    """Forward and backward over ``ws.A[0][:bs]`` with targets ``ws.Yb[:bs]`` (the fused path of
    cpu.forward_backward): the per-sample (weighted) losses go to ``ws.row_loss[row_off:]``, the
    gradient of ``inv * sum_i w_i l_i`` (+ 0.5*l2*||W||^2) into the flat gradient buffer; the
    row weights are ``wd[row_off:]`` (device float64) when ``use_w``."""
    L = len(acts)
    full = bs == ws.A[0].shape[0]
    A = ws.A if full else [a[:bs] for a in ws.A]
    dt = ws.A[0].dtype.type
    l2_ = dt(l2)
    for l in range(L):
        W, b = layers[l]
        dense_forward(A[l], W, b, acts[l], A[l + 1])
        if p_drop > 0 and l < L - 1:
            mask = ws.masks[l] if full else ws.masks[l][:bs]
            _launch_dropout(A[l + 1], mask, p_drop, seed, stream + STREAM_DROPOUT + np.uint64(l))
    k = A[L].shape[1]
    D = ws.D[0][: bs * k].reshape(bs, k)
    Yb = ws.Yb if full else ws.Yb[:bs]
    k_loss[_g1(bs)](A[L], Yb, int(loss), 1, D, ws.row_loss, int(row_off), wd, int(use_w), float(inv))
    keep = dt(1.0 - p_drop)
    for l in range(L - 1, -1, -1):
        W, _ = layers[l]
        dW, db = glayers[l]
        k_grad_w[_g2(W.shape[0] + 1, W.shape[1])](A[l], D, W, l2_, dW, db)
        if l > 0:
            n_in = W.shape[0]
            Dn = ws.D[(L - l) % 2][: bs * n_in].reshape(bs, n_in)
            use_mask = p_drop > 0
            mask = (ws.masks[l - 1] if full else ws.masks[l - 1][:bs]) if use_mask else _dummy(W.dtype)
            k_grad_x[_g2(bs, n_in)](D, W, A[l], mask, int(use_mask), keep, int(acts[l - 1]), Dn)
            D = Dn


def train_epoch(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, settings, state, stats, sw=None,
                lrs=None):
    """One epoch: shuffle (on the host, the CPU's stream), then for every mini-batch gather,
    forward, backward, gradient norms, clipping and the optimizer step, all on the device.

    X, Y, params, grads, m, v: device arrays; w_off, b_off, sizes, acts, hp, settings, state, stats,
    sw, lrs: host arrays as for :func:`nbnet.kernels.cpu.train_epoch` (``settings[SETTING_STEP]``
    is advanced, ``stats`` filled with the (weighted) mean data loss and the RMS per-layer
    gradient norms). With row weights ``sw`` the epoch also uploads them in batch order (n
    float64); the per-step learning rates ``lrs`` stay on the host (one scalar per launch).
    """
    n = X.shape[0]
    B = int(min(settings[SETTING_BATCH], n))
    kind, nesterov = int(settings[SETTING_OPTIMIZER]), bool(settings[SETTING_NESTEROV])
    clip, p_drop = float(hp[HP_CLIP]), float(hp[HP_DROPOUT])
    ws = _workspace(B, n, sizes, w_off, b_off, params.dtype)
    layers = _views(params, w_off, b_off, sizes)
    glayers = _views(grads, w_off, b_off, sizes)
    idx, perms, lams, seed = _host_draws(n, B, hp, settings, state)
    idxd = cuda.to_device(idx)
    permd = cuda.to_device(perms) if perms is not None else None
    wrow = _epoch_weights(sw, idx, perms, lams, B)
    wd = cuda.to_device(wrow) if wrow is not None else _no_weights()
    wsums = np.add.reduceat(wrow, np.arange(0, n, B)) if wrow is not None else None
    hpb = np.array(hp, np.float64)  # hpb[HP_LR]: this step's learning rate
    ws.acc.copy_to_device(ws.zeros)
    for b_i, s in enumerate(range(0, n, B)):
        e = min(s + B, n)
        stream = _stream(b_i)
        _gather(ws, X, Y, idxd[s:e], permd[s:e] if lams[b_i] is not None else None, lams[b_i], hp, settings, seed,
                stream)
        wsum = float(wsums[b_i]) if wsums is not None else float(e - s)
        _forward_backward(e - s, ws, layers, glayers, acts, loss, hp[HP_L2], p_drop, seed, stream, s, wd,
                          wrow is not None, 1.0 / wsum if wsum > 0 else 0.0)
        # per-layer sums of squares of the gradient: stats and the clipping norm
        _reduce(grads, ws.lo, ws.hi, 1, ws.acc, 1, 1, ws.batch_ss, ws.partial)
        if clip > 0:
            k_clip[_g1(grads.shape[0])](grads, ws.batch_ss, clip)
        settings[SETTING_STEP] += 1
        hpb[HP_LR] = lrs[b_i] if lrs is not None and len(lrs) else hp[HP_LR]
        optimizer_step(params, grads, m, v, kind, hpb, nesterov, int(settings[SETTING_STEP]))
    _reduce(ws.row_loss, ws.loss_lo, ws.loss_hi, 0, ws.acc, 0, 1, ws.last1, ws.partial1)
    acc = ws.acc.copy_to_host()
    w_total = float(wsums.sum()) if wsums is not None else float(n)
    stats[0] = acc[0] / w_total if w_total > 0 else 0.0
    for l in range(len(acts)):
        stats[1 + l] = math.sqrt(acc[1 + l] / len(lams))


def _epoch_weights(sw, idx, perms, lams, B):
    """The row weights in the epoch's batch order (host float64 (n,)), mixed like the targets in
    the batches that mixup mixes; None without weights."""
    if sw is None or len(sw) == 0:
        return None
    w = np.ascontiguousarray(sw, dtype=np.float64)[idx]
    for b_i, lam in enumerate(lams):
        if lam is not None:
            s = b_i * B
            wb = w[s:s + B].copy()
            w[s:s + B] = lam * wb + (1.0 - lam) * wb[perms[s:s + len(wb)]]
    return w


def _host_draws(n, B, hp, settings, state):
    """The epoch's draws from the host generator, in the CPU kernels' order when nothing else
    consumes the stream: the row order (n,), mixup's per-batch permutations (n,) (None without
    mixup) and lambdas (None for a batch that is not mixed), and the device generator's seed."""
    idx = np.arange(n)
    if settings[SETTING_SHUFFLE]:
        shuffle(idx, state)
    starts = range(0, n, B)
    perms, lams = None, [None] * len(starts)
    alpha = float(hp[HP_MIXUP])
    if alpha > 0:
        perms = np.zeros(n, np.int64)
        for b_i, s in enumerate(starts):
            e = min(s + B, n)
            if e - s > 1:
                lams[b_i] = rng_beta(state, alpha, alpha)
                perm = np.arange(e - s)
                shuffle(perm, state)
                perms[s:e] = perm
    random_device = hp[HP_DROPOUT] > 0 or settings[SETTING_IMG_H] > 0 or hp[HP_NOISE] > 0
    return idx, perms, lams, _draw_seed(state) if random_device else _U64_0


def _gather(ws, X, Y, idx, perm, lam, hp, settings, seed, stream):
    """Rows ``idx`` (device) of X and Y into the batch buffers of ``ws``, with the image shifts,
    the noise and, when ``lam`` is not None, mixup with the rows ``perm`` of the batch."""
    bs = idx.shape[0]
    full = bs == ws.A[0].shape[0]
    Xb = ws.A[0] if full else ws.A[0][:bs]
    Yb = ws.Yb if full else ws.Yb[:bs]
    img_h, img_w, noise = int(settings[SETTING_IMG_H]), int(settings[SETTING_IMG_W]), float(hp[HP_NOISE])
    if img_h > 0 or noise > 0 or hp[HP_MIXUP] > 0:
        dt = Xb.dtype.type
        mix = lam is not None
        k_gather_aug[_g1(bs * X.shape[1])](
            X, Y, idx, Xb, Yb, img_h, img_w, noise, seed, stream,
            perm if mix else idx, dt(lam if mix else 1.0), dt(1.0 - lam if mix else 0.0), int(mix))
    else:
        k_gather[_g1(bs * X.shape[1])](X, Y, idx, Xb, Yb)


def batch_gradient(X, Y, params, grads, w_off, b_off, sizes, acts, loss, l2, sw=None):
    """Gradient of the (weighted) mean loss over the whole (X, Y) (no dropout, no step) into
    ``grads``; returns the mean data loss (host float). ``sw``: host float64 (n,) row weights or None."""
    n = X.shape[0]
    ws = _workspace(n, n, sizes, w_off, b_off, params.dtype)
    ws.A[0].copy_to_device(X)
    ws.Yb.copy_to_device(Y)
    wsum = float(np.sum(sw)) if sw is not None else float(n)
    inv = 1.0 / wsum if wsum > 0 else 0.0
    wd = cuda.to_device(np.ascontiguousarray(sw, dtype=np.float64)) if sw is not None else _no_weights()
    _forward_backward(n, ws, _views(params, w_off, b_off, sizes), _views(grads, w_off, b_off, sizes), acts, loss,
                      l2, 0.0, _U64_0, _U64_0, 0, wd, sw is not None, inv)
    return _sum(ws.row_loss, n) * inv


def eval_loss(X, Y, params, w_off, b_off, sizes, acts, loss, out=None):
    """Mean loss of the network over (X, Y), without gradients (validation); host float. With
    ``out`` (a device (n, n_outputs) array) the same forward pass also leaves the predictions
    (output transform applied) there."""
    n = X.shape[0]
    Z = cuda.device_array((n, int(sizes[-1])), params.dtype) if out is None else out
    forward(X, params, w_off, b_off, sizes, acts, -1, Z)
    rows = cuda.device_array(n, np.float64)
    k_loss[_g1(n)](Z, Y, int(loss), 0, _dummy(params.dtype), rows, 0, _no_weights(), 0, 1.0 / n)
    if out is not None:
        output_transform(Z, loss)
    return _sum(rows, n) / n


#: The backend's kernels and codes: the names of :mod:`nbnet.kernels.cpu` that a fit uses, and
#: the launch geometry.
__all__ = [
    # tables
    "ACT_ELU", "ACT_IDENTITY", "ACT_LEAKY_RELU", "ACT_RELU", "ACT_SIGMOID", "ACT_SOFTPLUS", "ACT_TANH", "ACTIVATIONS",
    "HP_BETA1", "HP_BETA2", "HP_CLIP", "HP_DROPOUT", "HP_EPS", "HP_L2", "HP_LR", "HP_MIXUP", "HP_MOMENTUM", "HP_NOISE",
    "HP_WD", "LEAKY_SLOPE", "LOSS_MSE", "LOSS_SIGMOID_BCE", "LOSS_SOFTMAX_CE", "LOSSES", "N_HP", "N_SETTINGS",
    "OPT_ADAM", "OPT_ADAMW", "OPT_SGD", "SETTING_BATCH", "SETTING_IMG_H", "SETTING_IMG_W", "SETTING_NESTEROV",
    "SETTING_OPTIMIZER", "SETTING_SHUFFLE", "SETTING_STEP", "seed_state",
    # launch geometry
    "FORWARD_CHUNK", "MAX_BLOCKS", "N_PARTS", "SIMULATOR", "TILE", "TPB",
    # kernels
    "activation_grad", "adam_step", "batch_gradient", "bias_activation", "clip_grad_norm", "dense_backward",
    "dense_forward", "dropout", "eval_loss", "forward", "loss_grad", "optimizer_step", "output_transform", "sgd_step",
    "to_device", "to_host", "train_epoch", "weighted_loss_grad",
]
