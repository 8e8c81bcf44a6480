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

Launch geometry: ``TILE`` x ``TILE`` thread blocks for the tiled GEMMs and ``TPB`` threads for
the elementwise kernels (grid-stride loops over at most ``MAX_BLOCKS`` blocks): 16 x 16 and 256
on a GPU. Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) they default to 4 x 4 and 16
so that tiny test shapes still span several blocks; ``NBNET_CUDA_TILE`` / ``NBNET_CUDA_TPB``
override them (read once, at import).
"""

from __future__ import annotations

import math
import os
import threading
import warnings

import numpy as np
from numba import cuda

from nbnet.kernels import cpu, cuda_simulator
# re-exported: both backends speak the same codes
from nbnet.kernels.cpu import (
    ACT_ELU, ACT_IDENTITY, ACT_LEAKY_RELU, ACT_RELU, ACT_SIGMOID, ACT_SOFTPLUS, ACT_TANH, ACTIVATIONS,
    HP_BETA1, HP_BETA2, HP_CLIP, HP_DROPOUT, HP_EPS, HP_L2, HP_LR, HP_MIXUP, HP_MOMENTUM, HP_NOISE, HP_WD,
    LEAKY_SLOPE, LOSS_MSE, LOSS_SIGMOID_BCE, LOSS_SOFTMAX_CE, LOSSES, N_HP, N_OPT, OPT_ADAM, OPT_ADAMW,
    OPT_BATCH, OPT_IMG_H, OPT_IMG_W, OPT_KIND, OPT_NESTEROV, OPT_SGD, OPT_SHUFFLE, OPT_STEP, seed_state,
)


SIMULATOR = cuda_simulator()
TILE = int(os.environ.get("NBNET_CUDA_TILE", 4 if SIMULATOR else 16))
TPB = int(os.environ.get("NBNET_CUDA_TPB", 16 if SIMULATOR else 256))
if TPB & (TPB - 1) or TILE < 1:
    raise ValueError("NBNET_CUDA_TPB must be a power of two and NBNET_CUDA_TILE positive")
TILE_PAD = TILE + 1  # shared-memory row length (a global: shapes must be compile-time constants)
MAX_BLOCKS = 8 if SIMULATOR else 1024  # grid-stride elementwise kernels
N_PARTS = 2 if SIMULATOR else 128  # blocks of the first stage of a reduction
FORWARD_CHUNK = 16 if SIMULATOR else 16384  # rows per chunk in forward()

# The on-disk kernel cache does not key on module globals: with TILE/TPB overridden, compile afresh.
_OVERRIDDEN = "NBNET_CUDA_TILE" in os.environ or "NBNET_CUDA_TPB" in os.environ
_jit = cuda.jit if (SIMULATOR or _OVERRIDDEN) else cuda.jit(cache=True)
# Reductions finish in one small block and tiny layers make small grids, by design.
warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")
_device = cuda.jit(device=True)

# --- counter-based random numbers --------------------------------------------------------------
# Everything is held in uint64 but kept below 2**32, so the multiplications cannot overflow
# (no wrap-around warnings under the simulator, identical results on the device).
_M32 = np.uint64(0xFFFFFFFF)
_H1 = np.uint64(0x85EBCA6B)
_H2 = np.uint64(0xC2B2AE35)
_S13 = np.uint64(13)
_S16 = np.uint64(16)
_U64_0 = np.uint64(0)
_TO_UNIT = 1.0 / 4294967296.0  # 2**-32
_TWO_PI = 2.0 * math.pi
_STREAMS = np.uint64(64)  # random streams per batch: 0 shift, 1-2 noise, 3+l dropout of layer l
_STREAM_SHIFT, _STREAM_NOISE1, _STREAM_NOISE2, _STREAM_DROPOUT = (np.uint64(k) for k in range(4))


@_device
def _fmix32(x):
    """murmur3's 32-bit finalizer (Appleby 2008): a bijective avalanche mix of ``x < 2**32``."""
    x ^= x >> _S16
    x = (x * _H1) & _M32
    x ^= x >> _S13
    x = (x * _H2) & _M32
    x ^= x >> _S16
    return x


@_device
def _rand32(seed, stream, i):
    """Random uint32 (held in a uint64) for element ``i`` of ``stream`` under ``seed``."""
    return _fmix32(_fmix32(_fmix32(np.uint64(i) & _M32) ^ (stream & _M32)) ^ seed)


@_device
def _normal(seed, stream, i):
    """Standard normal (Box-Muller) from two hashed uniforms, float64."""
    u1 = (_rand32(seed, stream + _STREAM_NOISE1, i) + 1.0) * _TO_UNIT  # (0, 1]
    u2 = _rand32(seed, stream + _STREAM_NOISE2, i) * _TO_UNIT
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)


def _stream(ctr: int) -> np.uint64:
    return np.uint64((ctr * 64) & 0xFFFFFFFF)


def _draw_seed(state) -> np.uint64:
    return np.uint64(int(cpu.rng_next(state)) & 0xFFFFFFFF)


# --- activations (device functions; derivatives from the output, as cpu.py) -------------------
@_device
def _act(t, act, one, slope):
    zero = one - one
    if act == ACT_RELU:
        return t if t > zero else zero
    elif act == ACT_LEAKY_RELU:
        return t if t > zero else slope * t
    elif act == ACT_TANH:
        return math.tanh(t)
    elif act == ACT_SIGMOID:
        return one / (one + math.exp(-t))
    elif act == ACT_ELU:
        return t if t > zero else math.expm1(t)
    elif act == ACT_SOFTPLUS:
        return max(t, zero) + math.log1p(math.exp(-abs(t)))
    return t


@_device
def _dact(d, a, act, one, slope):
    """``d * act'`` where the derivative is expressed through the output ``a``."""
    zero = one - one
    if act == ACT_RELU:
        return d if a > zero else zero
    elif act == ACT_LEAKY_RELU:
        return d if a > zero else slope * d
    elif act == ACT_TANH:
        return d * (one - a * a)
    elif act == ACT_SIGMOID:
        return d * (a * (one - a))
    elif act == ACT_ELU:
        return d if a > zero else d * (a + one)
    elif act == ACT_SOFTPLUS:
        return d * -math.expm1(-a)
    return d


@_jit
def _k_bias_act(Z, b, act):
    one = Z.dtype.type(1.0)
    slope = Z.dtype.type(LEAKY_SLOPE)
    n = Z.shape[1]
    for e in range(cuda.grid(1), Z.shape[0] * n, cuda.gridsize(1)):
        i = e // n
        j = e - i * n
        Z[i, j] = _act(Z[i, j] + b[j], act, one, slope)


@_jit
def _k_act_grad(A, D, act):
    one = A.dtype.type(1.0)
    slope = A.dtype.type(LEAKY_SLOPE)
    n = A.shape[1]
    for e in range(cuda.grid(1), A.shape[0] * n, cuda.gridsize(1)):
        i = e // n
        j = e - i * n
        D[i, j] = _dact(D[i, j], A[i, j], act, one, slope)


# --- tiled GEMMs with shared memory --------------------------------------------------------------
# Block (TILE, TILE): threadIdx.x walks output columns, threadIdx.y output rows. Each step stages
# a TILE x TILE tile of both operands in shared memory with coalesced loads (consecutive
# threadIdx.x read consecutive addresses), then every thread accumulates its dot product from
# shared memory. The +1 column of padding keeps transposed stores free of bank conflicts.
@_jit
def _k_forward(X, W, b, act, out):
    """``out = act(X @ W + b)``; X (m, K), W (K, n), b (n,), out (m, n)."""
    sX = cuda.shared.array((TILE, TILE_PAD), X.dtype)
    sW = cuda.shared.array((TILE, TILE_PAD), X.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    i = cuda.blockIdx.y * TILE + ty
    j = cuda.blockIdx.x * TILE + tx
    m, K = X.shape
    n = W.shape[1]
    one = X.dtype.type(1.0)
    zero = one - one
    acc = zero
    for k0 in range(0, K, TILE):
        sX[ty, tx] = X[i, k0 + tx] if (i < m and k0 + tx < K) else zero
        sW[ty, tx] = W[k0 + ty, j] if (k0 + ty < K and j < n) else zero
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sX[ty, kk] * sW[kk, tx]
        cuda.syncthreads()
    if i < m and j < n:
        out[i, j] = _act(acc + b[j], act, one, X.dtype.type(LEAKY_SLOPE))


@_jit
def _k_grad_w(X, D, W, l2, dW, db):
    """``dW = X.T @ D + l2 * W`` and ``db = D.sum(0)`` in one launch; X (m, K), D (m, n), W/dW
    (K, n), db (n,). The bias gradient is row K of ``[X, 1].T @ D``: the blocks of the last row
    tile read ones past X's last column, so the batch sum runs tiled and parallel like the rest."""
    sX = cuda.shared.array((TILE, TILE_PAD), X.dtype)  # sX[a, r] = [X, 1][r0 + r, i0 + a]
    sD = cuda.shared.array((TILE, TILE_PAD), X.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    i0 = cuda.blockIdx.y * TILE
    i = i0 + ty
    j = cuda.blockIdx.x * TILE + tx
    m, K = X.shape
    n = D.shape[1]
    one = X.dtype.type(1.0)
    zero = one - one
    acc = zero
    for r0 in range(0, m, TILE):
        c = i0 + tx
        sX[tx, ty] = (X[r0 + ty, c] if c < K else (one if c == K else zero)) if r0 + ty < m else zero
        sD[ty, tx] = D[r0 + ty, j] if (r0 + ty < m and j < n) else zero
        cuda.syncthreads()
        for rr in range(TILE):
            acc += sX[ty, rr] * sD[rr, tx]
        cuda.syncthreads()
    if j < n:
        if i < K:
            dW[i, j] = acc + l2 * W[i, j]
        elif i == K:
            db[j] = acc


@_jit
def _k_grad_x(D, W, A, mask, use_mask, keep, act, dX):
    """``dX = (D @ W.T) * act'(A)``, times the dropout ``mask`` when ``use_mask``.

    D (m, n), W (K, n), A/mask/dX (m, K). ``A`` holds the (dropout-scaled) outputs of the layer
    below; ``A * keep`` recovers the activation's own output for its derivative. ``act`` ==
    ACT_IDENTITY with ``use_mask`` 0 gives the plain ``D @ W.T``.
    """
    sD = cuda.shared.array((TILE, TILE_PAD), D.dtype)
    sW = cuda.shared.array((TILE, TILE_PAD), D.dtype)  # sW[c, b] = W[j0 + b, c0 + c]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    i = cuda.blockIdx.y * TILE + ty
    j0 = cuda.blockIdx.x * TILE
    j = j0 + tx
    m, n = D.shape
    K = W.shape[0]
    one = D.dtype.type(1.0)
    zero = one - one
    acc = zero
    for c0 in range(0, n, TILE):
        sD[ty, tx] = D[i, c0 + tx] if (i < m and c0 + tx < n) else zero
        sW[tx, ty] = W[j0 + ty, c0 + tx] if (j0 + ty < K and c0 + tx < n) else zero
        cuda.syncthreads()
        for cc in range(TILE):
            acc += sD[ty, cc] * sW[cc, tx]
        cuda.syncthreads()
    if i < m and j < K:
        a = A[i, j]
        if use_mask:
            acc *= mask[i, j]
            a *= keep
        dX[i, j] = _dact(acc, a, act, one, D.dtype.type(LEAKY_SLOPE))


# --- losses ----------------------------------------------------------------------------------------
@_jit
def _k_loss(Z, Y, loss, want_grad, dZ, row_loss, off):
    """Per row ``i``: ``row_loss[off + i]`` = the sample's loss (float64) and, with
    ``want_grad``, ``dZ[i]`` = the gradient of the batch *mean* loss (formulas of cpu.loss_grad)."""
    B, k = Z.shape
    inv = Z.dtype.type(1.0 / B)
    for i in range(cuda.grid(1), B, cuda.gridsize(1)):
        total = 0.0
        if loss == LOSS_SOFTMAX_CE:
            mx = Z[i, 0]
            for j in range(1, k):
                mx = max(mx, Z[i, j])
            s = 0.0
            for j in range(k):
                s += math.exp(Z[i, j] - mx)
            lse = mx + math.log(s)
            ysum = 0.0
            for j in range(k):
                total += Y[i, j] * (lse - Z[i, j])
                ysum += Y[i, j]
            if want_grad:
                for j in range(k):
                    dZ[i, j] = (math.exp(Z[i, j] - lse) * ysum - Y[i, j]) * inv
        elif loss == LOSS_SIGMOID_BCE:
            for j in range(k):
                z = Z[i, j]
                y = Y[i, j]
                total += max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
                if want_grad:
                    if z >= 0:
                        p = 1.0 / (1.0 + math.exp(-z))
                    else:
                        ez = math.exp(z)
                        p = ez / (1.0 + ez)
                    dZ[i, j] = (p - y) * inv
        else:  # LOSS_MSE
            scale = Z.dtype.type(2.0 / (B * k))
            for j in range(k):
                r = Z[i, j] - Y[i, j]
                total += r * r / k
                if want_grad:
                    dZ[i, j] = scale * r
        row_loss[off + i] = total


@_jit
def _k_output_transform(Z, loss):
    one = Z.dtype.type(1.0)
    for i in range(cuda.grid(1), Z.shape[0], cuda.gridsize(1)):
        if loss == LOSS_SOFTMAX_CE:
            mx = Z[i, 0]
            for j in range(1, Z.shape[1]):
                mx = max(mx, Z[i, j])
            s = one - one
            for j in range(Z.shape[1]):
                Z[i, j] = math.exp(Z[i, j] - mx)
                s += Z[i, j]
            for j in range(Z.shape[1]):
                Z[i, j] /= s
        elif loss == LOSS_SIGMOID_BCE:
            for j in range(Z.shape[1]):
                Z[i, j] = one / (one + math.exp(-Z[i, j]))


# --- reductions (two stages, deterministic) ------------------------------------------------------
@_jit
def _k_reduce_partial(x, lo, hi, square, partial):
    """``partial[r, b]`` = block ``b``'s share of ``sum(x[lo[r]:hi[r]])`` (of squares when
    ``square``), in float64; the grid is (N_PARTS, number of ranges)."""
    buf = cuda.shared.array(TPB, np.float64)
    t = cuda.threadIdx.x
    r = cuda.blockIdx.y
    s = 0.0
    for e in range(lo[r] + cuda.blockIdx.x * TPB + t, hi[r], cuda.gridDim.x * TPB):
        v = x[e]
        s += v * v if square else v
    buf[t] = s
    cuda.syncthreads()
    step = TPB // 2
    while step > 0:
        if t < step:
            buf[t] += buf[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        partial[r, cuda.blockIdx.x] = buf[0]


@_jit
def _k_reduce_finish(partial, out, out_off, accumulate, last):
    """``out[out_off + r]`` (+)= the sum of row ``r`` of ``partial``; also ``last[r]`` = it."""
    for r in range(cuda.grid(1), partial.shape[0], cuda.gridsize(1)):
        s = 0.0
        for b in range(partial.shape[1]):
            s += partial[r, b]
        last[r] = s
        if accumulate:
            out[out_off + r] += s
        else:
            out[out_off + r] = s


@_jit
def _k_clip(g, layer_ss, max_norm):
    """Scale ``g`` by ``max_norm / (norm + 1e-6)`` when its global norm (from the per-layer sums
    of squares) exceeds ``max_norm``."""
    total = 0.0
    for l in range(layer_ss.shape[0]):
        total += layer_ss[l]
    norm = math.sqrt(total)
    if norm > max_norm:
        f = g.dtype.type(max_norm / (norm + 1e-6))
        for e in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
            g[e] *= f


# --- optimizer steps over the flat buffer (the formulas of cpu.sgd_step / cpu.adam_step) ---------
@_jit
def _k_sgd(params, grads, buf, lr, mu, wd, mode, nesterov):
    """mode 0: plain SGD; 1: the first momentum step (``buf = g``); 2: a later momentum step."""
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        g = grads[i] + wd * params[i]
        if mode == 0:
            params[i] -= lr * g
        else:
            b = g if mode == 1 else mu * buf[i] + g
            buf[i] = b
            params[i] -= lr * (g + mu * b if nesterov else b)


@_jit
def _k_adam(params, grads, m, v, b1, b2, omb1, omb2, step, inv_bc2, eps, decay, wd):
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        g = grads[i] + wd * params[i]
        mi = b1 * m[i] + omb1 * g
        vi = b2 * v[i] + omb2 * g * g
        m[i] = mi
        v[i] = vi
        params[i] = params[i] * decay - step * mi / (math.sqrt(vi) * inv_bc2 + eps)


# --- regularisation and batches ---------------------------------------------------------------------
@_jit
def _k_dropout(A, mask, thresh, scale, seed, stream):
    """Inverted dropout: keep where the element's hash >= ``thresh`` (= p * 2**32)."""
    n = A.shape[1]
    zero = A.dtype.type(0.0)
    for e in range(cuda.grid(1), A.shape[0] * n, cuda.gridsize(1)):
        i = e // n
        j = e - i * n
        mk = scale if _rand32(seed, stream, e) >= thresh else zero
        mask[i, j] = mk
        A[i, j] *= mk


@_jit
def _k_gather(X, Y, idx, Xb, Yb):
    """Rows ``idx`` of X and Y into the batch buffers (their first ``len(idx)`` rows)."""
    bs = idx.shape[0]
    nf = X.shape[1]
    k = Y.shape[1]
    for e in range(cuda.grid(1), bs * nf, cuda.gridsize(1)):
        i = e // nf
        Xb[i, e - i * nf] = X[idx[i], e - i * nf]
    for e in range(cuda.grid(1), bs * k, cuda.gridsize(1)):
        i = e // k
        Yb[i, e - i * k] = Y[idx[i], e - i * k]


@_device
def _augmented(X, idx, i, c, img_h, img_w, noise, seed, stream):
    """Feature ``c`` of batch sample ``i`` after a random ±1-pixel shift and Gaussian noise."""
    r = idx[i]
    if img_h > 0:
        h = _rand32(seed, stream + _STREAM_SHIFT, i)
        dy = np.int64(h % np.uint64(3)) - 1
        dx = np.int64((h // np.uint64(3)) % np.uint64(3)) - 1
        y = c // img_w
        x = c - y * img_w
        sy = y - dy
        sx = x - dx
        v = X[r, sy * img_w + sx] if (0 <= sy < img_h and 0 <= sx < img_w) else X.dtype.type(0.0)
    else:
        v = X[r, c]
    if noise > 0:
        v += X.dtype.type(noise * _normal(seed, stream, i * X.shape[1] + c))
    return v


@_jit
def _k_gather_aug(X, Y, idx, Xb, Yb, img_h, img_w, noise, seed, stream, perm, lx, ox, mix):
    """Batch rows with augmentations: shifts and noise (device RNG), then mixup (Zhang et al.
    2018) of sample ``i`` with ``perm[i]`` by ``lx * a + ox * b`` when ``mix``."""
    bs = idx.shape[0]
    nf = X.shape[1]
    k = Y.shape[1]
    for e in range(cuda.grid(1), bs * nf, cuda.gridsize(1)):
        i = e // nf
        c = e - i * nf
        v = _augmented(X, idx, i, c, img_h, img_w, noise, seed, stream)
        if mix:
            v = lx * v + ox * _augmented(X, idx, perm[i], c, img_h, img_w, noise, seed, stream)
        Xb[i, c] = v
    for e in range(cuda.grid(1), bs * k, cuda.gridsize(1)):
        i = e // k
        c = e - i * k
        if mix:
            Yb[i, c] = lx * Y[idx[i], c] + ox * Y[idx[perm[i]], c]
        else:
            Yb[i, c] = Y[idx[i], c]


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
    _k_reduce_partial[(N_PARTS, R), TPB](x, lo, hi, square, partial)
    _k_reduce_finish[1, max(R, 1)](partial, out, out_off, accumulate, last)


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
    _k_bias_act[_g1(Z.shape[0] * Z.shape[1])](Z, b, int(act))


def activation_grad(A, D, act):
    """``D *= act'(·)`` in place, the derivative written in terms of the output ``A``."""
    _k_act_grad[_g1(A.shape[0] * A.shape[1])](A, D, int(act))


def dense_forward(X, W, b, act, out):
    """``out = act(X @ W + b)`` (one tiled GEMM with the bias and activation fused in)."""
    _k_forward[_g2(X.shape[0], W.shape[1])](X, W, b, int(act), out)


def dense_backward(X, W, dZ, dW, db, dX):
    """``dW = X.T @ dZ``, ``db = dZ.sum(0)`` and, when ``dX`` has rows, ``dX = dZ @ W.T``."""
    dt = W.dtype.type
    _k_grad_w[_g2(W.shape[0] + 1, W.shape[1])](X, dZ, W, dt(0.0), dW, db)
    if dX.shape[0] > 0:
        _k_grad_x[_g2(dZ.shape[0], W.shape[0])](dZ, W, dX, _dummy(W.dtype), 0, dt(1.0), ACT_IDENTITY, dX)


def loss_grad(Z, Y, loss, dZ):
    """Sum over the batch of the per-sample loss (host float64); writes dLoss/dZ of the batch
    *mean* into ``dZ`` unless it has zero rows. See :func:`nbnet.kernels.cpu.loss_grad`."""
    B = Z.shape[0]
    rows = cuda.device_array(B, np.float64)
    want = dZ.shape[0] > 0
    _k_loss[_g1(B)](Z, Y, int(loss), int(want), dZ if want else _dummy(Z.dtype), rows, 0)
    return _sum(rows, B)


def output_transform(Z, loss):
    """Logits → predictions in place: softmax, sigmoid or identity."""
    if loss in (LOSS_SOFTMAX_CE, LOSS_SIGMOID_BCE):
        _k_output_transform[_g1(Z.shape[0])](Z, int(loss))


def dropout(A, mask, p, state):
    """Inverted dropout in place; ``mask`` receives 0 or 1/(1-p). The mask comes from the
    device generator seeded by one draw from ``state`` (so it differs from the CPU's)."""
    seed = _draw_seed(state)
    _launch_dropout(A, mask, p, seed, np.uint64(0))


def _launch_dropout(A, mask, p, seed, stream):
    thresh = np.uint64(min(int(p * 4294967296.0), 4294967296))
    _k_dropout[_g1(A.shape[0] * A.shape[1])](A, mask, thresh, A.dtype.type(1.0 / (1.0 - p)), seed, stream)


def clip_grad_norm(grads, max_norm):
    """Scale ``grads`` so their global L2 norm is at most ``max_norm``; returns the norm before."""
    sc = _Scratch()
    n = grads.shape[0]
    lo, hi = cuda.to_device(np.array([0], np.int64)), cuda.to_device(np.array([n], np.int64))
    _reduce(grads, lo, hi, 1, sc.out, 0, 0, sc.last, sc.partial)
    _k_clip[_g1(n)](grads, sc.last, float(max_norm))
    return math.sqrt(float(sc.out.copy_to_host()[0]))


def sgd_step(params, grads, buf, lr, momentum, nesterov, weight_decay, t):
    """SGD as ``torch.optim.SGD`` (dampening 0); see :func:`nbnet.kernels.cpu.sgd_step`."""
    dt = params.dtype.type
    mode = 0 if momentum == 0.0 else (1 if t == 1 else 2)
    _k_sgd[_g1(params.shape[0])](params, grads, buf, dt(lr), dt(momentum), dt(weight_decay), mode, int(bool(nesterov)))


def adam_step(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, t):
    """Adam (Kingma & Ba 2015), PyTorch formulation (epsilon after the bias-corrected root);
    ``decoupled``: AdamW (Loshchilov & Hutter 2019). See :func:`nbnet.kernels.cpu.adam_step`."""
    dt = params.dtype.type
    step = dt(lr / (1.0 - beta1**t))
    inv_bc2 = dt(1.0 / math.sqrt(1.0 - beta2**t))
    decay, wd = (dt(1.0 - lr * weight_decay), dt(0.0)) if decoupled else (dt(1.0), dt(weight_decay))
    _k_adam[_g1(params.shape[0])](params, grads, m, v, dt(beta1), dt(beta2), dt(1.0 - beta1), dt(1.0 - beta2),
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


def _forward_backward(bs, ws, layers, glayers, acts, loss, l2, p_drop, seed, stream, row_off):
    """Forward and backward over ``ws.A[0][:bs]`` with targets ``ws.Yb[:bs]`` (the fused path of
    cpu.forward_backward): the per-sample losses go to ``ws.row_loss[row_off:]``, the gradient
    of the batch-mean loss (+ 0.5*l2*||W||^2) into the flat gradient buffer."""
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
            _launch_dropout(A[l + 1], mask, p_drop, seed, stream + _STREAM_DROPOUT + np.uint64(l))
    k = A[L].shape[1]
    D = ws.D[0][: bs * k].reshape(bs, k)
    Yb = ws.Yb if full else ws.Yb[:bs]
    _k_loss[_g1(bs)](A[L], Yb, int(loss), 1, D, ws.row_loss, int(row_off))
    keep = dt(1.0 - p_drop)
    for l in range(L - 1, -1, -1):
        W, _ = layers[l]
        dW, db = glayers[l]
        _k_grad_w[_g2(W.shape[0] + 1, W.shape[1])](A[l], D, W, l2_, dW, db)
        if l > 0:
            n_in = W.shape[0]
            Dn = ws.D[(L - l) % 2][: bs * n_in].reshape(bs, n_in)
            use_mask = p_drop > 0
            mask = (ws.masks[l - 1] if full else ws.masks[l - 1][:bs]) if use_mask else _dummy(W.dtype)
            _k_grad_x[_g2(bs, n_in)](D, W, A[l], mask, int(use_mask), keep, int(acts[l - 1]), Dn)
            D = Dn


def train_epoch(X, Y, params, grads, m, v, w_off, b_off, sizes, acts, loss, hp, opt, state, stats):
    """One epoch: shuffle (on the host, the CPU's stream), then for every mini-batch gather,
    forward, backward, gradient norms, clipping and the optimizer step, all on the device.

    X, Y, params, grads, m, v: device arrays; w_off, b_off, sizes, acts, hp, opt, state, stats:
    host arrays as for :func:`nbnet.kernels.cpu.train_epoch` (``opt[OPT_STEP]`` is advanced,
    ``stats`` filled with the mean data loss and the RMS per-layer gradient norms).
    """
    n = X.shape[0]
    L = len(acts)
    B = int(min(opt[OPT_BATCH], n))
    kind, nesterov = int(opt[OPT_KIND]), bool(opt[OPT_NESTEROV])
    clip, p_drop, noise, alpha = float(hp[HP_CLIP]), float(hp[HP_DROPOUT]), float(hp[HP_NOISE]), float(hp[HP_MIXUP])
    img_h, img_w = int(opt[OPT_IMG_H]), int(opt[OPT_IMG_W])
    dt = params.dtype.type
    ws = _workspace(B, n, sizes, w_off, b_off, params.dtype)
    layers = _views(params, w_off, b_off, sizes)
    glayers = _views(grads, w_off, b_off, sizes)

    # Host-side draws, in the CPU kernels' order when nothing else consumes the stream.
    idx = np.arange(n)
    if opt[OPT_SHUFFLE]:
        cpu.shuffle(idx, state)
    starts = list(range(0, n, B))
    perms, lams = None, []
    if alpha > 0:
        perms = np.zeros(n, np.int64)
        for s in starts:
            e = min(s + B, n)
            if e - s > 1:
                lam = cpu.rng_beta(state, alpha, alpha)
                perm = np.arange(e - s)
                cpu.shuffle(perm, state)
                perms[s:e] = perm
                lams.append(lam)
            else:
                lams.append(None)
    aug = img_h > 0 or noise > 0 or alpha > 0
    seed = _draw_seed(state) if (p_drop > 0 or img_h > 0 or noise > 0) else _U64_0
    idxd = cuda.to_device(idx)
    permd = cuda.to_device(perms) if perms is not None else None
    ws.acc.copy_to_device(ws.zeros)

    for b_i, s in enumerate(starts):
        e = min(s + B, n)
        bs = e - s
        Xb = ws.A[0] if bs == B else ws.A[0][:bs]
        Yb = ws.Yb if bs == B else ws.Yb[:bs]
        stream = _stream(b_i)
        if aug:
            lam = lams[b_i] if alpha > 0 else None
            mix = lam is not None
            _k_gather_aug[_g1(bs * X.shape[1])](
                X, Y, idxd[s:e], Xb, Yb, img_h, img_w, noise, seed, stream,
                permd[s:e] if mix else idxd[s:e], dt(lam if mix else 1.0), dt(1.0 - lam if mix else 0.0), int(mix))
        else:
            _k_gather[_g1(bs * X.shape[1])](X, Y, idxd[s:e], Xb, Yb)
        _forward_backward(bs, ws, layers, glayers, acts, loss, hp[HP_L2], p_drop, seed, stream, s)
        # per-layer sums of squares of the gradient: stats and the clipping norm
        _reduce(grads, ws.lo, ws.hi, 1, ws.acc, 1, 1, ws.batch_ss, ws.partial)
        if clip > 0:
            _k_clip[_g1(grads.shape[0])](grads, ws.batch_ss, clip)
        opt[OPT_STEP] += 1
        optimizer_step(params, grads, m, v, kind, hp, nesterov, int(opt[OPT_STEP]))

    _reduce(ws.row_loss, ws.loss_lo, ws.loss_hi, 0, ws.acc, 0, 1, ws.last1, ws.partial1)
    acc = ws.acc.copy_to_host()
    stats[0] = acc[0] / n
    for l in range(L):
        stats[1 + l] = math.sqrt(acc[1 + l] / len(starts))


def batch_gradient(X, Y, params, grads, w_off, b_off, sizes, acts, loss, l2):
    """Gradient of the mean loss over the whole (X, Y) (no dropout, no step) into ``grads``;
    returns the mean data loss (host float)."""
    n = X.shape[0]
    ws = _workspace(n, n, sizes, w_off, b_off, params.dtype)
    ws.A[0].copy_to_device(X)
    ws.Yb.copy_to_device(Y)
    _forward_backward(n, ws, _views(params, w_off, b_off, sizes), _views(grads, w_off, b_off, sizes), acts, loss,
                      l2, 0.0, _U64_0, _U64_0, 0)
    return _sum(ws.row_loss, n) / n


def eval_loss(X, Y, params, w_off, b_off, sizes, acts, loss):
    """Mean loss of the network over (X, Y), without gradients (validation); host float."""
    n = X.shape[0]
    Z = cuda.device_array((n, int(sizes[-1])), params.dtype)
    forward(X, params, w_off, b_off, sizes, acts, -1, Z)
    rows = cuda.device_array(n, np.float64)
    _k_loss[_g1(n)](Z, Y, int(loss), 0, _dummy(params.dtype), rows, 0)
    return _sum(rows, n) / n
