"""Numbers as people read them in progress lines, reports and figure labels."""

from __future__ import annotations

import math

import numpy as np


def number(v, digits: int = 3) -> str:
    """A float with at most ``digits`` significant digits; ``n/a`` for None, NaN and infinity;
    an integer whole (``1024``); anything else as its text without spaces (``[64,32]``)."""
    if v is None:
        return "n/a"
    if isinstance(v, (bool, int, np.integer)) or not isinstance(v, float) and not hasattr(v, "__float__"):
        return str(v).replace(" ", "")
    v = float(v)
    return f"{v:.{digits}g}" if math.isfinite(v) else "n/a"
