"""A lone sweep worker tracks each trial in a helper thread while the next one trains
(nbnet/experiment/sweep/pipeline.py): on real SQLite MLflow stores and Optuna journal files, a
trial is told only after its run is FINISHED with its model, a seeded sweep repeats itself trial
for trial, the budget is kept exactly, and the helper's CPU time is not the fit's."""

from __future__ import annotations

import threading
import time

import mlflow
import numpy as np
import optuna
import pytest

import nbnet
from nbnet._sys import cputime
from nbnet.experiment import tags as T
from stores import fresh_store

SMALL = {"train.epochs": 4, "model.hidden_layer_sizes": (8,), "train.batch_size": 16,
         "data.preprocessing.scale": "standard", "search.n_startup_trials": 2, "search.n_warmup_steps": 1}
SPACE = {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 3e-1, "log": True},
         "model.dropout": {"type": "float", "low": 0.0, "high": 0.3}}


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)


def _sweep(folder, template, X, y, trials: int):
    folder.mkdir()
    uri = fresh_store(folder, template)
    res = nbnet.sweep(X, y, space=SPACE, trials=trials, params=SMALL, tracking_uri=uri, quiet=True,
                      storage=f"{folder}/study.log", sampler="tpe", pruner="median")
    return res, uri


def test_a_trial_is_told_only_after_its_run_finished_with_its_model(tmp_path, empty_store_db, iris, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res, uri = _sweep(tmp_path / "a", empty_store_db, *iris, trials=6)
    assert res.n_complete + res.n_pruned + res.n_failed == 6 and res.n_complete >= 1
    c = mlflow.MlflowClient(uri)
    for t in res.trials:
        run = c.get_run(t.user_attrs[T.TRIAL_RUN_ID])
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[t.state.name]
        assert run.data.tags[T.OPTUNA_STATE] == t.state.name
        told_ms = t.datetime_complete.timestamp() * 1000  # Optuna's local time; MLflow's epoch milliseconds
        assert told_ms >= run.info.end_time, f"trial {t.number} was told before its run ended"
        if t.state.name == "COMPLETE":
            assert run.outputs.model_outputs, f"trial {t.number} is COMPLETE without a model"
            assert t.user_attrs["tracking_seconds"] > 0


def test_a_seeded_lone_worker_sweep_repeats_itself(tmp_path, empty_store_db, iris, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, _ = _sweep(tmp_path / "a", empty_store_db, *iris, trials=7)
    second, _ = _sweep(tmp_path / "b", empty_store_db, *iris, trials=7)

    def trials(res):
        return [(t.number, t.state.name, t.params, t.value, dict(t.intermediate_values))
                for t in sorted(res.trials, key=lambda t: t.number)]

    assert len(first.trials) == 7 and first.n_complete >= 3 and trials(first) == trials(second)


def test_the_budget_is_kept_when_the_last_trial_is_still_being_tracked(tmp_path, empty_store_db, iris, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res, _ = _sweep(tmp_path / "a", empty_store_db, *iris, trials=3)
    study = optuna.load_study(study_name=res.study_name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "a" / "study.log"))))
    states = [t.state.name for t in study.trials]
    assert len(states) == 3 and "RUNNING" not in states and "WAITING" not in states


def test_a_helpers_cpu_time_is_left_out_of_the_work_seconds():
    def burn():
        with cputime.helper():
            t = time.thread_time()
            x = 0
            while time.thread_time() - t < 0.3:
                x += 1

    w0, p0 = cputime.work_seconds(), time.process_time()
    th = threading.Thread(target=burn)
    th.start()
    th.join()  # this thread waits: it spends next to no CPU
    assert time.process_time() - p0 >= 0.3
    assert cputime.work_seconds() - w0 < 0.1
    x = np.ones(1)
    t = time.thread_time()
    while time.thread_time() - t < 0.2:  # the calling thread's own CPU counts
        x = x + 1
    assert cputime.work_seconds() - w0 >= 0.2
