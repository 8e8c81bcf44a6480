"""MLflow's and Optuna's own tools on nbnet's results, run as a user runs them: after `nbnet sweep`
in a fresh project folder, the `mlflow` executable of the venv, from that folder, with no
MLFLOW_TRACKING_URI. The data set is built here: a penguins-like CSV with integer columns, NaN in
numeric and text columns, two categorical columns and string labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from servers import free_port

BIN = Path(sys.executable).parent
NAME = "penguins"

TOML = f"""
[data]
source = "csv:{NAME}.csv"
target = "species"
categorical = ["island", "sex"]
val_fraction = 0.25
cleaning = {{ nan = "impute" }}
preprocessing = {{ impute = "median", scale = "standard" }}
[model]
hidden_layer_sizes = [8]
[train]
epochs = 8
batch_size = 16
learning_rate = 0.01
[search]
sampler = "random"
pruner = "none"
n_trials = 2
metric = "val_accuracy"
[search.space]
"train.learning_rate" = {{ type = "float", low = 3e-3, high = 3e-2, log = true }}
"""


def penguins(n: int, seed: int, *, labels: bool = True) -> pd.DataFrame:
    """Three species told apart by bill and mass; integer columns (flipper, mass, year) as in the
    real data set; NaN in a float column and in both text columns."""
    rng = np.random.default_rng(seed)
    sp = rng.integers(0, 3, n)
    df = pd.DataFrame({
        "island": np.array(["Biscoe", "Dream", "Torgersen"])[(sp + rng.integers(0, 2, n)) % 3].astype(object),
        "bill_length_mm": np.round(np.array([38.8, 47.5, 48.8])[sp] + rng.normal(0, 2.0, n), 1),
        "bill_depth_mm": np.round(np.array([18.3, 15.0, 18.4])[sp] + rng.normal(0, 0.8, n), 1),
        "flipper_length_mm": (np.array([190, 217, 196])[sp] + rng.integers(-8, 9, n)).astype(np.int64),
        "body_mass_g": (np.array([3700, 5075, 3733])[sp] + rng.integers(-400, 401, n)).astype(np.int64),
        "sex": rng.choice(["male", "female"], n).astype(object),
        "year": rng.integers(2007, 2010, n).astype(np.int64),
    })
    df.loc[rng.choice(n, max(2, n // 20), replace=False), "bill_length_mm"] = np.nan
    df.loc[rng.choice(n, max(2, n // 20), replace=False), "sex"] = None
    df.loc[rng.choice(n, max(1, n // 40), replace=False), "island"] = None
    if labels:
        df["species"] = np.array(["Adelie", "Gentoo", "Chinstrap"])[sp]
    return df


def user_env(**extra) -> dict:
    """The user's shell: no MLFLOW_TRACKING_URI; the venv's bin first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "NBNET_STORE_NOTICE_SHOWN")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(cmd: list, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or user_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd}: {r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder after `nbnet sweep penguins.toml` (two trials, the best registered as champion)."""
    folder = tmp_path_factory.mktemp("project")
    penguins(240, 0).to_csv(folder / f"{NAME}.csv", index=False)
    held = penguins(60, 1, labels=False)
    held.to_csv(folder / "new.csv", index=False)
    (folder / f"{NAME}.toml").write_text(TOML)
    r = run([sys.executable, "-m", "nbnet", "sweep", f"{NAME}.toml", "-q"], folder)
    assert f"models:/{NAME}@champion" in r.stdout
    best = next(line.split()[2] for line in r.stdout.splitlines() if line.startswith("best run:"))
    return folder, best


@pytest.mark.slow
def test_the_store_is_where_mlflow_looks(project):
    folder, _ = project
    assert (folder / "mlflow.db").is_file() and not (folder / "mlruns" / "mlflow.db").exists()
    assert (folder / "mlruns" / "optuna" / f"{NAME}.log").is_file()  # Optuna's journal and
    assert any((folder / "mlruns" / "artifacts").rglob("model.nbnet"))  # the artifacts stay in mlruns/
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", "mlflow.db"], cwd=Path(__file__).parents[1])
    assert ignored.returncode == 0, ".gitignore must ignore a top-level mlflow.db"


@pytest.mark.slow
def test_mlflow_runs_list_and_search_runs_find_the_sweep(project):
    folder, best = project
    exps = run([BIN / "mlflow", "experiments", "search"], folder).stdout
    exp_id = next(line.split()[0] for line in exps.splitlines() if NAME in line.split())
    runs = run([BIN / "mlflow", "runs", "list", "--experiment-id", exp_id], folder).stdout
    assert best in runs and "trial-0" in runs and "trial-1" in runs and f"sweep-{NAME}" in runs
    code = ("import json, mlflow; df = mlflow.search_runs(experiment_names=['%s'], "
            "filter_string=\"tags.`nbnet.kind` = 'trial'\"); print(json.dumps(sorted(df['run_id'])))" % NAME)
    trials = json.loads(run([sys.executable, "-c", code], folder).stdout.strip().splitlines()[-1])
    assert len(trials) == 2 and best in trials


@pytest.mark.slow
def test_mlflow_models_predict_on_a_raw_csv_equals_nbnet_predict(project):
    """Integer columns stay int64 and NaN stays NaN in `mlflow models predict -t csv` (pandas reads
    the file as it is): the signature accepts them and the answer is nbnet predict's, exactly."""
    import mlflow

    folder, _ = project
    held = pd.read_csv(folder / "new.csv")
    assert held["year"].dtype == np.int64 and held["bill_length_mm"].isna().any() and held["sex"].isna().any()
    uri = f"models:/{NAME}@champion"
    run([sys.executable, "-m", "nbnet", "predict", uri, "new.csv", "-o", "nbnet.csv"], folder)
    run([BIN / "mlflow", "models", "predict", "-m", uri, "-i", "new.csv", "-t", "csv", "-o", "mlflow.json",
         "--env-manager", "local"], folder)
    got = json.loads((folder / "mlflow.json").read_text())["predictions"]
    expected = pd.read_csv(folder / "nbnet.csv")["prediction"].tolist()
    assert len(set(expected)) > 1 and got == expected
    from nbnet.experiment import tracking

    with tracking.global_uri(f"sqlite:///{folder}/mlflow.db"):
        info = mlflow.models.get_model_info(f"runs:/{project[1]}/model")
    cols = {c["name"]: c for c in info.signature.inputs.to_dict()}
    assert cols["year"]["type"] == "long" and cols["flipper_length_mm"]["type"] == "long"
    assert cols["island"]["type"] == "string" and cols["sex"]["type"] == "string"
    assert cols["bill_length_mm"]["type"] == "double" and cols["bill_length_mm"]["required"] is False
    assert cols["sex"]["required"] is False and cols["year"]["required"] is True


def test_pyfunc_takes_a_dataframe_and_a_named_numpy_array(tmp_path, monkeypatch, empty_store_db):
    """The calls the README shows: a DataFrame with the signature's columns, and a NumPy array
    given those column names."""
    import mlflow
    from stores import fresh_store

    import nbnet
    from nbnet.data.load import load_dataset
    from nbnet.experiment import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_store(tmp_path, empty_store_db))
    penguins(120, 2).dropna().drop(columns=["island", "sex"]).to_csv(tmp_path / "p.csv", index=False)
    ds = load_dataset(f"csv:{tmp_path / 'p.csv'}", target="species")
    clf = nbnet.MLPClassifier((6,), epochs=5, seed=0, preprocessing={"scale": "standard"}).fit(ds.X, ds.y)
    run_id = tracking.start_run(tracking.ensure_experiment("numpy"), run_name="np")
    uri = tracking.log_model(run_id, clf, ds.X[:5], feature_names=ds.feature_names, column_types=ds.column_types)
    tracking.end_run(run_id)
    model = mlflow.pyfunc.load_model(uri)
    schema = model.metadata.get_input_schema()
    names = schema.input_names()
    assert names == ds.feature_names
    X = ds.X[:30]
    expected = clf.predict(X)
    frame = pd.DataFrame(X, columns=names).astype(dict(zip(names, schema.pandas_types())))  # as the README shows
    np.testing.assert_array_equal(model.predict(frame), expected)
    with pytest.raises(mlflow.exceptions.MlflowException, match="missing inputs"):
        model.predict(X)  # MLflow matches a column-based signature by name: a bare array has none
    raw = pd.read_csv(tmp_path / "p.csv").drop(columns="species").iloc[:30]
    np.testing.assert_array_equal(model.predict(raw), expected)  # the file's own dtypes
    np.testing.assert_array_equal(nbnet.load(uri).predict(X), expected)  # nbnet takes the array as it is


@pytest.mark.slow
def test_optuna_reads_the_studys_journal_in_a_fresh_process(project):
    folder, _ = project
    code = ("import optuna; from optuna.storages import JournalStorage; "
            "from optuna.storages.journal import JournalFileBackend; "
            f"s = optuna.load_study(study_name='{NAME}', storage=JournalStorage(JournalFileBackend('mlruns/optuna/{NAME}.log'))); "
            "print(len(s.trials), s.best_trial.user_attrs['mlflow_run_id'])")
    n, run_id = run([sys.executable, "-c", code], folder).stdout.split()[-2:]
    assert n == "2" and run_id == project[1]


@pytest.mark.slow
def test_optuna_dashboard_serves_the_journal(project, tmp_path):
    import shutil

    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is in the dev extra; not installed here")
    folder, _ = project
    env = user_env()
    exe = shutil.which("optuna-dashboard", path=env["PATH"])
    assert exe, "the optuna-dashboard command is not on PATH"
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen([exe, f"mlruns/optuna/{NAME}.log", "--port", str(port), "--host", "127.0.0.1"],
                            cwd=folder, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        body = json.loads(_poll(f"http://127.0.0.1:{port}/api/studies", proc, 120))
        assert [s["study_name"] for s in body["study_summaries"]] == [NAME]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _poll(url: str, proc: subprocess.Popen, timeout: float, data: bytes | None = None, headers=None) -> bytes:
    """The body of ``url``'s answer once the server answers 200 (polled; fails if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            req = urllib.request.Request(url, data=data, headers=headers or {})
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status == 200:
                    return r.read()
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer within {timeout} s"
        time.sleep(0.5)  # polling interval while the server starts


@pytest.mark.slow
def test_the_model_deploys_from_its_own_requirements(project, tmp_path):
    """`mlflow models serve --env-manager uv` builds a fresh environment from the model's own
    requirements.txt (the package index for the pinned requirements; nbnet from the wheel inside
    the model), with no nbnet checkout on the path, and answers like nbnet predict."""
    folder, _ = project
    env = user_env(MLFLOW_ENV_ROOT=str(tmp_path / "envs"))
    env.pop("PYTHONPATH", None)  # nothing of this checkout reaches the new environment
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([BIN / "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager",
                             "uv", "-h", "127.0.0.1", "-p", str(port)], cwd=folder, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _poll(f"http://127.0.0.1:{port}/ping", proc, 900)
        answer = json.loads(_poll(f"http://127.0.0.1:{port}/invocations", proc, 60, (folder / "new.csv").read_bytes(),
                                  {"Content-Type": "text/csv"}))
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        log.close()
    run([sys.executable, "-m", "nbnet", "predict", f"models:/{NAME}@champion", "new.csv", "-o", "nbnet.csv"], folder)
    assert answer["predictions"] == pd.read_csv(folder / "nbnet.csv")["prediction"].tolist()
    (record,) = (tmp_path / "envs").rglob("nbnet-*.dist-info/direct_url.json")  # nbnet came from the model's wheel
    assert "/wheels/nbnet-" in json.loads(record.read_text())["url"]
    assert not list((tmp_path / "envs").rglob("*nbnet*.pth"))  # not an editable install of a checkout


def test_column_types_are_the_files_own(tmp_path):
    """What the signature is built from: each feature column as pandas reads the CSV."""
    from nbnet.data.load import load_dataset

    penguins(80, 3).to_csv(tmp_path / "p.csv", index=False)
    ds = load_dataset(f"csv:{tmp_path / 'p.csv'}", target="species", categorical=["island", "sex"])
    frame = pd.read_csv(tmp_path / "p.csv")
    assert set(ds.column_types) == set(frame.columns) - {"species"}
    for c, spec in ds.column_types.items():
        kind = {"i": "long", "f": "double"}.get(frame[c].dtype.kind, "string")
        assert spec == {"type": kind, "required": not frame[c].isna().any()}, c
    assert ds.column_types["year"] == {"type": "long", "required": True}
    assert ds.column_types["sex"] == {"type": "string", "required": False}
