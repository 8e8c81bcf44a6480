"""scripts/bench_train.py: its FLOP accounting, and one tiny side-by-side run of the JAX and
PyTorch children (skipped where those optional packages, the ``bench`` extra, are absent)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_train.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flops_per_sample_counts_forward_weight_and_input_gradients():
    b = _bench()
    # 3-5-2: forward 2·(15+10), weight gradients the same, input gradient of layer 2 only 2·10
    assert b.flops_per_sample((3, 5, 2)) == 50 + 50 + 20


@pytest.mark.parametrize("sizes", [(784, 256, 128, 10), (64, 128, 10)])
def test_roof_shapes_hold_every_gemm_flop_of_a_step(sizes):
    b = _bench()
    shapes = b.roof_shapes(sizes, 512)
    assert sum(2 * m * k * n for m, k, n in shapes) == 512 * b.flops_per_sample(sizes)
    assert len(shapes) == 3 * (len(sizes) - 1) - 1


@pytest.mark.slow
def test_jax_and_torch_children_train_side_by_side_on_one_core(tmp_path):
    pytest.importorskip("jax", reason="the bench extra (jax, optax) is not installed")
    pytest.importorskip("optax", reason="the bench extra (jax, optax) is not installed")
    pytest.importorskip("torch", reason="the bench extra (torch) is not installed")
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--shapes", "digits", "--batch-sizes", "digits=128",
                        "--frameworks", "jax,torch", "--rounds", "1", "--epochs", "2", "--threads", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = {r["framework"]: r["rounds"][0] for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"jax", "torch"}
    for r in runs.values():
        assert len(r["cpus"]) == 1  # --threads 1 pins the child to one core
        assert r["accuracy"] > 0.3  # 10 classes: trained well past chance in 3 epochs
        assert len(r["epoch_s"]) == 3 and r["best_samples_per_s"] > 0
    assert runs["jax"]["samples_per_epoch"] == (1797 // 128) * 128  # lax.scan drops the partial batch
    assert "| 64-128-10, bs 128 |" in p.stdout


def _script(name: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT.parent / name), *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.mark.slow
def test_the_serial_threshold_script_prints_its_table():
    r = _script("bench_serial_threshold.py")
    assert r.returncode == 0, r.stderr
    rows = [ln.split("|")[1:-1] for ln in r.stdout.splitlines() if ln.startswith("| 64-")]
    assert len(rows) == 9
    for net, macs, many, one, runs in rows:
        assert float(macs.split()[0]) > 0 and float(many.split()[0]) > 0 and float(one.split()[0]) > 0
        assert runs.strip().endswith(("thread", "threads"))


@pytest.mark.slow
def test_bench_sweep_times_auto_workers_and_the_untracked_twin(tmp_path):
    out = tmp_path / "sweep.json"
    r = _script("bench_sweep.py", "--case", "digits", "--trials", "3", "--workers", "1,auto", "--untracked",
                "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["workers"] for row in rows] == [1, "auto"]
    for row in rows:
        assert row["complete"] == 3 and row["untracked_wall_s"] > 0 and row["tracking_s"] > 0
    assert rows[1]["resolved"][0] == 1  # 3 short trials: auto does not spawn a worker
    assert "| tracked / untracked |" in r.stdout


@pytest.mark.slow
def test_the_gil_script_prints_a_fit_alone_and_beside_a_python_thread():
    r = _script("bench_gil.py", "--repeat", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [ln.split("|")[1:-1] for ln in r.stdout.splitlines() if ln.startswith(("| 16 |", "| 32 |"))]
    assert len(rows) == 2
    for batch, alone, slow, fast, kept in rows:
        assert float(alone.split()[0]) > 0 and float(slow.split()[0]) > 0 and float(fast.split()[0]) > 0
        assert kept.count("%") == 2
