"""The sweep commands end to end, as a user runs them: `nbnet sweep/best/rerun/train` in a
subprocess, in a fresh project folder with its own stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from stores import fresh_store

ROOT = Path(__file__).resolve().parent.parent

TINY = """
[data]
source = "builtin:wine"
val_fraction = 0.3
preprocessing = { scale = "standard" }
[model]
hidden_layer_sizes = [8]
[train]
epochs = 3
batch_size = 16
learning_rate = 0.01
[search]
sampler = "random"
pruner = "none"
n_trials = 2
metric = "val_accuracy"
[search.space]
"train.learning_rate" = { type = "float", low = 1e-3, high = 3e-2, log = true }
"""


def nbnet(*args, cwd, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default store: cwd/mlruns
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "nbnet", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def project(tmp_path, empty_store_db):
    fresh_store(tmp_path, empty_store_db)
    (tmp_path / "tiny.toml").write_text(TINY)
    return tmp_path


@pytest.mark.slow
def test_sweep_best_rerun_train(project):
    r = nbnet("sweep", "tiny.toml", "--set", "train.epochs=4", cwd=project)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "sweep tiny: study 'tiny'" in out
    assert "1 worker × " in out and "(auto, " in out  # two short trials: not worth spawning a worker
    assert out.count(" COMPLETE ") == 2  # one line per trial
    assert "rank  trial  val_accuracy" in out  # the summary table
    assert "registered:   models:/tiny/1  → champion (models:/tiny@champion)" in out
    assert "nbnet ui" in out
    assert (project / "mlruns" / "optuna" / "tiny.log").is_file()
    run_id = next(line.split()[2] for line in out.splitlines() if line.startswith("best run:"))

    b = nbnet("best", cwd=project)
    assert b.returncode == 0, b.stderr
    assert f"run id:     {run_id}" in b.stdout and "train.learning_rate = " in b.stdout
    assert f"model URI:  runs:/{run_id}/model" in b.stdout and "models:/tiny@champion" in b.stdout

    rr = nbnet("rerun", run_id, cwd=project)
    assert rr.returncode == 0, rr.stderr
    assert "weights: bit-identical" in rr.stdout and "loss history over 4 epochs: identical" in rr.stdout

    t = nbnet("train", "tiny.toml", "--set", "train.epochs=2", "--register", cwd=project)
    assert t.returncode == 0, t.stderr
    assert t.stdout.startswith("run ") and "(2 epochs" in t.stdout and "registered: models:/tiny/2" in t.stdout


@pytest.mark.slow
def test_resumed_sweep_runs_nothing_when_complete(project):
    assert nbnet("sweep", "tiny.toml", "--trials", "1", "--no-register", "-q", cwd=project).returncode == 0
    r = nbnet("sweep", "tiny.toml", "--trials", "1", "--no-register", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "(1 done, 0 to run" in r.stdout and " COMPLETE " not in r.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "tiny.toml", "--set", "train.epoch=5"], "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["sweep", "tiny.toml", "--set", "train.epochs=five"], "train.epochs must be an integer, got 'five'"),
    (["sweep", "tiny.toml", "--set", "model.activation=swish"], "model.activation 'swish' is unknown"),
    (["sweep", "tiny.toml", "--set", "epochs"], "override 'epochs' must look like key=value"),
    (["sweep", "no_such_experiment"], "experiment 'no_such_experiment' not found"),
    (["sweep", "tiny.toml", "--sampler", "bayes"], "invalid choice: 'bayes'"),
    (["sweep", "tiny.toml", "--workers", "0"], "--workers must be at least 1"),
    (["sweep", "tiny.toml", "--workers", "many"], "--workers takes a number of worker processes or 'auto', not 'many'"),
    (["best", "--study", "nope"], "no study 'nope'"),
    (["train", "tiny.toml", "--set", "data.source=npz:missing.npz"], "missing.npz' not found"),
    (["rerun", "0123456789abcdef0123456789abcdef"], "run '0123456789abcdef0123456789abcdef' not found"),
])
def test_user_errors_are_one_line_exit_2_and_write_nothing(project, args, message):
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    r = nbnet(*args, cwd=project)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbnet"), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before  # nothing half-written


def test_rerun_outside_a_project_says_where_it_looked(tmp_path):
    r = nbnet("rerun", "0123456789abcdef", cwd=tmp_path)
    assert r.returncode == 2 and "no tracking store here" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no store was created
