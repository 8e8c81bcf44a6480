"""The CUDA device code of :mod:`nbnet.kernels.cuda`: ``@cuda.jit`` kernels (``k_*``, started by
the launchers there as ``k_name[grid, block](...)``), their device functions, the counter-based
device generator and the launch geometry. See :mod:`nbnet.kernels.cuda` for the conventions.

Launch geometry: ``TILE`` x ``TILE`` thread blocks for the tiled GEMMs and ``TPB`` threads for
the elementwise kernels (grid-stride loops over at most ``MAX_BLOCKS`` blocks): 16 x 16 and 256
on a GPU. Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) they default to 4 x 4 and 16
so that tiny test shapes still span several blocks; ``NBNET_CUDA_TILE`` / ``NBNET_CUDA_TPB``
override them (read once, at import).
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
from numba import cuda

from nbnet.kernels.devices import cuda_simulator
from nbnet.kernels.tables import (
    ACT_ELU, ACT_LEAKY_RELU, ACT_RELU, ACT_SIGMOID, ACT_SOFTPLUS, ACT_TANH, LEAKY_SLOPE, LOSS_SIGMOID_BCE,
    LOSS_SOFTMAX_CE,
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
_TO_UNIT = 1.0 / 4294967296.0  # 2**-32
_TWO_PI = 2.0 * math.pi
# Random streams of a batch (64 apart per batch): 0 image shifts, 1-2 noise, 3 + l dropout of layer l.
_STREAM_SHIFT, _STREAM_NOISE1, _STREAM_NOISE2, STREAM_DROPOUT = (np.uint64(k) for k in range(4))


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
def k_bias_act(Z, b, act):
    one = Z.dtype.type(1.0)
    slope = Z.dtype.type(LEAKY_SLOPE)
    n = Z.shape[1]
    for e in range(cuda.grid(1), Z.shape[0] * n, cuda.gridsize(1)):
        i = e // n
        j = e - i * n
        Z[i, j] = _act(Z[i, j] + b[j], act, one, slope)


@_jit
def k_act_grad(A, D, act):
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
def k_forward(X, W, b, act, out):
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
def k_grad_w(X, D, W, l2, dW, db):
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
def k_grad_x(D, W, A, mask, use_mask, keep, act, dX):
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
def k_loss(Z, Y, loss, want_grad, dZ, row_loss, off, w, use_w, inv):
    """Per row ``i``: ``row_loss[off + i]`` = the sample's loss (float64) times its weight
    ``w[off + i]`` (1 unless ``use_w``) and, with ``want_grad``, ``dZ[i]`` = the gradient of
    ``inv * sum_i w_i l_i``: of the batch's weighted mean loss when ``inv`` = 1 / its weight sum
    (formulas of cpu.weighted_loss_grad_rows)."""
    B, k = Z.shape
    for i in range(cuda.grid(1), B, cuda.gridsize(1)):
        wi = w[off + i] if use_w else 1.0
        f = Z.dtype.type(wi * inv)
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
                    dZ[i, j] = (math.exp(Z[i, j] - lse) * ysum - Y[i, j]) * f
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
                    dZ[i, j] = (p - y) * f
        else:  # LOSS_MSE
            scale = Z.dtype.type(2.0 * wi * inv / k)
            for j in range(k):
                r = Z[i, j] - Y[i, j]
                total += r * r / k
                if want_grad:
                    dZ[i, j] = scale * r
        row_loss[off + i] = wi * total


@_jit
def k_output_transform(Z, loss):
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
def k_reduce_partial(x, lo, hi, square, partial):
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
def k_reduce_finish(partial, out, out_off, accumulate, last):
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
def k_clip(g, layer_ss, max_norm):
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
def k_sgd(params, grads, buf, lr, mu, wd, mode, nesterov):
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
def k_adam(params, grads, m, v, b1, b2, omb1, omb2, step, inv_bc2, eps, decay, wd):
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        g = grads[i] + wd * params[i]
        mi = b1 * m[i] + omb1 * g
        vi = b2 * v[i] + omb2 * g * g
        m[i] = mi
        v[i] = vi
        params[i] = params[i] * decay - step * mi / (math.sqrt(vi) * inv_bc2 + eps)


# --- regularisation and batches ---------------------------------------------------------------------
@_jit
def k_dropout(A, mask, thresh, scale, seed, stream):
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
def k_gather(X, Y, idx, Xb, Yb):
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
def k_gather_aug(X, Y, idx, Xb, Yb, img_h, img_w, noise, seed, stream, perm, lx, ox, mix):
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
