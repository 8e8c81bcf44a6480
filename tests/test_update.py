"""``nbnet update``: warm start from the stored weights, optimizer and generator state; the
result is registered as ``challenger`` and goes through the promotion gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tables import COLS, make_table

from nbnet import MLPClassifier
from nbnet.experiment.tracking import registry
from nbnet.experiment import tracking
from nbnet.cli import main
from nbnet.ops.monitor import score
from stores import module_store

SHIFT = np.array([2.0, 0.0, -1.5, 0.0])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    yield from module_store(tmp_path_factory, "update-store", MPLBACKEND="Agg")


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def register(name: str, clf, X, metric: float, exp: str) -> int:
    run_id = tracking.start_run(tracking.ensure_experiment(exp), run_name="fit")
    tracking.log_model(run_id, clf, pd.DataFrame(X[:5], columns=COLS))
    tracking.log_metrics(run_id, {"val_accuracy": metric})
    tracking.end_run(run_id)
    return tracking.register_champion(name, run_id, "val_accuracy", "maximize")[0]


def test_update_continues_training_exactly(store, tmp_path, capsys):
    """Updating a 2-epoch model with its own data for 1 epoch (nothing held out) gives the very
    weights and optimizer state of a 3-epoch fit: moments, step count and the shuffling stream
    all carried over."""
    t = make_table(200, 1)
    X, y = t[COLS].to_numpy(), t["label"].to_numpy()
    kw = dict(hidden_layer_sizes=(8,), learning_rate=0.01, batch_size=16, seed=3, preprocessing={"scale": "standard"})
    two = MLPClassifier(epochs=2, **kw).fit(X, y)
    three = MLPClassifier(epochs=3, **kw).fit(X, y)
    register("exact", two, X, two.score(X, y), "exact")
    t.to_csv(tmp_path / "same.csv", index=False)
    code, out, err = run(["update", "models:/exact@champion", tmp_path / "same.csv", "--target", "label",
                          "--epochs", "1", "--val-fraction", "0"], capsys)
    assert code == 0, err
    assert "registered: models:/exact/2" in out and "optimizer step 26 → 39" in out
    updated = tracking.load_model("models:/exact@challenger")[0]
    np.testing.assert_array_equal(updated.params_, three.params_)
    got, want = updated.training_state().optimizer, three.training_state().optimizer
    np.testing.assert_array_equal(got.m, want.m)
    np.testing.assert_array_equal(got.v, want.v)
    assert got.step == want.step == 39 and updated.n_epochs_ == 3
    np.testing.assert_array_equal(updated.training_state().rng, three.training_state().rng)
    # a fresh optimizer (moments reset) would not have landed there
    reset = tracking.load_model("models:/exact/1")[0]
    reset.set_weights(reset.get_weights())
    reset.partial_fit(X, y)
    assert not np.array_equal(reset.params_, three.params_)


def test_update_registers_a_challenger_that_the_gate_promotes(store, capsys):
    base = make_table(400, 1)
    X, y = base[COLS].to_numpy(), base["label"].to_numpy()
    clf = MLPClassifier((16,), epochs=30, batch_size=16, learning_rate=0.01, seed=0,
                        preprocessing={"scale": "standard"}).fit(X, y)
    assert register("shifty", clf, X, clf.score(X, y), "shifty") == 1
    new, holdout = store / "new.csv", store / "new_holdout.csv"
    make_table(300, 2, SHIFT).to_csv(new, index=False)
    make_table(300, 3, SHIFT).to_csv(holdout, index=False)
    code, out, err = run(["update", "models:/shifty@champion", new, "--target", "label", "--epochs", "8"], capsys)
    assert code == 0, err
    assert "preprocessing kept as fitted" in out and "registered: models:/shifty/2" in out
    assert f"nbnet promote shifty --version 2 --data {new} --target label" in out
    c = tracking.client()
    assert str(registry.alias_version("shifty", "challenger").version) == "2"
    assert str(registry.alias_version("shifty").version) == "1"  # the champion did not move
    # the run: params, per-epoch metrics, the servable model
    mv = c.get_model_version("shifty", "2")
    r = c.get_run(mv.run_id)
    assert r.data.tags["nbnet.kind"] == "update" and r.data.params["update.source_version"] == "1"
    assert r.data.params["update.epochs"] == "8" and r.data.params["train.epochs"] == "8"
    # its data, as the runs table's Dataset column shows it: the training rows and the held-out rows
    inputs = {(d.dataset.name, t.value) for d in r.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert inputs == {("train", "training"), ("val", "validation")}
    assert r.data.params["data.rows"] == "300" and len(r.data.params["data.hash"]) == 64
    assert [m.step for m in c.get_metric_history(mv.run_id, "loss")] == list(range(1, 9))
    assert len(c.get_metric_history(mv.run_id, "val_accuracy")) >= 8
    assert mv.tags["nbnet.metric_key"] == "val_accuracy" and mv.tags["nbnet.updated_from"] == "1"
    assert float(mv.tags["nbnet.metric"]) == pytest.approx(r.data.metrics["val_accuracy"])
    import mlflow

    h = pd.read_csv(holdout)
    pyfunc = mlflow.pyfunc.load_model("models:/shifty@challenger").predict(h[COLS])
    challenger = tracking.load_model("models:/shifty@challenger")[0]
    np.testing.assert_array_equal(pyfunc, challenger.predict(h[COLS].to_numpy()))
    # better than the champion on the shifted data, and the drift reference moved with it
    Xh, yh = h[COLS].to_numpy(), h["label"].to_numpy()
    assert score(challenger, Xh, yh, "val_accuracy") > score(clf, Xh, yh, "val_accuracy") + 0.1
    np.testing.assert_array_equal(challenger.preprocessor_.scale_, clf.preprocessor_.scale_)  # transform kept
    assert challenger.preprocessor_.stats_["mean"][0] > 1.5 > clf.preprocessor_.stats_["mean"][0] + 1
    code, out, _ = run(["monitor", "models:/shifty@challenger", holdout], capsys)
    assert code == 0, out  # the shifted data looks like what the challenger last learned from
    code, out, _ = run(["monitor", "models:/shifty@champion", holdout], capsys)
    assert code == 1
    # the gate on the shifted holdout moves the champion; a worse version is refused
    code, out, _ = run(["promote", "shifty", "--version", "2", "--data", holdout, "--target", "label"], capsys)
    assert code == 0 and "PASS" in out and str(registry.alias_version("shifty").version) == "2"
    code, out, _ = run(["promote", "shifty", "--version", "1", "--data", holdout, "--target", "label"], capsys)
    assert code == 1 and "FAIL: v1 is worse than champion v2" in out
    assert str(registry.alias_version("shifty").version) == "2"


def test_update_user_errors(store, tmp_path, capsys):
    t = make_table(100, 4)
    X, y = t[COLS].to_numpy(), t["label"].to_numpy()
    clf = MLPClassifier((4,), epochs=2, seed=0).fit(X, y)
    register("errs", clf, X, 0.5, "errs")
    t[COLS].to_csv(tmp_path / "nolabels.csv", index=False)
    t.to_csv(tmp_path / "d.csv", index=False)
    run_id = tracking.start_run(tracking.ensure_experiment("errs"), run_name="loose")
    tracking.log_model(run_id, clf, pd.DataFrame(X[:5], columns=COLS))
    tracking.end_run(run_id)
    for argv, text in [
        (["update", "models:/errs@champion", tmp_path / "nolabels.csv"], "needs labels: pass --target"),
        (["update", "models:/errs@champion", tmp_path / "d.csv", "--target", "label", "--epochs", "0"],
         "--epochs must be a positive integer"),
        (["update", "models:/errs@champion", tmp_path / "d.csv", "--target", "label", "--lr", "-1"],
         "--lr must be a positive number"),
        (["update", f"runs:/{run_id}/model", tmp_path / "d.csv", "--target", "label"], "is not a registered model version"),
        (["update", "models:/errs@challenger", tmp_path / "d.csv"], "errs has no alias 'challenger'"),
    ]:
        code, out, err = run(argv, capsys)
        assert code == 2 and err.startswith("nbnet: error: ") and err.count("\n") == 1 and text in err, (argv, err)
    assert registry.versions("errs") == [1]  # nothing was registered by the failures
