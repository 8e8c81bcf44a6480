"""``nbnet export MODEL_URI --onnx model.onnx``: ONNX Runtime gives nbnet's predictions from raw
inputs, preprocessing included, on every activation, preprocessing step, output transform, the
shipped experiments and a categorical data set with missing values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

onnx = pytest.importorskip("onnx", reason="onnx (the onnx extra) is not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")

import nbnet  # noqa: E402
from nbnet import MLPClassifier, MLPRegressor, NbnetError  # noqa: E402
from nbnet.cli import main  # noqa: E402
from nbnet.data.prep import SCALERS  # noqa: E402
from nbnet.data.prepared import prepare_data  # noqa: E402
from nbnet.experiment import config, tracking  # noqa: E402
from nbnet.experiment.run import train_once  # noqa: E402
from nbnet.kernels.tables import ACTIVATIONS  # noqa: E402
from nbnet.ops import export  # noqa: E402
from stores import module_store  # noqa: E402

TOL = 1e-5  # float32
EXPERIMENTS = sorted(Path(__file__).resolve().parents[1].joinpath("experiments").glob("*.toml"))


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_matrix(path, X, dtype=np.float64) -> dict:
    """The outputs of a model with the one input ``X``, by name."""
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["X"]
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"X": np.asarray(X, dtype)})))


def assert_classifier_matches(out: dict, est, X) -> None:
    P = est.predict_proba(X)
    assert out["probabilities"].shape == P.shape
    np.testing.assert_allclose(out["probabilities"], P, rtol=0, atol=TOL)
    np.testing.assert_array_equal(out["label"], est.predict(X))


def with_missing(X, rng, frac=0.1):
    X = np.array(X, dtype=np.float64)
    X[rng.random(X.shape) < frac] = np.nan
    return X


# --- the network: every activation, both dtypes, every output transform ---------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_and_dtype(activation, dtype, blobs, tmp_path):
    X, y = blobs
    X = X * 3.0  # larger pre-activations: softplus's and elu's tails are exercised too
    clf = MLPClassifier((12, 7), activation=activation, epochs=2, dtype=dtype, seed=1).fit(X, y)
    export.export_onnx(clf, tmp_path / "m.onnx")
    out = run_matrix(tmp_path / "m.onnx", X)
    assert out["probabilities"].dtype == np.dtype(dtype)
    tol = TOL if dtype == "float32" else 1e-12
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(X), rtol=0, atol=tol)
    np.testing.assert_array_equal(out["label"], clf.predict(X))


@pytest.mark.parametrize("labels", ["int", "str", "float"])
def test_binary_classifier_sigmoid_output_and_label_types(labels, blobs, tmp_path):
    X, y = blobs
    y = {"int": (y == 1).astype(int) * 7, "str": np.where(y == 1, "yes", "no"), "float": (y == 1) * 1.0}[labels]
    clf = MLPClassifier((6,), epochs=3, seed=0).fit(X, y)
    assert clf.n_outputs_ == 1  # one sigmoid output: probabilities are [1 - p, p]
    export.export_onnx(clf, tmp_path / "m.onnx")
    out = run_matrix(tmp_path / "m.onnx", X)
    assert_classifier_matches(out, clf, X)
    assert out["label"].dtype.kind == {"int": "i", "str": "O", "float": "f"}[labels]
    assert len(set(out["label"].tolist())) == 2


def test_regressor_with_several_outputs(regression, tmp_path):
    X, y = regression
    Y = np.stack([y, 2 * y - X[:, 0]], axis=1)
    reg = MLPRegressor((10,), epochs=5, seed=0, preprocessing={"scale": "minmax"}).fit(X, Y)
    info = export.export_onnx(reg, tmp_path / "r.onnx")
    assert info.outputs == ["variable"]
    out = run_matrix(tmp_path / "r.onnx", X)
    assert out["variable"].shape == (len(X), 2)
    np.testing.assert_allclose(out["variable"], reg.predict(X), rtol=0, atol=TOL * max(1.0, np.abs(Y).max()))


# --- the preprocessing: every step ---------------------------------------------------------------------
PREPROCESSING = [
    {"impute": "mean", "scale": "standard"},
    {"impute": "median", "drop_constant": True, "scale": "robust", "pca": 3},
    {"impute": "constant", "impute_value": -1.5, "scale": "minmax", "variance_threshold": 0.01, "select_k": 4},
    {"impute": "mean", "drop_constant": True, "scale": "standard", "select_k": 5, "pca": 0.9},
    *({"scale": s} for s in SCALERS),
    {"pca": 4},
]


@pytest.mark.parametrize("spec", PREPROCESSING, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_every_preprocessing_step(spec, tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(160, 7)) * [1, 10, 100, 0.1, 1, 5, 1] + [0, 50, -300, 0, 2000, 0, 7]
    X[:, 6] = 7.0  # a constant column (dropped by drop_constant, kept otherwise)
    y = (X[:, 0] + X[:, 1] / 10 > 5).astype(int) + (X[:, 2] > -300)
    if spec.get("impute"):
        X = with_missing(X, rng)
    clf = MLPClassifier((8,), epochs=3, seed=0, preprocessing=spec).fit(X, y)
    pre = clf.preprocessor_
    assert (pre.pca_components_ is not None) == ("pca" in spec)
    export.export_onnx(clf, tmp_path / "m.onnx")
    X_new = with_missing(rng.normal(size=(50, 7)) * 20 + 5, rng) if spec.get("impute") else X[:50] * 1.1
    for rows in (X, X_new):
        assert_classifier_matches(run_matrix(tmp_path / "m.onnx", rows), clf, rows)


def test_float32_inputs(blobs, tmp_path):
    X, y = blobs
    clf = MLPClassifier((8,), epochs=3, seed=0, preprocessing={"impute": "mean", "scale": "standard"}).fit(X, y)
    info = export.export_onnx(clf, tmp_path / "m.onnx", input_type="float32")
    assert info.inputs == [export.InputSpec("X", "float32", 5)]
    X = with_missing(X, np.random.default_rng(0))
    assert_classifier_matches(run_matrix(tmp_path / "m.onnx", X, np.float32), clf, X.astype(np.float32))


def test_float64_inputs_keep_large_raw_values_exact(tmp_path):
    """A column of timestamps (1.7e9, seconds apart): float64 inputs (the default) keep every
    digit, as nbnet reads files; float32 would round them to 128 s."""
    rng = np.random.default_rng(0)
    X = np.column_stack([1.7e9 + rng.integers(0, 600, 200), rng.normal(size=200)])
    y = (X[:, 0] - 1.7e9 > 300).astype(int)
    clf = MLPClassifier((8,), epochs=5, seed=0, preprocessing={"scale": "standard"}).fit(X, y)
    info = export.export_onnx(clf, tmp_path / "m.onnx")
    assert info.inputs == [export.InputSpec("X", "float64", 2)]
    assert_classifier_matches(run_matrix(tmp_path / "m.onnx", X), clf, X)


# --- the shipped experiments ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_shipped_experiments(path, tmp_path):
    """A model of each experiments/*.toml (1 epoch; the synthetic set at 1 500 of its rows, same
    784 features and 10 classes), scored on its validation split."""
    overrides = ["train.epochs=1", "train.early_stopping=false"]
    if "synthetic" in config.load_experiment(path).data.source:
        overrides.append("data.source=synthetic:n=1500,d=784,classes=10")
    cfg = config.load_experiment(path, overrides)
    data = prepare_data(cfg)
    est, _ = train_once(cfg, data=data)
    export.export_onnx(est, tmp_path / "m.onnx")
    out = run_matrix(tmp_path / "m.onnx", data.X_val)
    if data.task == "classification":
        assert_classifier_matches(out, est, data.X_val)
    else:
        scale = max(1.0, float(np.abs(est.predict(data.X_val)).max()))
        np.testing.assert_allclose(out["variable"][:, 0], est.predict(data.X_val), rtol=0, atol=TOL * scale)


# --- a categorical data set with missing values, through the store and the CLI ------------------
def penguins(n: int = 320, seed: int = 0) -> pd.DataFrame:
    """Palmer-penguins-like rows: two categorical text columns, integer and float columns, NaN in
    numeric and text columns, string labels."""
    rng = np.random.default_rng(seed)
    species = rng.choice(["Adelie", "Chinstrap", "Gentoo"], n)
    mean = {"Adelie": (38.8, 18.3, 190, 3700), "Chinstrap": (48.8, 18.4, 196, 3730), "Gentoo": (47.5, 15.0, 217, 5076)}
    mu = np.array([mean[s] for s in species])
    df = pd.DataFrame({
        "island": np.where(species == "Gentoo", "Biscoe", rng.choice(["Biscoe", "Dream", "Torgersen"], n)),
        "bill_length_mm": np.round(mu[:, 0] + rng.normal(0, 2.5, n), 1),
        "bill_depth_mm": np.round(mu[:, 1] + rng.normal(0, 1, n), 1),
        "flipper_length_mm": np.round(mu[:, 2] + rng.normal(0, 6, n)).astype(int),
        "body_mass_g": np.round(mu[:, 3] + rng.normal(0, 400, n), -1).astype(int),
        "sex": rng.choice(["male", "female"], n),
        "year": rng.choice([2007, 2008, 2009], n),
        "species": species,
    }).astype({"island": object, "sex": object, "bill_length_mm": object, "body_mass_g": object})
    for col in ("island", "sex", "bill_length_mm", "body_mass_g"):
        df.loc[rng.choice(n, n // 20, replace=False), col] = None
    return df


def onnx_feed(sess, df: pd.DataFrame, numeric=np.float64) -> dict:
    """The feed a user builds from a table: one (N, 1) array per input; text columns as read, with
    missing values as empty strings."""
    feed = {}
    for i in sess.get_inputs():
        col = df[i.name]
        if i.type == "tensor(string)":
            feed[i.name] = col.fillna("").astype(str).to_numpy(object).reshape(-1, 1)
        else:
            feed[i.name] = col.to_numpy(numeric).reshape(-1, 1)
    return feed


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    yield from module_store(tmp_path_factory, "export-store")


@pytest.fixture(scope="module")
def penguin_champion(store):
    """``nbnet train penguins.toml --register`` on a CSV with NaN and two categorical columns;
    returns the folder, with new.csv (held-out raw rows, NaN included, one unseen island)."""
    df = penguins()
    df.iloc[:260].to_csv(store / "train.csv", index=False)
    new = df.iloc[260:].drop(columns="species").reset_index(drop=True)
    new.loc[0, "island"] = "Atlantis"  # unseen category: an all-zeros group, as nbnet predict does
    new.to_csv(store / "new.csv", index=False)
    (store / "penguins.toml").write_text(f"""
[data]
source = "csv:{store / 'train.csv'}"
target = "species"
categorical = ["island", "sex"]
preprocessing = {{ impute = "median", scale = "standard", select_k = 8 }}
[model]
hidden_layer_sizes = [16]
activation = "elu"
[train]
epochs = 4
[search]
metric = "val_accuracy"
""")
    assert main(["train", str(store / "penguins.toml"), "--register"]) == 0
    assert main(["predict", "models:/penguins@champion", str(store / "new.csv"), "-o", str(store / "pred.csv"),
                 "--proba"]) == 0
    return store


@pytest.mark.slow
def test_categorical_and_missing_values_match_nbnet_predict(penguin_champion, tmp_path, capsys):
    d = penguin_champion
    expected = pd.read_csv(d / "pred.csv")
    run_id = tracking.client().get_model_version_by_alias("penguins", "champion").run_id
    new = pd.read_csv(d / "new.csv", dtype={"island": str, "sex": str})
    assert new["bill_length_mm"].isna().any() and new["sex"].isna().any()
    for uri in ("models:/penguins@champion", f"runs:/{run_id}/model"):
        out = tmp_path / "penguins.onnx"
        capsys.readouterr()
        assert main(["export", uri, "--onnx", str(out)]) == 0
        assert f"wrote {out}: inputs island string[N,1], bill_length_mm float64[N,1]" in capsys.readouterr().err
        sess = session(out)
        assert [i.name for i in sess.get_inputs()] == ["island", "bill_length_mm", "bill_depth_mm",
                                                       "flipper_length_mm", "body_mass_g", "sex", "year"]
        label, proba = sess.run(["label", "probabilities"], onnx_feed(sess, new))
        assert label.dtype == object and set(label) <= {"Adelie", "Chinstrap", "Gentoo"}
        np.testing.assert_array_equal(label, expected["prediction"].to_numpy())
        np.testing.assert_allclose(proba, expected.filter(like="proba_").to_numpy(), rtol=0, atol=TOL)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["estimator"] == "MLPClassifier" and '"island": ["Biscoe", "Dream", "Torgersen"]' in meta["categories"]


@pytest.mark.slow
def test_float32_inputs_through_the_cli(penguin_champion, tmp_path):
    d = penguin_champion
    out = tmp_path / "p32.onnx"
    assert main(["export", "models:/penguins/1", "--onnx", str(out), "--input-type", "float32"]) == 0
    sess = session(out)
    assert {i.type for i in sess.get_inputs()} == {"tensor(string)", "tensor(float)"}
    new = pd.read_csv(d / "new.csv", dtype={"island": str, "sex": str})
    label, proba = sess.run(None, onnx_feed(sess, new, np.float32))
    expected = pd.read_csv(d / "pred.csv")
    np.testing.assert_array_equal(label, expected["prediction"].to_numpy())
    np.testing.assert_allclose(proba, expected.filter(like="proba_").to_numpy(), rtol=0, atol=TOL)


def test_local_model_file_through_the_cli(blobs, tmp_path, capsys):
    X, y = blobs
    clf = MLPClassifier((8,), epochs=2, seed=0, preprocessing={"scale": "standard", "pca": 3}).fit(X, y)
    clf.save(tmp_path / "m.nbnet")
    assert main(["export", str(tmp_path / "m.nbnet"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert "inputs X float64[N,5]; outputs label, probabilities" in capsys.readouterr().err
    assert_classifier_matches(run_matrix(tmp_path / "m.onnx", X), nbnet.load(tmp_path / "m.nbnet"), X)


# --- errors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, says", [
    (["export", "{d}/missing.nbnet", "--onnx", "{d}/o.onnx"], "not found"),
    (["export", "{d}/m.nbnet", "--onnx", "{d}/no/such/folder/o.onnx"], "does not exist"),
    (["export", "{d}/m.nbnet", "--onnx", "{d}"], "could not write"),
    (["export", "{d}/m.nbnet"], "--onnx"),
    (["export", "{d}/m.nbnet", "--onnx", "{d}/o.onnx", "--input-type", "int8"], "invalid choice"),
])
def test_user_errors_are_one_line_exit_2(argv, says, blobs, tmp_path, capfd):
    X, y = blobs
    MLPClassifier((4,), epochs=1).fit(X, y).save(tmp_path / "m.nbnet")
    capfd.readouterr()
    try:
        code = main([a.format(d=tmp_path) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capfd.readouterr()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("nbnet") and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nbnet"]  # nothing half-written


def test_unsupported_pieces_are_one_clear_error(blobs, tmp_path):
    X, y = blobs
    with pytest.raises(NbnetError, match="not fitted"):
        export.export_onnx(MLPClassifier(), tmp_path / "m.onnx")
    clf = MLPClassifier((4,), epochs=1).fit(X, y)
    clf.activation = "gelu"  # as a model of a newer nbnet would hold
    with pytest.raises(NbnetError, match="activation 'gelu' has no ONNX form"):
        export.export_onnx(clf, tmp_path / "m.onnx")
    clf.activation = "relu"
    with pytest.raises(NbnetError, match="input type must be one of float32, float64"):
        export.export_onnx(clf, tmp_path / "m.onnx", input_type="int64")
    assert not list(tmp_path.iterdir())


class TargetScaled(MLPRegressor):
    """A regressor with a piece the export does not know: its predictions are rescaled."""

    def predict(self, X):
        return 3.0 * super().predict(X) + 100.0


def test_a_piece_the_graph_does_not_reproduce_is_one_error_before_writing(regression, tmp_path, capsys):
    """Before writing, the graph runs on sample rows drawn from the training statistics (NaN
    included where the model imputes) and must give the estimator's outputs."""
    X, y = regression
    spec = {"impute": "mean", "scale": "standard"}
    reg = TargetScaled((6,), epochs=2, preprocessing=spec).fit(X, y)
    with pytest.raises(NbnetError, match="does not reproduce this TargetScaled .* does not cover"):
        export.export_onnx(reg, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
    export.export_onnx(MLPRegressor((6,), epochs=2, preprocessing=spec).fit(X, y), tmp_path / "m.onnx")  # the same, plain


def test_a_failed_export_keeps_the_existing_file(tmp_path, capfd):
    (tmp_path / "m.onnx").write_bytes(b"the previous export")
    assert main(["export", str(tmp_path / "missing.nbnet"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert (tmp_path / "m.onnx").read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_any_column_name_and_a_categorical_column_without_categories(tmp_path):
    """Names with spaces and '=' are input names as they are; a categorical column that was all
    missing in training (no categories, no feature columns) is still an input, and unused."""
    rng = np.random.default_rng(0)
    x, is_a = rng.normal(size=60), rng.random(60) > 0.5
    X = np.column_stack([x, is_a, ~is_a]).astype(float)
    clf = MLPClassifier((4,), epochs=2).fit(X, (x > 0) ^ is_a)
    model = export.build_onnx(clf, ["mean radius", "col x=a", "col x=b"], {"col x": ["a", "b"], "empty": []})
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in sess.get_inputs()] == [
        ("mean radius", "tensor(double)"), ("col x", "tensor(string)"), ("empty", "tensor(string)")]
    feed = {"mean radius": x.reshape(-1, 1), "col x": np.where(is_a, "a", "b").astype(object).reshape(-1, 1),
            "empty": np.full((60, 1), "", object)}
    label, proba = sess.run(None, feed)
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=TOL)
    np.testing.assert_array_equal(label, clf.predict(X))


def test_a_column_named_like_an_output_is_refused(blobs):
    X, y = blobs
    clf = MLPClassifier((4,), epochs=1).fit(X[:, :3], y)
    with pytest.raises(NbnetError, match="input column 'label' has the name of an ONNX output"):
        export.build_onnx(clf, ["label", "color=blue", "color=red"], {"color": ["blue", "red"]})


def test_without_the_onnx_package_the_error_says_what_to_install(blobs, tmp_path, monkeypatch):
    X, y = blobs
    monkeypatch.setattr(export, "onnx", None)
    with pytest.raises(NbnetError, match=r"pip install 'nbnet\[onnx\]'"):
        export.export_onnx(MLPClassifier((4,), epochs=1).fit(X, y), tmp_path / "m.onnx")


def test_the_cli_does_not_import_onnx_at_start_up():
    code = "import sys, nbnet.cli; print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
