"""A small Pillow canvas: the drawing primitives of the per-run summary and the study figures.

Both are made for every trial or sweep, so they must be cheap: Pillow draws one in ~10 ms, with
no matplotlib import in sweep workers, where a 2×2 matplotlib figure costs 70-100 ms on a busy
2-core machine. Axes carry ticks at their ends only.
"""

from __future__ import annotations

import io
import math

import numpy as np

from nbnet._sys.fmt import number

TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
INK, GREY, FRAME = (30, 30, 30), (150, 150, 150), (120, 120, 120)


class Canvas:
    """A Pillow image with the few primitives the summary and study figures need (lines, dashes,
    text, panels, a heat map)."""

    def __init__(self, width: int, height: int):
        from PIL import Image, ImageDraw, ImageFont  # heavy: imported on first use

        self.image = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font = ImageFont.load_default(size=11)  # FreeType (Pillow >= 10.1), made per call: no shared state
        self.small = ImageFont.load_default(size=9)

    def text(self, xy, s, *, fill=INK, small=False, anchor="la") -> None:
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
        self.draw.rectangle(box, outline=FRAME)
        xs = [np.asarray(x, float) for x, *_ in lines]
        ys = [np.log10(np.asarray(y, float)) if log else np.asarray(y, float) for _, y, *_ in lines]
        pts_all = [(x, y) for x, y in zip(xs, ys) if len(x)]
        if not pts_all:
            self.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data", fill=GREY, anchor="mm")
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
            self.text((x0 - 3, yy), number(10 ** v if log else v), small=True, anchor="rm")
        self.text((x0, y1 + 2), number(xlo), small=True, anchor="lt")
        self.text((x1, y1 + 2), number(xhi), small=True, anchor="rt")
        self.text(((x0 + x1) / 2, y1 + 2), xlabel + (" (log y)" if log else ""), small=True, fill=GREY, anchor="mt")

    def heatmap(self, box, cm, labels) -> None:
        """Row-normalised confusion matrix as white→blue cells in the square fitting ``box``."""
        from PIL import Image  # heavy: imported on first use

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
        self.draw.rectangle((x0, y0, x0 + side, y0 + side), outline=FRAME)
        if k <= 15:
            for i, name in enumerate(labels):
                c = x0 + (i + 0.5) * cell
                self.text((x0 - 3, y0 + (i + 0.5) * cell), str(name)[:4], small=True, anchor="rm")
                self.text((c, y0 + side + 2), str(name)[:4], small=True, anchor="mt")
        self.text((x0 + side + 6, y0 + side / 2 - 7), "rows: true", small=True, fill=GREY)
        self.text((x0 + side + 6, y0 + side / 2 + 5), "cols: predicted", small=True, fill=GREY)

    def png(self, compress_level: int = 6) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG", compress_level=compress_level)
        return buf.getvalue()
