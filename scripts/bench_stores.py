#!/usr/bin/env python
"""Store capacity of a scale-out sweep: what one PostgreSQL + one MLflow server carry.

Starts what a cluster runs (docs/scaleout.md), on this machine: fresh Optuna and MLflow databases
on the PostgreSQL of ``--pg-url`` (default ``NBNET_TEST_PG_URL``, as ``scripts/ci_services.sh``
prints it), a real ``mlflow server`` (``scripts/cluster/start_tracking_server.sh``, PostgreSQL
backend, served artifacts), and ``--workers`` separate ``nbnet sweep`` processes
(``scripts/cluster/start_workers.sh``) sharing one study. Each trial is near-instant: one epoch of
iris (105 rows) with 8 hidden units, so what the trial costs is its tracking: it creates its run,
logs params, reports and returns (metrics, tags, config, plots and the model go to the stores).

Measured between the sweep's start and end:

* ``pg_stat_statements`` of the two databases: statements (each one a client round trip:
  BEGIN and COMMIT included), write statements and the server's execution time, per trial;
* HTTP requests the MLflow server answered, per trial (its access log);
* CPU seconds of the MLflow server's process group, per trial (``/proc``);
* trials/s the stores sustained: COMPLETE trials between the first and the last completion.

Derived (printed and written to JSON): how many workers of a trial length τ one PostgreSQL + one
MLflow server carry, ``N(τ) = τ × R``, where ``R`` is the smaller of the trial rates that the
PostgreSQL execution time and the MLflow server's CPU time per trial allow on ``--cores``
cores each, and the measured sustained rate (a floor: on a small machine the workers' own CPU
limits it first).

Usage:
  python scripts/bench_stores.py                                  # 16 workers, 320 trials
  python scripts/bench_stores.py --workers 4 --trials 40 --out bench_out/stores-4.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "scripts" / "cluster"

EXPERIMENT = """
[data]
source = "builtin:iris"
val_fraction = 0.3
preprocessing = {{ scale = "standard" }}

[model]
hidden_layer_sizes = [8]

[train]
epochs = {epochs}
batch_size = 16
seed = 0
n_threads = 1

[search]
sampler = "random"
pruner = "none"
n_trials = {trials}
metric = "val_accuracy"
direction = "maximize"

[search.space]
"train.learning_rate" = {{ type = "float", low = 1e-3, high = 1e-1, log = true }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_db(url: str, db: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def env_with_bin(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(extra)
    return env


def stats(conn, dbs: list[str]) -> dict:
    """{db: (calls, write calls, exec ms)} from pg_stat_statements."""
    rows = conn.execute("SELECT d.datname, s.query, s.calls, s.total_exec_time FROM pg_stat_statements s "
                        "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = ANY(%s)", [dbs]).fetchall()
    out = {db: [0, 0, 0.0] for db in dbs}
    for db, query, calls, ms in rows:
        out[db][0] += int(calls)
        out[db][1] += int(calls) if query.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE") else 0
        out[db][2] += float(ms)
    return out


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes of process group ``pgid``."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ... utime(11) stime(12)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def http_requests(log: Path) -> int:
    """Requests in the MLflow server's access log (uvicorn: ``"POST /api/... HTTP/1.1" 200``)."""
    return len(re.findall(r'"(?:GET|POST|PUT|PATCH|DELETE) /\S* HTTP/1\.[01]"', log.read_text(errors="replace")))


def start_server(run_dir: Path, port: int, backend: str, workers: int) -> int:
    p = subprocess.run(["bash", str(CLUSTER / "start_tracking_server.sh"), "--backend", backend, "--artifacts",
                        str(run_dir / "artifacts"), "--port", str(port), "--workers", str(workers), "--run-dir",
                        str(run_dir), "--no-jobs", "--timeout", "300"],
                       env=env_with_bin(), capture_output=True, text=True, timeout=400)
    if p.returncode != 0:
        sys.exit(f"bench_stores: the MLflow server did not start:\n{p.stdout}\n{p.stderr}")
    return int((run_dir / "server.pid").read_text())


def measure(args, conn, urls: dict, work: Path) -> dict:
    import optuna

    run_dir = work / "server"
    port = free_port()
    pgid = start_server(run_dir, port, urls["mlflow"], args.server_workers)
    uri = f"http://127.0.0.1:{port}"
    try:
        (work / "bench.toml").write_text(EXPERIMENT.format(epochs=args.epochs, trials=args.trials))
        dbs = [urlsplit(u).path.lstrip("/") for u in urls.values()]
        s0, cpu0, req0 = stats(conn, dbs), group_cpu_seconds(pgid), http_requests(run_dir / "server.log")
        t0 = time.time()
        p = subprocess.run(["bash", str(CLUSTER / "start_workers.sh"), "-n", str(args.workers), "--log-dir",
                            str(work / "logs"), "--", "bench.toml", "--storage", urls["optuna"], "--study", "bench",
                            "--no-register"], cwd=work, env=env_with_bin(MLFLOW_TRACKING_URI=uri, NBNET_NUM_THREADS="1"),
                           capture_output=True, text=True, timeout=args.timeout)
        wall = time.time() - t0
        s1, cpu1, req1 = stats(conn, dbs), group_cpu_seconds(pgid), http_requests(run_dir / "server.log")
        if p.returncode != 0:
            logs = "\n".join(f.read_text()[-2000:] for f in sorted((work / "logs").glob("worker-*.log")))
            sys.exit(f"bench_stores: the workers failed ({p.returncode}):\n{p.stderr}\n{logs}")
    finally:
        subprocess.run(["bash", str(CLUSTER / "start_tracking_server.sh"), "--run-dir", str(run_dir), "--stop"],
                       env=env_with_bin(), capture_output=True, timeout=120)
    trials = optuna.load_study(study_name="bench", storage=urls["optuna"]).get_trials(deepcopy=False)
    done = sorted(t.datetime_complete.timestamp() for t in trials if t.state.name == "COMPLETE")
    n = len(done)
    span = done[-1] - done[0] if n > 1 else float("nan")
    out = {"workers": args.workers, "trials": n, "states": dict(Counter(t.state.name for t in trials)),
           "epochs": args.epochs, "server_workers": args.server_workers, "wall_seconds": round(wall, 1),
           "sustained_trials_per_s": round((n - 1) / span, 2) if n > 1 else None,
           "trial_seconds_median": round(sorted((t.datetime_complete - t.datetime_start).total_seconds()
                                                for t in trials if t.state.name == "COMPLETE")[n // 2], 3),
           "mlflow_server_cpu_s_per_trial": round((cpu1 - cpu0) / n, 4),
           "mlflow_http_requests_per_trial": round((req1 - req0) / n, 1)}
    for name, db in zip(urls, dbs):
        calls, writes, ms = (s1[db][i] - s0[db][i] for i in range(3))
        out[name] = {"statements_per_trial": round(calls / n, 1), "writes_per_trial": round(writes / n, 1),
                     "exec_ms_per_trial": round(ms / n, 2)}
    return out


def model(m: dict, cores: int) -> dict:
    """Trials/s each store allows on ``cores`` cores, and the workers they carry per trial length."""
    pg_ms = m["optuna"]["exec_ms_per_trial"] + m["mlflow"]["exec_ms_per_trial"]
    rates = {"postgresql": 1000.0 * cores / pg_ms, "mlflow_server": cores / m["mlflow_server_cpu_s_per_trial"]}
    limit = min(rates.values())
    return {"cores_each": cores, "trials_per_s_allowed": {k: round(v, 1) for k, v in rates.items()},
            "bottleneck": min(rates, key=rates.get),
            "workers_for_trial_seconds": {tau: int(limit * tau) for tau in (1, 10, 60, 600)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg-url", default=os.environ.get("NBNET_TEST_PG_URL"),
                    help="an admin-capable PostgreSQL URL (default: $NBNET_TEST_PG_URL)")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--trials", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--server-workers", type=int, default=4, help="mlflow server --workers")
    ap.add_argument("--cores", type=int, default=4, help="cores given to each store in the derived model")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", default="bench_out/stores.json")
    args = ap.parse_args()
    if not args.pg_url:
        sys.exit("bench_stores: no PostgreSQL: pass --pg-url or run `eval \"$(sudo scripts/ci_services.sh)\"`")
    import psycopg

    conn = psycopg.connect(args.pg_url, autocommit=True, connect_timeout=10)
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone() is None:
        sys.exit("bench_stores: pg_stat_statements is not loaded (scripts/cluster/setup_postgres.sh --stat-statements)")
    tag = f"nbnet_bench_{uuid.uuid4().hex[:6]}"
    urls = {"optuna": with_db(args.pg_url, f"{tag}_optuna"), "mlflow": with_db(args.pg_url, f"{tag}_mlflow")}
    for u in urls.values():
        conn.execute(f'CREATE DATABASE "{urlsplit(u).path.lstrip("/")}"')
    try:
        with tempfile.TemporaryDirectory(prefix="bench_stores_") as work:
            m = measure(args, conn, urls, Path(work))
    finally:
        for u in urls.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(u).path.lstrip("/")}" WITH (FORCE)')
    m["model"] = model(m, args.cores)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    m.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit=commit, cpus=os.cpu_count(),
             command=" ".join(["python", "scripts/bench_stores.py", *sys.argv[1:]]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(m, indent=1))
    print(json.dumps(m, indent=1))


if __name__ == "__main__":
    main()
