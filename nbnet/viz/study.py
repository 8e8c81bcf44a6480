"""A sweep's study figures, drawn with Pillow (:mod:`nbnet.viz.canvas`).

optuna.visualization's figures, from the same data, drawn in ~10 ms each: its matplotlib versions
cost ~0.2 s each plus ~0.5 s of imports at the end of every sweep (a tracking cost). The study is
read through the few attributes every Optuna study and trial has (``get_trials``, ``direction``;
``number``, ``value``, ``state``, ``params``, ``distributions``, ``intermediate_values``), so this
module needs no Optuna import.
"""

from __future__ import annotations

import math

import numpy as np

from nbnet._sys.fmt import number

from .canvas import FRAME, GREY, TAB10, Canvas


def _history_png(trials, direction: str, title: str) -> bytes:
    cv = Canvas(640, 400)
    cv.text((320, 6), title, anchor="mt")
    xs = np.array([t.number for t in trials], float)
    ys = np.array([t.value for t in trials], float)
    best = np.maximum.accumulate(ys) if direction == "maximize" else np.minimum.accumulate(ys)
    lines = [([x], [y], TAB10[0], False) for x, y in zip(xs, ys)] + [(xs, best, TAB10[3], False)]
    cv.panel((60, 48, 620, 360), "objective value (dots), best so far (line)", lines, xlabel="trial")
    return cv.png()


def _importances_png(importances: dict, title: str) -> bytes:
    names = list(importances)[:20]
    H = 70 + 22 * max(len(names), 1)
    cv = Canvas(640, H)
    cv.text((320, 6), title, anchor="mt")
    x0, x1 = 220, 560
    cv.draw.line((x0, 36, x0, H - 24), fill=FRAME)
    top = max(importances.values(), default=0.0) or 1.0
    for i, name in enumerate(names):
        y = 44 + 22 * i
        v = float(importances[name])
        cv.text((x0 - 6, y + 7), name[-34:], small=True, anchor="rm")
        cv.draw.rectangle((x0, y, x0 + (x1 - x0) * v / top, y + 14), fill=TAB10[0])
        cv.text((x0 + (x1 - x0) * v / top + 4, y + 7), f"{v:.3f}", small=True, anchor="lm")
    cv.text((x0, H - 20), "share of the objective's variance each explains alone (eta squared)", small=True, fill=GREY)
    return cv.png()


def _axis_values(trials, name: str, dist) -> tuple[np.ndarray, str, str]:
    """A parameter's values on [0, 1] for the parallel-coordinate axes, with the axis end labels."""
    raw = [t.params.get(name) for t in trials]
    if hasattr(dist, "choices"):  # categorical; numeric distributions have low, high (and log)
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
    return (v - lo_t) / ((hi_t - lo_t) or 1.0), number(lo), number(hi)


def _parallel_png(trials, direction: str, title: str) -> bytes:
    names = sorted({k for t in trials for k in t.params})
    dists = {}
    for t in trials:
        for k, d in t.distributions.items():
            dists.setdefault(k, d)
    W = max(640, 120 * (len(names) + 1))
    cv = Canvas(W, 420)
    cv.text((W / 2, 6), title, anchor="mt")
    ys = np.array([t.value for t in trials], float)
    lo, hi = float(np.nanmin(ys)), float(np.nanmax(ys))
    cols = [((ys - lo) / ((hi - lo) or 1.0), number(lo), number(hi))] + [_axis_values(trials, n, dists[n]) for n in names]
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
        color = tuple(int(a + g * (b - a)) for a, b in zip((200, 200, 215), TAB10[0]))
        cv.polyline(pts, color, width=1)
    for x, (_, lo_s, hi_s), label in zip(xs, cols, labels):
        cv.draw.line((x, top, x, bottom), fill=FRAME)
        cv.text((x, top - 4), hi_s, small=True, anchor="mb")
        cv.text((x, bottom + 4), lo_s, small=True, anchor="mt")
        cv.text((x, bottom + 18), label[-18:], small=True, fill=GREY, anchor="mt")
    cv.text((x0, 26), "one line per finished trial; darker: better objective", small=True, fill=GREY)
    return cv.png()


def _intermediate_png(trials, title: str) -> bytes:
    cv = Canvas(640, 400)
    cv.text((320, 6), title, anchor="mt")
    lines = []
    for t in trials:
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            color = TAB10[0] if t.state.name == "COMPLETE" else GREY
            lines.append((steps, [t.intermediate_values[s] for s in steps], color, t.state.name == "PRUNED"))
    cv.panel((60, 48, 620, 360), "reported value per epoch (complete: blue, pruned: grey dashed)", lines)
    return cv.png()


def study_pngs(study, *, importances: dict | None = None) -> dict[str, bytes]:
    """PNG bytes of a study's figures, by name: ``optimization_history`` (every finished
    trial's value and the best so far), ``param_importances`` (``importances``: name → score,
    e.g. :func:`nbnet.experiment.sweep.summary.param_importances`; left out when None or empty),
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
