"""Live progress: a bar on a terminal (a real pseudo-terminal), plain lines through a pipe, nothing
with -q, progress on stderr with --json; the sweep's progress events from worker processes; the
cold-compile notice."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from stores import fresh_store
from terminal import run_on_terminal

from nbnet import MLPClassifier
from nbnet.cli.progress import EpochProgress, SweepProgress, compile_notice
from nbnet.experiment.sweep.workers import MAX_EVENT_BYTES, relay, send_event
from nbnet.kernels import backend
from nbnet.kernels.compile import cache_is_cold

TINY = """
[data]
source = "builtin:wine"
val_fraction = 0.3
preprocessing = { scale = "standard" }
[model]
hidden_layer_sizes = [8]
[train]
epochs = 4
batch_size = 16
learning_rate = 0.01
[search]
sampler = "random"
pruner = "none"
n_trials = 3
metric = "val_accuracy"
[search.space]
"train.learning_rate" = { type = "float", low = 1e-3, high = 3e-2, log = true }
"""
BAR = re.compile(r"\d+%\|")  # tqdm's "75%|███▌ |"


class Terminal(io.StringIO):
    def isatty(self):
        return True


# --- the displays, fed directly --------------------------------------------------------------------
def test_epoch_progress_plain_lines_and_relative_numbers():
    out = io.StringIO()
    p = EpochProgress(3, label="update", keys=("loss", "val_loss"), relative=True, stream=out)
    for epoch in (11, 12, 13):  # a model's own count goes on from 10 epochs
        p.on_epoch_end(epoch, {"loss": 1.0 / epoch, "val_loss": 0.5, "val_accuracy": 0.75, "epoch_time": 0.01})
    p.close()
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"]
    assert "val_accuracy 0.7500" in lines[0] and "\r" not in out.getvalue()


def test_epoch_progress_bar_on_a_terminal():
    term = Terminal()
    with EpochProgress(4, label="train tiny", keys=("loss", "val_loss", "val_accuracy"), stream=term) as p:
        for epoch in (1, 2, 3, 4):
            p.on_epoch_end(epoch, {"loss": 0.5, "val_loss": 0.25, "val_accuracy": 0.875})
    shown = term.getvalue()
    assert "train tiny" in shown and "4/4" in shown and "val_accuracy 0.8750" in shown and BAR.search(shown)
    assert "epoch   1/4" not in shown  # no plain lines


def _events():
    yield {"kind": "start", "total": 4, "done": 1, "complete": 1, "pruned": 0, "failed": 0, "best": 0.5,
           "metric": "val_accuracy", "direction": "maximize"}
    yield {"kind": "epoch", "worker": 0, "trial": 1, "epoch": 3, "epochs": 10}
    yield {"kind": "epoch", "worker": 1, "trial": 2, "epoch": 7, "epochs": 10}
    yield {"kind": "trial", "worker": 0, "trial": 1, "state": "COMPLETE", "value": 0.75, "line": "trial 1 COMPLETE"}
    yield {"kind": "trial", "worker": 1, "trial": 2, "state": "PRUNED", "value": None, "line": "trial 2 PRUNED"}
    yield {"kind": "trial", "worker": 0, "trial": 3, "state": "FAIL", "value": None, "line": "trial 3 FAIL"}
    yield {"kind": "end"}


def test_sweep_progress_plain_is_one_line_per_trial():
    out = io.StringIO()
    p = SweepProgress("sweep x", stream=out)
    for e in _events():
        p(e)
    assert out.getvalue().splitlines() == ["trial 1 COMPLETE", "trial 2 PRUNED", "trial 3 FAIL"]


def test_sweep_progress_bar_counts_best_and_running_trials():
    term = Terminal()
    p = SweepProgress("sweep x", stream=term)
    events = list(_events())
    for e in events[:3]:
        p(e)
    p.shown = 0.0  # the postfix is redrawn at most every 0.2 s; show the running trials now
    p._postfix(force=True)
    mid = term.getvalue()
    assert "1/4" in mid and "best val_accuracy 0.5000" in mid and "trial 1: epoch 3/10" in mid \
        and "trial 2: epoch 7/10" in mid
    for e in events[3:]:
        p(e)
    shown = term.getvalue()
    assert "4/4" in shown and "1 complete" not in shown.rsplit("\r", 1)[-1]  # the last state is drawn
    assert "2 complete, 1 pruned, 1 failed" in shown and "best val_accuracy 0.7500" in shown
    assert all(f"trial {n} " in shown for n in (1, 2, 3))  # the trials' lines above the bar
    assert p.bar is None  # closed by "end"


def test_relay_brings_events_from_a_spawned_process():
    got = []
    with relay(got.append) as events:
        proc = mp.get_context("spawn").Process(target=send_event, args=(events, {"kind": "trial", "from": "child"}))
        proc.start()
        proc.join(timeout=120)
        send_event(events, {"kind": "epoch", "from": "parent", "line": "é" * 5000})  # shortened to fit
    assert proc.exitcode == 0
    assert sorted(e["from"] for e in got) == ["child", "parent"]
    line = got[-1]["line"] if got[-1]["from"] == "parent" else got[0]["line"]
    assert line.startswith("éé") and line.endswith("…") and len(pickle.dumps(got[-1])) <= MAX_EVENT_BYTES


# --- the cold-compile notice ---------------------------------------------------------------------
def test_no_compile_notice_once_the_kernels_are_cached():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    MLPClassifier((4,), epochs=1, n_threads=1).fit(X, (X[:, 0] > 0).astype(int))  # compiles or loads the cache
    assert not cache_is_cold(backend("cpu"))
    out = io.StringIO()
    assert compile_notice(stream=out) is False and out.getvalue() == ""


def test_compile_notice_on_an_empty_cache(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    r = subprocess.run([sys.executable, "-c", "from nbnet.cli.progress import compile_notice; compile_notice()"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("compiling nbnet's kernels") and "about 10 s" in r.stdout
    assert len(r.stdout.splitlines()) == 1


# --- the commands, on a terminal and through a pipe ------------------------------------------------
@pytest.fixture
def project(tmp_path, empty_store_db):
    fresh_store(tmp_path, empty_store_db)
    (tmp_path / "tiny.toml").write_text(TINY)
    return tmp_path


def _env():
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def _nbnet(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nbnet", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_train_progress(project):
    code, shown, err = run_on_terminal([sys.executable, "-m", "nbnet", "train", "tiny.toml"], cwd=project, env=_env())
    assert code == 0, err
    run_line = re.search(r"^run (\w{32}) \(experiment tiny\): http://127\.0\.0\.1:5000/#/experiments/\d+/runs/\1",
                         shown, re.M)
    assert run_line, shown
    assert run_line.start() < BAR.search(shown).start()  # the run's address comes before the first epoch
    assert "train tiny" in shown and "4/4" in shown and "epoch   1/4" not in shown

    r = _nbnet("train", "tiny.toml", cwd=project)  # a pipe: one plain line per epoch
    assert r.returncode == 0, r.stderr
    epochs = [ln for ln in r.stdout.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in epochs] == ["1/4", "2/4", "3/4", "4/4"] and "\r" not in r.stdout
    assert "val_accuracy" in epochs[0] and "open the UI:  nbnet ui" in r.stdout

    q = _nbnet("train", "tiny.toml", "-q", cwd=project)
    assert q.returncode == 0, q.stderr
    assert not any(ln.startswith("epoch ") for ln in q.stdout.splitlines()) and "(experiment tiny): http" not in q.stdout

    j = _nbnet("train", "tiny.toml", "--json", cwd=project)
    assert j.returncode == 0, j.stderr
    out = json.loads(j.stdout)  # exactly one JSON object on stdout
    assert out["model_uri"] == f"runs:/{out['run_id']}/model" and out["metrics"]["epochs"] == 4
    assert "epoch   4/4" in j.stderr and f"run {out['run_id']}" in j.stderr


@pytest.mark.slow
def test_sweep_progress(project):
    code, shown, err = run_on_terminal([sys.executable, "-m", "nbnet", "sweep", "tiny.toml", "--no-register"],
                                       cwd=project, env=_env())
    assert code == 0, err
    assert "sweep tiny:" in shown and "3/3" in shown and BAR.search(shown)
    assert "3 complete, 0 pruned, 0 failed" in shown and "best val_accuracy" in shown
    assert re.search(r"<\d\d:\d\d", shown)  # tqdm's ETA
    assert shown.count(" COMPLETE ") == 3  # each trial's line, above the bar

    r = _nbnet("sweep", "tiny.toml", "--study", "piped", "--no-register", "--workers", "2", cwd=project)
    assert r.returncode == 0, r.stderr
    trials = [ln for ln in r.stdout.splitlines() if re.match(r"\[w\d\] trial +\d+ COMPLETE", ln)]
    assert len(trials) == 3 and "\r" not in r.stdout and not BAR.search(r.stdout)

    q = _nbnet("sweep", "tiny.toml", "--study", "quiet", "--no-register", "-q", cwd=project)
    assert q.returncode == 0 and " COMPLETE " not in q.stdout and "rank  trial" in q.stdout
