"""Checkpoints: atomic per-epoch state, exact resume after a crash or a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nbnet
from nbnet import MLPClassifier, MLPRegressor
from nbnet.nn.checkpoint import Checkpoint, checkpoint_path_for
from nbnet.errors import NbnetError


class Crash(Exception):
    """Stands in for a crash inside the training loop (the SIGKILL test does the real thing)."""


def crash_at(epoch_no):
    def cb(epoch, logs):
        if epoch == epoch_no:
            raise Crash(epoch)

    return cb


def data(n=120, d=7, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    return X, y


def same_weights(a, b) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


BASE = dict(hidden_layer_sizes=(9, 5), epochs=7, batch_size=16, dropout=0.2, noise_std=0.1, seed=3, n_threads=1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("early_stopping", [False, True])
def test_resume_after_crash_is_bit_identical(tmp_path, dtype, early_stopping):
    X, y = data()
    kw = dict(BASE, dtype=dtype, early_stopping=early_stopping, patience=3)
    ref = MLPClassifier(**kw).fit(X, y)

    path = tmp_path / "fit.ckpt"
    with pytest.raises(Crash):
        MLPClassifier(**kw).fit(X, y, callbacks=[Checkpoint(path, every=2), crash_at(5)])
    # epochs 1-4 ran and were checkpointed at 2 and 4; epoch 5's work is lost
    assert nbnet.load(path).n_epochs_ == 4

    ck = Checkpoint(path, every=2)
    resumed = MLPClassifier(**kw).fit(X, y, callbacks=[ck])
    assert ck.resumed_from_epoch == 4
    assert resumed.n_epochs_ == ref.n_epochs_ == 7
    assert same_weights(ref, resumed)
    got, want = resumed.training_state().optimizer, ref.training_state().optimizer
    assert got.step == want.step
    assert np.array_equal(got.m, want.m) and np.array_equal(got.v, want.v)
    assert np.array_equal(resumed.training_state().rng, ref.training_state().rng)
    assert resumed.history_["loss"] == ref.history_["loss"]
    assert getattr(resumed, "best_epoch_", None) == getattr(ref, "best_epoch_", None)
    assert not path.exists(), "a finished fit deletes its checkpoint"


def test_resume_after_early_stopping_triggered(tmp_path):
    """Killed right after early stopping fired (checkpoint written, fit not returned): the resume
    trains no further epoch and restores the same best weights."""
    X, y = data()
    kw = dict(BASE, epochs=60, early_stopping=True, patience=2, learning_rate=0.05, optimizer="sgd")
    ref = MLPClassifier(**kw).fit(X, y)
    assert ref.n_epochs_ < 60, "the setup must make early stopping fire"
    stop_epoch = ref.n_epochs_

    path = tmp_path / "es.ckpt"
    with pytest.raises(Crash):
        MLPClassifier(**kw).fit(X, y, callbacks=[Checkpoint(path, every=1), crash_at(stop_epoch)])
    ck = Checkpoint(path)
    resumed = MLPClassifier(**kw).fit(X, y, callbacks=[ck])
    assert ck.resumed_from_epoch == stop_epoch
    assert resumed.n_epochs_ == stop_epoch
    assert resumed.best_epoch_ == ref.best_epoch_
    assert same_weights(ref, resumed)


def test_regressor_resume(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=90)
    kw = dict(hidden_layer_sizes=(6,), epochs=5, batch_size=8, seed=0, n_threads=1, optimizer="nesterov",
              learning_rate=0.01)
    ref = MLPRegressor(**kw).fit(X, y)
    path = tmp_path / "r.ckpt"
    with pytest.raises(Crash):
        MLPRegressor(**kw).fit(X, y, callbacks=[Checkpoint(path, every=1), crash_at(3)])
    resumed = MLPRegressor(**kw).fit(X, y, callbacks=[Checkpoint(path)])
    assert same_weights(ref, resumed)


def test_checkpoint_refuses_another_fit(tmp_path):
    X, y = data()
    path = tmp_path / "c.ckpt"
    with pytest.raises(Crash):
        MLPClassifier(**BASE).fit(X, y, callbacks=[Checkpoint(path, fingerprint="data-a"), crash_at(2)])
    with pytest.raises(NbnetError, match="other hyperparameters or data"):
        MLPClassifier(**dict(BASE, learning_rate=0.01)).fit(X, y, callbacks=[Checkpoint(path, fingerprint="data-a")])
    with pytest.raises(NbnetError, match="other hyperparameters or data"):
        MLPClassifier(**BASE).fit(X, y, callbacks=[Checkpoint(path, fingerprint="data-b")])
    # epochs, n_threads and verbose may change between the crash and the resume
    est = MLPClassifier(**dict(BASE, epochs=9, verbose=False)).fit(X, y, callbacks=[Checkpoint(path, fingerprint="data-a")])
    assert est.n_epochs_ == 9
    with pytest.raises(NbnetError, match="beyond epochs"):
        with pytest.raises(Crash):
            MLPClassifier(**BASE).fit(X, y, callbacks=[Checkpoint(path, every=1), crash_at(5)])
        MLPClassifier(**dict(BASE, epochs=3)).fit(X, y, callbacks=[Checkpoint(path)])


def test_model_file_is_not_a_checkpoint(tmp_path):
    X, y = data()
    path = tmp_path / "m.nbnet"
    MLPClassifier(**dict(BASE, epochs=1)).fit(X, y).save(path)
    with pytest.raises(NbnetError, match="not a checkpoint"):
        MLPClassifier(**BASE).fit(X, y, callbacks=[Checkpoint(path)])


def test_checkpoint_options_and_temporaries(tmp_path):
    with pytest.raises(NbnetError, match="positive number of epochs"):
        Checkpoint(tmp_path / "x", every=0)
    with pytest.raises(NbnetError, match="does not exist"):
        Checkpoint(tmp_path / "no" / "x").on_train_begin(MLPClassifier())
    # a temporary left by a process killed in the middle of a write is cleaned up on the next fit
    path = tmp_path / "t.ckpt"
    stale = tmp_path / ".t.ckpt.abc123.tmp"
    stale.write_bytes(b"half a zip")
    X, y = data()
    ck = Checkpoint(path, every=1, delete_on_success=False)
    MLPClassifier(**dict(BASE, epochs=3)).fit(X, y, callbacks=[ck])
    assert not stale.exists()
    assert ck.writes == 3 and nbnet.load(path).n_epochs_ == 3
    assert [p.name for p in tmp_path.iterdir()] == ["t.ckpt"]
    assert checkpoint_path_for(tmp_path / "model.nbnet") == tmp_path / ".model.nbnet.ckpt"


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """An exception (or a kill) inside the write leaves the previous checkpoint whole."""
    import nbnet.io as nio

    X, y = data()
    path = tmp_path / "w.ckpt"
    real = nio.np.lib.format.write_array
    ck = Checkpoint(path, every=1)
    calls = {"n": 0}

    def dying_write(f, a, **kw):
        if ck.writes == 2:  # the third checkpoint dies after its first array
            calls["n"] += 1
            if calls["n"] == 2:
                raise Crash("power cut")
        return real(f, a, **kw)

    monkeypatch.setattr(nio.np.lib.format, "write_array", dying_write)
    with pytest.raises(Crash):
        MLPClassifier(**BASE).fit(X, y, callbacks=[ck])
    monkeypatch.undo()
    assert nbnet.load(path).n_epochs_ == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.ckpt"]


CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from nbnet import MLPClassifier
    from nbnet.nn.checkpoint import Checkpoint
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 7)); y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    def hold(epoch, logs):
        if epoch == 5:  # epoch 5 is done but not checkpointed: report, then wait to be killed
            print("epoch", epoch, flush=True)
            sys.stdin.readline()
    kw = dict(hidden_layer_sizes=(9, 5), epochs=7, batch_size=16, dropout=0.2, noise_std=0.1, seed=3, n_threads=1)
    MLPClassifier(**kw).fit(X, y, callbacks=[Checkpoint(sys.argv[1], every=2), hold])
    print("finished", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_mid_fit_then_resume_gives_the_same_weights(tmp_path):
    path = tmp_path / "killed.ckpt"
    env = dict(os.environ, NBNET_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # blocks until the child reaches epoch 5 (or dies)
        assert line.strip() == "epoch 5", proc.stderr.read()
        assert path.exists()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert nbnet.load(path).n_epochs_ == 4  # the last checkpoint; epoch 5 died with the process

    X, y = data()
    kw = dict(BASE)
    ref = MLPClassifier(**kw).fit(X, y)
    ck = Checkpoint(path, every=2)
    resumed = MLPClassifier(**kw).fit(X, y, callbacks=[ck])
    assert ck.resumed_from_epoch == 4
    assert same_weights(ref, resumed)
    assert resumed.history_["loss"] == ref.history_["loss"]


CUDA_CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    import nbnet
    from nbnet import MLPClassifier
    from nbnet.nn.checkpoint import Checkpoint
    from nbnet.kernels import cuda_available
    if not cuda_available():
        print("no-cuda"); sys.exit(0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 5)); y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    kw = dict(hidden_layer_sizes=(6,), epochs=3, batch_size=8, dropout=0.2, seed=1, device="cuda")
    ref = MLPClassifier(**kw).fit(X, y)
    class Crash(Exception): pass
    def crash(epoch, logs):
        if epoch == 3: raise Crash
    try:
        MLPClassifier(**kw).fit(X, y, callbacks=[Checkpoint(sys.argv[1], every=2), crash])
    except Crash:
        pass
    assert nbnet.load(sys.argv[1]).n_epochs_ == 2
    ck = Checkpoint(sys.argv[1])
    res = MLPClassifier(**kw).fit(X, y, callbacks=[ck])
    same = all(np.array_equal(a, b) for a, b in zip(ref.get_weights(), res.get_weights()))
    print("resumed", ck.resumed_from_epoch, "same", same and ref.history_["loss"] == res.history_["loss"])
    """
)


@pytest.mark.slow
def test_resume_on_the_cuda_backend(tmp_path):
    """On the device the live weights are device arrays: the checkpoint must copy them back
    (CUDA simulator here; a real GPU with NBNET_CUDA_TESTS=gpu)."""
    env = dict(os.environ)
    if env.get("NBNET_CUDA_TESTS") != "gpu":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    r = subprocess.run([sys.executable, "-c", CUDA_CHILD, str(tmp_path / "cuda.ckpt")], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    if r.stdout.strip() == "no-cuda":
        pytest.skip("numba's CUDA target is not installed (pip install 'nbnet[cuda]')")
    assert r.stdout.split() == ["resumed", "2", "same", "True"], r.stdout + r.stderr[-2000:]


TRAIN_TOML = """
[data]
source = "synthetic:n=3000,d=20,classes=3,seed=1"
val_fraction = 0.25

[model]
hidden_layer_sizes = [64]

[train]
epochs = 300
batch_size = 32
seed = 0
n_threads = 1

[search]
metric = "val_accuracy"
"""


@pytest.mark.slow
def test_killed_nbnet_train_resumes_with_the_same_result(tmp_path, monkeypatch):
    """`nbnet train --checkpoint-every` killed with SIGKILL mid-fit; the same command again resumes
    and ends with the weights and per-epoch curve of an uninterrupted run; the dead run is KILLED."""
    import time

    from nbnet.experiment import tracking

    (tmp_path / "tiny.toml").write_text(TRAIN_TOML)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "nbnet", "train", "tiny.toml", "--checkpoint-every", "20"]
    ckpts = tmp_path / "mlruns" / "checkpoints"

    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (ckpts.is_dir() and any(ckpts.glob("*.ckpt"))):  # poll for the first checkpoint
            assert proc.poll() is None, "train finished before a checkpoint appeared: " + proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (ck_file,) = ckpts.glob("*.ckpt")
    killed_at = nbnet.load(ck_file).n_epochs_
    assert 20 <= killed_at < 300

    def train():
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        run_id = next(w for w in r.stdout.split() if len(w) == 33 and w.endswith(":"))[:-1]
        return run_id, r.stdout

    resumed, out = train()
    assert f"resumed from the checkpoint of epoch {killed_at}" in out
    assert not list(ckpts.glob("*.ckpt")), "a finished train removes its checkpoint"
    fresh, out = train()  # no checkpoint now: an uninterrupted run of the same config
    assert "resumed" not in out

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = tracking.client(uri)
    a, b = nbnet.load(f"runs:/{resumed}/model"), nbnet.load(f"runs:/{fresh}/model")
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))
    assert a.history_["loss"] == b.history_["loss"]
    # the resumed run's curve starts at epoch 1 and equals the uninterrupted one
    curve = {m.step: m.value for m in c.get_metric_history(resumed, "loss")}
    ref = {m.step: m.value for m in c.get_metric_history(fresh, "loss")}
    assert sorted(curve) == list(range(1, 301)) and curve == ref
    info = c.get_run(resumed)
    dead = info.data.tags["nbnet.resumed_from_run"]
    assert info.data.tags["nbnet.resumed_from_epoch"] == str(killed_at)
    assert c.get_run(dead).info.status == "KILLED"
    assert info.info.status == "FINISHED"


@pytest.mark.slow
def test_ctrl_c_stops_nbnet_train_cleanly_and_keeps_the_checkpoint(tmp_path):
    import time

    from nbnet.experiment import tracking

    (tmp_path / "tiny.toml").write_text(TRAIN_TOML.replace("epochs = 300", "epochs = 2000"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    ckpts = tmp_path / "mlruns" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "nbnet", "train", "tiny.toml", "--checkpoint-every", "20"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (ckpts.is_dir() and any(ckpts.glob("*.ckpt"))):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "nbnet: interrupted", err
    (ck,) = ckpts.glob("*.ckpt")
    assert 20 <= nbnet.load(ck).n_epochs_ < 2000
    c = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = c.search_runs([c.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "KILLED"
    assert max(m.step for m in c.get_metric_history(run.info.run_id, "loss")) < 2000


def test_one_checkpoint_one_fit_at_a_time(tmp_path):
    """Two fits writing one checkpoint would overwrite each other's state: the second is refused
    while the first runs, and may start once the first has ended (normally or by an exception)."""
    X, y = data()
    path = tmp_path / "c.ckpt"
    refused = []

    def second_fit(epoch, logs):
        if epoch == 1:
            with pytest.raises(NbnetError, match="in use by another running fit") as e:
                MLPClassifier(**BASE).fit(X, y, callbacks=[Checkpoint(path)])
            refused.append(str(e.value))

    MLPClassifier(**BASE).fit(X, y, callbacks=[Checkpoint(path, delete_on_success=False), second_fit])
    assert len(refused) == 1 and "\n" not in refused[0]
    with pytest.raises(Crash):  # the lock is released when a fit raises, and the checkpoint kept
        MLPClassifier(**dict(BASE, epochs=9)).fit(X, y, callbacks=[Checkpoint(path), crash_at(8)])
    est = MLPClassifier(**dict(BASE, epochs=9)).fit(X, y, callbacks=[ck := Checkpoint(path)])
    assert ck.resumed_from_epoch == 8 and est.n_epochs_ == 9
    assert [p.name for p in tmp_path.iterdir()] == []  # no lock file left behind


def test_history_logs_replay_activation_statistics():
    """A resumed run replays the restored epochs to its tracker, activation statistics included."""
    from nbnet.nn.checkpoint import history_logs
    from nbnet.viz import ActivationStats

    X, y = data()
    est = MLPClassifier(**dict(BASE, epochs=4)).fit(X, y, callbacks=[ActivationStats(X, every=2)])
    logs = dict(history_logs(est, 4))
    assert sorted(logs) == [1, 2, 3, 4]
    for epoch in (1, 3):  # every=2: epochs 1 and 3 have statistics, 2 and 4 do not
        for j in range(2):
            assert logs[epoch][f"act_dead_{j}"] == est.history_["act_dead"][epoch - 1][j]
            assert logs[epoch][f"act_mean_{j}"] == est.history_["act_mean"][epoch - 1][j]
    assert not any(k.startswith("act_") for k in logs[2]) and logs[4]["loss"] == est.history_["loss"][3]
