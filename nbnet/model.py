"""Network layout: layer sizes, activations and the flat parameter buffer with per-layer views."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nbnet.errors import NbnetError
from nbnet.kernels.tables import ACT_IDENTITY, ACTIVATIONS

#: Activations whose initialisation is He (Kaiming) normal; the rest use Glorot uniform.
_HE_INIT = {"relu", "leaky_relu", "elu", "softplus"}


@dataclass(frozen=True)
class Layout:
    """Where each layer's weights live inside one flat parameter buffer.

    ``sizes`` = [n_features, h_1, ..., n_outputs]; layer ``l`` has ``W_l`` of shape
    (sizes[l], sizes[l+1]) at ``w_off[l]`` and ``b_l`` at ``b_off[l]``; ``acts`` holds the
    activation code of each layer (the last is identity: the loss owns the output transform).
    """

    sizes: np.ndarray  # int64 (L+1,)
    w_off: np.ndarray  # int64 (L,)
    b_off: np.ndarray  # int64 (L,)
    acts: np.ndarray  # int64 (L,)
    n_params: int

    @classmethod
    def build(cls, n_in: int, hidden: tuple[int, ...], n_out: int, activation: str) -> "Layout":
        sizes = np.array([n_in, *hidden, n_out], dtype=np.int64)
        w_off, b_off, pos = [], [], 0
        for a, b in zip(sizes[:-1], sizes[1:]):
            w_off.append(pos)
            pos += int(a * b)
            b_off.append(pos)
            pos += int(b)
        acts = np.full(len(sizes) - 1, ACTIVATIONS[activation], dtype=np.int64)
        acts[-1] = ACT_IDENTITY
        return cls(sizes, np.array(w_off, np.int64), np.array(b_off, np.int64), acts, pos)

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def shapes(self) -> list[tuple[int, ...]]:
        """Shapes of ``[W1, b1, W2, b2, ...]``."""
        out: list[tuple[int, ...]] = []
        for a, b in zip(self.sizes[:-1], self.sizes[1:]):
            out += [(int(a), int(b)), (int(b),)]
        return out

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """``[W1, b1, W2, b2, ...]`` as views into ``flat`` (writes go through)."""
        out = []
        for l in range(self.n_layers):
            a, b = int(self.sizes[l]), int(self.sizes[l + 1])
            w, o = int(self.w_off[l]), int(self.b_off[l])
            out += [flat[w:w + a * b].reshape(a, b), flat[o:o + b]]
        return out

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.w_off, self.b_off, self.sizes, self.acts


def init_params(layout: Layout, activation: str, rng: np.random.Generator, dtype) -> np.ndarray:
    """He normal for ReLU-like activations (He et al. 2015), Glorot uniform otherwise (Glorot &
    Bengio 2010); biases zero. Returns the flat buffer."""
    flat = np.zeros(layout.n_params, dtype=dtype)
    views = layout.views(flat)
    for l in range(layout.n_layers):
        W = views[2 * l]
        fan_in, fan_out = W.shape
        if activation in _HE_INIT and l < layout.n_layers - 1:
            W[:] = rng.standard_normal(W.shape) * np.sqrt(2.0 / fan_in)
        else:
            lim = np.sqrt(6.0 / (fan_in + fan_out))
            W[:] = rng.uniform(-lim, lim, W.shape)
    return flat


def check_weights(layout: Layout, weights, dtype) -> np.ndarray:
    """Validate a ``[W1, b1, ...]`` list against the layout; returns a flat buffer."""
    shapes = layout.shapes()
    if len(weights) != len(shapes):
        raise NbnetError(f"set_weights got {len(weights)} arrays, expected {len(shapes)} ([W1, b1, W2, b2, ...])")
    flat = np.empty(layout.n_params, dtype=dtype)
    for i, (w, dst, shape) in enumerate(zip(weights, layout.views(flat), shapes)):
        w = np.asarray(w)
        if w.shape != shape:
            raise NbnetError(f"weight array {i} has shape {w.shape}, expected {shape}")
        if not np.issubdtype(w.dtype, np.number) or not np.all(np.isfinite(w)):
            raise NbnetError(f"weight array {i} must be finite numbers")
        dst[:] = w
    return flat
