#!/usr/bin/env python
"""Where one thread trains a mini-batch faster than all of them: the fused epoch
(``train_epoch_fused``) on the digits (1 797 × 64, 10 classes, float32, Adam 1e-3) with every
core's threads and with one, for nets and batches around ``SERIAL_BELOW`` (nbnet/kernels/threads.py).

Each (net, batch) runs 2 rounds × 7 timed epochs per thread count, alternated; the fastest epoch
counts. The dispatcher (``nbnet.kernels.cpu.train_epoch``) runs one thread below the threshold.

Usage: python scripts/bench_serial_threshold.py     (prints a Markdown table)
"""

from __future__ import annotations

import time

import numba
import numpy as np
from sklearn.datasets import load_digits

from nbnet import optim
from nbnet.kernels import cpu as K
from nbnet.kernels.threads import epoch_threads, numba_threads
from nbnet.model import Layout, init_params

CASES = [(128, 16), (128, 32), (256, 32), (128, 64), (128, 96), (256, 64), (512, 32), (128, 128), (256, 128)]


def epoch_seconds(X, Y, lay, batch: int, threads: int, epochs: int = 7) -> float:
    params = init_params(lay, "relu", np.random.default_rng(0), np.float32)
    g, m, v = np.zeros_like(params), np.zeros_like(params), np.zeros_like(params)
    hp = optim.hyper_vector(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l2=0.0, momentum=0.0,
                            clip_norm=None, dropout=0.0, noise=0.0, mixup=0.0)
    opt = np.zeros(K.N_SETTINGS, np.int64)
    opt[K.SETTING_OPTIMIZER], opt[K.SETTING_BATCH], opt[K.SETTING_SHUFFLE] = K.OPT_ADAM, batch, 1
    state, stats = K.seed_state(0), np.zeros(1 + lay.n_layers)
    best = float("inf")
    with numba_threads(threads):
        for e in range(epochs + 1):  # the first epoch warms up
            t = time.perf_counter()
            K.train_epoch_fused(X, Y, params, g, m, v, *lay.kernel_args(), K.LOSSES["cross_entropy"], hp, opt, state,
                                stats, np.empty(0), np.empty(0), np.int64(threads), None)
            if e:
                best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    X, y = load_digits(return_X_y=True)
    X = np.ascontiguousarray(X / 16, dtype=np.float32)
    Y = np.eye(10, dtype=np.float32)[y]
    cores = numba.get_num_threads()
    print(f"| net, batch | multiply-adds per batch | {cores} threads | 1 thread | dispatcher runs |")
    print("|---|---:|---:|---:|---|")
    for hidden, batch in CASES:
        lay = Layout.build(64, (hidden,), 10, "relu")
        best = {cores: float("inf"), 1: float("inf")}
        for _ in range(2):
            for threads in (cores, 1):
                best[threads] = min(best[threads], epoch_seconds(X, Y, lay, batch, threads))
        rate = {t: len(X) / s / 1e3 for t, s in best.items()}
        k = {t: f"{r:,.0f}".replace(",", " ") for t, r in rate.items()}
        with numba_threads(cores):
            runs = epoch_threads(batch, lay.n_params)
        print(f"| 64-{hidden}-10, {batch} | {batch * lay.n_params / 1e6:.2f} M | {k[cores]} k/s | {k[1]} k/s | "
              f"{runs} thread{'s' if runs > 1 else ''} |")


if __name__ == "__main__":
    main()
