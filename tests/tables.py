"""A small labelled table for the lifecycle tests (monitor, update): 4 Gaussian features, 3
classes from a fixed linear map, optionally shifted to simulate drift."""

from __future__ import annotations

import numpy as np
import pandas as pd

COLS = list("abcd")
W = np.random.default_rng(0).normal(size=(4, 3))


def make_table(n: int, seed: int, shift=0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X @ W).argmax(1)
    return pd.DataFrame(X + shift, columns=COLS).assign(label=y)
