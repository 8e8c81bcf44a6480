"""Figures for runs: learning curves and confusion matrices (matplotlib, headless Agg backend).

Each function returns a :class:`matplotlib.figure.Figure` built without pyplot's global state,
so figures can be made from worker processes and threads and are freed by the garbage collector.

Example
-------
>>> fig = learning_curve({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "val_accuracy": [0.6, 0.8]})
>>> len(fig.axes)
2
"""

from __future__ import annotations

import math

import numpy as np


def _figure(width: float, height: float, ncols: int = 1, **margins):
    from matplotlib.figure import Figure  # the object API needs no backend switch (Agg renders)

    # Fixed margins, no layout engine: "constrained" layout doubled the cost of a run's plots.
    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.subplots_adjust(**{"left": 0.09, "right": 0.97, "bottom": 0.15, "top": 0.88, "wspace": 0.28, **margins})
    return fig, axes


def _finite(values) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    epochs = np.arange(1, len(v) + 1)
    keep = np.isfinite(v)
    return epochs[keep], v[keep]


def learning_curve(history: dict, *, title: str | None = None):
    """Training and validation loss per epoch (left) and the validation score (right, when the
    history has one: ``val_accuracy``, ``val_r2`` ...). ``history`` is ``estimator.history_``."""
    from matplotlib.ticker import MaxNLocator

    score_keys = [k for k in history if k.startswith("val_") and k != "val_loss"
                  and any(math.isfinite(x) for x in history[k] if x is not None)]
    fig, axes = _figure(9 if score_keys else 5, 3.4, 2 if score_keys else 1)
    ax = axes[0]
    for key, style in (("loss", "-"), ("val_loss", "--")):
        if key in history:
            x, y = _finite(history[key])
            if len(x):
                ax.plot(x, y, style, label=key, marker="o" if len(x) < 15 else None, ms=3)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if score_keys:
        ax2 = axes[1]
        for key in score_keys:
            x, y = _finite(history[key])
            ax2.plot(x, y, label=key, marker="o" if len(x) < 15 else None, ms=3)
        ax2.set_xlabel("epoch")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel("validation score")
        ax2.grid(alpha=0.3)
        ax2.legend()
    if title:
        fig.suptitle(title)
    return fig


def confusion_matrix(cm, labels, *, title: str | None = None, normalize: bool = False):
    """Heat map of a confusion matrix ``cm`` (rows: true class, columns: predicted), shape
    (n_classes, n_classes), with counts (or row fractions when ``normalize``) written in cells."""
    cm = np.asarray(cm, dtype=float)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = cm.shape[0]
    size = min(10.0, 2.5 + 0.45 * n)
    fig, (ax,) = _figure(size * 1.15, size, left=0.1, right=0.98, bottom=0.1, top=0.93)
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    names = [str(c) for c in labels]
    ax.set_xticks(range(n), names, rotation=45 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        hi = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                text = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > hi else "black")
    if title:
        ax.set_title(title)
    return fig


def save(fig, path) -> None:
    """Write ``fig`` as PNG (or by the suffix of ``path``)."""
    fig.savefig(path, dpi=100)
