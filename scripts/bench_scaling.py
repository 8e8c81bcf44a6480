#!/usr/bin/env python
"""How nbnet's epoch time scales: hidden width, batch size, number of samples, threads.

Each row is the best of ``--reps`` epochs of ``train_epoch`` (the same compiled kernel that
``fit`` runs), after one untimed epoch, on synthetic float32 data (784 features, 10 classes,
Adam). FLOPs per sample count 2 per multiply-add in the forward, weight-gradient and
input-gradient GEMMs (no input gradient for the first layer).

    python scripts/bench_scaling.py                  # all four tables, a few minutes
    python scripts/bench_scaling.py --only threads   # width | batch | n | threads | startup

``startup`` runs ``import nbnet`` + a one-epoch fit in fresh processes: first with an empty
numba cache directory (cold: everything compiles), then twice more with that cache (warm). It
reports wall and CPU seconds (CPU time is what compiling costs when the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from nbnet import optim
from nbnet.kernels import blas
from nbnet.kernels import cpu as K
from nbnet.kernels.threads import thread_budget
from nbnet.model import Layout, init_params


def flops_per_sample(sizes) -> int:
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * (2 * sum(macs) + sum(macs[1:]))


def epoch_seconds(X, Y, hidden, batch, reps, threads=None) -> float:
    lay = Layout.build(X.shape[1], hidden, Y.shape[1], "relu")
    hp = optim.hyper_vector(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, l2=0, momentum=0,
                            clip_norm=None, dropout=0, noise=0, mixup=0)
    p = init_params(lay, "relu", np.random.default_rng(0), np.float32)
    g, m, v = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    opt = np.array([K.OPT_ADAM, 0, batch, 0, 0, 0, 1], np.int64)
    st, stats = K.seed_state(0), np.zeros(1 + lay.n_layers)
    best = math.inf
    with thread_budget(threads):
        for r in range(reps + 1):
            t0 = time.perf_counter()
            K.train_epoch(X, Y, p, g, m, v, *lay.kernel_args(), K.LOSS_SOFTMAX_CE, hp, opt, st, stats)
            if r:
                best = min(best, time.perf_counter() - t0)
    return best


def data(n, rng):
    X = rng.standard_normal((n, 784), dtype=np.float32)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    return X, Y


def row(label, n, sizes, sec) -> str:
    gf = n * flops_per_sample(sizes) / sec / 1e9
    return f"| {label} | {sec * 1e3:.0f} | {n / sec / 1e3:.1f} k | {gf:.0f} |"


HEAD = "| {} | epoch ms | samples/s | GFLOP/s |\n|---:|---:|---:|---:|"


_STARTUP = """
import time, json
t0, c0 = time.perf_counter(), time.process_time()
import numpy as np
import nbnet
t1 = time.perf_counter()
X = np.random.default_rng(0).standard_normal((256, 784), dtype=np.float32); y = np.arange(256) % 10
clf = nbnet.MLPClassifier((256, 128), epochs=1, batch_size=32).fit(X, y)
print(json.dumps(dict(import_s=t1 - t0, total_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
                      compile_s=clf.compile_seconds_)))
"""


def startup() -> list[dict]:
    """Cold (empty cache) then two warm runs, each a fresh process."""
    out = []
    with tempfile.TemporaryDirectory(prefix="nbnet-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold", "warm", "warm"):
            r = subprocess.run([sys.executable, "-c", _STARTUP], env=env, capture_output=True, text=True, check=True)
            out.append(dict(label=label, **json.loads(r.stdout.strip().splitlines()[-1])))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("width", "batch", "n", "threads", "startup"), action="append")
    ap.add_argument("--n", type=int, default=15_000, help="samples for the width/batch/threads tables")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    todo = a.only or ["width", "batch", "n", "threads", "startup"]
    rng = np.random.default_rng(0)
    X, Y = data(a.n, rng)
    print(f"GEMM library: {blas.LIBRARY}; best of {a.reps} epochs; {a.n} samples unless stated\n")
    if "width" in todo:
        print("Hidden width w (layers 784-w-w/2-10), batch 128\n")
        print(HEAD.format("w"))
        for w in (64, 128, 256, 512, 1024):
            sec = epoch_seconds(X, Y, (w, w // 2), 128, a.reps)
            print(row(w, a.n, (784, w, w // 2, 10), sec), flush=True)
        print()
    if "batch" in todo:
        print("Batch size, 784-256-128-10\n")
        print(HEAD.format("batch"))
        for b in (16, 32, 64, 128, 256, 512, 1024):
            sec = epoch_seconds(X, Y, (256, 128), b, a.reps)
            print(row(b, a.n, (784, 256, 128, 10), sec), flush=True)
        print()
    if "n" in todo:
        print("Samples n, 784-256-128-10, batch 128 (epoch time should grow linearly)\n")
        print(HEAD.format("n") + "")
        for n in (7_500, 15_000, 30_000, 60_000):
            Xn, Yn = data(n, rng)
            sec = epoch_seconds(Xn, Yn, (256, 128), 128, a.reps)
            print(row(n, n, (784, 256, 128, 10), sec), flush=True)
        print()
    if "threads" in todo:
        print("Threads, 784-256-128-10\n")
        print("| batch | 1 thread samples/s | 2 threads samples/s | speed-up |\n|---:|---:|---:|---:|")
        for b in (32, 128, 512):
            s1 = epoch_seconds(X, Y, (256, 128), b, a.reps, threads=1)
            s2 = epoch_seconds(X, Y, (256, 128), b, a.reps, threads=2)
            print(f"| {b} | {a.n / s1 / 1e3:.1f} k | {a.n / s2 / 1e3:.1f} k | {s1 / s2:.2f}× |", flush=True)
        print()
    if "startup" in todo:
        print("Start-up: `import nbnet` to the end of a one-epoch fit (256 samples), fresh processes\n")
        print("| run | import s | import + first epoch s | of which compile/cache load s | CPU s |\n|---|---:|---:|---:|---:|")
        for r in startup():
            print(f"| {r['label']} | {r['import_s']:.2f} | {r['total_s']:.2f} | {r['compile_s']:.2f} | {r['cpu_s']:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
