"""Splits: train/validation (stratified, seeded), K-fold, leave-one-out, cross-validation."""

from __future__ import annotations

import numpy as np

from ..errors import NbnetError


def train_val_split(n: int, fraction: float, y=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held_out) holding out ``fraction`` of ``n`` samples; stratified by ``y``
    when given (every class keeps at least one training sample). Seeded and deterministic."""
    if not 0.0 < fraction < 1.0:
        raise NbnetError(f"split fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    if y is None:
        perm = rng.permutation(n)
        k = max(1, int(round(n * fraction)))
        if k >= n:
            raise NbnetError(f"cannot hold out {fraction} of {n} samples and keep any for training")
        return np.sort(perm[k:]), np.sort(perm[:k])
    y = np.asarray(y)
    held = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * fraction))
        k = min(k, len(idx) - 1)
        held.append(idx[:k])
    held = np.sort(np.concatenate(held))
    if len(held) == 0:
        raise NbnetError(f"holding out {fraction} of {n} samples leaves no held-out sample; use more data")
    mask = np.ones(n, bool)
    mask[held] = False
    return np.flatnonzero(mask), held
