#!/usr/bin/env python
"""How much a Python thread that holds the GIL slows an nbnet fit beside it.

A lone sweep worker tracks one trial in a helper thread while the next one trains
(nbnet/experiment/sweep/pipeline.py). That only pays if the training rarely needs the GIL: each
time a compiled call returns it must take the GIL back, and waits up to the interpreter's switch
interval while another thread runs Python. This script fits a digits-sized net (1797 × 64,
64-128-10, float32, batch 16 and 32, 30 epochs, one thread, untracked) alone and beside a thread
that runs pure Python, at Python's default switch interval (5 ms) and at the pipeline's
(``SWITCH_SECONDS``), and prints each fit's seconds and the slowdown; also how much of its own
speed the Python thread kept.

    python scripts/bench_gil.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np

import nbnet
from nbnet.experiment.sweep.pipeline import SWITCH_SECONDS


def fit_seconds(X, y, batch: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        clf = nbnet.MLPClassifier((128,), epochs=30, batch_size=batch, seed=0, n_threads=1)
        t = time.perf_counter()
        clf.fit(X, y)
        best = min(best, time.perf_counter() - t)
    return best


def python_loops(stop: threading.Event, count: list) -> None:
    while not stop.is_set():
        x = 0
        for i in range(1000):
            x += i
        count[0] += 1


def beside_python(X, y, batch: int, repeat: int, switch: float) -> tuple[float, float]:
    """(the fit's seconds beside a pure-Python thread, that thread's loops per second)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(switch)
    stop, count = threading.Event(), [0]
    th = threading.Thread(target=python_loops, args=(stop, count), daemon=True)
    t = time.perf_counter()
    th.start()
    try:
        secs = fit_seconds(X, y, batch, repeat)
    finally:
        stop.set()
        th.join()
        sys.setswitchinterval(before)
    return secs, count[0] / (time.perf_counter() - t)


def alone_loops(seconds: float = 1.0) -> float:
    stop, count = threading.Event(), [0]
    th = threading.Thread(target=python_loops, args=(stop, count), daemon=True)
    t = time.perf_counter()
    th.start()
    th.join(seconds)  # the thread runs alone for this long
    stop.set()
    th.join()
    return count[0] / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="fits per case; the fastest counts")
    args = ap.parse_args()
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean(0)) / (X.std(0) + 1e-6)).astype(np.float32)
    fit_seconds(X, y, 16, 1)  # compile or load the kernels
    loops = alone_loops()
    print("| batch | fit alone | beside Python, 5 ms switch | beside Python, "
          f"{SWITCH_SECONDS * 1e3:g} ms switch | Python thread's speed kept (5 ms / {SWITCH_SECONDS * 1e3:g} ms) |")
    print("|---:|---:|---:|---:|---:|")
    for batch in (16, 32):
        alone = fit_seconds(X, y, batch, args.repeat)
        slow, kept_slow = beside_python(X, y, batch, args.repeat, 0.005)
        fast, kept_fast = beside_python(X, y, batch, args.repeat, SWITCH_SECONDS)
        print(f"| {batch} | {alone:.3f} s | {slow:.3f} s ({slow / alone:.1f}×) | {fast:.3f} s ({fast / alone:.1f}×) | "
              f"{kept_slow / loops:.0%} / {kept_fast / loops:.0%} |")


if __name__ == "__main__":
    main()
