"""``nbnet monitor``: PSI and KS against the stored training statistics (checked against
independent computations), the metric check, the monitoring run, and the fault rollback."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tables import COLS, make_table

from nbnet.experiment import config as C
from nbnet.ops import monitor
from nbnet.ops.promote import promote
from nbnet.experiment.tracking import registry
from nbnet.experiment import tracking
from nbnet.experiment.run import train_run
from nbnet.cli import main
from nbnet.data.prep import N_BINS, feature_stats
from stores import module_store



# --- the statistics ---------------------------------------------------------------------------
def _psi_by_hand(train: np.ndarray, new: np.ndarray, eps: float = 1e-4) -> float:
    """Deciles of the training sample, values counted with explicit comparisons, the PSI sum."""
    edges = np.quantile(train, np.linspace(0, 1, N_BINS + 1))
    total = 0.0
    for i in range(N_BINS):
        lo = -np.inf if i == 0 else edges[i]
        hi = np.inf if i == N_BINS - 1 else edges[i + 1]
        p = sum(1 for x in train if lo <= x < hi) / len(train)
        q = sum(1 for x in new if lo <= x < hi) / len(new)
        p, q = max(p, eps), max(q, eps)
        total += (q - p) * math.log(q / p)
    return total


def _bin_index(x: float, inner: np.ndarray) -> int:
    """Bin of x: the number of inner edges <= x (a plain loop, not searchsorted)."""
    k = 0
    for e in inner:
        if e <= x:
            k += 1
    return k


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(3)
    n, m = 600, 400
    train = np.column_stack([rng.normal(size=n), rng.exponential(size=n), rng.integers(0, 5, n).astype(float)])
    new = np.column_stack([rng.normal(0.5, 1.2, size=m), rng.exponential(size=m), rng.integers(1, 6, m).astype(float)])
    return train, new


def test_psi_matches_a_hand_computation(samples):
    train, new = samples
    stats = feature_stats(train)
    d = monitor.drift(stats, new)
    for j in range(train.shape[1]):
        assert d["psi"][j] == pytest.approx(_psi_by_hand(train[:, j], new[:, j]), rel=1e-12, abs=1e-12)
    same = monitor.drift(stats, train)
    np.testing.assert_allclose(same["psi"], 0.0, atol=1e-12)  # the training data against itself
    np.testing.assert_allclose(same["ks"], 0.0, atol=1e-12)
    assert d["psi"][0] > 0.1 and d["psi"][1] < 0.1  # shifted vs same distribution


def test_ks_equals_scipy_on_the_binned_samples_and_bounds_the_raw_statistic(samples):
    stats_mod = pytest.importorskip("scipy.stats")
    train, new = samples
    stats = feature_stats(train)
    d = monitor.drift(stats, new)
    for j in range(train.shape[1]):
        inner = stats["edges"][j, 1:-1]
        # the training bins come from the stored counts alone; the new ones by a plain loop
        bins_train = np.repeat(np.arange(N_BINS), stats["counts"][j])
        bins_new = np.array([_bin_index(x, inner) for x in new[:, j]])
        assert d["ks"][j] == pytest.approx(stats_mod.ks_2samp(bins_train, bins_new).statistic, abs=1e-12)
        # against the raw samples: a lower bound, within one bin's mass
        raw = stats_mod.ks_2samp(train[:, j], new[:, j]).statistic
        mass = max((stats["counts"][j] / len(train)).max(), (d["counts"][j] / len(new)).max())
        assert d["ks"][j] <= raw + 1e-12
        assert raw <= d["ks"][j] + mass + 1e-12
    assert d["ks"][0] > 0.15  # the shifted normal


def test_missing_values_are_a_psi_bin():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(500, 2))
    new = rng.normal(size=(300, 2))
    new[:90, 1] = np.nan  # 30% missing, the rest from the training distribution
    d = monitor.drift(feature_stats(train), new)
    assert d["psi"][1] > 1.0 and d["psi"][0] < 0.1
    assert d["ks"][1] < 0.15  # KS looks at the values present
    assert d["new_missing"][1] == pytest.approx(0.3)
    edge = monitor.psi(np.array([[5, 5, 0]]), np.array([[5, 5, 0]]))
    assert edge[0] == 0.0
    assert np.isnan(monitor.psi(np.array([[0, 0]]), np.array([[1, 2]]))[0])


def test_metric_keys_are_mlflow_safe():
    assert monitor.metric_keys(["color=red", "a b", "x/y", "é", "color_red"]) == \
        ["color_red", "a b", "x/y", "_", "color_red_1"]


# --- end to end on a real store ------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    yield from module_store(tmp_path_factory, "monitor-store", MPLBACKEND="Agg")


@pytest.fixture(scope="module")
def champion(store):
    """Registered model ``mon``: v1 (one epoch, weak) then v2 (30 epochs) as champion, trained by
    nbnet's own training run from a CSV; plus in-distribution and drifted tables."""
    make_table(400, 1).to_csv(store / "train.csv", index=False)
    raw = {"data": {"source": f"csv:{store / 'train.csv'}", "target": "label", "val_fraction": 0.25,
                    "preprocessing": {"scale": "standard"}},
           "model": {"hidden_layer_sizes": [16]},
           "train": {"epochs": 30, "batch_size": 16, "learning_rate": 0.01},
           "search": {"metric": "val_accuracy"}}
    cfg = C.from_dict(raw, name="mon")
    v1 = train_run(C.apply_overrides(cfg, ["train.epochs=1", "train.learning_rate=0.001"]), register=True)
    v2 = train_run(cfg, register=True)
    assert (v1["registered"], v2["registered"], v2["champion"]) == ("models:/mon/1", "models:/mon/2", True)
    same, drifted = store / "same.csv", store / "drift.csv"
    make_table(300, 2).to_csv(same, index=False)
    make_table(300, 3, shift=np.array([2.0, 0.0, -1.5, 0.0])).to_csv(drifted, index=False)
    return same, drifted


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _monitoring_runs(verdict=None):
    c = tracking.client()
    exp = c.get_experiment_by_name("mon-monitoring")
    flt = "tags.`nbnet.kind` = 'monitor'" + (f" and tags.`nbnet.verdict` = '{verdict}'" if verdict else "")
    return c.search_runs([exp.experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"])


def test_in_distribution_data_passes_and_nothing_moves(champion, capsys):
    same, _ = champion
    code, out, err = run(["monitor", "models:/mon@champion", same, "--rollback"], capsys)
    assert code == 0, out + err
    assert "verdict: PASS" in out and "0 of 4 features" in out and "val_accuracy" in out
    assert "rollback: not needed" in out
    assert str(registry.alias_version("mon").version) == "2"
    r = _monitoring_runs("pass")[0]
    assert r.info.status == "FINISHED"
    assert r.data.params["model.resolved_uri"] == "models:/mon/2" and r.data.params["monitor.psi"] == "0.25"
    assert r.data.params["data.rows"] == "300" and len(r.data.params["data.hash"]) == 64
    assert {"psi/a", "ks/d", "psi_max", "ks_max", "new_val_accuracy", "recorded_val_accuracy", "metric_drop"} <= set(r.data.metrics)
    assert r.data.metrics["psi_max"] < 0.25 and r.data.metrics["drifted_features"] == 0
    # the recorded value is the training run's validation accuracy
    v2 = tracking.client().get_model_version("mon", "2")
    assert r.data.metrics["recorded_val_accuracy"] == pytest.approx(float(v2.tags["nbnet.metric"]))
    assert v2.tags["monitor.last_verdict"] == "pass" and v2.tags["monitor.last_run"] == r.info.run_id


def test_thresholds_flags_override_config_and_fail_without_rollback(champion, capsys):
    same, _ = champion
    code, out, _ = run(["monitor", "models:/mon/2", same, "--psi", "0", "--json"], capsys)
    assert code == 1
    rep = json.loads(out)
    assert rep["verdict"] == "fail" and rep["thresholds"]["psi"] == 0.0
    assert rep["thresholds"]["source"] == "flags, else the model's experiment config"
    assert len(rep["features"]) == 4 and all(f["drift"] for f in rep["features"])
    assert rep["rollback"] is None and str(registry.alias_version("mon").version) == "2"  # no --rollback: no move


def test_drift_rolls_the_champion_back(champion, capsys):
    """The fault-rollback scenario: drifted inputs, the champion fails its check and goes back."""
    _, drifted = champion
    code, out, err = run(["monitor", "models:/mon@champion", drifted, "--rollback"], capsys)
    assert code == 1, out + err
    assert err == ""
    assert "verdict: FAIL" in out and "DRIFT" in out
    assert "rollback: champion of mon moved back v2 → v1" in out
    lines = out.splitlines()
    worst = lines[lines.index(next(l for l in lines if l.strip().startswith("feature"))) + 1]
    assert worst.split()[0] in ("a", "c")  # the shifted columns rank first
    assert str(registry.alias_version("mon").version) == "1"
    r = _monitoring_runs("fail")[0]
    tags = r.data.tags
    assert tags["nbnet.rollback"] == "champion of mon moved back v2 → v1"
    assert "drift in 2 feature(s)" in tags["nbnet.verdict_reason"]
    assert r.data.metrics["psi/a"] > 0.25 and r.data.metrics["psi/b"] < 0.25
    assert r.data.metrics["metric_drop"] > 0.02  # the accuracy fell too
    c = tracking.client()
    files = {a.path for a in c.list_artifacts(r.info.run_id, "monitor")}
    assert files == {"monitor/report.json", "monitor/drift.csv"}
    local = c.download_artifacts(r.info.run_id, "monitor/report.json")
    with open(local) as f:
        assert json.load(f)["verdict"] == "fail"
    v2 = c.get_model_version("mon", "2")
    assert r.info.run_id in v2.tags["champion.rollback_reason"] and v2.tags["champion.replaced_by"] == "1"
    assert v2.tags["monitor.last_verdict"] == "fail"
    hist = registry.history("mon")
    assert hist[-1]["action"] == "monitor-rollback" and (hist[-1]["from"], hist[-1]["to"]) == (2, 1)
    # monitoring the old champion's version again with --rollback does not touch the alias
    code, out, _ = run(["monitor", "models:/mon/2", drifted, "--rollback"], capsys)
    assert code == 1 and "not done: models:/mon/2 is not the current champion (champion is v1)" in out
    assert str(registry.alias_version("mon").version) == "1"
    promote("mon", 2)  # put v2 back for the other tests (the gate passes: it is better)
    assert str(registry.alias_version("mon").version) == "2"


def test_user_errors_are_one_line_exit_2(champion, store, tmp_path, capsys):
    same, _ = champion
    for argv, text in [
        (["monitor", "models:/mon@champion", tmp_path / "nope.csv"], "not found"),
        (["monitor", "models:/mon@champion", same, "--target", "nope"], "has no column 'nope'"),
        (["monitor", "models:/nope@champion", same], "no registered model named 'nope'"),
        (["monitor", "models:/mon/7", same], "mon has no version 7"),
        (["monitor", "models:/mon@champion", same, "--psi", "-1"], "--psi must be a number >= 0"),
    ]:
        code, out, err = run(argv, capsys)
        assert code == 2 and err.startswith("nbnet: error: ") and err.count("\n") == 1 and text in err, err


def test_model_without_training_statistics_is_a_user_error(store, tmp_path, capsys):
    from nbnet import MLPClassifier

    t = make_table(60, 5)
    clf = MLPClassifier((4,), epochs=1, seed=0).fit(t[COLS].to_numpy(), t["label"].to_numpy())
    path = tmp_path / "m.nbnet"
    clf.save(path)
    t.to_csv(tmp_path / "d.csv", index=False)
    code, _, err = run(["monitor", path, tmp_path / "d.csv"], capsys)
    assert code == 2 and "stores no training statistics" in err and err.count("\n") == 1
    # a local model file with statistics is checked too (drift only: it has no recorded metric)
    clf.set_params(preprocessing={"scale": "standard"}).fit(t[COLS].to_numpy(), t["label"].to_numpy())
    clf.save(tmp_path / "local.nbnet")
    code, out, err = run(["monitor", tmp_path / "local.nbnet", tmp_path / "d.csv", "--target", "label"], capsys)
    assert code == 0, err
    assert "no recorded validation value to compare" in out and "experiment local-monitoring" in out


def test_regression_metric_is_minimized(store, tmp_path, capsys):
    """For an error metric (val_rmse, minimize) the check fails when the error grows."""
    from nbnet import MLPRegressor

    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    y = X @ np.array([1.0, 2.0, -1.0]) + 0.1 * rng.normal(size=300)
    reg = MLPRegressor((8,), epochs=30, learning_rate=0.01, seed=0, preprocessing={"scale": "standard"}).fit(X, y)
    run_id = tracking.start_run(tracking.ensure_experiment("regr"), run_name="fit")
    tracking.log_model(run_id, reg, pd.DataFrame(X[:5], columns=["p", "q", "r"]))
    rmse = float(np.sqrt(np.mean((reg.predict(X) - y) ** 2)))
    tracking.log_metrics(run_id, {"val_rmse": rmse})
    tracking.end_run(run_id)
    assert tracking.register_champion("regr", run_id, "val_rmse", "minimize") == (1, True)
    table = pd.DataFrame(X, columns=["p", "q", "r"])
    table.assign(t=y).to_csv(tmp_path / "same.csv", index=False)
    table.assign(t=y + 1.0).to_csv(tmp_path / "offset.csv", index=False)  # same inputs, the target moved
    code, out, _ = run(["monitor", "models:/regr@champion", tmp_path / "same.csv", "--target", "t", "--json"], capsys)
    m = json.loads(out)["metric"]
    assert code == 0 and m["direction"] == "minimize" and m["new"] == pytest.approx(rmse, rel=1e-6)
    code, out, _ = run(["monitor", "models:/regr@champion", tmp_path / "offset.csv", "--target", "t"], capsys)
    assert code == 1 and "0 of 3 features" in out and "val_rmse" in out and "FAIL" in out
