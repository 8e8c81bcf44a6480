"""The random generator of the CPU kernels: SplitMix64 over an explicit ``uint64[1]`` state.

Every random draw of a fit (shuffles, dropout masks, augmentations) advances one state array,
so the same seed gives the same numbers and a checkpoint that stores the state resumes the
stream exactly. The threaded kernels draw one key per mini-batch from it and then a counter-based
stream (:func:`rng_at`): each thread draws its own rows' numbers, the same whatever the thread count. The CUDA backend draws its shuffles from these functions on the host.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from nbnet.kernels.tables import CPU_JIT

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def seed_state(seed: int) -> np.ndarray:
    """Generator state (``uint64[1]``) for a seed."""
    return np.array([np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(0x5DEECE66D)], dtype=np.uint64)


@njit(**CPU_JIT)
def _mix(z):
    """SplitMix64's output function of a uint64."""
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(**CPU_JIT)
def rng_next(state):
    """SplitMix64 (Steele, Lea & Flood 2014): the next uint64, advancing ``state[0]``."""
    state[0] += _GOLDEN
    return _mix(state[0])


@njit(**CPU_JIT)
def rng_at(key, i):
    """The ``i``-th (an int >= 0) uniform float64 in [0, 1) of the counter-based stream ``key``
    (a uint64, e.g. drawn by :func:`rng_next`): SplitMix64 at position ``i``, so any part of the
    stream can be drawn in any order by any thread, with the same numbers."""
    return (_mix(key + (np.uint64(i) + np.uint64(1)) * _GOLDEN) >> _S11) * (1.0 / 9007199254740992.0)


@njit(**CPU_JIT)
def rng_uniform(state):
    """Uniform float64 in [0, 1)."""
    return (rng_next(state) >> _S11) * (1.0 / 9007199254740992.0)


@njit(**CPU_JIT)
def rng_below(state, n):
    """Uniform integer in [0, n)."""
    return np.int64(rng_uniform(state) * n)


@njit(**CPU_JIT)
def rng_normal(state):
    """Standard normal (Box-Muller)."""
    u1 = 1.0 - rng_uniform(state)  # (0, 1]
    u2 = rng_uniform(state)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(**CPU_JIT)
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


@njit(**CPU_JIT)
def rng_beta(state, a, b):
    """Beta(a, b) as X / (X + Y) of two gamma draws (mixup's lambda)."""
    x = rng_gamma(state, a)
    y = rng_gamma(state, b)
    return x / (x + y)


@njit(**CPU_JIT)
def shuffle(idx, state):
    """Fisher-Yates shuffle of ``idx`` in place."""
    for i in range(idx.shape[0] - 1, 0, -1):
        j = rng_below(state, i + 1)
        t = idx[i]
        idx[i] = idx[j]
        idx[j] = t

