#!/usr/bin/env python
"""Training throughput side by side: nbnet, PyTorch eager, torch.compile and JAX + optax.

Two shapes, both ReLU MLPs with softmax cross-entropy, Adam (lr 1e-3), float32:

  mnist   784-256-128-10 on 60 000 synthetic rows (10 classes, each a mixture of Gaussian
          clusters, so accuracy means something; a held-out test set of 10 000), batches 32/128/512
  digits  64-128-10 on the 1 797 rows of scikit-learn's digits (pixels / 16), batches 16/32/128;
          its accuracy is on the training rows (the point is speed, there is no held-out set)

Peers, each written the way its users write it:

  torch    PyTorch eager: a plain loop, ``randperm`` + index per batch, default Adam
  compile  the same step (zero_grad, forward, loss, backward, Adam) under ``torch.compile``
  jax      JAX + optax, the idiomatic compiled epoch: ``jax.jit`` over ``lax.scan`` of the step,
           the shuffled batch indices gathered per step; the last partial batch is dropped
           (``lax.scan`` needs equal steps), so its samples/s counts only the samples it trained on

Every framework runs in its own child process (torch, XLA and numba in one process would fight
over the cores), one warm-up epoch (compilation) then timed epochs; the runs are alternated over
``--rounds`` rounds (reversed order every other round) and the **fastest epoch** of a framework
over all its rounds counts (samples per epoch / seconds of that epoch: shuffle, gather, forward,
backward and step included). ``--threads 1`` runs every child on one thread, as sweep workers
run: nbnet ``n_threads=1``, ``torch.set_num_threads(1)``, and the child pinned to one core with
``os.sched_setaffinity`` (XLA ignores thread-count flags; pinning is what bounds it, like
``taskset -c 0``). ``--threads 0`` (the default) leaves every framework its default (all cores).

Roof: the sgemm rate of numpy's BLAS measured in the same run, on the same threads, at the GEMM
shapes of one batch-512 training step of the mnist net (forward, weight gradients and input
gradients: ``roof_shapes``), against which nbnet's batch-512 rate is set using the exact GEMM
FLOPs per sample (``flops_per_sample``: 1 007 104 for 784-256-128-10). numpy's 2048^3 rate is
printed too.

    python scripts/bench_train.py                      # both shapes, all peers, 2 rounds
    python scripts/bench_train.py --threads 1          # each process on one core
    python scripts/bench_train.py --quick              # sanity run, small data, 1 round
    python scripts/bench_train.py --shapes digits --frameworks nbnet,jax --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPES = {  # name: (layer sizes, batch sizes, timed epochs)
    "mnist": ((784, 256, 128, 10), (32, 128, 512), 1),
    "digits": ((64, 128, 10), (16, 32, 128), 5),
}
N_TRAIN, N_TEST = 60_000, 10_000
LR = 1e-3
ROOF_BATCH = 512
FRAMEWORKS = ("nbnet", "torch", "compile", "jax")
LABELS = {"nbnet": "nbnet", "torch": "torch eager", "compile": "torch.compile (step)",
          "jax": "JAX (jit + lax.scan epoch, optax)", "sklearn": "scikit-learn"}


def flops_per_sample(sizes=SHAPES["mnist"][0]) -> int:
    """GEMM FLOPs of one training sample, 2 per multiply-add: the forward and the weight gradient
    of every layer, the input gradient of all but the first (784-256-128-10: 1 007 104)."""
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * (2 * sum(macs) + sum(macs[1:]))


def roof_shapes(sizes=SHAPES["mnist"][0], batch: int = ROOF_BATCH) -> list[tuple[int, int, int]]:
    """(m, k, n) of every GEMM in one training step at ``batch``: X@W, X^T@dZ, dZ@W^T per layer
    (no input gradient for the first layer). Their FLOPs add up to batch × flops_per_sample."""
    out = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        out += [(batch, a, b), (a, batch, b)]
        if i:
            out.append((batch, b, a))
    return out


# --- data ------------------------------------------------------------------------------------
def make_mnist_like(path: str, n_train: int, n_test: int, n_features: int = 784, n_classes: int = 10, seed: int = 0):
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
    save_data(path, X[:n_train], y[:n_train], X[n_train:], y[n_train:])


def make_digits(path: str):
    """scikit-learn's digits (1 797 × 64, shipped with it), pixels scaled to [0, 1]; the
    accuracy is measured on the same rows."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    save_data(path, X, y, X, y)


def save_data(path, Xtr, ytr, Xte, yte) -> None:
    os.makedirs(path, exist_ok=True)
    for name, arr in (("Xtr", Xtr), ("ytr", ytr), ("Xte", Xte), ("yte", yte)):
        np.save(os.path.join(path, name + ".npy"), np.ascontiguousarray(arr))


def load_data(path: str):
    return tuple(np.load(os.path.join(path, name + ".npy")) for name in ("Xtr", "ytr", "Xte", "yte"))


# --- children ----------------------------------------------------------------------------------
def _status_mib(key: str) -> float:
    """VmRSS or VmHWM of this process (VmHWM: its own high-water mark; getrusage's ru_maxrss
    survives exec on Linux, so a child would report its parent's peak if that was higher)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def nbnet_style_init(sizes, seed: int) -> list[np.ndarray]:
    """nbnet's initialisation (He normal for the ReLU layers, Glorot uniform for the output,
    zero biases; nbnet.model.init_params) as (n_in, n_out) float32 arrays, without importing
    nbnet: the peers start from the same distribution, so accuracies compare training alone."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i < len(sizes) - 2:
            w = rng.standard_normal((fi, fo)) * np.sqrt(2.0 / fi)
        else:
            lim = np.sqrt(6.0 / (fi + fo))
            w = rng.uniform(-lim, lim, (fi, fo))
        out.append(w.astype(np.float32))
    return out


def child_nbnet(a, sizes, load):
    import nbnet

    base = _status_mib("VmRSS")
    Xtr, ytr, Xte, yte = load()
    ends = [time.perf_counter()]
    clf = nbnet.MLPClassifier(hidden_layer_sizes=sizes[1:-1], activation="relu", optimizer="adam", learning_rate=LR,
                              batch_size=a.batch, epochs=1 + a.epochs, seed=a.seed, n_threads=a.threads or None)
    clf.fit(Xtr, ytr, callbacks=[lambda epoch, logs: ends.append(time.perf_counter())])
    acc = float(np.mean(clf.predict(Xte) == yte))
    return dict(epoch_s=np.diff(ends).tolist(), samples_per_epoch=len(ytr), compile_s=clf.compile_seconds_,
                accuracy=acc, base_rss_mib=base)


def _torch_net(torch, sizes, seed):
    layers = []
    for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(fi, fo))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    lins = [m for m in net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for m, w in zip(lins, nbnet_style_init(sizes, seed)):
            m.weight.copy_(torch.from_numpy(w.T.copy()))
            m.bias.zero_()
    return net


def child_torch(a, sizes, load, compiled: bool = False):
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    base = _status_mib("VmRSS")
    Xtr, ytr, Xte, yte = (torch.from_numpy(x) for x in load())
    torch.manual_seed(a.seed)
    net = _torch_net(torch, sizes, a.seed)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    lossf = torch.nn.CrossEntropyLoss()

    def step(xb, yb):
        opt.zero_grad()
        loss = lossf(net(xb), yb)
        loss.backward()
        opt.step()
        return loss

    if compiled:
        step = torch.compile(step)
    n = Xtr.shape[0]
    ends = [time.perf_counter()]
    for _ in range(1 + a.epochs):  # the first epoch compiles (both batch shapes, full and last)
        perm = torch.randperm(n)
        for s in range(0, n, a.batch):
            idx = perm[s:s + a.batch]
            step(Xtr[idx], ytr[idx])
        ends.append(time.perf_counter())
    with torch.no_grad():
        acc = float((net(Xte).argmax(1) == yte).float().mean())
    return dict(epoch_s=np.diff(ends).tolist(), samples_per_epoch=n, accuracy=acc, base_rss_mib=base,
                threads=torch.get_num_threads())


def child_compile(a, sizes, load):
    return child_torch(a, sizes, load, compiled=True)


def child_jax(a, sizes, load):
    import jax
    import jax.numpy as jnp
    import optax

    base = _status_mib("VmRSS")
    Xtr, ytr, Xte, yte = load()
    X, Y = jnp.asarray(Xtr), jnp.asarray(ytr.astype(np.int32))
    params = [(jnp.asarray(w), jnp.zeros(w.shape[1], jnp.float32)) for w in nbnet_style_init(sizes, a.seed)]
    tx = optax.adam(LR)
    opt_state = tx.init(params)
    n, B = X.shape[0], a.batch
    steps = n // B

    def forward(params, x):
        for w, b in params[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = params[-1]
        return x @ w + b

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    @jax.jit
    def epoch(params, opt_state, key):
        idx = jax.random.permutation(key, n)[:steps * B].reshape(steps, B)

        def step(carry, bidx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, X[bidx], Y[bidx])
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), idx)
        return params, opt_state, losses.mean()

    key = jax.random.PRNGKey(a.seed)
    ends = [time.perf_counter()]
    for _ in range(1 + a.epochs):  # the first epoch compiles
        key, sub = jax.random.split(key)
        params, opt_state, loss = epoch(params, opt_state, sub)
        loss.block_until_ready()
        ends.append(time.perf_counter())
    pred = np.asarray(jnp.argmax(jax.jit(forward)(params, jnp.asarray(Xte)), axis=1))
    return dict(epoch_s=np.diff(ends).tolist(), samples_per_epoch=steps * B, accuracy=float(np.mean(pred == yte)),
                base_rss_mib=base, devices=str(jax.devices()))


def child_sklearn(a, sizes, load):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    base = _status_mib("VmRSS")
    Xtr, ytr, Xte, yte = load()
    clf = MLPClassifier(hidden_layer_sizes=sizes[1:-1], activation="relu", solver="adam", alpha=0.0,
                        learning_rate_init=LR, batch_size=a.batch, max_iter=1, shuffle=True, random_state=a.seed)
    classes = np.unique(ytr)
    ends = [time.perf_counter()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(1 + a.epochs):  # partial_fit with max_iter=1: one epoch, optimizer state kept
            clf.partial_fit(Xtr, ytr, classes=classes)
            ends.append(time.perf_counter())
    acc = float(np.mean(clf.predict(Xte) == yte))
    return dict(epoch_s=np.diff(ends).tolist(), samples_per_epoch=len(ytr), accuracy=acc, base_rss_mib=base)


def child_gemm(a, sizes, load):
    """numpy's float32 GEMM on this child's threads: at the batch-512 step shapes of the mnist
    net (all of one step's GEMMs back to back, best of many) and at 2048^3."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    with threadpool_limits(a.threads or None):
        ops = []
        for m, k, n in roof_shapes():
            A = rng.standard_normal((m, k), dtype=np.float32)
            B = rng.standard_normal((k, n), dtype=np.float32)
            ops.append((A, B, np.empty((m, n), np.float32)))
        flops = sum(2 * A.shape[0] * A.shape[1] * B.shape[1] for A, B, _ in ops)
        best = float("inf")
        for _ in range(200):
            t = time.perf_counter()
            for A, B, C in ops:
                np.dot(A, B, out=C)
            best = min(best, time.perf_counter() - t)
        n = 2048
        A = rng.standard_normal((n, n), dtype=np.float32)
        C = np.empty((n, n), np.float32)
        big = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            np.dot(A, A, out=C)
            big = min(big, time.perf_counter() - t)
    return dict(step_gflops=flops / best / 1e9, step_flops=flops, gflops_2048=2 * n**3 / big / 1e9)


CHILDREN = {"nbnet": child_nbnet, "torch": child_torch, "compile": child_compile, "jax": child_jax,
            "sklearn": child_sklearn, "gemm": child_gemm}


def pin_to_one_core() -> None:
    """Bound the whole process (every library's pool) to one core, like ``taskset -c 0``."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def run_child(a) -> None:
    if a.threads == 1:
        pin_to_one_core()
    sizes = SHAPES[a.shape][0]
    data = []

    def load():  # called by the child after its imports, so base RSS excludes the data
        data.extend(load_data(a.data))
        return tuple(data)

    out = CHILDREN[a.child](a, sizes, load)
    if data:
        timed = out["epoch_s"][1:]  # the first epoch compiles
        out["best_samples_per_s"] = out["samples_per_epoch"] / min(timed)
        out["median_samples_per_s"] = out["samples_per_epoch"] / float(np.median(timed))
        out["data_mib"] = sum(x.nbytes for x in data) / 2**20
    out["peak_rss_mib"] = _status_mib("VmHWM")
    out["cpus"] = sorted(os.sched_getaffinity(0))
    print("RESULT " + json.dumps(out), flush=True)


# --- parent ------------------------------------------------------------------------------------
def spawn(fw: str, shape: str, batch: int, a, data_dir: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", fw, "--shape", shape, "--data", data_dir,
           "--batch", str(batch), "--epochs", str(a.epochs or SHAPES[shape][2]), "--seed", str(a.seed),
           "--threads", str(a.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{fw} child ({shape}, batch {batch}) failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")


def plan_runs(a) -> list[tuple[str, str, int]]:
    """(framework, shape, batch) of one round, in the order of the first round."""
    fws = [f for f in a.frameworks.split(",") if f]
    runs = []
    for shape in a.shapes.split(","):
        batches = a.batch_sizes.get(shape) or SHAPES[shape][1]
        for b in batches:
            for fw in fws:
                if fw == "sklearn" and (shape != "mnist" or b != a.sklearn_batch):
                    continue
                runs.append((fw, shape, b))
    return runs


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 000 mnist rows, 1 round, fewer epochs: a sanity run")
    ap.add_argument("--shapes", default="mnist,digits", help="comma-separated: mnist, digits")
    ap.add_argument("--batch-sizes", default="", help="e.g. mnist=128,digits=16/32 (default: each shape's own)")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="from nbnet, torch, compile, jax, sklearn")
    ap.add_argument("--sklearn-batch", type=int, default=128, help="scikit-learn runs on mnist at this batch only")
    ap.add_argument("--epochs", type=int, default=0, help="timed epochs after the warm-up (default: mnist 1, digits 5)")
    ap.add_argument("--rounds", type=int, default=2, help="alternated rounds; the fastest epoch over all counts")
    ap.add_argument("--n-train", type=int, default=N_TRAIN, help="mnist rows")
    ap.add_argument("--threads", type=int, default=0, help="0: each framework's default (all cores); 1: one core each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write all raw results here")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--shape", default="mnist", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.threads not in (0, 1) and not a.child:
        print("note: --threads N > 1 sets nbnet's and torch's threads only; JAX uses all cores", file=sys.stderr)
    if not a.child:
        sizes = {}
        for part in filter(None, a.batch_sizes.split(",")):
            shape, _, bs = part.partition("=")
            sizes[shape] = [int(b) for b in bs.split("/")]
        a.batch_sizes = sizes
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.child:
        run_child(a)
        return 0
    if a.quick:
        a.n_train, a.rounds = 12_000, 1
        a.epochs = a.epochs or 1
    runs = plan_runs(a)
    results: dict[tuple[str, str, int], list[dict]] = {}
    gemm = []
    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="nbnet-bench-") as d:
        dirs = {"mnist": os.path.join(d, "mnist"), "digits": os.path.join(d, "digits")}
        shapes = {s for _, s, _ in runs}
        if "mnist" in shapes:
            make_mnist_like(dirs["mnist"], a.n_train, N_TEST if not a.quick else 4_000, seed=a.seed)
        if "digits" in shapes:
            make_digits(dirs["digits"])
        for r in range(a.rounds):
            if "mnist" in shapes:  # the roof is the mnist net's
                gemm.append(spawn("gemm", "mnist", 0, a, d))
            for fw, shape, b in (runs if r % 2 == 0 else runs[::-1]):  # alternate who goes first
                res = spawn(fw, shape, b, a, dirs[shape])
                results.setdefault((fw, shape, b), []).append(res)
                print(f"round {r + 1}  {shape:6s} {fw:8s} batch {b:4d}: best epoch {res['best_samples_per_s'] / 1e3:8.1f} k/s"
                      f"  median {res['median_samples_per_s'] / 1e3:8.1f} k/s  acc {res['accuracy']:.4f}"
                      f"  peak RSS {res['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    best = {k: max(v, key=lambda r: r["best_samples_per_s"]) for k, v in results.items()}
    roof = max((g["step_gflops"] for g in gemm), default=0.0)
    print(report(best, runs, roof, gemm, a, started))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(a).items()}, "started": started.isoformat(), "gemm": gemm,
                       "flops_per_sample": flops_per_sample(), "roof_shapes": roof_shapes(),
                       "runs": [{"framework": k[0], "shape": k[1], "batch": k[2], "rounds": v}
                                for k, v in results.items()]}, f, indent=1)
    return 0


def report(best, runs, roof, gemm, a, started) -> str:
    fws = list(dict.fromkeys(fw for fw, _, _ in runs))
    peers = [f for f in fws if f != "nbnet"]
    fps = flops_per_sample()
    lines = [f"threads: {a.threads or 'each framework default (all cores)'}; {a.rounds} round(s); started "
             f"{started:%Y-%m-%d %H:%M} UTC; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", ""]
    lines.append("| shape / batch | " + " | ".join(LABELS[f] for f in fws) + (" | nbnet / best peer |" if peers and "nbnet" in fws else " |"))
    lines.append("|---|" + "---:|" * (len(fws) + (1 if peers and "nbnet" in fws else 0)))
    for shape in dict.fromkeys(s for _, s, _ in runs):
        sizes = SHAPES[shape][0]
        for b in dict.fromkeys(bb for _, s, bb in runs if s == shape):
            cells, rates = [], {}
            for fw in fws:
                r = best.get((fw, shape, b))
                rates[fw] = r["best_samples_per_s"] if r else None
                cells.append(f"{r['best_samples_per_s'] / 1e3:,.0f} k/s".replace(",", " ") if r else "—")
            row = f"| {'-'.join(map(str, sizes))}, bs {b} | " + " | ".join(cells) + " |"
            peer_rates = [rates[p] for p in peers if rates.get(p)]
            if rates.get("nbnet") and peer_rates:
                row += f" {rates['nbnet'] / max(peer_rates):.2f}× |"
            lines.append(row)
    lines += ["", "Accuracy after the timed epochs (mnist: held-out 10 000 rows; digits: the training rows):", ""]
    lines.append("| shape / batch | " + " | ".join(fws) + " |")
    lines.append("|---|" + "---:|" * len(fws))
    for fw_shape_b in dict.fromkeys((s, b) for _, s, b in runs):
        s, b = fw_shape_b
        lines.append(f"| {s}, bs {b} | " + " | ".join(f"{best[(fw, s, b)]['accuracy']:.4f}" if (fw, s, b) in best else "—"
                                                     for fw in fws) + " |")
    nb = best.get(("nbnet", "mnist", ROOF_BATCH))
    if not gemm:
        return "\n".join(lines)
    lines += ["", f"sgemm roof (numpy's BLAS, same threads, all GEMMs of one batch-{ROOF_BATCH} step of 784-256-128-10, "
              f"best of {len(gemm)} children): {roof:.0f} GFLOP/s; numpy 2048^3: "
              f"{max(g['gflops_2048'] for g in gemm):.0f} GFLOP/s; " + f"{fps:,}".replace(",", " ") + " FLOP per training sample"]
    if nb:
        gf = nb["best_samples_per_s"] * fps / 1e9
        lines.append(f"nbnet at batch {ROOF_BATCH}: {gf:.0f} GFLOP/s = **{100 * gf / roof:.0f} % of the sgemm roof**")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
