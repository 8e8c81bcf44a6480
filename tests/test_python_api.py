"""The Python-first API against real MLflow stores and real Optuna storages: nbnet.mlflow's
autolog, log_model and load_model; nbnet.sweep on in-memory data (journal file and PostgreSQL
storages, spawned workers); nbnet.optuna.PruningCallback and the docs' example of it; and the
MLflow 3 records of every run (data set inputs, metrics linked to the LoggedModel)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest

import nbnet
import nbnet.mlflow
from nbnet.data.load import data_hash, load_dataset, register_arrays
from nbnet.errors import NbnetError
from nbnet.experiment import config as C
from nbnet.experiment import tracking
from nbnet.experiment.run import train_once, train_run
from nbnet.experiment.sweep import sweep_config
from nbnet.nn.callbacks import FIT_HOOKS
from nbnet.optuna import PruningCallback
from stores import fresh_store, pg_database

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"train.epochs": 3, "model.hidden_layer_sizes": (8,), "train.batch_size": 32,
         "data.preprocessing.scale": "standard"}
SPACE = {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


@pytest.fixture
def store(tmp_path, empty_store_db, monkeypatch):
    """A fresh SQLite store, set as MLflow's tracking URI (as a notebook user would)."""
    uri = fresh_store(tmp_path, empty_store_db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    nbnet.mlflow.autolog(disable=True)
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _runs(uri, experiment_ids=("0",)):
    return tracking.client(uri).search_runs(list(experiment_ids), max_results=100)


class BatchCounter:
    """Counts the ``log_batch`` calls that reach the store (each still goes through)."""

    def __init__(self, monkeypatch, uri):
        c = tracking.client(uri)
        self.calls, real = [], c.log_batch
        monkeypatch.setattr(c, "log_batch", lambda run_id, **kw: (self.calls.append(kw), real(run_id, **kw))[1])

    def metric_batches(self) -> int:
        return sum(1 for kw in self.calls if kw.get("metrics"))


# --- autolog ---------------------------------------------------------------------------------------
def test_autolog_in_an_active_run_logs_params_metrics_data_set_and_model(store, iris, monkeypatch):
    X, y = iris
    counter = BatchCounter(monkeypatch, store)
    nbnet.mlflow.autolog()
    with mlflow.start_run() as active:
        clf = nbnet.MLPClassifier((8,), epochs=5, seed=0, learning_rate=0.01).fit(X, y, validation_data=(X, y))
    run = mlflow.get_run(active.info.run_id)
    assert run.data.params["hidden_layer_sizes"] == "[8]" and run.data.params["learning_rate"] == "0.01"
    assert run.data.tags["nbnet.kind"] == "autolog" and run.data.tags["nbnet.data_hash"] == data_hash(X, y)
    history = tracking.client(store).get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(clf.history_["val_loss"])
    assert counter.metric_batches() == 1, "five epochs of metrics must go in one batch"
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("train", data_hash(X, y)[:16])
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    (out,) = run.outputs.model_outputs
    model = mlflow.get_logged_model(out.model_id)
    linked = {m.key: m for m in model.metrics}
    assert linked["val_accuracy"].value == pytest.approx(clf.history_["val_accuracy"][-1])
    assert linked["loss"].dataset_name == "train" and linked["val_loss"].dataset_name is None
    back = nbnet.mlflow.load_model(f"models:/{out.model_id}")
    assert np.array_equal(back.predict(X), clf.predict(X))


def test_autolog_starts_and_ends_runs_of_its_own_and_disable_stops_it(store, iris):
    X, y = iris
    nbnet.mlflow.autolog(log_models=False, extra_tags={"team": "a"})
    clf = nbnet.MLPClassifier((8,), epochs=2, seed=0).fit(X, y)
    clf.partial_fit(X, y, epochs=2)
    runs = _runs(store)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.data.tags["team"] == "a" and not r.outputs.model_outputs for r in runs)
    partial = next(r for r in runs if "loss" in r.data.metrics and
                   sorted(m.step for m in tracking.client(store).get_metric_history(r.info.run_id, "loss")) == [3, 4])
    assert partial.inputs.dataset_inputs[0].dataset.name == "train"
    nbnet.mlflow.autolog(disable=True)
    assert not FIT_HOOKS
    nbnet.MLPClassifier((8,), epochs=1).fit(X, y)
    assert len(_runs(store)) == 2


def test_autolog_marks_its_run_failed_when_the_fit_raises(store, iris):
    X, y = iris
    nbnet.mlflow.autolog()

    def boom(epoch, logs):
        if epoch == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        nbnet.MLPClassifier((8,), epochs=4).fit(X, y, callbacks=[boom])
    (run,) = _runs(store)
    assert run.info.status == "FAILED" and mlflow.active_run() is None
    assert sorted(m.step for m in tracking.client(store).get_metric_history(run.info.run_id, "loss")) == [1, 2]


def test_autolog_exclusive_leaves_the_users_run_alone(store, iris):
    X, y = iris
    nbnet.mlflow.autolog(exclusive=True)
    with mlflow.start_run() as active:
        nbnet.MLPClassifier((8,), epochs=1).fit(X, y)
    assert len(_runs(store)) == 1 and not mlflow.get_run(active.info.run_id).data.params


def test_autolog_warns_and_the_fit_survives_a_store_that_fails(tmp_path, iris, monkeypatch):
    X, y = iris
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-a-folder").write_text("")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/not-a-folder/mlflow.db")  # cannot be created
    try:
        nbnet.mlflow.autolog()
        with pytest.warns(UserWarning, match="autolog could not log to MLflow"):
            clf = nbnet.MLPClassifier((8,), epochs=2).fit(X, y)
        assert clf.n_epochs_ == 2 and mlflow.active_run() is None
        nbnet.mlflow.autolog(silent=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            nbnet.MLPClassifier((8,), epochs=1).fit(X, y)
    finally:
        nbnet.mlflow.autolog(disable=True)
        mlflow.set_tracking_uri(None)


# --- log_model / load_model ----------------------------------------------------------------------
def test_a_frame_fitted_model_predicts_through_pyfunc_by_name_without_warnings(store, iris):
    X, y = iris
    df = pd.DataFrame(X, columns=["sl", "sw", "pl", "pw"])
    clf = nbnet.MLPClassifier((8,), epochs=3, seed=0).fit(df, y)
    info = nbnet.mlflow.log_model(clf, input_example=df.head())
    model = mlflow.pyfunc.load_model(info.model_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # scikit-learn's feature-name warnings included
        got = model.predict(df[["pw", "pl", "sw", "sl"]])  # columns in another order: matched by name
    assert np.array_equal(got, clf.predict(df))


def test_log_model_and_load_model_with_mlflows_argument_names(store, iris):
    X, y = iris
    clf = nbnet.MLPClassifier((8,), epochs=3, seed=0).fit(X, y)
    df = pd.DataFrame(X[:5], columns=["sl", "sw", "pl", "pw"])
    info = nbnet.mlflow.log_model(clf, name="iris_mlp", input_example=df, registered_model_name="iris-mlp")
    assert info.model_uri == f"models:/{info.model_id}" and info.signature.inputs.input_names() == list(df.columns)
    (run,) = _runs(store)  # no active run: one was started for the model and ended
    assert run.info.run_id == info.run_id and run.info.status == "FINISHED"
    for uri in (info.model_uri, "models:/iris-mlp/1", f"runs:/{info.run_id}/iris_mlp"):
        est = nbnet.mlflow.load_model(uri)
        assert type(est) is nbnet.MLPClassifier and np.array_equal(est.predict(X), clf.predict(X))
    frame = pd.DataFrame(X, columns=df.columns)
    assert np.array_equal(mlflow.pyfunc.load_model(info.model_uri).predict(frame), clf.predict(X))
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle")]
    with mlflow.start_run() as active:
        inside = nbnet.mlflow.log_model(clf)
    assert inside.run_id == active.info.run_id
    with pytest.raises(NbnetError, match="fitted"):
        nbnet.mlflow.log_model(nbnet.MLPClassifier())
    with pytest.raises(NbnetError, match="name"):
        nbnet.mlflow.log_model(clf, name="a/b")


# --- nbnet.sweep -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_on_arrays_is_the_clis_sweep_tracked_resumed_and_registered(store, iris):
    X, y = iris
    nbnet.mlflow.autolog()  # the trials are tracked by the sweep: autolog must not add runs
    res = nbnet.sweep(X, y, space=SPACE, trials=3, params=SMALL, tracking_uri=store, quiet=True,
                      registered_model_name="iris-sweep")
    assert res.n_complete == 3 and res.study_name == f"sweep-{data_hash(X, y)[:8]}"
    assert np.array_equal(res.best_estimator.predict(X), nbnet.load(f"runs:/{res.best_run_id}/model").predict(X))
    assert res.model_uri == "models:/iris-sweep/1" and res.champion
    exp = tracking.client(store).get_experiment_by_name("sweep")
    runs = _runs(store, [exp.experiment_id])
    assert len(runs) == 4 and len(_runs(store)) == 0  # parent + 3 trials, nothing in the default experiment
    best = tracking.client(store).get_run(res.best_run_id)
    assert best.data.params["data.source"] == f"memory:data@{data_hash(X, y)[:16]}"
    inputs = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in best.inputs.dataset_inputs}
    assert inputs == {"data-train": "training", "data-val": "validation"}
    model = mlflow.get_logged_model(best.outputs.model_outputs[0].model_id)
    linked = {m.key: m for m in model.metrics}
    assert linked["val_accuracy"].value == pytest.approx(res.best_value) and linked["val_accuracy"].dataset_name == "data-val"
    again = nbnet.sweep(X, y, space=SPACE, trials=4, params=SMALL, tracking_uri=store, quiet=True)
    assert (again.n_run, again.n_complete, again.parent_run_id) == (1, 4, res.parent_run_id)
    # another process has no such data: nbnet rerun says so in one line, exit status 2
    out = subprocess.run([sys.executable, "-m", "nbnet", "rerun", res.best_run_id], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": store}, timeout=300)
    assert out.returncode == 2 and "in-memory data of another process" in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("nbnet: error:") and "Traceback" not in out.stderr


def test_sweep_on_a_dataframe_with_text_categories_and_missing_values(store):
    rng = np.random.default_rng(0)
    n = 160
    df = pd.DataFrame({"size": rng.normal(size=n), "count": rng.integers(0, 5, n).astype(float),
                       "colour": rng.choice(["red", "blue", "green"], n)})
    df.loc[::10, "size"] = np.nan
    y = np.where((df["colour"] == "red") | (df["count"] > 2), "yes", "no")
    res = nbnet.sweep(df, y, space=SPACE, trials=2, params={**SMALL, "data.preprocessing.impute": "median"},
                      name="frame", tracking_uri=store, quiet=True)
    assert res.n_complete == 2 and set(res.best_estimator.classes_) == {"no", "yes"}
    served = mlflow.pyfunc.load_model(f"runs:/{res.best_run_id}/model").predict(df)
    assert set(np.asarray(served)) <= {"no", "yes"} and len(served) == n


def test_sweep_and_memory_specs_refuse_bad_input(store, iris):
    X, y = iris
    with pytest.raises(NbnetError, match="space must be"):
        nbnet.sweep(X, y, space={}, tracking_uri=store)
    with pytest.raises(NbnetError, match="unknown config key 'train.nope'"):
        nbnet.sweep(X, y, space={"train.nope": {"type": "int", "low": 1, "high": 2}}, tracking_uri=store)
    with pytest.raises(NbnetError, match="one label per row"):
        nbnet.sweep(X, y[:-1], space=SPACE, tracking_uri=store)
    with pytest.raises(NbnetError, match="--workers takes a number of worker processes or 'auto', not 'two'"):
        nbnet.sweep(X, y, space=SPACE, workers="two", tracking_uri=store)
    with pytest.raises(NbnetError, match="another process"):
        load_dataset("memory:gone@0123456789abcdef")
    spec = register_arrays(X, y, name="iris")
    assert load_dataset(spec).n_samples == 150 and spec == register_arrays(X.copy(), y.copy(), name="iris")


def test_sweep_with_auto_workers_records_its_plan(store, iris):
    X, y = iris
    res = nbnet.sweep(X, y, space=SPACE, trials=2, params=SMALL, workers="auto", tracking_uri=store, quiet=True)
    tags = mlflow.MlflowClient(store).get_run(res.parent_run_id).data.tags
    assert tags["nbnet.sweep.workers"] == "1" and tags["nbnet.sweep.plan"].startswith("auto, 2 short trials left")


def test_sweep_config_starts_from_an_experiment_file_with_the_arrays_as_data(iris):
    X, y = iris
    spec = register_arrays(X, y, name="iris")
    cfg = sweep_config(spec, space=SPACE, trials=5, params={"train.epochs": 2}, experiment="wine")
    assert (cfg.name, cfg.data.source, cfg.data.val_fraction, cfg.model.activation) == ("wine", spec, 0.25, "tanh")
    assert (cfg.search.n_trials, list(cfg.search.space), cfg.train.epochs) == (5, ["train.learning_rate"], 2)
    reg = sweep_config(register_arrays(X, X[:, 0] * 1.5, name="reg"), space=SPACE, trials=2, name="mine")
    assert (reg.name, reg.search.metric) == ("mine", "val_r2")
    with pytest.raises(NbnetError, match="params must be a dict"):
        sweep_config(spec, space=SPACE, trials=2, params=[("train.epochs", 2)])


@pytest.fixture
def pg_optuna_url():
    """A fresh PostgreSQL database for an Optuna RDB storage (dropped afterwards)."""
    with pg_database("nbnet_pyapi") as url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.mark.slow
def test_sweep_with_spawned_workers_on_a_postgresql_study(store, iris, pg_optuna_url):
    """Two workers share a PostgreSQL study. The spawned one prepares its data before it takes a
    trial; an in-memory spec it could not resolve would end it with exit code 1, and the sweep
    with "1 of 2 sweep workers died"."""
    X, y = iris
    res = nbnet.sweep(X, y, space=SPACE, trials=4, params=SMALL, workers=2, storage=pg_optuna_url,
                      tracking_uri=store, quiet=True)
    study = optuna.load_study(study_name=res.study_name, storage=pg_optuna_url)
    assert res.n_complete == 4 and [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert study.best_trial.user_attrs["mlflow_run_id"] == res.best_run_id
    assert np.array_equal(res.best_estimator.predict(X), nbnet.load(f"runs:/{res.best_run_id}/model").predict(X))


# --- PruningCallback ------------------------------------------------------------------------------
def test_pruning_callback_reports_each_epoch_and_prunes(iris):
    X, y = iris
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.99, n_warmup_steps=2))
    seen = {}

    def objective(trial):
        clf = nbnet.MLPClassifier((4,), epochs=6, learning_rate=1e-4, seed=0)
        try:
            clf.fit(X, y, validation_data=(X, y), callbacks=[PruningCallback(trial, monitor="val_accuracy")])
        finally:
            seen["epochs"] = clf.n_epochs_
        return clf.score(X, y)

    study.optimize(objective, n_trials=1)
    (t,) = study.trials
    # steps before n_warmup_steps=2 are never pruned; at step 2 the accuracy is below the threshold
    assert t.state.name == "PRUNED" and sorted(t.intermediate_values) == [1, 2] and seen["epochs"] == 2


def test_pruning_callback_interval_missing_monitor_and_bad_arguments(iris):
    X, y = iris
    trial = optuna.create_study().ask()
    with pytest.warns(UserWarning, match="'val_loss' is not in the fit's per-epoch logs"):
        nbnet.MLPClassifier((4,), epochs=3).fit(X, y, callbacks=[PruningCallback(trial)])
    trial2 = optuna.create_study().ask()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nbnet.MLPClassifier((4,), epochs=4).fit(X, y, callbacks=[PruningCallback(trial2, "loss", interval=2)])
    assert sorted(trial2.study.trials[0].intermediate_values) == [2, 4]
    with pytest.raises(NbnetError, match="interval"):
        PruningCallback(trial2, interval=0)


@pytest.mark.slow
def test_the_docs_pruning_example_runs_and_prunes(tmp_path):
    text = (ROOT / "docs" / "python.md").read_text()
    code = re.search(r"```python\n(.*?)```", text.split("<!-- example: pruning -->", 1)[1], re.S).group(1)
    (tmp_path / "example.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    m = re.search(r"best (\S+) with .*; (\d+) complete, (\d+) pruned", out.stdout)
    assert m and float(m.group(1)) > 0.9 and int(m.group(2)) + int(m.group(3)) == 12 and int(m.group(3)) >= 1, out.stdout


# --- MLflow 3 records of nbnet train --------------------------------------------------------------
def test_train_runs_log_their_splits_and_link_final_scores_to_the_model(store):
    cfg = C.from_dict({"data": {"source": "builtin:iris", "test_fraction": 0.2},
                       "model": {"hidden_layer_sizes": [8]}, "train": {"epochs": 2}}, name="iris-train")
    out = train_run(cfg, uri=store)
    run = tracking.client(store).get_run(out["run_id"])
    ctx = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in run.inputs.dataset_inputs}
    assert ctx == {"iris-train": "training", "iris-val": "validation", "iris-test": "test"}
    assert len({d.dataset.digest for d in run.inputs.dataset_inputs}) == 3
    model = mlflow.get_logged_model(run.data.tags["nbnet.model_id"])
    linked = {m.key: m.dataset_name for m in model.metrics}
    assert linked["val_accuracy"] == "iris-val" and linked["test_accuracy"] == "iris-test"
    assert {m.key: m.value for m in model.metrics}["val_accuracy"] == pytest.approx(out["metrics"]["val_accuracy"])


def test_a_run_stopped_during_its_fit_still_names_its_data(store):
    cfg = C.from_dict({"data": {"source": "builtin:iris"}, "model": {"hidden_layer_sizes": [8]},
                       "train": {"epochs": 3}}, name="iris-stopped")
    exp = tracking.ensure_experiment(cfg.name, store)
    run_id = tracking.start_run(exp, run_name="stopped", uri=store)

    def prune(epoch, logs):
        raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    with pytest.raises(optuna.TrialPruned):
        train_once(cfg, run_id=run_id, uri=store, callbacks=[prune])
    tracking.end_run(run_id, "KILLED", uri=store)
    run = tracking.client(store).get_run(run_id)
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"iris-train", "iris-val"}
    assert [m.step for m in tracking.client(store).get_metric_history(run_id, "loss")] == [1]
