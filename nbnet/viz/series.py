"""Series, the input of every figure: ``{metric key: (epochs, values)}``.

Series are built from an estimator's ``history_`` by :func:`series_from_history` or from a
run's MLflow metric histories (:func:`nbnet.ops.plot.fetch_series`). Missing, NaN and infinite
values are left out of the figures, never plotted as zero.
"""

from __future__ import annotations

import re

import numpy as np

ACT_STATS = ("act_mean", "act_std", "act_dead")  # history_ keys (per epoch, one value per hidden layer)


def series_from_history(history: dict) -> dict:
    """``estimator.history_`` as series: per-layer lists (``grad_norm``, ``act_*``) become
    ``grad_norm_{l}``, ``act_mean_{l}``, ... Epochs count from 1."""
    out = {}
    for key, seq in history.items():
        seq = list(seq)
        if not seq:
            continue
        if any(isinstance(v, (list, tuple, np.ndarray)) for v in seq):
            width = max(len(v) for v in seq if isinstance(v, (list, tuple, np.ndarray)))
            for l in range(width):
                col = [v[l] if isinstance(v, (list, tuple, np.ndarray)) and l < len(v) else None for v in seq]
                out[f"{key}_{l}"] = (np.arange(1, len(col) + 1), floats(col))
        else:
            out[key] = (np.arange(1, len(seq) + 1), floats(seq))
    return out


def as_series(data: dict) -> dict:
    """``data`` itself when it already is series, else :func:`series_from_history` of it."""
    if all(isinstance(v, tuple) and len(v) == 2 for v in data.values()):
        return data
    return series_from_history(data)


def floats(values) -> np.ndarray:
    """``values`` as a float array (n,), None as NaN."""
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def finite(values, epochs=None, *, positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of the finite values (and only the positive ones with ``positive``, for a
    log axis); epochs count from 1 when not given."""
    v = floats(values)
    x = np.arange(1, len(v) + 1) if epochs is None else np.asarray(epochs)
    keep = np.isfinite(v) & (v > 0 if positive else True)
    return x[keep], v[keep]


def layer_keys(series: dict, prefix: str) -> list[tuple[int, str]]:
    """(layer, key) of the series keys ``<prefix>_<int>`` (``grad_norm_0``...), by layer."""
    pat = re.compile(re.escape(prefix) + r"_(\d+)$")
    found = [(int(m.group(1)), k) for k in series if (m := pat.match(k))]
    return sorted(found)


def score_keys(series: dict) -> list[str]:
    """The validation scores among the series (``val_accuracy``, ``val_r2``..., not ``val_loss``)
    with at least one finite value."""
    return [k for k in series if k.startswith("val_") and k != "val_loss" and np.isfinite(series[k][1]).any()]
