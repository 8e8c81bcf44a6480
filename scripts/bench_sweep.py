#!/usr/bin/env python
"""Sweep overhead benchmark: the share of wall time spent in tracking, and trials per minute with
one worker and with ``--workers auto`` (or any worker counts).

Each case runs a fresh study on fresh embedded stores (MLflow SQLite + Optuna journal in a
temporary folder), with the random sampler and no pruning so every trial trains fully and runs
are comparable. Tracking time is what the sweep records itself: every trial's
``tracking_seconds`` user attribute in the Optuna study (run creation, params, metric batches,
config and plots, the pyfunc model, the last batch and the run's end: the run's own metric holds
all but those last two) plus the parent run's ``sweep_tracking_seconds`` (summary, Optuna
figures, trials table, registration).

    tracking share = (Σ trial tracking_seconds + sweep_tracking_seconds) / (wall × workers)

``--threads T`` fixes every worker's thread count (``train.n_threads``); by default a sweep
splits the cores between its workers (one worker: 2 threads here, two workers: 1 each), so the
ratio between worker counts then also holds the thread scaling of one fit. ``auto`` is the
CLI's default (nbnet/experiment/sweep/plan.py); the table shows the workers × threads it chose.

``--untracked`` also times the same queued trials with tracking off, on the same workers ×
threads: each trial trained by ``train_once`` with no run (no MLflow, no plots, no model), told to
a journal study. ``tracked / untracked`` is then what tracking costs the sweep's wall time.

Every run trains the same trials: a seeded random draw of the space is queued in the study
before it starts (see ``enqueue_same_trials``), so rates with any worker counts compare.

Cases (the shipped experiment files):
  digits     experiments/digits.toml (1797 × 64, 30 epochs): sub-second trials, where the fixed
             per-run cost of tracking (run, metrics, panel, pyfunc model) is most visible
  synthetic  experiments/synthetic.toml (60 000 × 784, 10 classes, 10 epochs): trials of
             seconds, the benchmark-sized sweep

``--peer``: an end-to-end figure. A tracked 20-trial digits sweep as shipped
(experiments/digits.toml: TPE, median pruning, 30 epochs), ``nbnet sweep`` against
scripts/peer_torch_optuna_mlflow.py (the PyTorch + Optuna + MLflow script written from MLflow's
documented pattern: parent run, nested run per trial, per-epoch metrics, median pruning,
``mlflow.pytorch.log_model``, the best model registered). Both run as fresh processes on fresh
SQLite stores, in temporary folders, on the same search space, epochs and splits (nbnet's split of
the digits, handed to the peer as an .npz); wall time is the whole command, imports included.
Reported: wall time, best validation accuracy, the best model's test accuracy.

Usage:
  python scripts/bench_sweep.py                       # both cases, 1 worker and auto (30 / 12 trials)
  python scripts/bench_sweep.py --case digits --trials 100 --untracked   # the tracking overhead
  python scripts/bench_sweep.py --case digits --trials 20 --workers 1
  python scripts/bench_sweep.py --peer                # nbnet sweep vs the PyTorch + Optuna + MLflow script
Writes a Markdown table to stdout and JSON to bench_out/sweep.json (bench_out/peer.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {  # name: (experiment file, overrides, default trials)
    "digits": ("digits", ["search.sampler=random", "search.pruner=none"], 30),
    "synthetic": ("synthetic", ["search.sampler=random", "search.pruner=none"], 12),
}


def enqueue_same_trials(cfg, n: int, uri: str) -> None:
    """Queue the same n parameter sets (a seeded random draw of the space) for every run, so that
    1 and 2 workers train the same trials and their rates compare (each worker's own sampler
    would otherwise draw different networks)."""
    import optuna

    from nbnet.experiment import sweep
    from nbnet.experiment.trial import suggest

    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = []
    for _ in range(n):
        t = probe.ask()
        suggest(t, cfg.search.space)
        params.append(t.params)
        probe.tell(t, 0.0)
    storage = sweep.open_storage(sweep.default_storage(cfg.name), uri=uri)
    study = optuna.create_study(study_name=cfg.name, storage=storage, direction=cfg.direction())
    for p in params:
        study.enqueue_trial(p)


@contextlib.contextmanager
def queued_case(case: str, trials: int | None, threads: int | None, label: str):
    """A fresh temporary project (the working directory meanwhile) for ``case``: its MLflow store
    created and its study holding the queued trials (:func:`enqueue_same_trials`). Yields
    ``(cfg, uri, trials)``."""
    from nbnet.data import prepared
    from nbnet.experiment import config, tracking

    name, overrides, default_trials = CASES[case]
    trials = trials or default_trials
    cfg = config.load_experiment(name, overrides + ([f"train.n_threads={threads}"] if threads else []))
    with tempfile.TemporaryDirectory(prefix=f"nbnet-bench-{case}-{label}-") as tmp:
        os.chdir(tmp)
        try:
            uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
            tracking.ensure_experiment(cfg.name, uri)  # store creation is one-off, not per-sweep cost
            prepared.clear_cache()
            prepared.prepare_data(cfg)  # the data load, too (workers load their own copy; that is counted)
            enqueue_same_trials(cfg, trials, uri)
            yield cfg, uri, trials
        finally:
            os.chdir(ROOT)


def run_case(case: str, trials: int | None, workers, threads: int | None = None, floor: bool = False) -> dict:
    from nbnet.experiment import sweep, tags, tracking
    from nbnet.experiment.run import COST_KEYS

    with queued_case(case, trials, threads, str(workers)) as (cfg, uri, trials):
        os.environ["MLFLOW_TRACKING_URI"] = uri
        t0 = time.perf_counter()
        r = sweep.run_sweep(cfg, trials=trials, workers=workers, quiet=True, uri=uri)
        wall = time.perf_counter() - t0
        c = tracking.client(uri)
        plan = c.get_run(r.parent_run_id).data.tags
        resolved = (int(plan[tags.SWEEP_WORKERS]), int(plan[tags.SWEEP_THREADS]))
        kids = c.search_runs([c.get_experiment_by_name(cfg.name).experiment_id],
                             filter_string=f"tags.mlflow.parentRunId = '{r.parent_run_id}'", max_results=1000)
        sums = {k: sum(run.data.metrics.get(k, 0.0) for run in kids) for k in COST_KEYS}
        study = sweep.optuna_load(cfg.name, sweep.open_storage(sweep.default_storage(cfg.name), uri=uri))
        sums["tracking_seconds"] = sum(t.user_attrs.get("tracking_seconds", 0.0) for t in study.trials)
        floor = mlflow_floor(c, kids[len(kids) // 2]) if floor and kids else None
        parent = c.get_run(r.parent_run_id).data.metrics
        tracked = sums["tracking_seconds"] + parent.get("sweep_tracking_seconds", 0.0)
    busy = wall * resolved[0]
    return {
        "case": case, "workers": workers, "threads": threads or "auto", "resolved": resolved, "trials": trials, "complete": r.n_complete, "wall_s": wall,
        "trials_per_min": 60 * trials / wall, "tracking_s": tracked, "tracking_share": tracked / busy,
        "train_s": sums["train_seconds"], "train_share": sums["train_seconds"] / busy,
        "compile_s": sums["compile_seconds"], "cpu_s": sums["cpu_seconds"],
        "per_trial_tracking_s": sums["tracking_seconds"] / max(1, len(kids)),
        "per_trial_train_s": sums["train_seconds"] / max(1, len(kids)), "best": r.best_value,
        "mlflow_floor_s": floor,
    }


def mlflow_floor(c, run, repeats: int = 10) -> float:
    """Seconds MLflow itself takes to record a run like ``run`` (a trial's): create it with its
    tags, log its params, every value of its metric histories in one batch, and end it: bare
    ``MlflowClient`` calls, no model, no artifacts; the mean of ``repeats`` copies in the same store."""
    from mlflow.entities import Metric, Param

    history = [Metric(m.key, m.value, m.timestamp, m.step) for key in run.data.metrics
               for m in c.get_metric_history(run.info.run_id, key)]
    params = [Param(k, v) for k, v in run.data.params.items()]
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    t0 = time.perf_counter()
    for _ in range(repeats):
        rid = c.create_run(run.info.experiment_id, tags=tags).info.run_id
        for i in range(0, len(params), 100):
            c.log_batch(rid, params=params[i:i + 100])
        for i in range(0, len(history), 1000):
            c.log_batch(rid, metrics=history[i:i + 1000])
        c.set_terminated(rid, "FINISHED")
    return (time.perf_counter() - t0) / repeats


def untracked_worker(config: dict, name: str, storage: str, trials: int) -> None:
    """One worker of the untracked twin: the study's queued trials, each trained by ``train_once``
    with no run (nothing sent to MLflow, no plots, no model), until none is left."""
    import optuna

    from nbnet.data.prepared import prepare_data
    from nbnet.experiment import config as C
    from nbnet.experiment import sweep
    from nbnet.experiment.run import train_once
    from nbnet.experiment.trial import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = C.from_dict(config, name)
    data = prepare_data(cfg)
    study = optuna.load_study(study_name=name, storage=sweep.open_storage(storage))
    while True:
        trial = study.ask()
        if trial.number >= trials:  # not one of the queued trials 0 … trials - 1: the queue is empty
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        _, metrics = train_once(C.with_values(cfg, suggest(trial, cfg.search.space)), data=data)
        study.tell(trial, metrics[cfg.search.metric])


def run_untracked(case: str, trials: int | None, workers: int, threads: int) -> float:
    """Wall seconds of the same queued trials as :func:`run_case` with tracking off: ``workers``
    processes (spawned like the sweep's) of ``threads`` threads each, on a journal study."""
    import multiprocessing as mp

    from nbnet.experiment import config, sweep

    with queued_case(case, trials, threads, "untracked") as (cfg, uri, trials):
        storage = sweep.default_storage(cfg.name)
        payload = (config.to_dict(cfg), cfg.name, storage, trials)
        t0 = time.perf_counter()
        procs = [mp.get_context("spawn").Process(target=untracked_worker, args=payload) for _ in range(workers - 1)]
        for p in procs:
            p.start()
        untracked_worker(*payload)
        for p in procs:
            p.join()
        wall = time.perf_counter() - t0
    return wall


def write_splits(cfg, path: Path) -> None:
    """nbnet's own train/val/test split of the experiment's data, raw (each side standardises)."""
    import numpy as np

    from nbnet.data import prepared

    d = prepared.prepare_data(cfg)
    np.savez(path, X_train=d.X_train, y_train=d.y_train, X_val=d.X_val, y_val=d.y_val, X_test=d.X_test, y_test=d.y_test)


def timed(cmd: list[str], cwd: str, uri: str) -> tuple[float, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MPLBACKEND": "Agg"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"{cmd[:4]} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return wall, p.stdout


def nbnet_outcome(cfg, tmp: str, uri: str) -> dict:
    """Best validation value, its run's test accuracy and the registered model, from the stores."""
    from nbnet.experiment import sweep, tags, tracking

    os.chdir(tmp)
    try:
        study = sweep.optuna_load(cfg.name, sweep.open_storage(sweep.default_storage(cfg.name), uri=uri))
    finally:
        os.chdir(ROOT)
    best = study.best_trial
    run = tracking.client(uri).get_run(best.user_attrs[tags.TRIAL_RUN_ID])
    states = [t.state.name for t in study.trials]
    return {"best_val": best.value, "test_accuracy": run.data.metrics.get("test_accuracy"),
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
            "registered": study.user_attrs.get(tags.STUDY_REGISTERED)}


def run_peer(trials: int) -> list[dict]:
    """``nbnet sweep digits`` and the PyTorch + Optuna + MLflow script, one after the other."""
    from nbnet.experiment import config

    exp = ROOT / "experiments" / "digits.toml"
    cfg = config.load_experiment(exp, [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="nbnet-bench-peer-") as tmp:
        splits = Path(tmp) / "digits_splits.npz"
        write_splits(cfg, splits)
        for who in ("nbnet", "peer"):
            folder = Path(tmp) / who
            folder.mkdir()
            uri = f"sqlite:///{folder}/mlflow.db"
            print(f"running {who} ...", file=sys.stderr, flush=True)
            if who == "nbnet":
                wall, _ = timed([sys.executable, "-m", "nbnet", "sweep", str(exp), "--trials", str(trials), "-q"], str(folder), uri)
                out = nbnet_outcome(cfg, str(folder), uri)
            else:
                wall, stdout = timed([sys.executable, str(ROOT / "scripts" / "peer_torch_optuna_mlflow.py"), "--trials",
                                      str(trials), "--epochs", str(cfg.train.epochs), "--data", str(splits)], str(folder), uri)
                out = json.loads([ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
                out["inner_wall_s"] = out.pop("wall_s")
            rows.append({"who": who, "trials": trials, "wall_s": wall, **out})
    return rows


def print_peer(rows: list[dict]) -> None:
    print("| sweep (20-trial digits, tracked) | wall s | trials/min | complete / pruned | best val acc | test acc |")
    print("|---|---:|---:|---:|---:|---:|")
    names = {"nbnet": "`nbnet sweep digits`", "peer": "PyTorch + Optuna + MLflow (scripts/peer_torch_optuna_mlflow.py)"}
    for r in rows:
        print(f"| {names[r['who']]} | {r['wall_s']:.1f} | {60 * r['trials'] / r['wall_s']:.1f} | {r['complete']} / {r['pruned']} | "
              f"{r['best_val']:.4f} | {r['test_accuracy']:.4f} |")
    if len(rows) == 2:
        print(f"\nnbnet is {rows[1]['wall_s'] / rows[0]['wall_s']:.1f}× faster end to end")


def print_rows(rows: list[dict]) -> None:
    untracked = any("untracked_wall_s" in r for r in rows)
    print("| case | workers | workers × threads | trials | wall s | trials/min | best | train s/trial | tracking s/trial "
          "| tracking share |" + (" untracked wall s | tracked / untracked |" if untracked else ""))
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if untracked else ""))
    first, floor_lines = {}, []
    for r in rows:
        base = first.setdefault(r["case"], r["trials_per_min"])
        ratio = f" ({r['trials_per_min'] / base:.2f}×)" if r["trials_per_min"] != base else ""
        line = (f"| {r['case']} | {r['workers']} | {r['resolved'][0]} × {r['resolved'][1]} | {r['trials']} | {r['wall_s']:.1f} | "
                f"{r['trials_per_min']:.1f}{ratio} | {r['best']:.4f} | {r['per_trial_train_s']:.2f} | "
                f"{r['per_trial_tracking_s']:.3f} | {100 * r['tracking_share']:.1f}% |")
        if untracked:
            u = r.get("untracked_wall_s")
            f = r["mlflow_floor_s"]
            if f is not None:
                floor_lines.append(f"{r['case']}, {r['workers']}: MLflow's own floor per run (bare client calls replaying "
                                   f"one trial run's tags, params and metric histories; no model) {1000 * f:.0f} ms = "
                                   f"{100 * f / r['per_trial_train_s']:.0f} % of a trial's training; nbnet's tracking "
                                   f"per trial {1000 * r['per_trial_tracking_s']:.0f} ms")
            line += f" {u:.1f} | {r['wall_s'] / u:.2f}× |" if u else " | |"
        print(line)
    if floor_lines:
        print()
        print("\n".join(floor_lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--trials", type=int, help="trials per run (default: 30 for digits, 12 for synthetic)")
    ap.add_argument("--workers", default="1,auto", help="comma-separated worker counts, or auto (the CLI's default)")
    ap.add_argument("--untracked", action="store_true",
                    help="also time the same queued trials with tracking off (same workers × threads)")
    ap.add_argument("--threads", type=int, help="threads per worker (default: the cores split between the workers)")
    ap.add_argument("--peer", action="store_true", help="nbnet sweep vs the PyTorch + Optuna + MLflow script (20 trials)")
    ap.add_argument("--out", default=None, help="JSON output (default bench_out/sweep.json, bench_out/peer.json)")
    args = ap.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if args.peer:
        rows = run_peer(args.trials or 20)
        print_peer(rows)
        out = Path(args.out or ROOT / "bench_out" / "peer.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=1))
        return 0
    cases = list(CASES) if args.case == "all" else [args.case]
    rows = []
    for case in cases:
        for w in [x if x == "auto" else int(x) for x in args.workers.split(",")]:
            print(f"running {case} with {w} worker(s) ...", file=sys.stderr, flush=True)
            rows.append(run_case(case, args.trials, w, args.threads, floor=args.untracked))
            if args.untracked:
                print(f"running {case} untracked, {rows[-1]['resolved'][0]} × {rows[-1]['resolved'][1]} ...",
                      file=sys.stderr, flush=True)
                rows[-1]["untracked_wall_s"] = run_untracked(case, args.trials, *rows[-1]["resolved"])
    print_rows(rows)
    out = Path(args.out or ROOT / "bench_out" / "sweep.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=1))
    print(f"\n(JSON: {out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
