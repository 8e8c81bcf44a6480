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
* CPU seconds, per trial, of the PostgreSQL backends serving the two databases and of the MLflow
  server's process group (``/proc``, sampled every 0.5 s);
* trials/s the stores sustained: COMPLETE trials between the first and the last completion.

Derived (printed and written to JSON): how many workers of a trial length τ one PostgreSQL + one
MLflow server carry, ``N(τ) = τ × R``, where ``R`` is the smaller of the trial rates that the
CPU time per trial of PostgreSQL and of the MLflow server allow on ``--cores`` cores each; and the
measured sustained rate (a floor: on a small machine the workers' own CPU
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
import threading
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


class CpuSampler(threading.Thread):
    """Every 0.5 s: the CPU seconds of the PostgreSQL backends serving ``dbs`` (pg_stat_activity)
    and of the MLflow server's process group. Processes come and go (a worker's connections end
    with it), so each one's last reading counts, less its reading at the start."""

    def __init__(self, pg_url: str, dbs: list[str], pgid: int):
        super().__init__(daemon=True)
        self.pg_url, self.dbs, self.pgid, self.done = pg_url, dbs, pgid, threading.Event()
        self.first: dict[int, float] = {}
        self.started = False
        self.peak: Counter = Counter()  # the most connections each database had
        self.last: dict[tuple[str, int], float] = {}

    def sample(self, conn) -> None:
        rows = conn.execute("SELECT pid, datname FROM pg_stat_activity WHERE datname = ANY(%s)", [self.dbs]).fetchall()
        pids = [p for p, _ in rows]
        for db, k in Counter(d for _, d in rows).items():
            self.peak[db] = max(self.peak[db], k)
        group = [int(f.parent.name) for f in Path("/proc").glob("[0-9]*/stat") if proc_stat(f, 2) == self.pgid]
        for kind, pid_list in (("postgresql", pids), ("mlflow_server", group)):
            for pid in pid_list:
                t = cpu_seconds(pid)
                if t is not None:
                    self.first.setdefault(pid, 0.0 if self.started else t)  # a new process started at 0
                    self.last[(kind, pid)] = t
        self.started = True

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.pg_url, autocommit=True, connect_timeout=10) as conn:
            self.sample(conn)
            while not self.done.wait(0.5):
                self.sample(conn)
            self.sample(conn)

    def seconds(self) -> dict[str, float]:
        out = {"postgresql": 0.0, "mlflow_server": 0.0}
        for (kind, pid), t in self.last.items():
            out[kind] += t - self.first.get(pid, 0.0)
        return out


def proc_stat(path: Path, field: int) -> int | None:
    """Field ``field`` (0 = state) after the command name of /proc/PID/stat, or None."""
    try:
        return int(path.read_text().rsplit(")", 1)[1].split()[field])
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds, or None when it is gone."""
    stat = Path(f"/proc/{pid}/stat")
    u, s = proc_stat(stat, 11), proc_stat(stat, 12)
    return None if u is None or s is None else (u + s) / os.sysconf("SC_CLK_TCK")


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
        cpu = CpuSampler(args.pg_url, dbs, pgid)
        cpu.start()
        s0, req0 = stats(conn, dbs), http_requests(run_dir / "server.log")
        t0 = time.time()
        p = subprocess.run(["bash", str(CLUSTER / "start_workers.sh"), "-n", str(args.workers), "--log-dir",
                            str(work / "logs"), "--", "bench.toml", "--storage", urls["optuna"], "--study", "bench",
                            "--no-register"], cwd=work, env=env_with_bin(MLFLOW_TRACKING_URI=uri, NBNET_NUM_THREADS="1"),
                           capture_output=True, text=True, timeout=args.timeout)
        wall = time.time() - t0
        cpu.done.set()
        cpu.join()
        s1, req1 = stats(conn, dbs), http_requests(run_dir / "server.log")
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
           "cpu_s_per_trial": {k: round(v / n, 4) for k, v in cpu.seconds().items()},
           "peak_connections": {name: cpu.peak[db] for name, db in zip(urls, dbs)},
           "mlflow_http_requests_per_trial": round((req1 - req0) / n, 1)}
    for name, db in zip(urls, dbs):
        calls, writes, ms = (s1[db][i] - s0[db][i] for i in range(3))
        out[name] = {"statements_per_trial": round(calls / n, 1), "writes_per_trial": round(writes / n, 1),
                     "exec_ms_per_trial": round(ms / n, 2)}
    return out


def model(m: dict, cores: int) -> dict:
    """Trials/s each store allows on ``cores`` cores, and the workers they carry per trial length."""
    rates = {k: cores / v for k, v in m["cpu_s_per_trial"].items()}
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
