"""Figures of a training run, drawn with matplotlib (headless).

Each figure function reads *series* (:mod:`nbnet.viz.series`) and returns a
:class:`matplotlib.figure.Figure` built without pyplot's global state, so figures can be made
from worker processes and threads and are freed by the garbage collector. matplotlib is
imported on first use: the per-run summary (:mod:`nbnet.viz.summary`) and the study figures
(:mod:`nbnet.viz.study`) are drawn with Pillow and need no matplotlib import.

Example
-------
>>> fig = learning_curve({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "val_accuracy": [0.6, 0.8]})
>>> len(fig.axes)
2
"""

from __future__ import annotations

import os

import numpy as np

from nbnet._sys.atomic import atomic_write

from .series import ACT_STATS, as_series, finite, floats, layer_keys, score_keys


# --- axes painters ------------------------------------------------------------------------------
def _epoch_axis(ax, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator  # heavy: imported on first use

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _line(ax, series, key, label=None, style="-", positive=False, **kw) -> bool:
    if key not in series:
        return False
    x, y = finite(series[key][1], series[key][0], positive=positive)
    if not len(x):
        return False
    kw.setdefault("marker", "o" if len(x) < 15 else None)
    ax.plot(x, y, style, label=label or key, ms=3, **kw)
    return True


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _draw_loss(ax, series: dict) -> None:
    """Training and validation loss per epoch."""
    drawn = [_line(ax, series, k, style=s) for k, s in (("loss", "-"), ("val_loss", "--"))]
    _epoch_axis(ax, "loss")
    if any(drawn):
        ax.legend(fontsize=8)
    else:
        _empty(ax, "no loss recorded")


def _draw_scores(ax, series: dict) -> None:
    """Validation scores (``val_accuracy``, ``val_r2``...) per epoch."""
    keys = score_keys(series)
    for k in keys:
        _line(ax, series, k)
    _epoch_axis(ax, "validation score")
    if keys:
        ax.legend(fontsize=8)
    else:
        _empty(ax, "no validation score")


def _draw_grad_norms(ax, series: dict) -> None:
    """Gradient norm of each layer per epoch (RMS over the epoch's batches), log scale."""
    layers = layer_keys(series, "grad_norm")
    drawn = [_line(ax, series, k, label=f"layer {l}", positive=True) for l, k in layers]
    _epoch_axis(ax, "gradient norm")
    if any(drawn):
        ax.set_yscale("log")
        ax.legend(fontsize=8, ncol=2 if len(layers) > 4 else 1)
    else:
        _empty(ax, "no gradient norms")


def _draw_activation(ax, series: dict, stat: str) -> None:
    """One activation statistic (``act_mean``, ``act_std`` or ``act_dead``) per hidden layer."""
    label = {"act_mean": "activation mean", "act_std": "activation std", "act_dead": "dead units (fraction)"}[stat]
    layers = layer_keys(series, stat)
    drawn = [_line(ax, series, k, label=f"hidden {l}") for l, k in layers]
    _epoch_axis(ax, label)
    if stat == "act_dead":
        ax.set_ylim(-0.02, 1.02)
    if any(drawn):
        ax.legend(fontsize=8, ncol=2 if len(layers) > 4 else 1)
    else:
        _empty(ax, "no activation statistics")


def _draw_confusion(ax, cm, labels, *, normalize: bool = False, annotate: bool = True) -> None:
    """Heat map of ``cm`` (n_classes, n_classes; rows true, columns predicted)."""
    cm = np.asarray(cm, dtype=float)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = cm.shape[0]
    ax.imshow(cm, cmap="Blues")
    names = [str(c) for c in labels]
    step = max(1, n // 20)
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(ticks, [names[i] for i in ticks])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if annotate and n <= 20:
        hi = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                text = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > hi else "black")


def _draw_roc(ax, roc: dict, *, legend_max: int = 10) -> None:
    """ROC curve(s) from :func:`nbnet.viz.evaluation.roc_data`: one for a binary task, one-vs-rest per
    class for more classes, with the chance diagonal."""
    ax.plot([0, 1], [0, 1], ":", color="0.6", lw=1)
    curves = roc.get("curves") or []
    many = len(curves) > legend_max
    for c in curves:
        auc = c.get("auc")
        label = None if many else (f"{c['label']} (AUC {auc:.3f})" if auc is not None else str(c["label"]))
        ax.plot(c["fpr"], c["tpr"], lw=1 if many else 1.5, label=label)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(alpha=0.3)
    if curves and not many:
        ax.legend(fontsize=7, loc="lower right")
    if not curves:
        _empty(ax, "no ROC curve")


def _draw_pred_vs_true(ax, y_true, y_pred) -> None:
    """Predicted against true values (regression), with the identity line."""
    t, p = floats(y_true), floats(y_pred)
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    if len(t):
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], ":", color="0.6", lw=1)
        ax.scatter(t, p, s=6, alpha=0.6)
    else:
        _empty(ax, "no predictions")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.grid(alpha=0.3)


# --- figures --------------------------------------------------------------------------------------
def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **margins):
    from matplotlib.figure import Figure  # heavy: imported on first use; the object API needs no backend switch

    # Fixed margins, no layout engine: "constrained" layout doubled the cost of a run's plots.
    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.subplots_adjust(**{"left": 0.09, "right": 0.97, "bottom": 0.15, "top": 0.88, "wspace": 0.28, **margins})
    return fig, (axes[0] if nrows == 1 else axes)


def learning_curve(history: dict, *, title: str | None = None):
    """Training and validation loss per epoch (left) and the validation score (right, when the
    history has one: ``val_accuracy``, ``val_r2`` ...). ``history`` is ``estimator.history_``
    (or series, see :func:`nbnet.viz.series.series_from_history`)."""
    return loss_curves(as_series(history), title=title)


def loss_curves(series: dict, *, title: str | None = None):
    """Loss (train/val) per epoch, and the validation score beside it when there is one."""
    has_score = bool(score_keys(series))
    fig, axes = _figure(9 if has_score else 5, 3.4, 2 if has_score else 1)
    _draw_loss(axes[0], series)
    if has_score:
        _draw_scores(axes[1], series)
    if title:
        fig.suptitle(title)
    return fig


def grad_norm_curves(series: dict, *, title: str | None = None):
    """Per-layer gradient norms per epoch."""
    fig, (ax,) = _figure(6, 3.6)
    _draw_grad_norms(ax, series)
    ax.set_title(title or "gradient norm per layer")
    return fig


def activation_curves(series: dict, *, title: str | None = None):
    """Per-hidden-layer activation mean, std and dead-unit fraction per epoch (three panels)."""
    fig, axes = _figure(13, 3.6, 3, wspace=0.3, left=0.06, right=0.98)
    for ax, stat in zip(axes, ACT_STATS):
        _draw_activation(ax, series, stat)
    if title:
        fig.suptitle(title)
    return fig


def confusion_matrix(cm, labels, *, title: str | None = None, normalize: bool = False):
    """Heat map of a confusion matrix ``cm`` (rows: true class, columns: predicted), shape
    (n_classes, n_classes), with counts (or row fractions when ``normalize``) written in cells."""
    n = np.asarray(cm).shape[0]
    size = min(10.0, 2.5 + 0.45 * n)
    fig, (ax,) = _figure(size * 1.15, size, left=0.1, right=0.98, bottom=0.1, top=0.93)
    _draw_confusion(ax, cm, labels, normalize=normalize)
    fig.colorbar(ax.images[0], ax=ax, shrink=0.8)
    if title:
        ax.set_title(title)
    return fig


def roc_curve(roc: dict, *, title: str | None = None):
    """ROC curve of a binary classifier, or one-vs-rest curves of a multi-class one."""
    fig, (ax,) = _figure(5.2, 5, left=0.13, bottom=0.11, top=0.92)
    _draw_roc(ax, roc)
    kind = "ROC" if roc.get("binary") else "ROC, one class vs rest"
    macro = roc.get("macro_auc")
    ax.set_title(title or (f"{kind} (macro AUC {macro:.3f})" if macro is not None else kind))
    return fig


def pred_vs_true(y_true, y_pred, *, title: str | None = None):
    """Predicted against true values of a regressor, with the identity line."""
    fig, (ax,) = _figure(5, 5, left=0.13, bottom=0.11, top=0.92)
    _draw_pred_vs_true(ax, y_true, y_pred)
    ax.set_title(title or "predicted vs true (validation)")
    return fig


def save(fig, path, *, dpi: int = 100) -> None:
    """Write ``fig`` as PNG (or by the suffix of ``path``), atomically: a temporary file in the
    same folder renamed over ``path``, so a reader never sees half an image."""
    suffix = os.path.splitext(os.fspath(path))[1] or ".png"
    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format=suffix[1:]), mode=0o644)  # figures are for sharing
