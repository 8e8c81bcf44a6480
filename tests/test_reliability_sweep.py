"""Sweeps survive what users do to them, with real processes: `nbnet sweep` in a subprocess, a
worker or the whole sweep killed with SIGKILL in the middle of a trial, Ctrl-C / SIGTERM, four
workers on the embedded store. Re-running the same command always completes the study: N
counted trials, none lost or duplicated, no MLflow run left RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbnet.data.prepared import SharedData
from nbnet.experiment import tracking
from stores import fresh_store

pytestmark = pytest.mark.slow

TOML = """
[data]
source = "synthetic:n=2000,d=20,classes=3,seed=1"
val_fraction = 0.25

[model]
hidden_layer_sizes = [32]

[train]
epochs = {epochs}
batch_size = 32
seed = 0

[search]
sampler = "random"
pruner = "none"
n_trials = {trials}
metric = "val_accuracy"

[search.space]
"train.learning_rate" = {{ type = "float", low = 1e-3, high = 1e-2, log = true }}
"""


class Sweep:
    """A project folder with the default embedded stores (mlruns/), and `nbnet sweep` in it."""

    def __init__(self, folder: Path, template: Path, *, trials: int, epochs: int = 600):
        self.folder = folder
        self.trials = trials
        self.epochs = epochs
        (folder / "tiny.toml").write_text(TOML.format(trials=trials, epochs=epochs))
        self.uri = fresh_store(folder, template)
        self.env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}

    def cmd(self, workers: int) -> list[str]:
        return [sys.executable, "-m", "nbnet", "sweep", "tiny.toml", "--workers", str(workers), "--no-register"]

    def start(self, workers: int) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(workers), cwd=self.folder, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def run(self, workers: int) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(workers), cwd=self.folder, env=self.env, capture_output=True, text=True,
                              timeout=900)

    def study(self):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        journal = self.folder / "mlruns" / "optuna" / "tiny.log"
        if not journal.exists():
            return None
        try:
            return optuna.load_study(study_name="tiny", storage=JournalStorage(JournalFileBackend(str(journal))))
        except KeyError:  # the journal exists but the study is not written yet
            return None

    def wait_mid_trial(self, proc, *, after_finished: int = 1, timeout: float = 600, spawned: bool = False):
        """Poll the study until ``after_finished`` trials are done and another one is RUNNING with its
        MLflow run open and at most half its epochs reported (so the blow lands mid-training, not as
        it finishes); return that trial. ``spawned``: one run by a spawned worker, not by worker 0
        in the sweep's own process."""
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, "the sweep ended before the moment to strike: " + proc.stderr.read()
            assert time.monotonic() < deadline, "no running trial appeared"
            study = self.study()
            if study is not None:
                trials = study.get_trials(deepcopy=False)
                done = [t for t in trials if t.state.is_finished()]
                running = [t for t in trials if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs
                           and len(t.intermediate_values) <= self.epochs // 2
                           and not (spawned and t.user_attrs.get("pid") == proc.pid)]
                if len(done) >= after_finished and running:
                    return running[0]
            time.sleep(0.05)

    def runs(self):
        c = tracking.client(self.uri)
        exp = c.get_experiment_by_name("tiny")
        return c.search_runs([exp.experiment_id], max_results=1000) if exp else []

    def check_complete(self):
        """The study has its N counted trials, every trial number once, one run per trial, no run
        left RUNNING, every retried trial's parameters ran to completion."""
        study = self.study()
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
        counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and t.number not in retried]
        assert len(counted) == self.trials, [(t.number, t.state.name, t.user_attrs) for t in trials]
        assert all(t.state.name == "COMPLETE" for t in counted), [(t.number, t.state.name) for t in counted]
        assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
        numbers = [t.number for t in trials]
        assert len(numbers) == len(set(numbers))
        for t in trials:
            if t.number in retried:  # the dead/interrupted trial's parameters were run again
                (retry,) = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
                assert retry.params == t.params and retry.state.name == "COMPLETE"
        runs = self.runs()
        assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
        children = {r.info.run_name: r for r in runs if r.data.tags.get("nbnet.kind") == "trial"}
        assert sorted(children) == sorted(f"trial-{t.number}" for t in trials)  # one run per trial, no more
        for t in trials:
            run = children[f"trial-{t.number}"]
            # (a worker killed between creating the run and recording its id leaves only the name)
            assert run.info.run_id == t.user_attrs.get("mlflow_run_id", run.info.run_id)
            if t.state.name == "COMPLETE":
                assert run.info.status == "FINISHED"
                assert run.data.metrics["val_accuracy"] == pytest.approx(t.value)
            else:
                assert run.info.status in ("KILLED", "FAILED")
        parents = [r for r in runs if r.data.tags.get("nbnet.kind") == "sweep"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        return study, runs


def test_kill_one_worker_mid_trial_then_resume(tmp_path, empty_store_db):
    sw = Sweep(tmp_path, empty_store_db, trials=4)
    proc = sw.start(workers=2)
    try:
        victim = sw.wait_mid_trial(proc, spawned=True)  # (killing worker 0 kills the sweep: the next test)
        os.kill(victim.user_attrs["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the other worker finished the rest (with no stall: the journal lock died with the victim) and,
    # at its next claim of the budget, found the victim's process gone: it failed that trial, closed
    # its run FAILED and ran its parameters again (the slot came back); the sweep says what
    # happened, in one line
    assert proc.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "killed by signal 9" in err, err
    dead_run = tracking.client(sw.uri).get_run(victim.user_attrs["mlflow_run_id"])
    assert dead_run.info.status == "FAILED"
    assert [t.state.name for t in sw.study().trials if t.user_attrs.get("retry_of") == victim.number] == ["COMPLETE"]

    r = sw.run(workers=2)
    assert r.returncode == 0, r.stderr
    study, _ = sw.check_complete()
    dead = study.trials[victim.number]
    assert dead.state.name == "FAIL" and "died" in dead.user_attrs["fail_reason"]
    assert tracking.client(sw.uri).get_run(victim.user_attrs["mlflow_run_id"]).info.status == "FAILED"


@pytest.mark.parametrize("workers", [2, 1])
def test_kill_the_whole_sweep_mid_trial_then_resume(tmp_path, empty_store_db, workers):
    sw = Sweep(tmp_path, empty_store_db, trials=4)
    proc = sw.start(workers=workers)
    try:
        victim = sw.wait_mid_trial(proc)
        untold = [t.number for t in sw.study().get_trials(deepcopy=False) if t.state.name == "RUNNING"]
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, as a crash or an OOM kill would
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    running_before = [r.info.run_name for r in sw.runs() if r.info.status == "RUNNING"]
    assert f"trial-{victim.number}" in running_before and "sweep-tiny" in running_before
    if workers == 1:  # a lone worker tells a trial once the next has trained: the one before the victim was untold
        assert victim.number - 1 in untold
    # the killed sweep could not remove the data it shared with its workers (memory, under /dev/shm)
    left = list(SharedData.base().glob(f"{SharedData.PREFIX}{proc.pid}-*"))
    assert len(left) == (1 if workers > 1 else 0)

    r = sw.run(workers=workers)
    assert r.returncode == 0, r.stderr
    study, _ = sw.check_complete()  # the untold trials' parameters ran again, every run closed
    assert study.trials[victim.number].state.name == "FAIL"
    assert not any(f.exists() for f in left)  # the next sweep removed it (its process is gone)


@pytest.mark.parametrize("how", ["SIGINT to the process group, 2 workers", "SIGTERM to the parent only, 2 workers",
                                 "SIGINT, 1 worker"])
def test_ctrl_c_or_sigterm_stops_cleanly_and_the_study_resumes(tmp_path, empty_store_db, how):
    sw = Sweep(tmp_path, empty_store_db, trials=4)
    workers = 1 if "1 worker" in how else 2
    proc = sw.start(workers=workers)
    try:
        victim = sw.wait_mid_trial(proc)
        if how.startswith("SIGINT"):
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            os.kill(proc.pid, signal.SIGTERM)  # `kill PID`, a batch scheduler
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "nbnet: interrupted", err
    # stopped cleanly: nothing RUNNING anywhere, the interrupted trial marked, the parent run ended
    study = sw.study()
    trials = study.get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state.name == "RUNNING"]
    stopped = study.trials[victim.number]
    assert stopped.state.name == "FAIL" and stopped.user_attrs["fail_reason"] == "interrupted"
    assert len(stopped.intermediate_values) < sw.epochs  # it stopped at an epoch boundary, not at the end
    run = tracking.client(sw.uri).get_run(stopped.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["nbnet.reason"] == "interrupted"
    runs = sw.runs()
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("nbnet.kind") == "sweep"]
    assert parent.info.status == "KILLED"

    r = sw.run(workers=workers)
    assert r.returncode == 0, r.stderr
    sw.check_complete()


def test_four_workers_on_the_embedded_store(tmp_path, empty_store_db):
    """SQLite (MLflow) and the Optuna journal under four concurrent writers: no lock errors, every
    trial's run with its per-epoch and final metrics. (Trials long enough that the spawned
    workers, which start while worker 0 already trains, get some: 20 epochs were over before.)"""
    sw = Sweep(tmp_path, empty_store_db, trials=8, epochs=300)
    r = sw.run(workers=4)
    assert r.returncode == 0, r.stderr
    assert "database is locked" not in (r.stdout + r.stderr).lower()
    study, runs = sw.check_complete()
    c = tracking.client(sw.uri)
    for run in runs:
        if run.data.tags.get("nbnet.kind") != "trial":
            continue
        losses = c.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in losses) == list(range(1, sw.epochs + 1)), run.info.run_name
        assert {"val_accuracy", "val_loss", "train_seconds"} <= set(run.data.metrics)
    assert {t.user_attrs["pid"] for t in study.trials} and len({t.user_attrs["pid"] for t in study.trials}) > 1


def test_two_cold_workers_compile_once(tmp_path, empty_store_db):
    """Two workers starting on an empty numba cache: one compiles the kernels (under
    nbnet.kernels.compile.compile_lock) and writes the cache, the other waits and loads it."""
    sweep = Sweep(tmp_path, empty_store_db, trials=4, epochs=3)
    sweep.env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    r = sweep.run(workers=2)
    assert r.returncode == 0, r.stderr[-2000:]
    c = tracking.client(sweep.uri)
    runs = [x for x in c.search_runs([c.get_experiment_by_name("tiny").experiment_id])
            if x.data.tags.get("nbnet.kind") == "trial"]
    assert len(runs) == 4
    compiled = [x.data.metrics["kernels_compiled"] for x in runs]
    assert len({x.data.tags["nbnet.pid"] for x in runs}) == 2  # both workers trained
    assert sum(1 for k in compiled if k > 0) == 1, compiled  # exactly one trial compiled, the rest loaded
