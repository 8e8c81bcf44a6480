"""Visualisation: per-epoch activation statistics, the figures, the per-run evaluation data and
``nbnet plot RUN_ID`` on a real MLflow store in a temporary folder."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

import reference as R
from nbnet import MLPClassifier, MLPRegressor, viz
from nbnet.experiment import tracking
from nbnet.experiment import config as C
from nbnet.data.prepared import clear_cache
from nbnet.experiment import sweep
from nbnet.experiment.run import train_run
from nbnet.cli import main
from stores import fresh_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path_or_bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, after checking the signature."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def numpy_stats(weights, X, activation):
    """Reference: per hidden layer (mean, std, fraction of units zero on every row), float64."""
    out, A = [], np.asarray(X, np.float64)
    for l in range(len(weights) // 2 - 1):
        _, A = R.dense_forward(A, weights[2 * l], weights[2 * l + 1], activation)
        out.append([A.mean(), A.std(), np.mean(np.all(A == 0, axis=0))])
    return np.array(out)


# --- activation statistics ------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "tanh", "leaky_relu", "sigmoid"])
def test_hidden_activation_stats_match_a_numpy_forward_pass(make_net, activation):
    net = make_net(4, (7, 5), 3, activation)
    W = net.weights
    shift = -50.0 if activation == "relu" else -3.0  # (a sigmoid of -50 is 0 in the reference, 2e-22 in the kernel)
    W[1][[1, 4]] = shift  # units 1 and 4 of hidden layer 0: dead (zero on every row) under ReLU
    W[3][2] = shift  # unit 2 of hidden layer 1
    X = np.random.default_rng(3).normal(size=(40, 4))
    got = viz.hidden_activation_stats(net.layout, net.params, X)
    want = numpy_stats(W, X, activation)
    np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=1e-12, atol=1e-14)
    assert got[:, 2].tolist() == want[:, 2].tolist()  # a count over units: exact
    if activation == "relu":
        assert got[:, 2].tolist() == [2 / 7, 1 / 5]
    else:
        assert got[:, 2].tolist() == [0.0, 0.0]  # tanh, leaky ReLU, sigmoid units are never 0 on every row


def test_dead_fraction_counts_units_not_zero_values(make_net):
    """A ReLU unit that is zero on some rows but not all is alive; forward_stats' third column
    (zero values) and the dead-unit fraction differ on purpose."""
    net = make_net(3, (6,), 2, "relu", seed=1)
    X = np.random.default_rng(0).normal(size=(30, 3))
    got = viz.hidden_activation_stats(net.layout, net.params, X)
    _, A = R.dense_forward(X, net.weights[0], net.weights[1], "relu")
    assert 0 < np.mean(A == 0) and got[0, 2] == np.mean(np.all(A == 0, axis=0))
    assert got[0, 2] < np.mean(A == 0)


class _Check:
    """A callback after ActivationStats: recomputes the statistics with NumPy from the current
    weights and records what it got in ``logs`` (which the callbacks share)."""

    def __init__(self, X, activation):
        self.X, self.activation, self.seen = X, activation, []

    def on_train_begin(self, est):
        self.est = est

    def on_epoch_end(self, epoch, logs):
        n_hidden = len(self.est.layout_.sizes) - 2
        got = {k: logs.get(k) for k in logs if k.startswith("act_")}
        want = numpy_stats(self.est.get_weights(), self.X, self.activation) if got else None
        self.seen.append((epoch, got, want, n_hidden))


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_callback_adds_per_layer_statistics_to_logs_every_epoch(blobs, dtype, tol):
    X, y = blobs
    Xv = X[:50]
    check = _Check(Xv, "relu")
    cb = viz.ActivationStats(Xv)
    clf = MLPClassifier((6, 4), epochs=4, seed=0, dtype=dtype, learning_rate=0.05).fit(
        X, y, validation_data=(Xv, y[:50]), callbacks=[cb, check])
    assert [e for e, *_ in check.seen] == [1, 2, 3, 4]
    for epoch, got, want, n_hidden in check.seen:
        assert sorted(got) == sorted(f"{k}_{l}" for k in viz.ACT_STATS for l in range(n_hidden))
        for l in range(n_hidden):
            np.testing.assert_allclose([got[f"act_mean_{l}"], got[f"act_std_{l}"]], want[l, :2], rtol=tol, atol=tol)
            assert got[f"act_dead_{l}"] == want[l, 2]
    h = clf.history_
    assert [len(h[k]) for k in viz.ACT_STATS] == [4, 4, 4] and all(len(v) == 2 for v in h["act_dead"])
    assert h["act_mean"][-1][1] == check.seen[-1][1]["act_mean_1"]
    assert cb.seconds > 0


@pytest.mark.parametrize("max_rows", [None, 512])
def test_callback_samples_a_fixed_subset_and_uses_the_preprocessing(blobs, max_rows):
    X, y = blobs
    Xbig = np.repeat(X, 3, axis=0)  # 720 rows
    cb = viz.ActivationStats(Xbig * 10 + 3, **({"max_rows": max_rows} if max_rows else {}))
    clf = MLPClassifier((5,), epochs=1, seed=0, dtype="float64", preprocessing={"scale": "standard"})
    clf.fit(X * 10 + 3, y, callbacks=[cb])
    k = max_rows or 128  # the default keeps the cost per epoch small (README: visualisation)
    assert cb.sample.shape == (k, 5)
    rows = np.sort(np.random.default_rng(0).choice(720, k, replace=False))  # drawn once, seeded
    np.testing.assert_array_equal(cb.sample, clf.network_input((Xbig * 10 + 3)[rows]))
    assert abs(cb.sample.mean()) < 0.2  # standardised, not the raw *10+3 values


def test_callback_every_k_epochs_records_nan_between(blobs):
    X, y = blobs
    logged = []
    clf = MLPClassifier((4,), epochs=5, seed=0).fit(
        X, y, callbacks=[viz.ActivationStats(X, every=2), lambda e, logs: logged.append("act_std_0" in logs)])
    assert logged == [True, False, True, False, True]
    std = [v[0] for v in clf.history_["act_std"]]
    assert [math.isnan(v) for v in std] == [False, True, False, True, False]


def test_activation_history_survives_the_model_file(blobs, tmp_path):
    X, y = blobs
    clf = MLPClassifier((4,), epochs=2, seed=0).fit(X, y, callbacks=[viz.ActivationStats(X)])
    clf.save(tmp_path / "m.nbnet")
    from nbnet.nn.estimator import load as load_file

    again = load_file(tmp_path / "m.nbnet")
    assert again.history_["act_dead"] == clf.history_["act_dead"]


def test_callback_after_a_checkpoint_resume_keeps_one_entry_per_epoch(blobs, tmp_path):
    """A fit resumed from a checkpoint written without the callback: the restored epochs get NaN,
    the new ones statistics, and the lists stay aligned with the epochs."""
    from nbnet.nn.checkpoint import Checkpoint

    X, y = blobs

    def stop_after_2(epoch, logs):
        return epoch == 2

    ck = tmp_path / "fit.ckpt"
    MLPClassifier((4,), epochs=4, seed=0).fit(X, y, callbacks=[Checkpoint(ck, delete_on_success=False), stop_after_2])
    clf = MLPClassifier((4,), epochs=4, seed=0).fit(X, y, callbacks=[Checkpoint(ck), viz.ActivationStats(X)])
    std = [v[0] for v in clf.history_["act_std"]]
    assert len(std) == len(clf.history_["loss"]) == 4
    assert [math.isnan(v) for v in std] == [True, True, False, False]


# --- ROC and evaluation data ------------------------------------------------------------------------
def test_roc_points_match_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300).astype(bool)
    score = np.round(rng.normal(size=300) + y, 1)  # rounding makes many ties
    fpr, tpr, auc = viz.roc_points(y, score, max_points=10_000)
    sf, st, _ = roc_curve(y, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf, atol=1e-5)
    np.testing.assert_allclose(tpr, st, atol=1e-5)
    assert auc == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    thin_f, thin_t, thin_auc = viz.roc_points(y, score, max_points=11)
    assert len(thin_f) <= 11 and thin_f[0] == 0 and thin_f[-1] == 1 and thin_t[-1] == 1 and thin_auc == auc
    assert viz.roc_points(np.ones(5, bool), np.arange(5.0)) == ([], [], None)  # one class: undefined


def test_evaluation_data_binary_multiclass_and_regression(blobs, regression):
    from sklearn.metrics import confusion_matrix, roc_auc_score

    X, y = blobs
    labels = np.array(["ant", "bee", "cat"])[y]
    clf = MLPClassifier((8,), epochs=5, seed=0).fit(X, labels)
    ev = json.loads(json.dumps(viz.evaluation_data(clf, X, labels, "classification")))  # JSON-ready
    assert ev["classes"] == ["ant", "bee", "cat"] and ev["n"] == len(labels)
    np.testing.assert_array_equal(ev["confusion"], confusion_matrix(labels, clf.predict(X), labels=["ant", "bee", "cat"]))
    assert not ev["roc"]["binary"] and len(ev["roc"]["curves"]) == 3
    proba = clf.predict_proba(X)
    for k, c in enumerate(ev["roc"]["curves"]):
        assert c["auc"] == pytest.approx(roc_auc_score(labels == c["label"], proba[:, k]), abs=1e-12)

    yb = (y == 1).astype(int)
    bin_clf = MLPClassifier((8,), epochs=5, seed=0).fit(X, yb)
    evb = viz.evaluation_data(bin_clf, X, yb, "classification")
    assert evb["roc"]["binary"] and evb["roc"]["positive"] == 1 and len(evb["roc"]["curves"]) == 1
    assert evb["roc"]["macro_auc"] == pytest.approx(roc_auc_score(yb, bin_clf.predict_proba(X)[:, 1]), abs=1e-12)

    Xr, yr = regression
    reg = MLPRegressor((8,), epochs=5, seed=0).fit(Xr, yr)
    evr = viz.evaluation_data(reg, Xr, yr, "regression")
    assert len(evr["y_true"]) == len(yr) == len(evr["y_pred"]) and evr["y_true"][:3] == [float(v) for v in yr[:3]]
    assert evr["rmse"] == pytest.approx(float(np.sqrt(np.mean((reg.predict(Xr) - yr) ** 2))))


# --- figures: NaN-safe inputs -----------------------------------------------------------------------
def _lines(ax):
    return [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]


def test_curves_leave_out_missing_nan_and_inf_values():
    history = {"loss": [1.0, float("nan"), 0.5, float("inf")], "val_loss": [float("nan")] * 4,
               "val_accuracy": [None, 0.5, 0.6, 0.7], "grad_norm": [[1.0, 0.0], [0.5, float("nan")], [0.2, 0.1], [0.1, 0.1]],
               "act_dead": [[0.0], [0.25], [None], [0.5]]}
    series = viz.series_from_history(history)
    assert sorted(series) == ["act_dead_0", "grad_norm_0", "grad_norm_1", "loss", "val_accuracy", "val_loss"]
    fig = viz.loss_curves(series)
    loss_ax, score_ax = fig.axes
    assert _lines(loss_ax) == [([1, 3], [1.0, 0.5])]  # val_loss all NaN: no line at all
    assert _lines(score_ax) == [([2, 3, 4], [0.5, 0.6, 0.7])]
    grad = viz.grad_norm_curves(series).axes[0]
    assert _lines(grad) == [([1, 2, 3, 4], [1.0, 0.5, 0.2, 0.1]), ([3, 4], [0.1, 0.1])]  # 0 has no log: left out
    act = viz.activation_curves(series).axes[2]
    assert _lines(act) == [([1, 2, 4], [0.0, 0.25, 0.5])]
    # an all-missing history still draws (with a note), and so does the per-run panel
    empty = viz.series_from_history({"loss": [float("nan")], "grad_norm": [[float("nan")]]})
    viz.loss_curves(empty)
    viz.grad_norm_curves(empty)
    assert png_size(viz.summary_png(empty, None)) == (640, 470)
    assert png_size(viz.summary_png(series, {"task": "regression", "y_true": [1.0, float("nan")], "y_pred": [2.0, 3.0]}))


def test_figures_of_each_kind_render_and_save_atomically(tmp_path):
    series = viz.series_from_history({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "grad_norm": [[1.0], [0.5]],
                                      "act_mean": [[0.1], [0.2]], "act_std": [[1.0], [1.1]], "act_dead": [[0.0], [0.5]]})
    roc = viz.roc_data(np.array([0, 1, 1, 0, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5],
                                                             [0.1, 0.9]]), [0, 1])
    figs = {"loss": viz.loss_curves(series), "grad": viz.grad_norm_curves(series), "act": viz.activation_curves(series),
            "cm": viz.confusion_matrix([[3, 1], [0, 4]], ["a", "b"]), "roc": viz.roc_curve(roc),
            "reg": viz.pred_vs_true([1.0, 2.0], [1.5, 1.9])}
    for name, fig in figs.items():
        viz.save(fig, tmp_path / f"{name}.png")
        w, h = png_size(tmp_path / f"{name}.png")
        assert w >= 300 and h >= 300 and (tmp_path / f"{name}.png").stat().st_size > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.png" for n in figs)  # no temporaries left
    assert roc["binary"] and roc["curves"][0]["auc"] == pytest.approx(5 / 6)


# --- tracked runs and nbnet plot ------------------------------------------------------------------
EXPERIMENT = """
[data]
source = "builtin:{source}"
val_fraction = 0.25
preprocessing = {{ scale = "standard" }}

[model]
hidden_layer_sizes = [12, 6]

[train]
epochs = {epochs}
batch_size = 32
learning_rate = 0.01
seed = 0

[search]
n_trials = 2
metric = "{metric}"

[search.space]
"train.learning_rate" = {{ type = "float", low = 1e-3, high = 3e-2, log = true }}
"""


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store_db):
    uri = fresh_store(tmp_path, empty_store_db)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    clear_cache()
    return uri


def experiment(tmp_path, source="wine", metric="val_accuracy", epochs=3, name=None):
    f = tmp_path / f"{name or source}.toml"
    f.write_text(EXPERIMENT.format(source=source, metric=metric, epochs=epochs))
    return C.load_experiment(f, [])


def cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_run_logs_activation_metrics_and_nbnet_plot_draws_it(store, tmp_path, capsys):
    out = train_run(experiment(tmp_path, epochs=3))
    rid = out["run_id"]
    c = tracking.client(store)
    for key in ("act_mean", "act_std", "act_dead"):
        for l in range(2):  # two hidden layers
            hist = c.get_metric_history(rid, f"{key}_{l}")
            assert sorted(m.step for m in hist) == [1, 2, 3]
            assert all(math.isfinite(m.value) for m in hist)
        assert not c.get_metric_history(rid, f"{key}_2")  # no statistics of the output layer
    assert all(0 <= m.value <= 1 for m in c.get_metric_history(rid, "act_dead_0"))
    arts = {a.path for a in c.list_artifacts(rid, "plots")}
    assert arts == {"plots/evaluation.json", "plots/summary.png"}  # one PNG per run
    ev = json.loads(Path(c.download_artifacts(rid, "plots/evaluation.json", str(tmp_path))).read_text())
    assert ev["classes"] == [0, 1, 2] and np.sum(ev["confusion"]) == ev["n"] and len(ev["roc"]["curves"]) == 3

    dest = tmp_path / "figs"
    code, stdout, err = cli(["plot", rid, "-o", dest], capsys)
    assert code == 0, err
    names = ["loss.png", "grad_norms.png", "activations.png", "confusion_matrix.png", "roc.png", "summary.png"]
    assert stdout.split() == [str(dest / n) for n in names]
    for n in names:
        w, h = png_size(dest / n)
        assert w >= 400 and h >= 300 and (dest / n).stat().st_size > 8000, n
    assert sorted(p.name for p in dest.iterdir()) == sorted(names)
    # the default folder is ./plots/RUN_ID
    code, stdout, _ = cli(["plot", rid], capsys)
    assert code == 0 and Path(stdout.split()[0]).parent == Path("plots") / rid


def test_binary_and_regression_runs_get_roc_and_pred_vs_true(store, tmp_path, capsys):
    binary = train_run(experiment(tmp_path, "breast_cancer", "val_f1", epochs=2))
    code, stdout, err = cli(["plot", binary["run_id"], "-o", tmp_path / "b"], capsys)
    assert code == 0, err
    assert "roc.png" in {Path(p).name for p in stdout.split()}
    png_size(tmp_path / "b" / "roc.png")
    reg = train_run(experiment(tmp_path, "diabetes", "val_r2", epochs=2))
    code, stdout, err = cli(["plot", reg["run_id"], "-o", tmp_path / "r"], capsys)
    assert code == 0, err
    names = {Path(p).name for p in stdout.split()}
    assert "pred_vs_true.png" in names and "roc.png" not in names and "confusion_matrix.png" not in names


def test_plot_refuses_unknown_runs_and_runs_without_metrics(store, tmp_path, capsys):
    code, out, err = cli(["plot", "0123456789abcdef0123456789abcdef"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "not found" in err
    exp = tracking.ensure_experiment("bare")
    bare = tracking.start_run(exp, run_name="bare")
    tracking.end_run(bare)
    code, out, err = cli(["plot", bare, "-o", tmp_path / "x"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no per-epoch metrics" in err
    assert not (tmp_path / "x").exists()


def test_plot_of_a_run_without_evaluation_data_draws_the_curves_and_says_so(store, tmp_path, blobs, capsys):
    """A pruned or failed trial stops before its artifacts: the per-epoch metrics still plot."""
    X, y = blobs
    run = tracking.start_run(tracking.ensure_experiment("pruned"), run_name="trial-7")
    with tracking.MetricLogger(run) as logger:
        MLPClassifier((5, 3), epochs=3, seed=0).fit(X, y, validation_data=(X[:40], y[:40]),
                                                  callbacks=[viz.ActivationStats(X[:40]), logger])
    tracking.end_run(run, "KILLED")
    code, out, err = cli(["plot", run, "-o", tmp_path / "k"], capsys)
    assert code == 0, err
    assert [Path(p).name for p in out.split()] == ["loss.png", "grad_norms.png", "activations.png", "summary.png"]
    assert "no plots/evaluation.json" in err and err.count("\n") == 1


def test_plot_without_a_store_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = cli(["plot", "abc"], capsys)
    assert code == 2 and "no tracking store here" in err and not (tmp_path / "mlruns").exists()


def test_plot_of_a_sweep_parent_draws_its_best_trial(store, tmp_path, capsys):
    r = sweep.run_sweep(experiment(tmp_path, epochs=2, name="tiny"), quiet=True, register=False)
    c = tracking.client(store)
    for kid in c.search_runs([c.get_experiment_by_name("tiny").experiment_id],
                             filter_string=f"tags.mlflow.parentRunId = '{r.parent_run_id}'"):
        assert {a.path for a in c.list_artifacts(kid.info.run_id, "plots")} == {"plots/evaluation.json",
                                                                              "plots/summary.png"}
        assert len(c.get_metric_history(kid.info.run_id, "act_std_1")) == 2
    code, out, err = cli(["plot", r.parent_run_id, "-o", tmp_path / "p"], capsys)
    assert code == 0, err
    assert f"best trial {r.best_trial} (run {r.best_run_id})" in err
    names = {Path(p).name for p in out.split()}
    assert {"loss.png", "activations.png", "roc.png", "study_optimization_history.png"} <= names


# --- the sweep's study figures and importances ------------------------------------------------------
def _study(n: int, direction: str = "maximize"):
    """An in-memory Optuna study whose objective depends strongly on `depth`, weakly on `lr` and
    not at all on `act`, with per-step reports and a pruned trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(t):
        depth, lr = t.suggest_int("depth", 1, 4), t.suggest_float("lr", 1e-4, 1e-1, log=True)
        t.suggest_categorical("act", ["relu", "tanh"])
        for step in range(3):
            t.report(depth * step, step)
        if t.number == 1:
            raise optuna.TrialPruned()
        return 10.0 * depth + 0.1 * math.log10(lr)

    study.optimize(objective, n_trials=n)
    return study


def test_param_importances_are_the_variance_each_parameter_explains():
    study = _study(24)
    imp = sweep.param_importances(study, bins=4)
    assert list(imp)[0] == "depth" and set(imp) == {"depth", "lr", "act"}
    assert sum(imp.values()) == pytest.approx(1.0) and imp["depth"] > 0.9
    # by hand: depth's groups are its 4 values; eta^2 = between-group / total sum of squares
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    y = np.array([t.value for t in done])
    d = np.array([t.params["depth"] for t in done])
    eta = {"depth": sum((d == k).sum() * (y[d == k].mean() - y.mean()) ** 2 for k in np.unique(d)) / ((y - y.mean()) ** 2).sum()}
    a = np.array([t.params["act"] for t in done])
    eta["act"] = sum((a == k).sum() * (y[a == k].mean() - y.mean()) ** 2 for k in np.unique(a)) / ((y - y.mean()) ** 2).sum()
    raw = {k: v / sum(imp.values()) for k, v in imp.items()}
    assert raw["act"] / raw["depth"] == pytest.approx(eta["act"] / eta["depth"], rel=1e-9)
    assert sweep.param_importances(_study(2)) == {}  # too few finished trials


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_study_figures_render_as_pngs(direction):
    study = _study(12, direction)
    figs = viz.study_pngs(study, importances=sweep.param_importances(study))
    assert set(figs) == {"optimization_history", "param_importances", "parallel_coordinate", "intermediate_values"}
    for png in figs.values():
        w, h = png_size(png)
        assert w >= 600 and h >= 100 and len(png) > 2000
    assert "param_importances" not in viz.study_pngs(study, importances={})
