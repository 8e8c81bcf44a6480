"""Resource monitoring on real MLflow stores: system metrics of `nbnet train` and sweep parent runs
(MLflow's sampler), a psutil summary on every trial run."""

from __future__ import annotations

import numpy as np
import pytest
from stores import fresh_store
from test_search import experiment, store  # noqa: F401 (a fixture)

from nbnet.data import prepared
from nbnet.experiment import resources
from nbnet.experiment import sweep
from nbnet.experiment.run import train_run
from nbnet.experiment import tracking
from nbnet.errors import NbnetError

SYSTEM = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
          "system/system_memory_usage_percentage")
TRIAL = ("system/cpu_percent", "system/peak_rss_mb", "system/rss_mb")


@pytest.mark.parametrize(("raw", "value"), [(None, resources.DEFAULT_INTERVAL), ("", resources.DEFAULT_INTERVAL),
                                            ("0", 0.0), ("2.5", 2.5)])
def test_sampling_interval_from_the_environment(monkeypatch, raw, value):
    if raw is None:
        monkeypatch.delenv(resources.INTERVAL_ENV, raising=False)
    else:
        monkeypatch.setenv(resources.INTERVAL_ENV, raw)
    assert resources.sampling_interval() == value


@pytest.mark.parametrize("raw", ["abc", "-1", "nan", "inf"])
def test_a_bad_interval_is_a_one_line_error(monkeypatch, raw):
    monkeypatch.setenv(resources.INTERVAL_ENV, raw)
    with pytest.raises(NbnetError, match=resources.INTERVAL_ENV) as e:
        resources.sampling_interval()
    assert "\n" not in str(e.value)


def test_a_run_shorter_than_one_interval_gets_one_sample_and_zero_turns_it_off(tmp_path, empty_store_db):
    uri = fresh_store(tmp_path, empty_store_db)
    exp = tracking.ensure_experiment("res", uri)
    c = tracking.client(uri)
    short = tracking.start_run(exp, run_name="short", uri=uri)
    with resources.SystemMetrics(short, uri=uri, interval=3600):  # stopped long before its first sample
        np.linalg.svd(np.random.default_rng(0).normal(size=(300, 300)))
    tracking.end_run(short, uri=uri)
    for key in SYSTEM:
        history = c.get_metric_history(short, key)
        assert [m.step for m in history] == [0], key  # exactly one sample, taken when the monitor stopped
    assert c.get_run(short).data.metrics["system/system_memory_usage_megabytes"] > 0

    off = tracking.start_run(exp, run_name="off", uri=uri)
    with resources.SystemMetrics(off, uri=uri, interval=0):
        pass
    tracking.end_run(off, uri=uri)
    assert not [k for k in c.get_run(off).data.metrics if k.startswith("system/")]


def test_train_run_logs_system_metrics_into_its_own_store(tmp_path, monkeypatch, empty_store_db):
    """MLflow's global tracking URI points elsewhere: the sampler must still write into the run's store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(resources.INTERVAL_ENV, "1")
    prepared.clear_cache()
    uri = fresh_store(tmp_path, empty_store_db)
    elsewhere = tmp_path / "elsewhere" / "mlflow.db"
    with tracking.global_uri(f"sqlite:///{elsewhere}"):
        out = train_run(experiment(tmp_path, epochs=3), uri=uri)
    run = tracking.client(uri).get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert all(k in m for k in SYSTEM), sorted(k for k in m if k.startswith("system/"))
    assert m["system/cpu_utilization_percentage"] > 0 and m["system/system_memory_usage_megabytes"] > 0
    assert not elsewhere.exists()  # nothing went to MLflow's global store


def test_sweep_parent_gets_system_metrics_and_every_trial_a_usage_summary(store, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv(resources.INTERVAL_ENV, "1")
    r = sweep.run_sweep(experiment(tmp_path, n_trials=2, epochs=2), quiet=True, register=False)
    assert r.n_complete == 2
    c = tracking.client(store)
    parent = c.get_run(r.parent_run_id).data.metrics
    assert all(k in parent for k in SYSTEM)
    trials = c.search_runs([c.get_run(r.parent_run_id).info.experiment_id],
                           filter_string=f"tags.mlflow.parentRunId = '{r.parent_run_id}'")
    assert len(trials) == 2
    for t in trials:
        m = t.data.metrics
        assert all(k in m for k in TRIAL), sorted(m)
        assert m["system/cpu_percent"] > 0 and m["system/peak_rss_mb"] >= m["system/rss_mb"] > 0
        assert not any(k in m for k in SYSTEM)  # trials get the cheap summary, not a sampler


def test_trial_usage_measures_cpu_and_the_peak_of_this_trial():
    first = resources.TrialUsage()
    base = first.metrics()["system/rss_mb"]
    block = np.ones(200_000_000 // 8)  # 200 MB, touched
    block[::512] = np.arange(block[::512].size)  # a little CPU work too
    del block
    a = first.metrics()
    assert a["system/peak_rss_mb"] >= base + 190  # the block was resident at some point
    assert a["system/rss_mb"] < a["system/peak_rss_mb"] - 150  # and is gone now
    assert a["system/cpu_percent"] > 0
    second = resources.TrialUsage()
    b = second.metrics()
    if second.peak_is_per_trial:  # Linux: the next trial does not inherit the previous peak
        assert b["system/peak_rss_mb"] < a["system/peak_rss_mb"] - 150


def test_gpu_metrics_when_a_gpu_is_present(tmp_path, empty_store_db):
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py (the cuda extra) is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        pytest.skip(f"no NVIDIA GPU here (NVML: {e})")
    uri = fresh_store(tmp_path, empty_store_db)
    run = tracking.start_run(tracking.ensure_experiment("gpu", uri), run_name="gpu", uri=uri)
    with resources.SystemMetrics(run, uri=uri, interval=3600):
        pass
    tracking.end_run(run, uri=uri)
    m = tracking.client(uri).get_run(run).data.metrics
    assert "system/gpu_0_memory_usage_megabytes" in m and "system/gpu_0_utilization_percentage" in m, sorted(m)
