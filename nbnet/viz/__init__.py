"""Figures of a training run (matplotlib, headless) and the per-epoch activation statistics.

* :class:`ActivationStats` is a training callback: every epoch it pushes a fixed sample of the
  validation data (128 rows by default) through the network and adds, per hidden layer ``l``,
  ``act_mean_{l}``, ``act_std_{l}`` and ``act_dead_{l}`` (the fraction of units that are zero on
  *every* row of the sample: dead ReLUs) to the epoch's ``logs`` (and to ``history_``).
* The figures read *series*: ``{metric key: (epochs, values)}``, built from an estimator's
  ``history_`` by :func:`series_from_history` or from a run's MLflow metric histories
  (:mod:`nbnet.plots`). Missing, NaN and infinite values are left out, never plotted as zero.
* Each figure function returns a :class:`matplotlib.figure.Figure` built without pyplot's global
  state, so figures can be made from worker processes and threads and are freed by the garbage
  collector. :func:`summary_png`, the 2×2 panel every run logs, is drawn with Pillow alone
  (~10 ms instead of 70-100 ms, and no matplotlib import in sweep workers).

Example
-------
>>> fig = learning_curve({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "val_accuracy": [0.6, 0.8]})
>>> len(fig.axes)
2
"""

from __future__ import annotations

import math
import os
import re
import time

import numpy as np

ACT_STATS = ("act_mean", "act_std", "act_dead")  # history_ keys (per epoch, one value per hidden layer)
MAX_SAMPLE_ROWS = 128  # digits, 30 epochs: 128 rows cost 3-4% of the training time, 256 rows 4.5-6% (README)


# --- per-epoch activation statistics ------------------------------------------------------------
def hidden_activation_stats(layout, params: np.ndarray, Xt: np.ndarray, bufs=None) -> np.ndarray:
    """(n_hidden_layers, 3) float64 array: per hidden layer, the mean and standard deviation of
    its activations over ``Xt`` (n, n_inputs; preprocessed, in the dtype of ``params``) and the
    fraction of its units that are exactly zero on every row (dead ReLUs; with tanh or sigmoid
    units this is ~0). ``estimator.activation_stats`` counts zero *values* instead.

    ``layout`` is the network's :class:`nbnet.model.Layout`, ``params`` its flat (host) buffer.
    Each layer is the one-layer network ``act(A @ W + b)`` run through the inference kernel
    (``kernels.cpu.forward``: the GEMM and activation code of prediction), so nothing new is
    compiled. ``bufs`` are optional preallocated (n, width) outputs, one per hidden layer."""
    from nbnet.kernels import cpu as K

    lay = layout
    non_negative = (K.ACT_RELU, K.ACT_SIGMOID, K.ACT_SOFTPLUS)  # outputs >= 0
    n_hidden = lay.n_layers - 1
    out = np.zeros((n_hidden, 3))
    inp = Xt
    for l in range(n_hidden):
        width = int(lay.sizes[l + 1])
        A = bufs[l] if bufs is not None else np.empty((Xt.shape[0], width), params.dtype)
        K.forward(inp, params, lay.w_off[l:l + 1], lay.b_off[l:l + 1], lay.sizes[l:l + 2], lay.acts[l:l + 1], -1, A)
        flat = A.reshape(-1)
        colsum = A.sum(axis=0)  # (width,): one pass gives the mean and, for outputs >= 0, the dead units
        mean = float(colsum.sum(dtype=np.float64)) / flat.size
        ss = float(np.dot(flat, flat)) / flat.size  # one BLAS pass, no (A - mean) temporary
        out[l, 0] = mean
        out[l, 1] = math.sqrt(max(ss - mean * mean, 0.0))
        # units zero on every row: a column of non-negative outputs sums to 0 only then
        dead = colsum == 0 if int(lay.acts[l]) in non_negative else ~A.any(axis=0)
        out[l, 2] = np.count_nonzero(dead) / width
        inp = A
    return out


class ActivationStats:
    """Training callback: per-epoch activation statistics of every hidden layer on a fixed sample.

    ``X`` is raw validation data (as passed to ``fit``: the fitted preprocessing is applied once,
    at ``on_train_begin``); at most ``max_rows`` rows are kept, drawn once with ``seed``. Every
    ``every`` epochs (epochs 1, 1 + every, ...) the callback adds ``act_mean_{l}``,
    ``act_std_{l}`` and ``act_dead_{l}`` to ``logs``, so a :class:`nbnet.experiment.tracking.MetricLogger`
    placed *after* it in the callback list logs them, and appends the per-layer lists to
    ``estimator.history_["act_mean"]`` etc. (NaN for skipped epochs). It only reads the weights.

    Example
    -------
    >>> from sklearn.datasets import load_iris
    >>> from nbnet import MLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = MLPClassifier((8,), epochs=3).fit(X, y, callbacks=[ActivationStats(X)])
    >>> len(clf.history_["act_dead"]), len(clf.history_["act_dead"][0])
    (3, 1)
    """

    def __init__(self, X, *, every: int = 1, max_rows: int = MAX_SAMPLE_ROWS, seed: int = 0):
        self.X = X
        self.every = max(1, int(every))
        self.max_rows = max(1, int(max_rows))
        self.seed = seed
        self.seconds = 0.0  # wall time spent computing the statistics (cost accounting)
        self._est = None

    def on_train_begin(self, estimator) -> None:
        t0 = time.perf_counter()
        X = self.X
        n = len(X)
        if n > self.max_rows:
            rows = np.sort(np.random.default_rng(self.seed).choice(n, self.max_rows, replace=False))
            X = X.iloc[rows] if hasattr(X, "iloc") else np.asarray(X)[rows]
        self._est = estimator
        self._Xt = estimator._prepare_X(X, fit=False)  # the fitted preprocessing, model dtype
        lay = estimator.layout_
        self._bufs = [np.empty((self._Xt.shape[0], int(w)), self._Xt.dtype) for w in lay.sizes[1:-1]]
        self.seconds += time.perf_counter() - t0

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        est = self._est
        if est is None or len(est.layout_.sizes) < 3:  # not started, or no hidden layer
            return
        t0 = time.perf_counter()
        n_hidden = len(est.layout_.sizes) - 2
        h = est.history_
        first = h.get(ACT_STATS[0])
        if first is None or len(first) != epoch - 1:  # first epoch, or resumed from an older checkpoint: align
            for key in ACT_STATS:
                seq = h.setdefault(key, [])
                seq.extend([[float("nan")] * n_hidden for _ in range(epoch - 1 - len(seq))])
                del seq[epoch - 1:]
        if (epoch - 1) % self.every:
            for key in ACT_STATS:
                h[key].append([float("nan")] * n_hidden)
        else:
            est._sync_host()  # the CUDA backend trains on device copies; no-op on the CPU
            stats = hidden_activation_stats(est.layout_, est._params, self._Xt, self._bufs)
            for j, key in enumerate(ACT_STATS):
                values = [float(v) for v in stats[:, j]]
                h[key].append(values)
                for l, v in enumerate(values):
                    logs[f"{key}_{l}"] = v
        self.seconds += time.perf_counter() - t0


# --- series: {key: (epochs, values)} --------------------------------------------------------------
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
                out[f"{key}_{l}"] = (np.arange(1, len(col) + 1), _floats(col))
        else:
            out[key] = (np.arange(1, len(seq) + 1), _floats(seq))
    return out


def _floats(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _finite(values, epochs=None, *, positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    v = _floats(values)
    x = np.arange(1, len(v) + 1) if epochs is None else np.asarray(epochs)
    keep = np.isfinite(v) & (v > 0 if positive else True)
    return x[keep], v[keep]


def layer_keys(series: dict, prefix: str) -> list[tuple[int, str]]:
    """(layer, key) of the series keys ``<prefix>_<int>`` (``grad_norm_0``...), by layer."""
    pat = re.compile(re.escape(prefix) + r"_(\d+)$")
    found = [(int(m.group(1)), k) for k in series if (m := pat.match(k))]
    return sorted(found)


def _score_keys(series: dict) -> list[str]:
    return [k for k in series if k.startswith("val_") and k != "val_loss" and np.isfinite(series[k][1]).any()]


# --- axes painters ------------------------------------------------------------------------------
def _epoch_axis(ax, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _line(ax, series, key, label=None, style="-", positive=False, **kw) -> bool:
    if key not in series:
        return False
    x, y = _finite(series[key][1], series[key][0], positive=positive)
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
    keys = _score_keys(series)
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
    """ROC curve(s) from :func:`nbnet.ops.plot.roc_data`: one for a binary task, one-vs-rest per
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
    t, p = _floats(y_true), _floats(y_pred)
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
    from matplotlib.figure import Figure  # the object API needs no backend switch (Agg renders)

    # Fixed margins, no layout engine: "constrained" layout doubled the cost of a run's plots.
    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.subplots_adjust(**{"left": 0.09, "right": 0.97, "bottom": 0.15, "top": 0.88, "wspace": 0.28, **margins})
    return fig, (axes[0] if nrows == 1 else axes)


def learning_curve(history: dict, *, title: str | None = None):
    """Training and validation loss per epoch (left) and the validation score (right, when the
    history has one: ``val_accuracy``, ``val_r2`` ...). ``history`` is ``estimator.history_``
    (or series, see :func:`series_from_history`)."""
    return loss_curves(_as_series(history), title=title)


def _as_series(data: dict) -> dict:
    if all(isinstance(v, tuple) and len(v) == 2 for v in data.values()):
        return data
    return series_from_history(data)


def loss_curves(series: dict, *, title: str | None = None):
    """Loss (train/val) per epoch, and the validation score beside it when there is one."""
    has_score = bool(_score_keys(series))
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
    fig, (ax,) = _figure(5, 5, left=0.13, bottom=0.11, top=0.92)
    _draw_pred_vs_true(ax, y_true, y_pred)
    ax.set_title(title or "predicted vs true (validation)")
    return fig


def save(fig, path, *, dpi: int = 100) -> None:
    """Write ``fig`` as PNG (or by the suffix of ``path``), atomically: a temporary file in the
    same folder renamed over ``path``, so a reader never sees half an image."""
    from nbnet._sys.atomic import atomic_write

    suffix = os.path.splitext(os.fspath(path))[1] or ".png"
    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format=suffix[1:]), mode=0o644)  # figures are for sharing


# --- the per-run summary panel: Pillow only -------------------------------------------------------
# Rendered for every trial, so it must be cheap: drawn with Pillow (~10 ms, no matplotlib import
# in sweep workers) where a 2×2 matplotlib figure costs 70-100 ms on a busy 2-core machine.
_TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
_INK, _GREY, _FRAME = (30, 30, 30), (150, 150, 150), (120, 120, 120)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.1e}"


class _Canvas:
    """A Pillow image with the few primitives the summary needs (lines, dashes, text, panels)."""

    def __init__(self, width: int, height: int):
        from PIL import Image, ImageDraw, ImageFont

        self.image = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font = ImageFont.load_default(size=11)  # FreeType (Pillow >= 10.1), made per call: no shared state
        self.small = ImageFont.load_default(size=9)

    def text(self, xy, s, *, fill=_INK, small=False, anchor="la") -> None:
        self.draw.text(xy, s, fill=fill, font=self.small if small else self.font, anchor=anchor)

    def polyline(self, pts, color, *, dashed=False, width=2) -> None:
        if len(pts) == 1:
            x, y = pts[0]
            self.draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=color)
        elif not dashed:
            self.draw.line(pts, fill=color, width=width, joint="curve")
        else:  # 4 px on, 3 px off along the polyline
            on, period, pos = 4.0, 7.0, 0.0
            for (xa, ya), (xb, yb) in zip(pts[:-1], pts[1:]):
                seg = math.hypot(xb - xa, yb - ya)
                t = 0.0
                while t < seg:
                    phase = (pos + t) % period
                    run = (on - phase) if phase < on else (period - phase)
                    t2 = min(seg, t + run)
                    if phase < on:
                        f1, f2 = t / seg, t2 / seg
                        self.draw.line([(xa + f1 * (xb - xa), ya + f1 * (yb - ya)),
                                        (xa + f2 * (xb - xa), ya + f2 * (yb - ya))], fill=color, width=width - 1 or 1)
                    t = t2
                pos += seg

    def panel(self, box, title, lines, *, log=False, ylim=None, xlim=None, xlabel="epoch") -> None:
        """Axes in ``box`` (x0, y0, x1, y1) with ``lines`` = [(x, y, color, dashed)]; ticks at
        the ends of each axis only."""
        x0, y0, x1, y1 = box
        self.text((x0, y0 - 14), title, small=False)
        self.draw.rectangle(box, outline=_FRAME)
        xs = [np.asarray(x, float) for x, *_ in lines]
        ys = [np.log10(np.asarray(y, float)) if log else np.asarray(y, float) for _, y, *_ in lines]
        pts_all = [(x, y) for x, y in zip(xs, ys) if len(x)]
        if not pts_all:
            self.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data", fill=_GREY, anchor="mm")
            return
        xlo, xhi = xlim or (min(x.min() for x, _ in pts_all), max(x.max() for x, _ in pts_all))
        if ylim is not None:
            ylo, yhi = ylim
        else:
            ylo, yhi = min(y.min() for _, y in pts_all), max(y.max() for _, y in pts_all)
            pad = 0.05 * (yhi - ylo) or (abs(yhi) * 0.05 or 0.5)
            # a non-negative quantity (loss, std, fraction) keeps a floor of 0, not -0.07
            ylo, yhi = (ylo - pad if log or ylo < 0 else max(ylo - pad, 0.0)), yhi + pad
        xspan, yspan = (xhi - xlo) or 1.0, (yhi - ylo) or 1.0
        for (x, y), (_, _, color, dashed) in zip(zip(xs, ys), lines):
            if len(x):
                px = x0 + 3 + (x - xlo) / xspan * (x1 - x0 - 6)
                py = y1 - 3 - (y - ylo) / yspan * (y1 - y0 - 6)
                self.polyline(list(zip(px.tolist(), py.tolist())), color, dashed=dashed)
        for v, yy in ((yhi, y0), (ylo, y1)):
            self.text((x0 - 3, yy), _fmt(10 ** v if log else v), small=True, anchor="rm")
        self.text((x0, y1 + 2), _fmt(xlo), small=True, anchor="lt")
        self.text((x1, y1 + 2), _fmt(xhi), small=True, anchor="rt")
        self.text(((x0 + x1) / 2, y1 + 2), xlabel + (" (log y)" if log else ""), small=True, fill=_GREY, anchor="mt")

    def heatmap(self, box, cm, labels) -> None:
        """Row-normalised confusion matrix as white→blue cells in the square fitting ``box``."""
        from PIL import Image

        cm = np.asarray(cm, float)
        k = cm.shape[0]
        frac = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        lo, hi = np.array([247, 251, 255.0]), np.array([8, 48, 107.0])
        rgb = (lo + frac[..., None] * (hi - lo)).round().astype(np.uint8)
        x0, y0, x1, y1 = box
        side = int(min(x1 - x0, y1 - y0))
        cell = max(1, side // max(k, 1))
        side = cell * k
        self.image.paste(Image.fromarray(rgb, "RGB").resize((side, side), Image.Resampling.NEAREST), (int(x0), int(y0)))
        self.draw.rectangle((x0, y0, x0 + side, y0 + side), outline=_FRAME)
        if k <= 15:
            for i, name in enumerate(labels):
                c = x0 + (i + 0.5) * cell
                self.text((x0 - 3, y0 + (i + 0.5) * cell), str(name)[:4], small=True, anchor="rm")
                self.text((c, y0 + side + 2), str(name)[:4], small=True, anchor="mt")
        self.text((x0 + side + 6, y0 + side / 2 - 7), "rows: true", small=True, fill=_GREY)
        self.text((x0 + side + 6, y0 + side / 2 + 5), "cols: predicted", small=True, fill=_GREY)

    def png(self, compress_level: int = 6) -> bytes:
        import io

        buf = io.BytesIO()
        self.image.save(buf, format="PNG", compress_level=compress_level)
        return buf.getvalue()


def summary_png(series: dict, evaluation: dict | None = None, *, title: str | None = None,
                size: tuple[int, int] = (640, 470)) -> bytes:
    """PNG bytes of a run's 2×2 summary: loss (train solid, validation dashed), gradient norm per
    layer (log scale), activation std (solid) and dead-unit fraction (dashed) per hidden layer
    (layer ``l`` in colour ``C{l}`` throughout), and the confusion matrix (multi-class), ROC
    (binary) or predicted-vs-true (regression) of the validation split. Drawn with Pillow alone
    (no matplotlib), ticks at the axis ends only: it is made for every trial."""
    W, H = size
    cv = _Canvas(W, H)
    scores = [(k, series[k][1]) for k in _score_keys(series)]
    last = [f"{k} {v[np.isfinite(v)][-1]:.4f}" for k, v in scores if np.isfinite(v).any()]
    cv.text((W / 2, 6), "   ".join(filter(None, [title, *last[:2]])), anchor="mt")
    grads = layer_keys(series, "grad_norm")
    # legend line: line styles, then one colour swatch per layer
    x, y = 12, 26
    for label, dashed in (("train", False), ("validation", True)):
        cv.polyline([(x, y + 6), (x + 22, y + 6)], _INK, dashed=dashed)
        cv.text((x + 26, y), label, small=True)
        x += 30 + int(cv.draw.textlength(label, font=cv.small)) + 12
    for l, _ in grads[:10]:
        cv.draw.rectangle((x, y + 2, x + 9, y + 10), fill=_TAB10[l % 10])
        cv.text((x + 13, y), f"layer {l}", small=True)
        x += 60
    mx, top, gap_x, gap_y = 52, 62, 66, 50
    pw, ph = (W - mx - gap_x - 16) / 2, (H - top - gap_y - 22) / 2
    boxes = [(mx + c * (pw + gap_x), top + r * (ph + gap_y), mx + c * (pw + gap_x) + pw, top + r * (ph + gap_y) + ph)
             for r in range(2) for c in range(2)]

    def curve(key, color, dashed=False, positive=False):
        if key not in series:
            return ([], [], color, dashed)
        ex, ev_ = _finite(series[key][1], series[key][0], positive=positive)
        return (ex, ev_, color, dashed)

    cv.panel(boxes[0], "loss", [curve("loss", _INK), curve("val_loss", _INK, True)])
    cv.panel(boxes[1], "gradient norm per layer", [curve(k, _TAB10[l % 10], positive=True) for l, k in grads],
             log=True)
    act = [curve(k, _TAB10[l % 10]) for l, k in layer_keys(series, "act_std")]
    act += [curve(k, _TAB10[l % 10], True) for l, k in layer_keys(series, "act_dead")]
    cv.panel(boxes[2], "activation std (solid), dead fraction (dashed)", act)
    ev = evaluation or {}
    box = boxes[3]
    if ev.get("roc", {}).get("binary") and ev["roc"].get("curves"):
        c = ev["roc"]["curves"][0]
        auc = c.get("auc")
        cv.panel(box, f"ROC, validation (AUC {auc:.3f})" if auc is not None else "ROC, validation",
                 [([0, 1], [0, 1], _GREY, True), (c["fpr"], c["tpr"], _TAB10[0], False)],
                 xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate")
    elif "confusion" in ev:
        cv.text((box[0], box[1] - 14), "confusion, validation (row fractions)")
        cv.heatmap(box, ev["confusion"], ev.get("classes", []))
    elif "y_true" in ev:
        t, p = _floats(ev["y_true"]), _floats(ev["y_pred"])
        lo, hi = float(np.nanmin(np.r_[t, p])), float(np.nanmax(np.r_[t, p]))
        cv.panel(box, "predicted vs true, validation", [([lo, hi], [lo, hi], _GREY, True)], xlim=(lo, hi),
                 ylim=(lo, hi), xlabel="true")
        x0, y0, x1, y1 = box
        span = (hi - lo) or 1.0
        for a, b in zip(t, p):
            if math.isfinite(a) and math.isfinite(b):
                px, py = x0 + 3 + (a - lo) / span * (x1 - x0 - 6), y1 - 3 - (b - lo) / span * (y1 - y0 - 6)
                cv.draw.rectangle((px - 1, py - 1, px + 1, py + 1), fill=_TAB10[0])
    else:
        cv.panel(box, "evaluation", [])
    return cv.png()


# --- the sweep's study figures: Pillow only ------------------------------------------------------
# optuna.visualization's figures, from the same data, drawn in ~10 ms each: its matplotlib versions
# cost ~0.2 s each plus ~0.5 s of imports at the end of every sweep (a tracking cost).
def _history_png(trials, direction: str, title: str) -> bytes:
    cv = _Canvas(640, 400)
    cv.text((320, 6), title, anchor="mt")
    xs = np.array([t.number for t in trials], float)
    ys = np.array([t.value for t in trials], float)
    best = np.maximum.accumulate(ys) if direction == "maximize" else np.minimum.accumulate(ys)
    lines = [([x], [y], _TAB10[0], False) for x, y in zip(xs, ys)] + [(xs, best, _TAB10[3], False)]
    cv.panel((60, 48, 620, 360), "objective value (dots), best so far (line)", lines, xlabel="trial")
    return cv.png()


def _importances_png(importances: dict, title: str) -> bytes:
    names = list(importances)[:20]
    H = 70 + 22 * max(len(names), 1)
    cv = _Canvas(640, H)
    cv.text((320, 6), title, anchor="mt")
    x0, x1 = 220, 560
    cv.draw.line((x0, 36, x0, H - 24), fill=_FRAME)
    top = max(importances.values(), default=0.0) or 1.0
    for i, name in enumerate(names):
        y = 44 + 22 * i
        v = float(importances[name])
        cv.text((x0 - 6, y + 7), name[-34:], small=True, anchor="rm")
        cv.draw.rectangle((x0, y, x0 + (x1 - x0) * v / top, y + 14), fill=_TAB10[0])
        cv.text((x0 + (x1 - x0) * v / top + 4, y + 7), f"{v:.3f}", small=True, anchor="lm")
    cv.text((x0, H - 20), "share of the objective's variance each explains alone (eta squared)", small=True, fill=_GREY)
    return cv.png()


def _axis_values(trials, name: str, dist) -> tuple[np.ndarray, str, str]:
    """A parameter's values on [0, 1] for the parallel-coordinate axes, with the axis end labels."""
    from optuna.distributions import CategoricalDistribution

    raw = [t.params.get(name) for t in trials]
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        idx = np.array([choices.index(v) if v in choices else np.nan for v in raw], float)
        span = max(len(choices) - 1, 1)
        return idx / span, str(choices[0])[:10], str(choices[-1])[:10]
    v = np.array([np.nan if r is None else float(r) for r in raw], float)
    lo, hi = float(dist.low), float(dist.high)
    if getattr(dist, "log", False):
        v, lo_t, hi_t = np.log10(v), np.log10(lo), np.log10(hi)
    else:
        lo_t, hi_t = lo, hi
    return (v - lo_t) / ((hi_t - lo_t) or 1.0), _fmt(lo), _fmt(hi)


def _parallel_png(trials, direction: str, title: str) -> bytes:
    names = sorted({k for t in trials for k in t.params})
    dists = {}
    for t in trials:
        for k, d in t.distributions.items():
            dists.setdefault(k, d)
    W = max(640, 120 * (len(names) + 1))
    cv = _Canvas(W, 420)
    cv.text((W / 2, 6), title, anchor="mt")
    ys = np.array([t.value for t in trials], float)
    lo, hi = float(np.nanmin(ys)), float(np.nanmax(ys))
    cols = [((ys - lo) / ((hi - lo) or 1.0), _fmt(lo), _fmt(hi))] + [_axis_values(trials, n, dists[n]) for n in names]
    labels = ["objective"] + names
    x0, x1, top, bottom = 60, W - 60, 56, 370
    xs = np.linspace(x0, x1, len(cols)) if len(cols) > 1 else np.array([(x0 + x1) / 2])
    good = (ys - lo) / ((hi - lo) or 1.0)
    if direction == "minimize":
        good = 1.0 - good
    order = np.argsort(good)  # the best trials drawn last, on top
    for i in order:
        pts = [(float(x), bottom - float(c[0][i]) * (bottom - top)) for x, c in zip(xs, cols) if np.isfinite(c[0][i])]
        g = float(good[i]) if np.isfinite(good[i]) else 0.0
        color = tuple(int(a + g * (b - a)) for a, b in zip((200, 200, 215), _TAB10[0]))
        cv.polyline(pts, color, width=1)
    for x, (_, lo_s, hi_s), label in zip(xs, cols, labels):
        cv.draw.line((x, top, x, bottom), fill=_FRAME)
        cv.text((x, top - 4), hi_s, small=True, anchor="mb")
        cv.text((x, bottom + 4), lo_s, small=True, anchor="mt")
        cv.text((x, bottom + 18), label[-18:], small=True, fill=_GREY, anchor="mt")
    cv.text((x0, 26), "one line per finished trial; darker: better objective", small=True, fill=_GREY)
    return cv.png()


def _intermediate_png(trials, title: str) -> bytes:
    cv = _Canvas(640, 400)
    cv.text((320, 6), title, anchor="mt")
    lines = []
    for t in trials:
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            color = _TAB10[0] if t.state.name == "COMPLETE" else _GREY
            lines.append((steps, [t.intermediate_values[s] for s in steps], color, t.state.name == "PRUNED"))
    cv.panel((60, 48, 620, 360), "reported value per epoch (complete: blue, pruned: grey dashed)", lines)
    return cv.png()


def study_pngs(study, *, importances: dict | None = None) -> dict[str, bytes]:
    """PNG bytes of a study's figures, by name: ``optimization_history`` (every finished
    trial's value and the best so far), ``param_importances`` (``importances``: name → score,
    e.g. :func:`nbnet.experiment.search.param_importances`; left out when None or empty),
    ``parallel_coordinate`` (one line per finished trial across the objective and the
    parameters, log-scaled where the distribution is) and ``intermediate_values`` (the per-epoch
    reports). The figures of ``optuna.visualization`` from the same data, drawn with Pillow."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None
            and math.isfinite(t.value)]
    direction = study.direction.name.lower()
    out = {}
    if done:
        out["optimization_history"] = _history_png(done, direction, f"optimization history ({direction})")
        if any(t.params for t in done):
            out["parallel_coordinate"] = _parallel_png(done, direction, "parallel coordinates")
    if importances:
        out["param_importances"] = _importances_png(importances, "hyperparameter importances")
    reported = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if reported:
        out["intermediate_values"] = _intermediate_png(reported, "intermediate values")
    return out


__all__ = ["ActivationStats", "hidden_activation_stats", "series_from_history", "learning_curve", "loss_curves",
           "grad_norm_curves", "activation_curves", "confusion_matrix", "roc_curve", "pred_vs_true", "summary_png",
           "study_pngs", "save", "layer_keys", "ACT_STATS"]
