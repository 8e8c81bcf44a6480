#!/usr/bin/env python
"""Training cost in CPU seconds, for comparing two trees on a machine shared with other jobs.

Wall-clock throughput (``scripts/bench_train.py``) moves with the machine's load; the CPU time a
single-threaded fit spends is far less sensitive to it. This fits bench_train's network
(784-256-128-10, ReLU, Adam 1e-3, float32) on ``--n-train`` synthetic rows with one thread
(``n_threads=1``: numba and BLAS each on one), one warm-up epoch then ``--epochs`` timed ones,
and prints samples per CPU second (``time.process_time`` of the timed epochs) per batch size as
one JSON line. Run it alternately from two checkouts with ``PYTHONPATH`` pointing at each:

    PYTHONPATH=/path/to/tree python scripts/bench_cpu_time.py --batch-sizes 32,128
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-sizes", default="32,128")
    ap.add_argument("--n-train", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up epoch")
    ap.add_argument("--features", action="store_true",
                    help="train with random sample weights, class_weight='balanced' and a cosine schedule")
    a = ap.parse_args()
    import nbnet

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 784)).astype(np.float32)
    y = rng.integers(0, 10, a.n_train)
    X = centers[y] + rng.normal(size=(a.n_train, 784)).astype(np.float32)
    out = {"nbnet": nbnet.__file__, "features": a.features}
    extra = dict(class_weight="balanced", schedule="cosine", warmup_epochs=1) if a.features else {}
    fit_kw = dict(sample_weight=rng.random(a.n_train) + 0.5) if a.features else {}
    for batch in (int(b) for b in a.batch_sizes.split(",")):
        marks = []
        clf = nbnet.MLPClassifier((256, 128), batch_size=batch, epochs=1 + a.epochs, n_threads=1, seed=0, **extra)
        clf.fit(X, y, callbacks=[lambda e, logs: marks.append((time.process_time(), time.perf_counter()))], **fit_kw)
        cpu, wall = marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]
        out[f"batch{batch}"] = {"samples_per_cpu_s": a.n_train * a.epochs / cpu,
                                "samples_per_wall_s": a.n_train * a.epochs / wall,
                                "final_loss": clf.history_["loss"][-1]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
