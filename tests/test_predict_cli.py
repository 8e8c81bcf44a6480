"""``nbnet predict MODEL_URI INPUT -o OUTPUT``: chunked, atomic, equal to MLflow's own pyfunc."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from nbnet import MLPClassifier, MLPRegressor
from nbnet.experiment import tracking
from nbnet.cli import main
from stores import module_store

COLS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    yield from module_store(tmp_path_factory, "predict-store")


@pytest.fixture(scope="module")
def champion(store):
    """An iris classifier registered as models:/iris@champion, plus a raw table to score."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    clf = MLPClassifier((8,), epochs=20, seed=0, learning_rate=0.01).fit(X, y)
    exp = tracking.ensure_experiment("iris")
    run_id = tracking.start_run(exp, run_name="fit")
    tracking.log_model(run_id, clf, pd.DataFrame(X[:5], columns=COLS))
    tracking.log_metrics(run_id, {"val_accuracy": clf.score(X, y)})
    tracking.end_run(run_id)
    tracking.register_champion("iris", run_id, "val_accuracy", "maximize")
    rng = np.random.default_rng(0)
    table = pd.DataFrame(X[rng.integers(0, len(X), 1003)], columns=COLS)
    table.insert(0, "id", np.arange(len(table)))  # an extra column, ignored
    return clf, run_id, table


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz"])
def test_predict_champion_matches_pyfunc(champion, tmp_path, capsys, fmt):
    clf, run_id, table = champion
    src = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        table.to_csv(src, index=False)
    elif fmt == "parquet":
        table.to_parquet(src)
    else:
        np.savez(src, X=table[COLS].to_numpy())
    out = tmp_path / f"out.{fmt}"
    code, _, err = run(["predict", "models:/iris@champion", src, "-o", out, "--proba", "--chunk-rows", 100], capsys)
    assert code == 0, err
    assert "1,003 rows" in err and "wrote 1003 predictions" in err  # progress on stderr
    expected = mlflow.pyfunc.load_model("models:/iris@champion").predict(table[COLS])
    proba = clf.predict_proba(table[COLS].to_numpy())
    if fmt == "npz":
        with np.load(out, allow_pickle=False) as z:
            pred, got_proba, classes = z["prediction"], z["proba"], z["classes"]
        np.testing.assert_array_equal(classes, clf.classes_)
    else:
        df = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
        assert list(df.columns) == ["prediction"] + [f"proba_{c}" for c in clf.classes_]
        pred, got_proba = df["prediction"].to_numpy(), df.filter(like="proba_").to_numpy()
    np.testing.assert_array_equal(pred, expected)
    np.testing.assert_allclose(got_proba, proba, rtol=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])  # no temp files


def test_chunking_does_not_change_results(champion, tmp_path, capsys):
    _, run_id, table = champion
    src = tmp_path / "in.csv"
    table.to_csv(src, index=False)
    outs = []
    for rows, chunks in ((1, "1,003 chunks"), (7, "144 chunks"), (5000, "1 chunk\n")):
        out = tmp_path / f"out{rows}.csv"
        code, _, err = run(["predict", f"runs:/{run_id}/model", src, "-o", out, "--chunk-rows", rows], capsys)
        assert code == 0 and chunks in err, err  # the file was read chunk_rows rows at a time
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_failure_midway_leaves_no_output(champion, tmp_path, capsys):
    _, _, table = champion
    bad = table.astype({"petal_width": object})
    bad.loc[900, "petal_width"] = "broken"  # in the tenth chunk of 100 rows
    src = tmp_path / "bad.csv"
    bad.to_csv(src, index=False)
    out = tmp_path / "out.parquet"
    code, _, err = run(["predict", "models:/iris@champion", src, "-o", out, "--chunk-rows", 100], capsys)
    assert code == 2
    assert err.startswith("nbnet: error: ") and err.count("\n") <= 2  # one error line (after progress)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]  # the temp file is gone too


def test_local_model_file_and_user_errors(champion, tmp_path, capsys, regression):
    clf, _, table = champion
    model = tmp_path / "iris.nbnet"
    clf.save(model)
    src = tmp_path / "in.npz"
    np.savez(src, X=table[COLS].to_numpy())
    assert run(["predict", model, src, "-o", tmp_path / "p.csv"], capsys)[0] == 0
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy(),
                                  clf.predict(table[COLS].to_numpy()))
    csv = tmp_path / "in.csv"
    table[COLS].to_csv(csv, index=False)  # a bare file's columns are taken in order
    assert run(["predict", model, csv, "-o", tmp_path / "q.csv"], capsys)[0] == 0
    assert (tmp_path / "q.csv").read_bytes() == (tmp_path / "p.csv").read_bytes()

    X, y = regression
    reg = MLPRegressor((4,), epochs=2, seed=0).fit(X, y)
    reg.save(tmp_path / "reg.nbnet")
    np.savez(tmp_path / "reg.npz", X=X)
    cases = [
        (["predict", tmp_path / "reg.nbnet", tmp_path / "reg.npz", "-o", tmp_path / "r.csv", "--proba"], "needs a classifier"),
        (["predict", model, src, "-o", tmp_path / "r.txt"], "must end in .csv, .parquet or .npz"),
        (["predict", model, tmp_path / "nope.csv", "-o", tmp_path / "r.csv"], "not found"),
        (["predict", model, src, "-o", tmp_path / "r.csv", "--chunk-rows", 0], "positive integer"),
        (["predict", "models:/no-such@champion", src, "-o", tmp_path / "r.csv"], "could not fetch model"),
        (["predict", model, src, "-o", tmp_path / "missing-dir" / "r.csv"], "does not exist"),
        (["predict", model, csv, "-o", csv], "overwrite the input"),
    ]
    for argv, msg in cases:
        code, _, err = run(argv, capsys)
        assert code == 2, argv
        assert msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "r.csv").exists()
    reg_out = tmp_path / "r.parquet"
    assert run(["predict", tmp_path / "reg.nbnet", tmp_path / "reg.npz", "-o", reg_out], capsys)[0] == 0
    np.testing.assert_allclose(pd.read_parquet(reg_out)["prediction"].to_numpy(), reg.predict(X))
