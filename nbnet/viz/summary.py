"""The 2×2 summary panel every tracked run logs (``plots/summary.png``), drawn with Pillow.

It is rendered for every trial, so it must be cheap: ~10 ms with Pillow and no matplotlib import
in sweep workers (see :mod:`nbnet.viz.canvas`).
"""

from __future__ import annotations

import math

import numpy as np

from .canvas import GREY, INK, TAB10, Canvas
from .series import finite, floats, layer_keys, score_keys


def summary_png(series: dict, evaluation: dict | None = None, *, title: str | None = None,
                size: tuple[int, int] = (640, 470)) -> bytes:
    """PNG bytes of a run's 2×2 summary: loss (train solid, validation dashed), gradient norm per
    layer (log scale), activation std (solid) and dead-unit fraction (dashed) per hidden layer
    (layer ``l`` in colour ``C{l}`` throughout), and the confusion matrix (multi-class), ROC
    (binary) or predicted-vs-true (regression) of the validation split. Drawn with Pillow alone
    (no matplotlib), ticks at the axis ends only: it is made for every trial."""
    W, H = size
    cv = Canvas(W, H)
    scores = [(k, series[k][1]) for k in score_keys(series)]
    last = [f"{k} {v[np.isfinite(v)][-1]:.4f}" for k, v in scores if np.isfinite(v).any()]
    cv.text((W / 2, 6), "   ".join(filter(None, [title, *last[:2]])), anchor="mt")
    grads = layer_keys(series, "grad_norm")
    _legend(cv, grads)
    boxes = _boxes(W, H)
    cv.panel(boxes[0], "loss", [_curve(series, "loss", INK), _curve(series, "val_loss", INK, True)])
    cv.panel(boxes[1], "gradient norm per layer",
             [_curve(series, k, TAB10[l % 10], positive=True) for l, k in grads], log=True)
    act = [_curve(series, k, TAB10[l % 10]) for l, k in layer_keys(series, "act_std")]
    act += [_curve(series, k, TAB10[l % 10], True) for l, k in layer_keys(series, "act_dead")]
    cv.panel(boxes[2], "activation std (solid), dead fraction (dashed)", act)
    _evaluation_panel(cv, boxes[3], evaluation or {})
    return cv.png()


def _legend(cv: Canvas, grads: list[tuple[int, str]]) -> None:
    """The legend line: the two line styles, then one colour swatch per layer (up to 10)."""
    x, y = 12, 26
    for label, dashed in (("train", False), ("validation", True)):
        cv.polyline([(x, y + 6), (x + 22, y + 6)], INK, dashed=dashed)
        cv.text((x + 26, y), label, small=True)
        x += 30 + int(cv.draw.textlength(label, font=cv.small)) + 12
    for l, _ in grads[:10]:
        cv.draw.rectangle((x, y + 2, x + 9, y + 10), fill=TAB10[l % 10])
        cv.text((x + 13, y), f"layer {l}", small=True)
        x += 60


def _boxes(W: int, H: int) -> list[tuple[float, float, float, float]]:
    """The four panels' (x0, y0, x1, y1), row by row."""
    mx, top, gap_x, gap_y = 52, 62, 66, 50
    pw, ph = (W - mx - gap_x - 16) / 2, (H - top - gap_y - 22) / 2
    return [(mx + c * (pw + gap_x), top + r * (ph + gap_y), mx + c * (pw + gap_x) + pw, top + r * (ph + gap_y) + ph)
            for r in range(2) for c in range(2)]


def _curve(series: dict, key: str, color, dashed: bool = False, positive: bool = False) -> tuple:
    """A panel line ``(epochs, values, color, dashed)`` of the finite values of ``series[key]``."""
    if key not in series:
        return ([], [], color, dashed)
    x, y = finite(series[key][1], series[key][0], positive=positive)
    return (x, y, color, dashed)


def _evaluation_panel(cv: Canvas, box, ev: dict) -> None:
    """The validation split's ROC (binary), confusion matrix (more classes) or predicted vs true
    (regression), from ``plots/evaluation.json``'s data."""
    if ev.get("roc", {}).get("binary") and ev["roc"].get("curves"):
        c = ev["roc"]["curves"][0]
        auc = c.get("auc")
        cv.panel(box, f"ROC, validation (AUC {auc:.3f})" if auc is not None else "ROC, validation",
                 [([0, 1], [0, 1], GREY, True), (c["fpr"], c["tpr"], TAB10[0], False)],
                 xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate")
    elif "confusion" in ev:
        cv.text((box[0], box[1] - 14), "confusion, validation (row fractions)")
        cv.heatmap(box, ev["confusion"], ev.get("classes", []))
    elif "y_true" in ev:
        _pred_vs_true(cv, box, floats(ev["y_true"]), floats(ev["y_pred"]))
    else:
        cv.panel(box, "evaluation", [])


def _pred_vs_true(cv: Canvas, box, t: np.ndarray, p: np.ndarray) -> None:
    """Predicted ``p`` against true ``t`` as dots, with the identity line."""
    lo, hi = float(np.nanmin(np.r_[t, p])), float(np.nanmax(np.r_[t, p]))
    cv.panel(box, "predicted vs true, validation", [([lo, hi], [lo, hi], GREY, True)], xlim=(lo, hi),
             ylim=(lo, hi), xlabel="true")
    x0, y0, x1, y1 = box
    span = (hi - lo) or 1.0
    for a, b in zip(t, p):
        if math.isfinite(a) and math.isfinite(b):
            px, py = x0 + 3 + (a - lo) / span * (x1 - x0 - 6), y1 - 3 - (b - lo) / span * (y1 - y0 - 6)
            cv.draw.rectangle((px - 1, py - 1, px + 1, py + 1), fill=TAB10[0])
