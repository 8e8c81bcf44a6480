#!/usr/bin/env python
"""Training throughput: nbnet vs PyTorch (CPU) vs scikit-learn on one MLP.

MLP 784-256-128-10, ReLU, softmax cross-entropy, Adam (lr 1e-3), float32, 60 000 synthetic
training samples (10 classes, each a mixture of Gaussian clusters, so accuracy means something) and a
held-out test set of 10 000. For each batch size: one warm-up epoch, then ``--epochs`` timed
epochs; samples/s = timed samples / timed seconds (shuffle, gather, forward, backward and step
all included). Each framework runs in its own child process (torch and numba in one process
oversubscribe the cores), the runs are alternated over ``--rounds`` rounds and the best round
counts. The child reports peak RSS (``VmHWM``) and its RSS after imports, before the data.
Torch starts from nbnet's initialisation scheme (He normal) unless ``--torch-init default``:
with torch's own (smaller) init this data reaches higher 4-epoch accuracy, which would compare
initialisations rather than training.

Roofline: about 1.0 MFLOP per sample (2 FLOPs per multiply-add in the forward, weight-gradient
and input-gradient GEMMs, no input gradient for layer 1), compared with the faster of numpy's
sgemm and nbnet's own GEMM (nbnet.kernels.blas on all threads) at 2048^3, measured in the same
run ("% of sgemm").

    python scripts/bench_train.py            # full run (a few minutes), prints a markdown table
    python scripts/bench_train.py --quick    # sanity run, ~1 minute
    python scripts/bench_train.py --json out.json --batch-sizes 128 --frameworks nbnet,torch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SIZES = (784, 256, 128, 10)
N_TRAIN, N_TEST = 60_000, 10_000
LR = 1e-3
HERE = os.path.dirname(os.path.abspath(__file__))


def flops_per_sample(sizes=SIZES) -> int:
    """2 FLOPs per multiply-add: forward + dW for every layer, dX for all but the first."""
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * (2 * sum(macs) + sum(macs[1:]))


# --- data ------------------------------------------------------------------------------------
def make_data(path: str, n_train: int, n_test: int, n_features: int = 784, n_classes: int = 10, seed: int = 0):
    """Each class is a mixture of 3 Gaussian clusters (centres ~ N(0, 0.18^2 I), unit noise):
    not linearly separable, learnable to ~97% in 4 epochs by this MLP, fresh rows for every
    sample (no repeated batch that would decay Adam's moments into denormals)."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    k = 3
    centres = rng.standard_normal((n_classes * k, n_features), dtype=np.float32) * np.float32(0.18)
    c = rng.integers(0, n_classes * k, n)
    X = rng.standard_normal((n, n_features), dtype=np.float32)
    X += centres[c]
    y = (c % n_classes).astype(np.int64)
    perm = rng.permutation(n)
    X, y = X[perm], y[perm]
    for name, arr in (("Xtr", X[:n_train]), ("ytr", y[:n_train]), ("Xte", X[n_train:]), ("yte", y[n_train:])):
        np.save(os.path.join(path, name + ".npy"), np.ascontiguousarray(arr))


def load_data(path: str):
    return tuple(np.load(os.path.join(path, name + ".npy")) for name in ("Xtr", "ytr", "Xte", "yte"))


# --- children ----------------------------------------------------------------------------------
def _rss_now_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    """VmHWM: this process's own high-water mark (getrusage's ru_maxrss survives exec on Linux, so
    a child would report its parent's peak if that was higher)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_nbnet(a, load):
    import nbnet

    base = _rss_now_mib()
    Xtr, ytr, Xte, yte = load()
    ends = []
    t0 = time.perf_counter()
    clf = nbnet.MLPClassifier(hidden_layer_sizes=SIZES[1:-1], activation="relu", optimizer="adam", learning_rate=LR,
                              batch_size=a.batch, epochs=1 + a.epochs, seed=a.seed, n_threads=a.threads or None)
    clf.fit(Xtr, ytr, callbacks=[lambda epoch, logs: ends.append(time.perf_counter())])
    acc = float(np.mean(clf.predict(Xte) == yte))
    return dict(timed_s=ends[-1] - ends[0], first_epoch_s=ends[0] - t0, compile_s=clf.compile_seconds_,
                accuracy=acc, base_rss_mib=base)


def nbnet_style_init(seed: int) -> list[np.ndarray]:
    """nbnet's initialisation (He normal for the ReLU layers, Glorot uniform for the output,
    zero biases; nbnet.model.init_params) as (n_in, n_out) float32 arrays, without importing nbnet."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (fi, fo) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        if i < len(SIZES) - 2:
            w = rng.standard_normal((fi, fo)) * np.sqrt(2.0 / fi)
        else:
            lim = np.sqrt(6.0 / (fi + fo))
            w = rng.uniform(-lim, lim, (fi, fo))
        out.append(w.astype(np.float32))
    return out


def child_torch(a, load):
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    base = _rss_now_mib()
    Xtr, ytr, Xte, yte = (torch.from_numpy(x) for x in load())
    torch.manual_seed(a.seed)
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, 10))
    if a.torch_init == "nbnet":  # same initial distribution as nbnet, so accuracies compare training alone
        lins = [m for m in net if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for m, w in zip(lins, nbnet_style_init(a.seed)):
                m.weight.copy_(torch.from_numpy(w.T.copy()))
                m.bias.zero_()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    lossf = torch.nn.CrossEntropyLoss()
    n = Xtr.shape[0]
    ends = []
    t0 = time.perf_counter()
    for _ in range(1 + a.epochs):  # plain training loop, default Adam
        perm = torch.randperm(n)
        for s in range(0, n, a.batch):
            idx = perm[s:s + a.batch]
            xb, yb = Xtr[idx], ytr[idx]
            opt.zero_grad()
            loss = lossf(net(xb), yb)
            loss.backward()
            opt.step()
        ends.append(time.perf_counter())
    with torch.no_grad():
        acc = float((net(Xte).argmax(1) == yte).float().mean())
    return dict(timed_s=ends[-1] - ends[0], first_epoch_s=ends[0] - t0, accuracy=acc, base_rss_mib=base,
                threads=torch.get_num_threads())


def child_sklearn(a, load):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    base = _rss_now_mib()
    Xtr, ytr, Xte, yte = load()
    clf = MLPClassifier(hidden_layer_sizes=SIZES[1:-1], activation="relu", solver="adam", alpha=0.0,
                        learning_rate_init=LR, batch_size=a.batch, max_iter=1, shuffle=True, random_state=a.seed)
    classes = np.unique(ytr)
    ends = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(1 + a.epochs):  # partial_fit with max_iter=1: one epoch, optimizer state kept
            clf.partial_fit(Xtr, ytr, classes=classes)
            ends.append(time.perf_counter())
    acc = float(np.mean(clf.predict(Xte) == yte))
    return dict(timed_s=ends[-1] - ends[0], first_epoch_s=ends[0] - t0, accuracy=acc, base_rss_mib=base)


def child_gemm(a, load):
    """numpy float32 GEMM rate at 2048^3 with the default (all-core) BLAS threads."""
    n = 2048
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    C = np.empty((n, n), np.float32)
    np.dot(A, B, out=C)
    best = float("inf")
    for _ in range(a.epochs * 3 + 2):
        t = time.perf_counter()
        np.dot(A, B, out=C)
        best = min(best, time.perf_counter() - t)
    out = dict(gflops=2 * n**3 / best / 1e9)
    try:  # the GEMM nbnet's kernels call (single-threaded per thread block), on all threads
        out.update(_nbnet_gemm_gflops(A, B, C, a.epochs * 3 + 2))
    except ImportError:
        pass
    return out


def _nbnet_gemm_gflops(A, B, C, reps) -> dict:
    from numba import get_num_threads, njit, prange

    from nbnet.kernels import blas
    from nbnet.kernels.threads import thread_budget

    if not blas.available():
        return {}

    @njit(parallel=True)
    def rows_gemm(A, B, C, T):
        n = A.shape[0]
        for t in prange(T):
            lo, hi = t * n // T, (t + 1) * n // T
            blas.gemm(False, False, hi - lo, n, n, 1.0, A[lo], n, B, n, 0.0, C[lo], n)

    n = A.shape[0]
    with thread_budget(None), blas.single_threaded():
        T = get_num_threads()
        rows_gemm(A, B, C, T)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            rows_gemm(A, B, C, T)
            best = min(best, time.perf_counter() - t)
    return dict(nbnet_gflops=2 * n**3 / best / 1e9, nbnet_blas=blas.describe())


CHILDREN = {"nbnet": child_nbnet, "torch": child_torch, "sklearn": child_sklearn, "gemm": child_gemm}


def run_child(a) -> None:
    data = []

    def load():  # called by the child after its imports, so base RSS excludes the data
        data.extend(load_data(a.data))
        return tuple(data)

    out = CHILDREN[a.child](a, load)
    if data:
        out["samples_per_s"] = a.epochs * data[0].shape[0] / out["timed_s"]
        out["data_mib"] = sum(x.nbytes for x in data) / 2**20
    out["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(out), flush=True)


# --- parent ------------------------------------------------------------------------------------
def spawn(fw: str, batch: int, a, data_dir: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", fw, "--data", data_dir, "--batch", str(batch),
           "--epochs", str(a.epochs), "--seed", str(a.seed)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    cmd += ["--torch-init", a.torch_init]
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{fw} child (batch {batch}) failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 000 samples, 1 timed epoch, 1 round")
    ap.add_argument("--batch-sizes", default="32,128,512")
    ap.add_argument("--frameworks", default="nbnet,torch,sklearn")
    ap.add_argument("--sklearn-batch", type=int, default=128, help="scikit-learn runs at this batch size only")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up epoch")
    ap.add_argument("--rounds", type=int, default=2, help="alternated rounds; the best counts")
    ap.add_argument("--n-train", type=int, default=N_TRAIN)
    ap.add_argument("--threads", type=int, default=0, help="0: each framework's default (all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-init", choices=("nbnet", "default"), default="nbnet",
                    help="torch's initial weights: nbnet's scheme (He normal; compares training alone) or torch's own")
    ap.add_argument("--json", help="write all raw results here")
    # child-only options
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        run_child(a)
        return 0
    if a.quick:
        a.n_train, a.epochs, a.rounds = 12_000, 1, 1
    batches = [int(b) for b in a.batch_sizes.split(",")]
    fws = [f for f in a.frameworks.split(",") if f]
    n_test = N_TEST if not a.quick else 4_000
    runs: list[tuple[str, int]] = []
    for b in batches:
        for fw in fws:
            if fw == "sklearn" and b != a.sklearn_batch:
                continue
            runs.append((fw, b))
    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="nbnet-bench-") as d:
        make_data(d, a.n_train, n_test, seed=a.seed)
        gemm, gemm_nb, blas_name = [], [], "?"
        for r in range(a.rounds):
            g = spawn("gemm", 0, a, d)
            gemm.append(g["gflops"])
            if "nbnet_gflops" in g:
                gemm_nb.append(g["nbnet_gflops"])
                blas_name = g["nbnet_blas"]
            order = runs if r % 2 == 0 else runs[::-1]  # alternate who goes first
            for fw, b in order:
                res = spawn(fw, b, a, d)
                results.setdefault((fw, b), []).append(res)
                print(f"round {r + 1}  {fw:8s} batch {b:4d}: {res['samples_per_s'] / 1e3:7.1f} k samples/s  "
                      f"acc {res['accuracy']:.4f}  peak RSS {res['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    gemm_rate = max(gemm + gemm_nb)  # the faster of numpy's and nbnet's GEMM is the roof
    fps = flops_per_sample()
    best = {k: max(v, key=lambda r: r["samples_per_s"]) for k, v in results.items()}
    print()
    if gemm_nb:
        print(f"nbnet's sgemm ({blas_name}) 2048^3 on all threads: {max(gemm_nb):.0f} GFLOP/s; ", end="")
    print(f"numpy sgemm 2048^3: {max(gemm):.0f} GFLOP/s (best of {len(gemm)}); "
          f"{fps / 1e6:.3f} MFLOP per training sample; load average at the end {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print()
    print(table(best, batches, fws, gemm_rate, fps, a))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "gemm_gflops": gemm, "nbnet_gemm_gflops": gemm_nb, "flops_per_sample": fps,
                       "runs": [{"framework": k[0], "batch": k[1], "rounds": v} for k, v in results.items()]}, f, indent=1)
    return 0


def table(best, batches, fws, gemm_rate, fps, a) -> str:
    lines = ["| batch | framework | samples/s | vs torch | GFLOP/s | % of sgemm | test acc | peak RSS MiB | RSS before data MiB |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for b in batches:
        t = best.get(("torch", b))
        for fw in fws:
            r = best.get((fw, b))
            if r is None:
                continue
            sps = r["samples_per_s"]
            ratio = f"{sps / t['samples_per_s']:.2f}×" if t else "—"
            gf = sps * fps / 1e9
            lines.append(f"| {b} | {fw} | {sps / 1e3:.1f} k | {ratio} | {gf:.0f} | {100 * gf / gemm_rate:.0f}% | "
                         f"{r['accuracy']:.4f} | {r['peak_rss_mib']:.0f} | {r['base_rss_mib']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
