"""A lone sweep worker tracks each trial in a helper thread while the next one trains
(nbnet/experiment/sweep/pipeline.py): on real SQLite MLflow stores and Optuna journal files, a
trial is told only after its run is FINISHED with its model, a seeded sweep repeats itself trial
for trial, the budget is kept exactly, and the helper's CPU time is not the fit's."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import mlflow
import numpy as np
import optuna
import pytest

import nbnet
from nbnet._sys import cputime
from nbnet.errors import NbnetError
from nbnet.experiment import tags as T
from nbnet.experiment.sweep import pipeline
from nbnet.experiment.sweep.budget import Claim, ClaimingStudy
from nbnet.experiment.sweep.storage import open_storage
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
    by_number = sorted(res.trials, key=lambda t: t.number)
    for t, after in zip(by_number, by_number[1:]):  # told once the next trial has trained: they overlap
        assert t.datetime_complete > after.datetime_start
        assert 0 < t.user_attrs[T.TRIAL_SECONDS] < (t.datetime_complete - t.datetime_start).total_seconds()


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


def test_a_grid_sweep_of_a_lone_worker_ends_with_its_grid(tmp_path, empty_store_db, iris, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = fresh_store(tmp_path, empty_store_db)
    res = nbnet.sweep(*iris, space={"train.learning_rate": {"type": "categorical", "choices": [0.01, 0.1]}}, trials=4,
                      params=SMALL, tracking_uri=uri, quiet=True, storage=f"{tmp_path}/grid.log", sampler="grid")
    assert res.n_complete == 2 and sorted(t.params["train.learning_rate"] for t in res.trials) == [0.01, 0.1]


def _claiming_study(tmp_path, n_trials: int) -> ClaimingStudy:
    path = str(tmp_path / "study.log")
    storage = open_storage(path)
    optuna.create_study(study_name="s", storage=storage)
    return ClaimingStudy("s", storage, Claim(n_trials, path, storage, None, grace=60.0))


class _Objective:
    """Two halves as :class:`nbnet.experiment.trial.Objective` has, failing where told to."""

    def __init__(self, fail_start=(), fail_finish=()):
        self.fail_start, self.fail_finish = fail_start, fail_finish

    def start(self, trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number in self.fail_start:
            raise RuntimeError("the store is gone")
        return SimpleNamespace(trial=trial, error=None, x=x)

    def finish(self, run):
        if run.trial.number in self.fail_finish:
            raise OSError(28, "No space left on device")
        return run.x


def _states(study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def test_a_trial_whose_start_fails_is_told_failed_and_the_error_goes_on(tmp_path):
    study = _claiming_study(tmp_path, 5)
    with pytest.raises(RuntimeError, match="the store is gone"):
        pipeline.optimize(study, _Objective(fail_start={2}), timeout=None, catch=(NbnetError,),
                          after_trial=lambda s, t: None)
    assert _states(study) == ["COMPLETE", "COMPLETE", "FAIL"]  # trial 1 told on the way out


def test_a_trial_that_cannot_be_recorded_stops_the_loop_and_the_next_runs_again_later(tmp_path):
    study, told = _claiming_study(tmp_path, 5), []
    with pytest.raises(OSError, match="No space left"):
        pipeline.optimize(study, _Objective(fail_finish={0}), timeout=None, catch=(NbnetError,),
                          after_trial=lambda s, t: told.append(t.number))
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING"] and told == []
    assert trials[1].user_attrs[T.TRIAL_FAIL_REASON].startswith("not recorded")
    assert trials[2].user_attrs[T.TRIAL_RETRY_OF] == 1  # trial 1 runs again when the sweep resumes
    assert study.busy == set() and study.before_waiting is None


def test_the_budget_and_the_callbacks_of_a_pipelined_loop(tmp_path):
    study, told = _claiming_study(tmp_path, 3), []
    pipeline.optimize(study, _Objective(), timeout=None, catch=(NbnetError,),
                      after_trial=lambda s, t: told.append((t.number, t.state.name)))
    assert _states(study) == ["COMPLETE"] * 3 and told == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]


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
