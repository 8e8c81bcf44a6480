"""Scale-out end to end: a sweep spread over worker processes that share nothing but a
PostgreSQL server (the Optuna study) and an MLflow tracking server (runs, served artifacts,
registry, itself backed by PostgreSQL).

Everything is real: PostgreSQL from Debian's package (started by ``scripts/ci_services.sh``, which
``.ci/run`` calls), ``mlflow server`` started by ``scripts/cluster/start_tracking_server.sh`` on a
free port in its own process group, three ``nbnet sweep`` processes started by
``scripts/cluster/start_workers.sh``. Each run gets fresh databases, dropped afterwards.

The database URL comes from ``NBNET_TEST_PG_URL``; without it the test tries the role that
``scripts/ci_services.sh`` creates and skips, with the reason, when no PostgreSQL answers. When the
URL was given explicitly, a server that does not answer is a failure, not a skip.

The trial budget is tested here too: four sweep processes (tests/sweepers.py) start together on a
fresh PostgreSQL study, ten times, and each repetition must run exactly N trials; a process killed
while it holds the study's claim must block nobody and cost no slot.

The sweep's database traffic is measured with ``pg_stat_statements`` (when loaded) and printed;
set ``NBNET_SCALEOUT_REPORT=path.json`` to keep it (the README's capacity note comes from two runs,
``NBNET_SCALEOUT_EPOCHS=4`` and ``=24``, which separate the per-trial from the per-epoch cost).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from servers import free_port
from sweepers import EXPERIMENT as BUDGET_EXPERIMENT
from sweepers import Sweepers, die_holding_the_claim, tally

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "scripts" / "cluster"
DEFAULT_PG_URL = "postgresql://nbnet_test:nbnet_test@127.0.0.1:5432/nbnet_test"  # scripts/ci_services.sh

N_WORKERS = 3
N_TRIALS = 6
EPOCHS = int(os.environ.get("NBNET_SCALEOUT_EPOCHS", 4))  # more epochs: measure the per-epoch database cost

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


class _ConnectionSampler(threading.Thread):
    """Samples pg_stat_activity every 0.2 s: the most connections each test database had."""

    def __init__(self, pg):
        super().__init__(daemon=True)
        self.pg, self.peak, self.done = pg, Counter(), threading.Event()

    def run(self):
        import psycopg

        names = {v: k for k, v in self.pg["dbs"].items()}
        url = os.environ.get("NBNET_TEST_PG_URL") or DEFAULT_PG_URL
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            while not self.done.wait(0.2):
                for db, n in conn.execute("SELECT datname, count(*) FROM pg_stat_activity WHERE datname = ANY(%s) "
                                          "GROUP BY datname", [list(names)]).fetchall():
                    self.peak[names[db]] = max(self.peak[names[db]], n)


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
def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tracking_server(pg, tmp_path_factory):
    """A real ``mlflow server`` (PostgreSQL backend, served artifacts) in its own process group."""
    run_dir = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
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
    from nbnet.experiment import tracking

    name = "scaleout_tiny"
    (tmp_path / f"{name}.toml").write_text(EXPERIMENT)
    study_name = f"{name}-{uuid.uuid4().hex[:6]}"
    uri = tracking_server["uri"]
    before = _statement_counts(pg) if pg["stats"] else None
    sampler = _ConnectionSampler(pg)
    sampler.start()
    t0 = time.perf_counter()
    try:
        worker_logs = _run_workers(N_WORKERS, [f"{name}.toml", "--storage", pg["urls"]["optuna"], "--study", study_name],
                                   cwd=tmp_path, env=_env(MLFLOW_TRACKING_URI=uri))
    finally:
        sampler.done.set()
        sampler.join()
    sweep_seconds = time.perf_counter() - t0
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

    # --- the CLI works through the server with nothing but MLFLOW_TRACKING_URI ---------------------
    nb = [str(Path(sys.executable).parent / "nbnet")]
    env = _env(MLFLOW_TRACKING_URI=uri)
    best = subprocess.run(nb + ["best", "--study", study_name, "--storage", pg["urls"]["optuna"], "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert best.returncode == 0, best.stderr
    b = json.loads(best.stdout)
    assert b["run_id"] in children and b["value"] == pytest.approx(study.best_value)
    iris = load_iris(as_frame=True).frame.drop(columns="target")
    iris.to_csv(tmp_path / "iris.csv", index=False)
    pred = subprocess.run(nb + ["predict", f"models:/{name}@champion", "iris.csv", "-o", "pred.csv"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert pred.returncode == 0, pred.stderr
    assert len((tmp_path / "pred.csv").read_text().strip().splitlines()) == len(iris) + 1  # header + rows
    rerun = subprocess.run(nb + ["rerun", b["run_id"], "--json"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert client.get_run(json.loads(rerun.stdout)["run_id"]).data.tags["nbnet.rerun_of"] == b["run_id"]

    # --- what the sweep cost the database (the README's capacity note) -----------------------------
    if after is not None:
        report = _capacity_report(before, after, n_trials=len(trials), epochs=EPOCHS, workers=N_WORKERS)
        some_run = trial_runs[0]
        per_epoch = sorted(k for k in children[some_run].data.metrics
                           if len(client.get_metric_history(some_run, k)) == EPOCHS)
        report.update(sweep_seconds=round(sweep_seconds, 1), peak_connections=dict(sampler.peak),
                      mlflow_metrics_per_epoch=per_epoch,
                      trial_seconds=[round((t.datetime_complete - t.datetime_start).total_seconds(), 2) for t in trials])
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
        # pg_stat_statements may list one normalised text under several query ids: sum by text.
        def by_text(entries):
            calls, rows = Counter(), Counter()
            for q, c, r in entries:
                calls[q] += c
                rows[q] += r
            return calls, rows

        (c0, r0), (c1, r1) = by_text(before.get(db, [])), by_text(after.get(db, []))
        calls_by, rows_by = Counter(), Counter()
        total = writes = commits = 0
        for q in c1:
            dc, dr = c1[q] - c0[q], r1[q] - r0[q]
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


def _wait_for(condition, what: str, timeout: float = 180.0, every: float = 0.1):
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(every)  # polling interval of a condition on another process's state


def test_a_dead_workers_trial_is_failed_by_its_heartbeat_and_retried(pg, tracking_server, tmp_path):
    """A worker on 'another machine' dies mid-trial: a worker started later finds the trial's Optuna
    heartbeat stale, fails it, closes its MLflow run FAILED and runs its parameters again."""
    import mlflow
    import optuna
    import psycopg

    name = "scaleout_stale"
    # Long enough trials that the test catches one running (150 epochs of iris: about a second).
    (tmp_path / f"{name}.toml").write_text(
        EXPERIMENT.replace(f"n_trials = {N_TRIALS}", "n_trials = 3").replace(f"epochs = {EPOCHS}", "epochs = 150"))
    study_name = f"{name}-{uuid.uuid4().hex[:6]}"
    url, uri = pg["urls"]["optuna"], tracking_server["uri"]
    env = _env(MLFLOW_TRACKING_URI=uri, NBNET_HEARTBEAT_SECONDS="1", NBNET_GRACE_SECONDS="2")
    sweep = [str(Path(sys.executable).parent / "nbnet"), "sweep", f"{name}.toml", "--storage", url, "--study", study_name]
    storage = optuna.storages.RDBStorage(url)  # no heartbeat of its own

    def running_trial():
        assert doomed.poll() is None, f"the first worker exited early:\n{(tmp_path / 'doomed.log').read_text()}"
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:  # not created yet
            return None
        live = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                if "mlflow_run_id" in t.user_attrs]
        return live[0] if live else None

    with open(tmp_path / "doomed.log", "w") as log:
        doomed = subprocess.Popen(sweep, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        victim = _wait_for(running_trial, "the first worker to run a trial")
        os.killpg(doomed.pid, signal.SIGKILL)  # the machine is gone: no exit handler runs
        doomed.wait()
    finally:
        if doomed.poll() is None:
            os.killpg(doomed.pid, signal.SIGKILL)
    tid = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), victim.number)
    assert storage.get_trial(tid).state == optuna.trial.TrialState.RUNNING, "finished before the kill"
    # Make it another machine's trial: this host's dead-pid check must not be what catches it.
    storage.set_trial_user_attr(tid, "host", "another-machine")

    def heartbeat_age() -> float:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SELECT EXTRACT(EPOCH FROM now() - heartbeat) FROM trial_heartbeats "
                               "WHERE trial_id = %s", [tid]).fetchone()
        return float(row[0]) if row else 0.0

    assert heartbeat_age() < 30, "the dead worker never recorded a heartbeat"
    _wait_for(lambda: heartbeat_age() > 2.5, "the heartbeat to go stale (grace 2 s)", timeout=60, every=0.25)

    rescuer = subprocess.run(sweep, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rescuer.returncode == 0, rescuer.stdout + rescuer.stderr

    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    dead = trials[victim.number]
    assert dead.state.name == "FAIL"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == victim.params and retries[0].system_attrs["retry_history"] == [victim.number]
    states = Counter(t.state.name for t in trials)
    assert states == {"COMPLETE": 3, "FAIL": 1}, f"{states}: the stale trial must not count against n_trials"

    client = mlflow.MlflowClient(tracking_uri=uri)
    dead_run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert dead_run.info.status == "FAILED" and dead_run.data.tags["optuna.state"] == "FAIL"
    assert "no heartbeat" in dead_run.data.tags["nbnet.reason"]
    parent = optuna.load_study(study_name=study_name, storage=storage).user_attrs["nbnet.parent_run_id"]
    runs = {t.user_attrs["mlflow_run_id"]: t for t in trials if t is not dead}
    runs[dead_run.info.run_id] = dead
    assert len(runs) == len(trials), "each trial, the retry included, has its own run"
    for run_id, t in runs.items():
        r = client.get_run(run_id)
        assert r.data.tags["mlflow.parentRunId"] == parent
        assert r.info.status == {"COMPLETE": "FINISHED", "FAIL": "FAILED"}[t.state.name]
    assert client.get_run(parent).info.status == "FINISHED"


# --- the trial budget: exact when processes race (nbnet.experiment.sweep.budget) ------------------
BUDGET_REPETITIONS = 10
BUDGET_TRIALS = 6


def test_four_processes_on_one_postgresql_study_start_exactly_the_missing_trials(pg, tracking_server, tmp_path):
    """Four sweep processes, as on four machines, start together on a fresh PostgreSQL study with
    near-instant trials, ten times: every repetition has exactly N finished trials and N trial
    runs. (Counting, then asking Optuna for a trial, without the claim: 4 workers finish their
    first trials together, all see 4 of 6 and all start one more.)"""
    import mlflow
    import optuna

    name = "budget_pg"
    (tmp_path / f"{name}.toml").write_text(BUDGET_EXPERIMENT.format(n_trials=BUDGET_TRIALS))
    url, uri = pg["urls"]["optuna"], tracking_server["uri"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    storage = optuna.storages.RDBStorage(url)
    tag = uuid.uuid4().hex[:6]
    sweepers = Sweepers(tmp_path, tmp_path / f"{name}.toml", count=4, storage=url, env=_env(MLFLOW_TRACKING_URI=uri))
    tallies = []
    try:
        for rep in range(BUDGET_REPETITIONS):
            study_name = f"{name}-{tag}-{rep}"
            sweepers.sweep(study_name)
            runs = _all_runs(client, client.get_experiment_by_name(name).experiment_id)
            tallies.append(tally(optuna.load_study(study_name=study_name, storage=storage), runs))
    finally:
        sweepers.close()
    print(json.dumps(tallies))
    over = [i for i, t in enumerate(tallies) if t["trials"] > BUDGET_TRIALS]
    assert not over, f"{len(over)} of {BUDGET_REPETITIONS} repetitions started more than {BUDGET_TRIALS} trials: {tallies}"
    for t in tallies:
        assert t["counted"] == t["trials"] == BUDGET_TRIALS and t["states"] == {"COMPLETE": BUDGET_TRIALS}, tallies
        assert t["runs"] == BUDGET_TRIALS and not t["run_names"] and not t["open_runs"], tallies
    assert max(t["workers"] for t in tallies) >= 3, tallies  # the processes did race for the trials


def test_a_worker_that_dies_holding_the_postgresql_claim_leaks_no_slot(pg, tracking_server, tmp_path):
    """A process holds the study's advisory lock, has created a trial and is killed before it records
    itself as the owner (no heartbeat either): the lock dies with its session, so the next sweep
    is not blocked; the orphan is failed once older than the grace period and its parameters run
    again; the study ends with exactly N counted trials (the retried one counts once)."""
    import mlflow
    import optuna

    name = "budget_orphan"
    (tmp_path / f"{name}.toml").write_text(BUDGET_EXPERIMENT.format(n_trials=BUDGET_TRIALS))
    url, uri = pg["urls"]["optuna"], tracking_server["uri"]
    study_name = f"{name}-{uuid.uuid4().hex[:6]}"
    env = _env(MLFLOW_TRACKING_URI=uri, NBNET_HEARTBEAT_SECONDS="1", NBNET_GRACE_SECONDS="5")
    number, lr = die_holding_the_claim(url, study_name, cwd=tmp_path, env=env)
    sweepers = Sweepers(tmp_path, tmp_path / f"{name}.toml", count=1, workers=2, storage=url, env=env)
    try:
        sweepers.sweep(study_name, timeout=300)  # a lock left behind would block every claim
    finally:
        sweepers.close()
    study = optuna.load_study(study_name=study_name, storage=optuna.storages.RDBStorage(url))
    trials = study.get_trials(deepcopy=False)
    orphan = trials[number]
    assert orphan.state.name == "FAIL" and orphan.user_attrs["stale"] and "died" in orphan.user_attrs["fail_reason"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == number]
    assert retry.state.name == "COMPLETE" and retry.params["train.learning_rate"] == pytest.approx(lr)
    client = mlflow.MlflowClient(tracking_uri=uri)
    t = tally(study, _all_runs(client, client.get_experiment_by_name(name).experiment_id))
    assert t["counted"] == BUDGET_TRIALS and t["trials"] == BUDGET_TRIALS + 1, t
    assert t["runs"] == BUDGET_TRIALS and t["run_names"] == [f"trial-{number}"] and not t["open_runs"], t
