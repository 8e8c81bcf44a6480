"""Sweeps on real stores (MLflow on SQLite, Optuna journal file) in temporary folders."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

import nbnet
from nbnet.data import prepared
from nbnet.experiment import config as C
from nbnet.experiment import sweep
from nbnet.experiment.run import build_estimator, rerun, train_once, train_run
from nbnet.experiment.trial import report_key, suggest
from nbnet.experiment import tracking
from nbnet.errors import NbnetError
from stores import fresh_store

EXPERIMENT = """
[data]
source = "builtin:wine"
val_fraction = 0.3
preprocessing = {{ scale = "standard" }}

[model]
hidden_layer_sizes = [8]

[train]
epochs = {epochs}
batch_size = 16
learning_rate = 0.01
seed = 0

[search]
sampler = "{sampler}"
pruner = "{pruner}"
n_trials = {n_trials}
metric = "val_accuracy"
n_startup_trials = 1
n_warmup_steps = 0

[search.space]
{space}
"""
SPACE = """"train.learning_rate" = { type = "float", low = 1e-3, high = 3e-2, log = true }
"model.activation" = ["relu", "tanh"]"""


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store_db):
    """A fresh project folder: MLflow SQLite store and Optuna journals under tmp/mlruns."""
    monkeypatch.chdir(tmp_path)
    uri = fresh_store(tmp_path, empty_store_db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    prepared.clear_cache()
    return uri


def experiment(tmp_path, *, name="tiny", epochs=3, sampler="tpe", pruner="none", n_trials=3, space=SPACE, overrides=()):
    f = tmp_path / f"{name}.toml"
    f.write_text(EXPERIMENT.format(epochs=epochs, sampler=sampler, pruner=pruner, n_trials=n_trials, space=space))
    return C.load_experiment(f, list(overrides))


def child_runs(uri, exp_name, parent):
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(exp_name)
    return c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=100)


def journal_study(name, tmp_path):
    return optuna.load_study(study_name=name, storage=sweep.open_storage(sweep.default_storage(name, tmp_path)))


def test_sweep_tracks_every_trial_as_a_child_run(store, tmp_path):
    cfg = experiment(tmp_path, n_trials=3)
    r = sweep.run_sweep(cfg, quiet=True)
    assert (r.n_complete, r.n_pruned, r.n_failed, r.n_run) == (3, 0, 0, 3)
    assert Path(r.storage) == tmp_path / "mlruns" / "optuna" / "tiny.log"
    c = tracking.client(store)
    parent = c.get_run(r.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.study"] == "tiny" and parent.data.tags["nbnet.kind"] == "sweep"
    assert parent.data.params["train.epochs"] == "3"
    kids = child_runs(store, "tiny", r.parent_run_id)
    assert len(kids) == 3
    study = journal_study("tiny", tmp_path)
    by_number = {t.number: t for t in study.trials}
    for run in kids:
        t = run.data.tags
        trial = by_number[int(t["optuna.trial"])]
        assert run.info.status == "FINISHED" and t["optuna.state"] == "COMPLETE"
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert t["nbnet.data_hash"] == prepared.prepare_data(cfg).hash and t["nbnet.seed"] == "0"
        assert "nbnet.version" in t and "numba.version" in t
        # the resolved config with this trial's values
        assert float(run.data.params["train.learning_rate"]) == pytest.approx(trial.params["train.learning_rate"])
        assert run.data.params["model.activation"] == trial.params["model.activation"]
        m = run.data.metrics
        assert m["val_accuracy"] == pytest.approx(trial.value)
        for key in ("compile_seconds", "train_seconds", "cpu_seconds", "tracking_seconds", "val_loss", "val_f1_macro"):
            assert key in m and m[key] >= 0
        # the study holds the same costs; its tracking time also counts the last batch and the run's end
        costs = trial.user_attrs["costs"]
        assert costs["train_seconds"] == m["train_seconds"] and costs["cpu_seconds"] == m["cpu_seconds"]
        assert costs["tracking_seconds"] == trial.user_attrs["tracking_seconds"] > m["tracking_seconds"] > 0
        assert [h.step for h in c.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
        assert len(c.get_metric_history(run.info.run_id, "grad_norm_0")) == 3
        arts = {a.path for a in c.list_artifacts(run.info.run_id)} | {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
        assert {"config.json", "plots/evaluation.json", "plots/summary.png"} <= arts
        assert len(c.get_metric_history(run.info.run_id, "act_dead_0")) == 3  # activation statistics per epoch
    # the model of a trial loads and predicts like the pyfunc model
    best = c.get_run(r.best_run_id)
    est = __import__("nbnet").load(f"runs:/{r.best_run_id}/model")
    assert est.config_["search"]["metric"] == "val_accuracy"
    assert best.data.tags["optuna.trial"] == str(r.best_trial)
    # parent: best trial, summed costs, study figures and table
    pm = c.get_run(r.parent_run_id).data
    assert pm.metrics["best_val_accuracy"] == pytest.approx(r.best_value)
    assert pm.metrics["sum_train_seconds"] == pytest.approx(sum(k.data.metrics["train_seconds"] for k in kids))
    assert pm.metrics["sum_tracking_seconds"] == pytest.approx(sum(t.user_attrs["tracking_seconds"] for t in study.trials))
    assert pm.tags["best.run_id"] == r.best_run_id
    study_arts = {a.path for a in c.list_artifacts(r.parent_run_id, "study")}
    assert {"study/trials.csv", "study/optimization_history.png", "study/param_importances.png",
            "study/parallel_coordinate.png"} <= study_arts
    # the best model is registered and, being the first, champion
    assert r.model_uri == "models:/tiny/1" and r.champion
    assert c.get_model_version_by_alias("tiny", "champion").run_id == r.best_run_id
    assert best.data.metrics["val_accuracy"] == max(t.value for t in study.trials)
    assert f"trial {r.best_trial}" in r.summary()


def test_resume_runs_only_the_missing_trials(store, tmp_path):
    cfg = experiment(tmp_path, n_trials=2)
    first = sweep.run_sweep(cfg, quiet=True, register=False)
    assert first.n_run == 2
    again = sweep.run_sweep(cfg, quiet=True, register=False)  # nothing missing
    assert again.n_run == 0 and again.n_complete == 2
    more = sweep.run_sweep(cfg, trials=4, quiet=True, register=False)
    assert more.n_run == 2 and more.n_complete == 4
    assert more.parent_run_id == first.parent_run_id  # one parent run per study, reopened
    assert tracking.client(store).get_run(first.parent_run_id).info.status == "FINISHED"
    assert len(child_runs(store, "tiny", first.parent_run_id)) == 4
    assert [t.number for t in journal_study("tiny", tmp_path).trials] == [0, 1, 2, 3]


def test_a_study_of_another_experiment_is_refused(store, tmp_path):
    sweep.run_sweep(experiment(tmp_path, n_trials=1), quiet=True, register=False)
    other = experiment(tmp_path, name="other", n_trials=1)
    with pytest.raises(NbnetError, match="study 'tiny' belongs to experiment 'tiny', not 'other'"):
        sweep.run_sweep(other, study_name="tiny", quiet=True, register=False)


def test_diverging_or_invalid_trials_fail_with_reason_and_the_sweep_goes_on(store, tmp_path):
    space = '"train.optimizer" = ["sgd"]\n"train.learning_rate" = [1000.0, 0.05]\n"model.dropout" = [0.0, 1.5]'
    cfg = experiment(tmp_path, n_trials=3, space=space, pruner="none")
    study = optuna.create_study(study_name="tiny", storage=sweep.open_storage(sweep.default_storage("tiny")), direction="maximize")
    study.enqueue_trial({"train.optimizer": "sgd", "train.learning_rate": 1000.0, "model.dropout": 0.0})
    study.enqueue_trial({"train.optimizer": "sgd", "train.learning_rate": 0.05, "model.dropout": 1.5})
    study.enqueue_trial({"train.optimizer": "sgd", "train.learning_rate": 0.05, "model.dropout": 0.0})
    r = sweep.run_sweep(cfg, quiet=True, register=False)
    trials = journal_study("tiny", tmp_path).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE"]
    assert (r.n_failed, r.n_complete) == (2, 1)
    assert "diverged" in trials[0].user_attrs["fail_reason"]
    assert "model.dropout must be in [0, 1)" in trials[1].user_attrs["fail_reason"]
    c = tracking.client(store)
    diverged, invalid = (c.get_run(t.user_attrs["mlflow_run_id"]) for t in trials[:2])
    for run in (diverged, invalid):
        assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
    assert "diverged" in diverged.data.tags["nbnet.reason"]
    assert "cpu_seconds" in diverged.data.metrics  # costs are logged for failed trials too
    assert invalid.data.params["model.dropout"] == "1.5" and "dropout" in invalid.data.tags["nbnet.reason"]


def test_pruned_trial_is_a_killed_run(store, tmp_path):
    space = '"train.learning_rate" = [0.05, 1e-7]'
    cfg = experiment(tmp_path, n_trials=3, space=space, pruner="median", epochs=4)
    study = optuna.create_study(study_name="tiny", storage=sweep.open_storage(sweep.default_storage("tiny")), direction="maximize")
    for lr in (0.05, 0.05, 1e-7):  # the last learns nothing: below the median at once
        study.enqueue_trial({"train.learning_rate": lr})
    r = sweep.run_sweep(cfg, quiet=True, register=False)
    t = journal_study("tiny", tmp_path).trials
    # a lone worker tells a trial once the next one has trained (sweep/pipeline.py): trial 2's pruner sees trial 0
    assert [x.state.name for x in t] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert r.n_pruned == 1
    run = tracking.client(store).get_run(t[2].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"
    assert "pruned at epoch" in run.data.tags["nbnet.reason"]
    assert len(tracking.client(store).get_metric_history(run.info.run_id, "loss")) < 4


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_running_trial_of_a_dead_worker_is_failed_and_retried(store, tmp_path):
    cfg = experiment(tmp_path, n_trials=2)
    storage = sweep.open_storage(sweep.default_storage("tiny"))
    study = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    exp_id = tracking.ensure_experiment("tiny", store)
    orphan_run = tracking.start_run(exp_id, run_name="trial-0", uri=store)
    t = study.ask()  # a worker that got this far and was SIGKILLed
    lr = t.suggest_float("train.learning_rate", 1e-3, 3e-2, log=True)
    t.suggest_categorical("model.activation", ["relu", "tanh"])
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", _dead_pid())
    t.set_user_attr("mlflow_run_id", orphan_run)
    r = sweep.run_sweep(cfg, quiet=True, register=False)
    trials = journal_study("tiny", tmp_path).trials
    assert trials[0].state.name == "FAIL" and trials[0].user_attrs["stale"] is True
    assert "died" in trials[0].user_attrs["fail_reason"]
    retried = [x for x in trials if x.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params["train.learning_rate"] == lr
    assert r.n_complete == 2  # the stale trial does not count against n_trials
    assert tracking.client(store).get_run(orphan_run).info.status == "FAILED"
    # the dead worker's trial has no costs in the study: the parent's sums come from the runs
    assert "costs" not in trials[0].user_attrs
    kids = child_runs(store, "tiny", r.parent_run_id)
    pm = tracking.client(store).get_run(r.parent_run_id).data.metrics
    assert pm["sum_train_seconds"] == pytest.approx(sum(k.data.metrics.get("train_seconds", 0.0) for k in kids))


def test_live_running_trial_is_left_alone(store, tmp_path):
    storage = sweep.open_storage(sweep.default_storage("tiny"))
    study = optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    t = study.ask()
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", os.getppid())  # alive
    assert sweep.fail_stale_trials(study, storage) == 0
    assert study.trials[0].state.name == "RUNNING"


@pytest.mark.slow
def test_two_workers_share_one_study_and_run_exactly_n_trials(store, tmp_path):
    cfg = experiment(tmp_path, n_trials=5, epochs=20)
    r = sweep.run_sweep(cfg, workers=2, quiet=True, register=False)
    trials = journal_study("tiny", tmp_path).trials
    assert len(trials) == 5 and r.n_complete == 5
    pids = {t.user_attrs["pid"] for t in trials}
    # worker 0 is this process (warm: imports and data loaded), worker 1 a spawned process
    assert pids and len(pids - {os.getpid()}) <= 1
    kids = child_runs(store, "tiny", r.parent_run_id)
    assert len(kids) == 5 and all(k.info.status == "FINISHED" for k in kids)
    assert {k.data.tags["nbnet.pid"] for k in kids} == {str(p) for p in pids}
    # each worker gets half the cores: n_threads is recorded in every run's params
    from nbnet.kernels.threads import default_threads

    assert {k.data.params["train.n_threads"] for k in kids} == {str(max(1, default_threads() // 2))}


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random", "grid", "cmaes"])
def test_every_sampler_suggests_values_inside_the_space(sampler):
    if sampler == "gp":
        pytest.importorskip("torch", reason="GPSampler needs torch (nbnet[parity])")
    space = C.load_experiment("digits").search.space
    if sampler == "grid":
        space = {k: v for k, v in space.items() if v.type != "float" and not v.log}
    s = sweep.make_sampler(sampler, space, seed=0, n_startup_trials=2)
    study = optuna.create_study(sampler=s, direction="maximize")
    seen = []

    def objective(trial):
        values = suggest(trial, space)
        seen.append(values)
        return -abs(math.log10(values.get("train.learning_rate", 1e-3)) + 2.5) + values.get("model.n_layers", 1) * 0.01

    with np.errstate(all="ignore"):
        study.optimize(objective, n_trials=4)
    assert len(seen) == 4
    cfg = C.load_experiment("digits")
    for values in seen:
        C.with_values(cfg, values)  # every suggestion is a valid config
        for path, v in values.items():
            spec = space[path]
            if spec.type == "categorical":
                assert v in spec.choices
            else:
                assert spec.low <= v <= spec.high


def test_grid_sampler_rejects_continuous_ranges():
    space = C.load_experiment("digits").search.space
    with pytest.raises(NbnetError, match="grid sampler needs .* 'model.dropout'"):
        sweep.make_sampler("grid", space, seed=0, n_startup_trials=1)


def test_list_choices_round_trip_through_optuna(tmp_path):
    cfg = C.load_experiment("breast_cancer")
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    values = suggest(trial, cfg.search.space)
    assert isinstance(values["model.hidden_layer_sizes"], tuple)
    assert C.with_values(cfg, values).model.hidden() == values["model.hidden_layer_sizes"]


def test_pruners():
    for name, cls in (("median", optuna.pruners.MedianPruner), ("hyperband", optuna.pruners.HyperbandPruner),
                      ("none", optuna.pruners.NopPruner)):
        assert isinstance(sweep.make_pruner(name, epochs=10, n_startup_trials=2, n_warmup_steps=1, epochs_searched=False), cls)


def test_report_key_matches_the_study_direction():
    digits = C.load_experiment("digits")
    assert report_key(digits, "classification") == "val_accuracy"
    assert report_key(C.apply_overrides(digits, ["search.metric=val_f1_macro"]), "classification") == "val_accuracy"
    assert report_key(C.apply_overrides(digits, ["search.metric=val_log_loss", "search.direction=auto"]), "classification") == "val_loss"
    diabetes = C.load_experiment("diabetes")
    assert report_key(diabetes, "regression") == "val_r2"
    assert report_key(C.apply_overrides(diabetes, ["search.metric=val_rmse", "search.direction=minimize"]), "regression") == "val_loss"


def test_train_once_metrics_and_config_in_the_model(tmp_path):
    cfg = C.load_experiment("diabetes", ["train.epochs=3"])
    est, m = train_once(cfg)
    assert m["epochs"] == 3 and {"val_r2", "val_rmse", "test_r2", "val_loss"} <= set(m)
    assert m["val_loss"] == m["val_mse"] and m["val_rmse"] == pytest.approx(math.sqrt(m["val_mse"]))
    est.save(tmp_path / "m.nbnet")
    loaded = __import__("nbnet").load(tmp_path / "m.nbnet")
    assert C.from_dict(loaded.config_, "diabetes") == cfg
    with pytest.raises(NbnetError, match="does not apply to regression"):
        train_once(C.apply_overrides(cfg, ["search.metric=val_accuracy"]))


def test_rerun_is_bit_identical_and_refuses_changed_data(store, tmp_path):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    np.savez(data, X=X, y=(X[:, 0] > 0).astype(np.int64))
    f = tmp_path / "npz.toml"
    f.write_text(f'[data]\nsource = "npz:{data}"\n[model]\nhidden_layer_sizes = [8]\n[train]\nepochs = 4\nseed = 3\n')
    out = train_run(C.load_experiment(f))
    rep = rerun(out["run_id"])
    assert rep["bit_identical"] is True and rep["loss_history_identical"] and rep["loss_epochs_compared"] == 4
    assert rep["value"] == rep["original_value"]
    assert tracking.client(store).get_run(rep["run_id"]).data.tags["nbnet.rerun_of"] == out["run_id"]
    np.savez(data, X=X + 1e-9, y=(X[:, 0] > 0).astype(np.int64))
    prepared.clear_cache()
    with pytest.raises(NbnetError, match="the data changed since run"):
        rerun(out["run_id"])


def test_best_reports_the_best_trial(store, tmp_path):
    r = sweep.run_sweep(experiment(tmp_path, n_trials=2), quiet=True, register=False)
    b = sweep.best()
    assert b["study"] == "tiny" and b["trial"] == r.best_trial and b["run_id"] == r.best_run_id
    assert b["model_uri"] == f"runs:/{r.best_run_id}/model" and b["value"] == r.best_value
    assert json.dumps(b, default=str)
    with pytest.raises(NbnetError, match="no study 'nope'"):
        sweep.best("nope")


def test_cleaning_runs_before_the_split_and_its_report_is_logged(store, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(100, 3))
    X[:10] = X[10:20]  # 10 duplicate rows (same labels below)
    X[50, 1] = np.nan
    y = (X[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    f = tmp_path / "clean.toml"
    f.write_text(f'[data]\nsource = "npz:{tmp_path / "d.npz"}"\ncleaning = {{ nan = "drop", drop_duplicates = true }}\n'
                 '[model]\nhidden_layer_sizes = [4]\n[train]\nepochs = 2\n')
    cfg = C.load_experiment(f)
    data = prepared.prepare_data(cfg)
    assert data.cleaning_report["duplicates_dropped"] == 10 and data.cleaning_report["nonfinite_rows_dropped"] == 1
    assert len(data.y_train) + len(data.y_val) == 89
    assert data.hash == __import__("nbnet.data.load", fromlist=["x"]).data_hash(X, y)  # the data as loaded
    out = train_run(cfg)
    report = tracking.client(store).download_artifacts(out["run_id"], "data/cleaning_report.json", str(tmp_path))
    assert json.loads(Path(report).read_text())["rows_out"] == 89


@pytest.mark.parametrize("pre", ["{'scale': 'standard'}", "{'scale': 'robust', 'select_k': 6, 'pca': 4}", "{}"])
def test_trials_fit_the_preprocessing_once_and_get_the_same_model(tmp_path, pre):
    """train_once fits the preprocessing once per data set and reuses it for later trials; the
    model equals one fitted with the preprocessing inside fit, and takes raw X."""
    cfg = experiment(tmp_path, overrides=[f"data.preprocessing={pre}"])
    data = prepared.prepare_data(cfg)
    prepared.clear_cache()
    est, _ = train_once(cfg, data=data)
    (cached,) = prepared.CACHE.preprocessed.values()
    est2, _ = train_once(C.with_values(cfg, {"train.learning_rate": 0.02}), data=data)
    assert list(prepared.CACHE.preprocessed.values()) == [cached]  # the second trial reused it
    ref = build_estimator(cfg, data).fit(data.X_train, data.y_train, validation_data=(data.X_val, data.y_val))
    for a, b in zip(est.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert est.get_params() == ref.get_params() and est.n_features_in_ == ref.n_features_in_ == data.X_train.shape[1]
    np.testing.assert_array_equal(est.predict_proba(data.X_val), ref.predict_proba(data.X_val))
    est.save(tmp_path / "m.nbnet")
    np.testing.assert_array_equal(nbnet.load(tmp_path / "m.nbnet").predict(data.X_val), ref.predict(data.X_val))
    assert est2.preprocessor_ is est.preprocessor_ and cached[1] is est.preprocessor_
    other = prepared.prepare_data(C.with_values(cfg, {"data.val_fraction": 0.4}))  # same data, another split
    train_once(cfg, data=other)
    assert list(prepared.CACHE.preprocessed.values())[0][0] is other and len(prepared.CACHE.preprocessed) == 1  # refitted on its split
    assert est.preprocessor_.stats_["mean"].shape == (data.X_train.shape[1],)  # for nbnet monitor, always


@pytest.mark.parametrize("pre", ["{'scale': 'standard', 'pca': 4}", "{}"])
def test_spawned_workers_map_the_parents_prepared_data(tmp_path, pre):
    """With several workers the sweep writes its prepared data and fitted preprocessing once
    (.npy, no pickle); a worker seeded from those files trains bit for bit the model the parent
    would, without loading or preprocessing anything, and the files go with the sweep."""
    cfg = experiment(tmp_path, overrides=[f"data.preprocessing={pre}"])
    prepared.clear_cache()
    data = prepared.prepare_data(cfg)
    prepared.clear_cache()
    ref, ref_m = train_once(cfg, data=data)
    shared = prepared.SharedData()
    try:
        assert not shared.ready.is_set()
        shared.write(data, lambda: build_estimator(cfg, data))
        assert shared.ready.is_set()
        assert {p.suffix for p in shared.folder.iterdir()} == {".npy", ".json"}  # arrays and their description
        prepared.clear_cache()
        prepared.receive_shared(shared.payload(), cfg)  # what a spawned worker does before its first trial
        mapped = prepared.prepare_data(cfg)
        assert mapped is not data and mapped.hash == data.hash and mapped.task == data.task
        for k in prepared.SPLITS:
            a, b = getattr(mapped, k), getattr(data, k)
            assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b))
        est, m = train_once(cfg, data=mapped)
        assert len(prepared.CACHE.preprocessed) == 1 and list(prepared.CACHE.preprocessed.values())[0][0] is mapped  # no refit
    finally:
        shared.close()
    assert not shared.folder.exists()
    for a, b in zip(est.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert m["val_accuracy"] == ref_m["val_accuracy"]
    np.testing.assert_array_equal(est.predict_proba(data.X_val), ref.predict_proba(data.X_val))


def test_labels_only_pickle_could_store_are_not_shared(tmp_path):
    """Object labels (mixed types) cannot go through .npy without pickle: the workers are told
    to load the data themselves (ready, but no meta.json)."""
    cfg = experiment(tmp_path)
    data = prepared.prepare_data(cfg)
    odd = prepared.Data(data.dataset, data.X_train, data.y_train.astype(object), data.X_val, data.y_val, None, None, data.hash)
    shared = prepared.SharedData()
    try:
        shared.write(odd, lambda: build_estimator(cfg, odd))
        assert shared.ready.is_set() and not any(shared.folder.iterdir())
        prepared.clear_cache()
        prepared.receive_shared(shared.payload(), cfg)
        assert not prepared.CACHE.data  # nothing seeded: prepare_data loads as usual
    finally:
        shared.close()


@pytest.mark.parametrize("created", [False, True], ids=["before its run", "between its run and recording it"])
def test_a_worker_killed_before_recording_its_run_still_leaves_one_failed_run(store, tmp_path, created):
    """A worker killed after the trial started but before it recorded the run id: the resumed
    sweep closes the run it made (found by name under the parent) or, if it made none, creates
    one, so every trial keeps exactly one run."""
    cfg = experiment(tmp_path, n_trials=1)
    sweep.run_sweep(cfg, quiet=True, register=False)  # the study and its parent run exist
    storage = sweep.open_storage(sweep.default_storage("tiny"))
    study = optuna.load_study(study_name="tiny", storage=storage)
    parent = study.user_attrs["nbnet.parent_run_id"]
    t = study.ask()
    t.suggest_float("train.learning_rate", 1e-3, 3e-2, log=True)
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", _dead_pid())
    exp_id = tracking.ensure_experiment("tiny", store)
    if created:
        made = tracking.start_run(exp_id, run_name=f"trial-{t.number}", parent_run_id=parent, uri=store)
    sweep.run_sweep(cfg, trials=2, quiet=True, register=False)
    runs = [r for r in child_runs(store, "tiny", parent) if r.info.run_name == f"trial-{t.number}"]
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["optuna.state"] == "FAIL" and "died" in runs[0].data.tags["nbnet.reason"]
    if created:
        assert runs[0].info.run_id == made


def test_shared_data_of_dead_sweeps_is_removed_and_live_ones_kept(tmp_path):
    """A SIGKILLed sweep leaves its shared-data folder (under /dev/shm: memory); the next sweep
    removes the folders whose process is gone, and only those."""
    dead, live = tmp_path / f"{prepared.SharedData.PREFIX}{_dead_pid()}-abc", tmp_path / f"{prepared.SharedData.PREFIX}{os.getpid()}-def"
    other = tmp_path / "nbnet-sweep-data-notapid-x"
    for d in (dead, live, other):
        d.mkdir()
        (d / "X_train.npy").write_bytes(b"x")
    assert prepared.SharedData.remove_orphans(tmp_path) == 1
    assert not dead.exists() and live.exists() and other.exists()
