#!/usr/bin/env python
"""GPU training throughput: nbnet's CUDA backend vs PyTorch on CUDA.

MLP 784-256-128-10, ReLU, softmax cross-entropy, Adam (lr 1e-3), float32, 60 000 synthetic
training samples (10 classes, each a mixture of Gaussian clusters), batch sizes 32/128/512/4096.
For each batch size: one warm-up epoch (nbnet also compiles its kernels before it), then
``--epochs`` timed epochs; samples/s = timed samples / timed seconds, with shuffle, gather,
forward, backward and the optimizer step all included and the device synchronised at every
epoch end. The data sit on the GPU for both: nbnet copies them once per fit, torch before the
loop (its loop indexes a device tensor with a device permutation). Each framework runs in its
own child process, rounds alternate, the best round counts.

Needs a CUDA GPU with a driver, ``pip install 'nbnet[cuda]'`` (numba-cuda; with a CUDA 12
driver ``numba-cuda[cu12]``, with CUDA 13 ``numba-cuda[cu13]``) and a CUDA build of torch.
Without a GPU it says so and exits with status 2.

    python scripts/bench_gpu.py                      # full run, prints a markdown table
    python scripts/bench_gpu.py --quick              # 10 000 samples, 1 timed epoch
    python scripts/bench_gpu.py --frameworks nbnet --batch-sizes 128,4096 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SIZES = (784, 256, 128, 10)
LR = 1e-3
HERE = os.path.dirname(os.path.abspath(__file__))


def make_data(n: int, seed: int = 0):
    """Each class is a mixture of 3 Gaussian clusters (centres ~ N(0, 0.18^2 I), unit noise)."""
    rng = np.random.default_rng(seed)
    k, n_classes, d = 3, SIZES[-1], SIZES[0]
    centres = rng.standard_normal((n_classes * k, d), dtype=np.float32) * np.float32(0.18)
    c = rng.integers(0, n_classes * k, n)
    X = rng.standard_normal((n, d), dtype=np.float32)
    X += centres[c]
    return X, (c % n_classes).astype(np.int64)


def gpu_problem() -> str | None:
    """None when nbnet can train on a real GPU here, else why not (one line)."""
    from nbnet.kernels import cuda_available, cuda_simulator

    if cuda_simulator():
        return "NUMBA_ENABLE_CUDASIM is set: the simulator is not a GPU; unset it"
    if not cuda_available(simulator=False):
        return ("no CUDA GPU is usable (numba.cuda finds no driver or device, or numba-cuda is not installed: "
                "pip install 'nbnet[cuda]')")
    return None


# --- children ----------------------------------------------------------------------------------
def child_nbnet(a, X, y):
    import nbnet

    ends = []
    t0 = time.perf_counter()
    clf = nbnet.MLPClassifier(hidden_layer_sizes=SIZES[1:-1], activation="relu", optimizer="adam", learning_rate=LR,
                              batch_size=a.batch, epochs=1 + a.epochs, seed=a.seed, device="cuda", dtype="float32")
    # the epoch callback runs after the epoch's statistics came back to the host: the device is idle
    clf.fit(X, y, callbacks=[lambda epoch, logs: ends.append(time.perf_counter())])
    acc = float(np.mean(clf.predict(X[:10_000]) == y[:10_000]))
    return dict(timed_s=ends[-1] - ends[0], first_epoch_s=ends[0] - t0, compile_s=clf.compile_seconds_,
                train_accuracy=acc, final_loss=clf.history_["loss"][-1])


def child_torch(a, X, y):
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("torch has no CUDA here (install a CUDA build of torch)")
    dev = torch.device("cuda")
    torch.manual_seed(a.seed)
    Xd, yd = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    lossf = torch.nn.CrossEntropyLoss()
    n = Xd.shape[0]
    ends = []
    t0 = time.perf_counter()
    for _ in range(1 + a.epochs):  # plain training loop, default Adam (foreach)
        perm = torch.randperm(n, device=dev)
        for s in range(0, n, a.batch):
            idx = perm[s:s + a.batch]
            opt.zero_grad(set_to_none=True)
            loss = lossf(net(Xd[idx]), yd[idx])
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        ends.append(time.perf_counter())
    with torch.no_grad():
        acc = float((net(Xd[:10_000]).argmax(1) == yd[:10_000]).float().mean())
    return dict(timed_s=ends[-1] - ends[0], first_epoch_s=ends[0] - t0, train_accuracy=acc,
                final_loss=float(loss), device=torch.cuda.get_device_name(0))


CHILDREN = {"nbnet": child_nbnet, "torch": child_torch}


def run_child(a) -> None:
    X, y = make_data(a.n, a.seed)
    out = CHILDREN[a.child](a, X, y)
    out["samples_per_s"] = a.epochs * a.n / out["timed_s"]
    print("RESULT " + json.dumps(out), flush=True)


def spawn(a, framework: str, batch: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", framework, "--batch", str(batch),
           "--epochs", str(a.epochs), "--n", str(a.n), "--seed", str(a.seed)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {r.returncode}: {tail[0]}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="32,128,512,4096")
    p.add_argument("--frameworks", default="nbnet,torch")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--n", type=int, default=60_000, help="training samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="10 000 samples, 1 timed epoch, 1 round")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child run")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        run_child(a)
        return 0
    why = gpu_problem()
    if why:
        print(f"bench_gpu: {why}; run this on a machine with a CUDA GPU", file=sys.stderr)
        return 2
    if a.quick:
        a.n, a.epochs, a.rounds = 10_000, 1, 1
    batches = [int(b) for b in a.batch_sizes.split(",")]
    frameworks = [f for f in a.frameworks.split(",") if f]
    best: dict = {}
    for r in range(a.rounds):
        for b in batches:
            for f in frameworks if r % 2 == 0 else frameworks[::-1]:
                res = spawn(a, f, b)
                print(f"round {r + 1} {f:>5} batch {b:>4}: "
                      + (res["error"] if "error" in res else f"{res['samples_per_s'] / 1e3:8.1f} k samples/s"),
                      file=sys.stderr, flush=True)
                key = (f, b)
                if "error" in res:
                    best.setdefault(key, res)
                elif "samples_per_s" not in best.get(key, {}) or res["samples_per_s"] > best[key]["samples_per_s"]:
                    best[key] = res
    print(f"\nMLP {'-'.join(map(str, SIZES))}, Adam, float32, {a.n} samples, best of {a.rounds} round(s), "
          f"{a.epochs} timed epoch(s); samples/s (k)\n")
    print("| framework | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|" + "---|" * len(batches))
    for f in frameworks:
        cells = []
        for b in batches:
            res = best.get((f, b), {})
            cells.append(f"{res['samples_per_s'] / 1e3:.0f} k" if "samples_per_s" in res else "error")
        print(f"| {'nbnet CUDA' if f == 'nbnet' else 'PyTorch CUDA'} | " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump([dict(framework=f, batch=b, **best[(f, b)]) for f in frameworks for b in batches], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
