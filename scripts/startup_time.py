#!/usr/bin/env python
"""Cold and warm start of nbnet: seconds from ``import nbnet`` to the end of the first epoch.

Each measurement is a fresh Python process. *Cold*: an empty numba cache (a new temporary
``NUMBA_CACHE_DIR``), so every kernel is compiled. *Warm*: the same cache directory again, filled
by the cold run, so the kernels are loaded from disk. The training data (digits-sized: 1797 × 64,
10 classes, synthetic) is made before the clock starts; the model is ``MLPClassifier((128,))``,
float32, batch 32, one epoch.

    python scripts/startup_time.py [--cold 2] [--warm 3] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, time
import numpy as np
rng = np.random.default_rng(0)
X = rng.normal(size=(1797, 64)).astype(np.float32)
y = rng.integers(0, 10, 1797)
t0, c0 = time.perf_counter(), time.process_time()
import nbnet
t_import = time.perf_counter() - t0
ends = []
clf = nbnet.MLPClassifier((128,), epochs=1, batch_size=32, seed=0, n_threads=THREADS)
clf.fit(X, y, callbacks=[lambda epoch, logs: ends.append((time.perf_counter(), time.process_time()))])
print(json.dumps({"import_s": t_import, "compile_s": clf.compile_seconds_,
                  "epoch_s": clf.history_["epoch_time"][0], "first_epoch_end_s": ends[0][0] - t0,
                  "first_epoch_end_cpu_s": ends[0][1] - c0}))
"""


def run_child(cache_dir: str, threads: int) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", CHILD.replace("THREADS", str(threads))], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", type=int, default=2, help="cold runs, each with a new empty cache (default 2)")
    ap.add_argument("--warm", type=int, default=3, help="warm runs on the cache of the last cold run (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="n_threads of the fit (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    if args.cold < 1 or args.warm < 1:
        ap.error("--cold and --warm must be at least 1")
    results: dict[str, list[dict]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="nbnet-numba-cache-") as root:
        for i in range(args.cold):
            cache = os.path.join(root, f"cache{i}")
            os.mkdir(cache)
            results["cold"].append(run_child(cache, args.threads))
        for _ in range(args.warm):
            results["warm"].append(run_child(cache, args.threads))  # the last cold run's cache
    summary = {kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for kind, runs in results.items()}
    if args.json:
        print(json.dumps({"median": summary, "runs": results}, indent=1))
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"median of {args.cold} cold / {args.warm} warm fresh processes, n_threads={args.threads}, "
          f"{os.cpu_count()} cores, load average {load:.1f} (wall time grows with load; CPU time does not)")
    print(f"{'start':<6} {'import nbnet':>13} {'compile/load':>13} {'first epoch':>12} {'import→end of epoch 1':>22} {'(CPU time)':>11}")
    for kind in ("cold", "warm"):
        s = summary[kind]
        print(f"{kind:<6} {s['import_s']:>12.2f}s {s['compile_s']:>12.2f}s {s['epoch_s']:>11.3f}s {s['first_epoch_end_s']:>21.2f}s {s['first_epoch_end_cpu_s']:>10.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
