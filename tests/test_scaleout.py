"""Scale-out end to end (issue 8): a sweep spread over worker processes that share nothing but a
PostgreSQL server (the Optuna study) and an MLflow tracking server (runs, served artifacts,
registry, itself backed by PostgreSQL).

Everything is real: PostgreSQL from Debian's package (started by ``scripts/ci_services.sh``, which
``.ci/run`` calls), ``mlflow server`` started by ``scripts/cluster/start_tracking_server.sh`` on a
free port in its own process group, three ``nbnet sweep`` processes started by
``scripts/cluster/start_workers.sh``. Each run gets fresh databases, dropped afterwards.

The database URL comes from ``NBNET_TEST_PG_URL``; without it the test tries the role that
``scripts/ci_services.sh`` creates and skips, with the reason, when no PostgreSQL answers. When the
URL was given explicitly, a server that does not answer is a failure, not a skip.

The sweep's database traffic is measured with ``pg_stat_statements`` (when loaded) and printed;
set ``NBNET_SCALEOUT_REPORT=path.json`` to keep it (the README's capacity note comes from it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "scripts" / "cluster"
DEFAULT_PG_URL = "postgresql://nbnet_test:nbnet_test@127.0.0.1:5432/nbnet_test"  # scripts/ci_services.sh

N_WORKERS = 3
N_TRIALS = 6
EPOCHS = 4

EXPERIMENT = f"""
# A tiny experiment: 150 iris rows, one small hidden layer, {EPOCHS} epochs — seconds per trial.
[data]
source = "builtin:iris"
val_fraction = 0.3
preprocessing = {{ scale = "standard" }}

[model]
hidden_layer_sizes = [8]

[train]
epochs = {EPOCHS}
batch_size = 16
learning_rate = 1e-2
seed = 0

[search]
sampler = "random"
pruner = "none"
n_trials = {N_TRIALS}
metric = "val_accuracy"
direction = "maximize"

[search.space]
"train.learning_rate" = {{ type = "float", low = 1e-3, high = 1e-1, log = true }}
"model.activation" = {{ type = "categorical", choices = ["relu", "tanh"] }}
"""


# --- PostgreSQL -----------------------------------------------------------------------------------
def _redact(url: str) -> str:
    p = urlsplit(url)
    if p.password is None:
        return url
    return urlunsplit(p._replace(netloc=p.netloc.replace(f":{p.password}@", ":***@")))


def _with_database(url: str, db: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


@pytest.fixture(scope="module")
def pg():
    """An admin connection plus a fresh Optuna database and MLflow database (dropped afterwards)."""
    psycopg = pytest.importorskip(
        "psycopg", reason="psycopg, the PostgreSQL driver, is not installed: pip install 'nbnet[postgres]'")
    url = os.environ.get("NBNET_TEST_PG_URL")
    explicit = bool(url)
    url = url or DEFAULT_PG_URL
    why = os.environ.get("NBNET_TEST_PG_UNAVAILABLE")
    if why and not explicit:
        pytest.skip(f"PostgreSQL unavailable: {why}")
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if explicit:
            pytest.fail(f"NBNET_TEST_PG_URL={_redact(url)} does not answer: {msg}")
        pytest.skip(f"no PostgreSQL at {_redact(url)} ({msg}); start one with `sudo scripts/ci_services.sh` "
                    "and export the NBNET_TEST_PG_URL it prints (.ci/run does this)")
    tag = f"nbnet_t{os.getpid()}_{uuid.uuid4().hex[:6]}"
    dbs = {"optuna": f"{tag}_optuna", "mlflow": f"{tag}_mlflow"}
    for db in dbs.values():
        conn.execute(f'CREATE DATABASE "{db}"')
    has_stats = conn.execute(
        "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone() is not None
    try:
        yield {"conn": conn, "dbs": dbs, "urls": {k: _with_database(url, v) for k, v in dbs.items()},
               "stats": has_stats}
    finally:
        for db in dbs.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.close()


def _statement_counts(pg) -> dict:
    """pg_stat_statements of the two test databases: {db: [(query, calls, rows)]}."""
    rows = pg["conn"].execute(
        "SELECT d.datname, s.query, s.calls, s.rows FROM pg_stat_statements s "
        "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = ANY(%s)",
        [list(pg["dbs"].values())]).fetchall()
    by_db = defaultdict(list)
    names = {v: k for k, v in pg["dbs"].items()}
    for datname, query, calls, nrows in rows:
        by_db[names[datname]].append((query, int(calls), int(nrows)))
    return by_db


def _classify(query: str) -> tuple[str, str]:
    """(kind, table) of a normalised statement: ('INSERT', 'metrics'), ('SELECT', 'runs'), ..."""
    q = " ".join(query.split()).lower()
    kind = q.split(" ", 1)[0].upper()
    table = ""
    marker = {"INSERT": "insert into ", "UPDATE": "update ", "DELETE": "delete from ", "SELECT": " from "}.get(kind)
    if marker and marker in q:
        table = q.split(marker, 1)[1].split(" ", 1)[0].split("(")[0].strip('"')
    return kind, table


# --- MLflow server --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tracking_server(pg, tmp_path_factory):
    """A real ``mlflow server`` (PostgreSQL backend, served artifacts) in its own process group."""
    run_dir = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    artifacts = run_dir / "artifacts"
    start = [
        "bash", str(CLUSTER / "start_tracking_server.sh"), "--backend", pg["urls"]["mlflow"],
        "--artifacts", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
        "--run-dir", str(run_dir), "--no-jobs", "--timeout", "180",
    ]
    proc = subprocess.run(start, env=_env(), capture_output=True, text=True, timeout=240)
    pidfile = run_dir / "server.pid"
    try:
        assert proc.returncode == 0, f"tracking server did not start:\n{proc.stdout}\n{proc.stderr}"
        pgid = int(pidfile.read_text())
        assert os.getpgid(pgid) == pgid, "the server must lead its own process group"
        yield {"uri": f"http://127.0.0.1:{port}", "artifacts": artifacts, "run_dir": run_dir, "pgid": pgid}
    finally:
        if pidfile.exists():
            stop = subprocess.run(["bash", str(CLUSTER / "start_tracking_server.sh"), "--run-dir", str(run_dir),
                                   "--stop"], env=_env(), capture_output=True, text=True, timeout=60)
            if stop.returncode != 0 and pidfile.exists():  # never leave a server behind
                try:
                    os.killpg(int(pidfile.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass


# --- the sweep ------------------------------------------------------------------------------------
def _kill_groups(pids_file: Path) -> None:
    """Never leave workers behind: SIGKILL the process groups a start_workers.sh call recorded."""
    if pids_file.exists():
        for line in pids_file.read_text().split():
            try:
                os.killpg(int(line), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def _run_workers(n: int, sweep_args: list[str], *, cwd: Path, env: dict, timeout: float = 600):
    """``scripts/cluster/start_workers.sh -n N -- SWEEP_ARGS`` in the foreground; its logs on failure."""
    logs = cwd / "sweep-logs"
    cmd = ["bash", str(CLUSTER / "start_workers.sh"), "-n", str(n), "--log-dir", str(logs), "--", *sweep_args]
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        for f in logs.glob("workers-*.pids"):
            _kill_groups(f)
    worker_logs = "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(logs.glob("worker-*.log")))
    assert proc.returncode == 0, f"start_workers.sh exited {proc.returncode}\n{proc.stderr}\n{worker_logs}"
    return worker_logs


def _all_runs(client, exp_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def test_three_workers_share_one_study_and_one_tracking_server(pg, tracking_server, tmp_path, monkeypatch):
    import mlflow
    import optuna

    import nbnet
    from nbnet import tracking

    name = "scaleout_tiny"
    (tmp_path / f"{name}.toml").write_text(EXPERIMENT)
    study_name = f"{name}-{uuid.uuid4().hex[:6]}"
    uri = tracking_server["uri"]
    before = _statement_counts(pg) if pg["stats"] else None

    worker_logs = _run_workers(N_WORKERS, [f"{name}.toml", "--storage", pg["urls"]["optuna"], "--study", study_name],
                               cwd=tmp_path, env=_env(MLFLOW_TRACKING_URI=uri))
    after = _statement_counts(pg) if pg["stats"] else None

    # --- the study: n_trials over all workers, every trial finished ------------------------------
    study = optuna.load_study(study_name=study_name, storage=pg["urls"]["optuna"])
    trials = study.get_trials(deepcopy=False)
    # Workers stop when finished + running trials reach n_trials; two workers deciding within the
    # same few milliseconds can each start one more, so up to N_WORKERS - 1 extra are legitimate.
    assert N_TRIALS <= len(trials) <= N_TRIALS + N_WORKERS - 1, worker_logs
    assert [t.number for t in trials] == list(range(len(trials)))
    assert {t.state.name for t in trials} == {"COMPLETE"}, [(t.number, t.state.name, t.user_attrs) for t in trials]
    pids = Counter(t.user_attrs["pid"] for t in trials)
    assert len(pids) >= 2, f"one worker ran every trial: {pids}\n{worker_logs}"
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params), "workers drew identical suggestions (same sampler seed)"

    # --- MLflow: one parent run, one child run per trial, states and values matching ---------------
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(name)
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:"), exp
    runs = _all_runs(client, exp.experiment_id)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, f"{len(parents)} parent runs: workers must share the study's one parent run"
    parent = parents[0]
    assert study.user_attrs["nbnet.parent_run_id"] == parent.info.run_id
    assert parent.info.status == "FINISHED"
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(children) + 1 == len(runs), "a run outside the sweep's parent/children"
    trial_runs = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert len(set(trial_runs)) == len(trials) and set(trial_runs) == set(children), "trial ↔ run must be one to one"
    for t in trials:
        r = children[t.user_attrs["mlflow_run_id"]]
        assert r.info.status == "FINISHED" and r.data.tags["optuna.state"] == "COMPLETE"
        assert r.data.tags["optuna.trial"] == str(t.number) and r.data.tags["optuna.study"] == study_name
        assert r.data.metrics["val_accuracy"] == pytest.approx(t.value)
        assert r.data.tags["nbnet.pid"] == str(t.user_attrs["pid"])
        history = client.get_metric_history(r.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)) or len(history) == EPOCHS

    # --- artifacts went through the server into its artifact store ---------------------------------
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    assert {"config.json", "plots"} <= {a.path for a in client.list_artifacts(best_run)}
    logged = client.get_logged_model(children[best_run].data.tags["nbnet.model_id"])
    assert logged.source_run_id == best_run and logged.artifact_location.startswith("mlflow-artifacts:")
    served = list(tracking_server["artifacts"].rglob("MLmodel"))
    assert len(served) >= len(trials), f"{len(served)} MLmodel files under the server's --artifacts-destination"

    # --- the registry: the best run registered once, as champion; loadable through the server ---
    versions = client.search_model_versions(f"name = '{name}'")
    assert len({v.run_id for v in versions}) == len(versions), "a run was registered twice"
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.run_id in children
    assert children[champion.run_id].data.metrics["val_accuracy"] == pytest.approx(study.best_value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = nbnet.load(tracking.download_model_file(f"models:/{name}@champion"))
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    assert (model.predict(X) == y).mean() > 0.5

    # --- what the sweep cost the database (the README's capacity note) -----------------------------
    if after is not None:
        report = _capacity_report(before, after, n_trials=len(trials), epochs=EPOCHS, workers=N_WORKERS)
        print(json.dumps(report, indent=1))
        if os.environ.get("NBNET_SCALEOUT_REPORT"):
            Path(os.environ["NBNET_SCALEOUT_REPORT"]).write_text(json.dumps(report, indent=1))
        # Optuna writes one intermediate value per trial and epoch (the pruning report): the
        # measurement must see exactly those.
        assert report["optuna"]["rows"].get("INSERT trial_intermediate_values") == len(trials) * EPOCHS


def _capacity_report(before: dict, after: dict, *, n_trials: int, epochs: int, workers: int) -> dict:
    """Statements and rows per database during the sweep, by kind and table."""
    out = {"trials": n_trials, "epochs": epochs, "workers": workers}
    for db in ("optuna", "mlflow"):
        prev = Counter()
        prev_rows = Counter()
        for q, calls, rows in before.get(db, []):
            prev[q] += calls
            prev_rows[q] += rows
        calls_by, rows_by = Counter(), Counter()
        total = writes = commits = 0
        for q, calls, rows in after.get(db, []):
            dc, dr = calls - prev[q], rows - prev_rows[q]
            prev[q] = calls  # a query text listed twice (two roles) is counted once per entry
            prev_rows[q] = rows
            if dc <= 0:
                continue
            kind, table = _classify(q)
            total += dc
            if kind in ("INSERT", "UPDATE", "DELETE"):
                writes += dc
                calls_by[f"{kind} {table}"] += dc
                rows_by[f"{kind} {table}"] += dr
            elif kind == "COMMIT":
                commits += dc
            else:
                calls_by[kind if kind != "SELECT" else f"SELECT {table}"] += dc
        out[db] = {"statements": total, "write_statements": writes, "commits": commits,
                   "statements_per_trial": round(total / n_trials, 1),
                   "writes_per_trial": round(writes / n_trials, 1),
                   "calls": dict(calls_by.most_common()), "rows": dict(rows_by.most_common())}
    return out
