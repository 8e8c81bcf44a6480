"""Loading: built-in sets against scikit-learn, CSV/Parquet/NPZ round trips with one-hot
categoricals, prediction inputs read whole and in chunks, the synthetic generator, the data hash,
and every bad input answered by one NbnetError line."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets

from nbnet.data.load import (
    BUILTINS, Dataset, data_hash, iter_feature_chunks, load_dataset, raw_columns, read_features, synthetic,
)
from nbnet.errors import NbnetError


def one_line_error(fn, *args, match=None, **kwargs) -> str:
    with pytest.raises(NbnetError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and len(msg) < 400, msg
    return msg


# --- built-in -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_equals_sklearn(name):
    ds = load_dataset(f"builtin:{name}")
    ref = getattr(datasets, f"load_{name}")()
    np.testing.assert_array_equal(ds.X, ref.data)
    np.testing.assert_array_equal(ds.y, ref.target)
    assert ds.X.dtype == np.float64 and ds.X.flags.c_contiguous
    assert ds.name == name and len(ds.feature_names) == ds.X.shape[1]
    assert ds.categories == {}
    if name == "diabetes":
        assert ds.task == "regression" and ds.y.dtype == np.float64
    else:
        assert ds.task == "classification" and ds.y.dtype == np.int64
    assert ds.image_shape == ((8, 8) if name == "digits" else None)


def test_dataset_is_frozen():
    ds = load_dataset("builtin:iris")
    assert isinstance(ds, Dataset)
    with pytest.raises(AttributeError):
        ds.task = "regression"


# --- CSV / Parquet ------------------------------------------------------------------------------
FRAME = pd.DataFrame({
    "size": [1.0, 2.0, 3.5, 4.0, 5.0, 6.0],
    "color": ["red", "blue", "red", None, "green", "blue"],
    "count": [1, 2, 3, 4, 5, 6],
    "label": ["cat", "dog", "cat", "dog", "cat", "dog"],
    "weight": [0.5, np.nan, 1.5, 2.0, 2.5, 3.0],
})


def write(frame: pd.DataFrame, path, kind):
    if kind == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_table_with_categorical_column(tmp_path, kind):
    path = write(FRAME, tmp_path / f"pets.{kind}", kind)
    ds = load_dataset(f"{kind}:{path}", target="label", categorical=["color"])
    assert ds.task == "classification" and ds.name == "pets"
    assert ds.y.tolist() == FRAME["label"].tolist()
    assert ds.categories == {"color": ["blue", "green", "red"]}
    # one-hot in place of the column, in sorted category order; a missing value → all zeros
    assert ds.feature_names == ["size", "color=blue", "color=green", "color=red", "count", "weight"]
    np.testing.assert_array_equal(ds.X[:, 1:4], [[0, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(ds.X[:, 0], FRAME["size"])
    np.testing.assert_array_equal(ds.X[:, 4], FRAME["count"])
    assert np.isnan(ds.X[1, 5]) and ds.X[2, 5] == 1.5  # missing numeric value → NaN
    assert ds.X.dtype == np.float64


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_prediction_input_uses_training_categories(tmp_path, kind):
    train = write(FRAME, tmp_path / f"train.{kind}", kind)
    ds = load_dataset(f"{kind}:{train}", target="label", categorical=["color"])
    new = pd.DataFrame({  # columns reordered, an id column extra, an unseen category, no label
        "id": [10, 11, 12],
        "weight": [1.0, 2.0, np.nan],
        "count": [7, 8, 9],
        "color": ["purple", "green", "red"],
        "size": [0.1, 0.2, 0.3],
    })
    path = write(new, tmp_path / f"new.{kind}", kind)
    X, y = read_features(path, feature_names=ds.feature_names, categories=ds.categories)
    assert y is None
    expected = np.array([
        [0.1, 0, 0, 0, 7, 1.0],  # unseen "purple": all zeros in the color group
        [0.2, 0, 1, 0, 8, 2.0],
        [0.3, 0, 0, 1, 9, np.nan],
    ])
    np.testing.assert_array_equal(X, expected)
    # the target is returned when asked for
    X2, y2 = read_features(train, feature_names=ds.feature_names, categories=ds.categories, target="label")
    np.testing.assert_array_equal(X2, ds.X)
    assert y2.tolist() == ds.y.tolist()


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000])
def test_chunks_equal_whole_file(tmp_path, kind, chunk_rows):
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({
        "a": rng.normal(size=n),
        "c": rng.choice(["x", "y", "z"], n),
        "b": rng.integers(0, 5, n),
        "t": rng.integers(0, 2, n),
    })
    path = write(frame, tmp_path / f"big.{kind}", kind)
    ds = load_dataset(f"{kind}:{path}", target="t", categorical=["c"])
    X, y = read_features(path, feature_names=ds.feature_names, categories=ds.categories, target="t")
    chunks = list(iter_feature_chunks(path, chunk_rows, feature_names=ds.feature_names,
                                      categories=ds.categories, target="t"))
    sizes = [len(c[0]) for c in chunks]
    assert all(s == chunk_rows for s in sizes[:-1]) and 0 < sizes[-1] <= chunk_rows and sum(sizes) == n
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), ds.X)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), ds.y)
    np.testing.assert_array_equal(X, ds.X)


def test_csv_chunks_stream_a_file_larger_than_one_block(tmp_path):
    # pyarrow reads CSV in ~1 MB blocks: 40k rows span several, and chunks must cross their seams
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(40_000, 5)), columns=list("abcde"))
    frame["t"] = rng.integers(0, 3, len(frame))
    path = write(frame, tmp_path / "big.csv", "csv")
    ds = load_dataset(f"csv:{path}", target="t")
    got = [c for c, _ in iter_feature_chunks(path, 9999, feature_names=ds.feature_names, categories={})]
    assert [len(c) for c in got] == [9999] * 4 + [4]
    np.testing.assert_array_equal(np.concatenate(got), ds.X)


def test_raw_columns_collapses_one_hot_groups():
    names = ["size", "color=blue", "color=red", "count", "shape=o"]
    cats = {"color": ["blue", "red"], "shape": ["o"], "empty": []}
    assert raw_columns(names, cats) == ["size", "color", "count", "shape", "empty"]


def test_target_task_inference(tmp_path):
    base = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
    cases = {
        "ints": ([0, 1, 2, 1], "classification", np.int64),
        "integral floats": ([0.0, 1.0, 1.0, 0.0], "classification", np.int64),
        "floats": ([0.5, 1.25, 2.0, 3.0], "regression", np.float64),
        "strings": (["a", "b", "a", "b"], "classification", None),
        "bools": ([True, False, True, False], "classification", np.int64),
    }
    for label, (values, task, dtype) in cases.items():
        path = tmp_path / "t.csv"
        base.assign(y=values).to_csv(path, index=False)
        ds = load_dataset(f"csv:{path}", target="y")
        assert ds.task == task, label
        if dtype is not None:
            assert ds.y.dtype == dtype, label
        else:
            assert ds.y.dtype.kind == "U"
    base.assign(y=[0, 1, 2, 1]).to_csv(path, index=False)
    forced = load_dataset(f"csv:{path}", target="y", task="regression")
    assert forced.task == "regression" and forced.y.dtype == np.float64


def test_relative_paths_resolve_against_base_dir(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write(FRAME, tmp_path / "data" / "pets.csv", "csv")
    ds = load_dataset("csv:data/pets.csv", target="label", categorical=["color"], base_dir=tmp_path)
    assert ds.X.shape == (6, 6)
    monkeypatch.chdir(tmp_path / "data")
    assert load_dataset("csv:pets.csv", target="label", categorical=["color"]).X.shape == (6, 6)


# --- NPZ ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_round_trip_and_chunks(tmp_path, compressed):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 4))
    y = rng.integers(0, 3, 50)
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, X=X, y=y)
    ds = load_dataset("npz:d.npz", base_dir=tmp_path)
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.task == "classification" and ds.feature_names == ["x0", "x1", "x2", "x3"]
    chunks = list(iter_feature_chunks(path, 16, feature_names=ds.feature_names, target="y"))
    assert [len(c[0]) for c in chunks] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), X)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), y)
    Xr, yr = read_features(path, feature_names=ds.feature_names)
    np.testing.assert_array_equal(Xr, X)
    assert yr is None


def test_npz_uncompressed_member_is_memory_mapped(tmp_path):
    from nbnet.data.load import memmap_npz_member

    X = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.savez(tmp_path / "a.npz", X=X, y=np.zeros(6))
    np.savez_compressed(tmp_path / "b.npz", X=X, y=np.zeros(6))
    mm = memmap_npz_member(tmp_path / "a.npz", "X")
    assert isinstance(mm, np.memmap)
    np.testing.assert_array_equal(mm, X)
    assert memmap_npz_member(tmp_path / "b.npz", "X") is None  # compressed: read whole instead


def test_npz_images_and_feature_names(tmp_path):
    imgs = np.random.default_rng(0).random((10, 3, 5))
    np.savez(tmp_path / "img.npz", X=imgs, y=np.arange(10) % 2)
    ds = load_dataset(f"npz:{tmp_path / 'img.npz'}")
    assert ds.image_shape == (3, 5) and ds.X.shape == (10, 15)
    np.testing.assert_array_equal(ds.X[4], imgs[4].ravel())
    np.savez(tmp_path / "named.npz", X=np.ones((3, 2)), y=np.array([0.5, 1.5, 2.5]),
             feature_names=np.array(["height", "width"]))
    ds = load_dataset(f"npz:{tmp_path / 'named.npz'}")
    assert ds.feature_names == ["height", "width"] and ds.task == "regression"
    np.savez(tmp_path / "other.npz", X=np.ones((3, 2)), labels=np.array(["a", "b", "a"]))
    ds = load_dataset(f"npz:{tmp_path / 'other.npz'}", target="labels")
    assert ds.y.tolist() == ["a", "b", "a"] and ds.task == "classification"
    one_line_error(load_dataset, f"npz:{tmp_path / 'other.npz'}", match="must hold arrays 'X' and 'y'")


# --- synthetic --------------------------------------------------------------------------------------
def test_synthetic_is_seeded_and_shaped():
    a = load_dataset("synthetic:n=500,d=12,classes=4,seed=3")
    b = load_dataset("synthetic:n=500,d=12,classes=4,seed=3")
    c = load_dataset("synthetic:n=500,d=12,classes=4,seed=4")
    assert a.X.shape == (500, 12) and a.task == "classification"
    assert a.hash() == b.hash() and a.hash() != c.hash()
    counts = np.bincount(a.y, minlength=4)
    assert len(counts) == 4 and counts.min() > 25  # every class present, none tiny
    r = load_dataset("synthetic:n=400,d=6,classes=0")
    assert r.task == "regression" and r.y.dtype == np.float64 and 0.8 < r.y.std() < 1.2
    assert synthetic(n=400, d=6, classes=0).hash() == r.hash()


def test_synthetic_is_learnable():
    """The labels depend on X: a nearest-centroid rule beats chance by a wide margin."""
    ds = load_dataset("synthetic:n=3000,d=10,classes=3,seed=0,noise=0.05")
    from sklearn.linear_model import LogisticRegression

    acc = LogisticRegression(max_iter=500).fit(ds.X[:2000], ds.y[:2000]).score(ds.X[2000:], ds.y[2000:])
    assert acc > 0.6  # chance is ~1/3


def test_synthetic_benchmark_size_is_quick():
    import time

    t0 = time.perf_counter()
    ds = load_dataset("synthetic:n=60000,d=784,classes=10,seed=0")
    assert ds.X.shape == (60000, 784) and set(np.unique(ds.y)) == set(range(10))
    assert time.perf_counter() - t0 < 30


# --- data hash ------------------------------------------------------------------------------------
def test_data_hash_is_content_dtype_and_shape_aware():
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    h = data_hash(X, y)
    assert len(h) == 64 and int(h, 16) >= 0
    assert data_hash(X.copy(), y.copy()) == h
    assert data_hash(np.asfortranarray(X), y) == h  # memory layout does not matter
    assert data_hash(X.astype(np.float32), y) != h
    assert data_hash(X.reshape(3, 4), y) != h
    X2 = X.copy()
    X2[2, 1] += 1e-12
    assert data_hash(X2, y) != h
    assert data_hash(X, y[::-1]) != h
    assert data_hash(X, np.array(["0", "1", "0", "1"])) != h
    assert data_hash(X, np.array(["a", "b"], dtype=object)) == data_hash(X, np.array(["a", "b"]))


# --- bad input ------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    msg = one_line_error(load_dataset, "csv:nope.csv", target="y", base_dir=tmp_path, match="not found")
    assert "nope.csv" in msg
    one_line_error(load_dataset, f"npz:{tmp_path / 'nope.npz'}", match="not found")
    one_line_error(read_features, tmp_path / "nope.parquet", feature_names=["a"], match="not found")


def test_unreadable_files(tmp_path):
    junk = tmp_path / "junk.csv"
    junk.write_bytes(bytes(range(256)) * 8)
    one_line_error(load_dataset, f"csv:{junk}", target="y", match="not a UTF-8 text CSV")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    one_line_error(load_dataset, f"csv:{empty}", target="y", match="empty")
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,y\n")
    one_line_error(load_dataset, f"csv:{header_only}", target="y", match="no rows")
    one_line_error(load_dataset, f"parquet:{junk}", target="y", match="parquet")
    one_line_error(load_dataset, f"npz:{junk}", match="not an NPZ")
    bad_zip = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad_zip, "w") as z:
        z.writestr("other.npy", b"nope")
    one_line_error(load_dataset, f"npz:{bad_zip}", match="must hold arrays 'X' and 'y'")


@pytest.mark.parametrize("text", ["a,b,y\n1,2,0\n3,4\n", "a,b,y\n1,2,0\n3,4,1,9\n"])
def test_ragged_rows(tmp_path, text):
    path = tmp_path / "ragged.csv"
    path.write_text(text)
    one_line_error(load_dataset, f"csv:{path}", target="y", match="ragged rows")


def test_target_absent_or_missing(tmp_path):
    path = write(FRAME, tmp_path / "pets.csv", "csv")
    msg = one_line_error(load_dataset, f"csv:{path}", target="species", categorical=["color"], match="not found")
    assert "size" in msg  # lists the columns there are
    one_line_error(load_dataset, f"csv:{path}", match="target")
    path2 = write(FRAME.assign(label=["a", None, "b", "a", "b", "a"]), tmp_path / "holes.csv", "csv")
    one_line_error(load_dataset, f"csv:{path2}", target="label", categorical=["color"], match="missing values")


def test_undeclared_non_numeric_column(tmp_path):
    for kind in ("csv", "parquet"):
        path = write(FRAME, tmp_path / f"pets.{kind}", kind)
        msg = one_line_error(load_dataset, f"{kind}:{path}", target="label", match="'color' is not numeric")
        assert "categorical" in msg


def test_prediction_input_errors(tmp_path):
    train = write(FRAME, tmp_path / "train.csv", "csv")
    ds = load_dataset(f"csv:{train}", target="label", categorical=["color"])
    kw = dict(feature_names=ds.feature_names, categories=ds.categories)
    path = write(FRAME.drop(columns=["weight"]), tmp_path / "short.csv", "csv")
    one_line_error(read_features, path, match="no column 'weight'", **kw)
    path = write(FRAME.assign(size=["big"] * 6), tmp_path / "text.csv", "csv")
    one_line_error(read_features, path, match="non-numeric", **kw)
    path = write(FRAME.drop(columns=["weight"]), tmp_path / "short.parquet", "parquet")
    one_line_error(read_features, path, match="no column 'weight'", **kw)
    one_line_error(read_features, tmp_path / "x.txt", match="cannot tell the format", **kw)
    np.savez(tmp_path / "wide.npz", X=np.ones((2, 3)))
    one_line_error(read_features, tmp_path / "wide.npz", match="expects 6 features", **kw)
    one_line_error(read_features, tmp_path / "wide.npz", target="y", match="no array 'y'", **kw)
    one_line_error(lambda: list(iter_feature_chunks(train, 0, **kw)), match="chunk_rows")


@pytest.mark.parametrize("spec, kwargs, match", [
    ("digits", {}, "must look like"),
    ("hdf5:x.h5", {}, "unknown data source"),
    ("builtin:mnist", {}, "unknown built-in"),
    ("builtin:", {}, "names no data set"),
    ("builtin:iris", {"target": "y"}, "target applies to csv/parquet/npz"),
    ("builtin:iris", {"categorical": ["a"]}, "categorical columns apply"),
    ("builtin:iris", {"task": "regression"}, "classification data set"),
    ("builtin:iris", {"task": "ranking"}, "task must be"),
    ("synthetic:n=ten", {}, "whole number"),
    ("synthetic:n=10,depth=3", {}, "bad synthetic option"),
    ("synthetic:classes=1", {}, "classes must be 0"),
    ("synthetic:n=0", {}, "positive int"),
    ("synthetic:classes=0", {"task": "classification"}, "not a classification task"),
])
def test_bad_specs(spec, kwargs, match):
    one_line_error(load_dataset, spec, match=match, **kwargs)


def test_categorical_column_errors(tmp_path):
    path = write(FRAME, tmp_path / "pets.csv", "csv")
    one_line_error(load_dataset, f"csv:{path}", target="label", categorical=["colour"], match="'colour' not found")
    one_line_error(load_dataset, f"csv:{path}", target="label", categorical=["color", "label"],
                   match="cannot also be a categorical")


def test_error_names_the_offending_value(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("a,b,y\n1,2,0\n3,x7,1\n5,6,0\n")
    one_line_error(load_dataset, f"csv:{path}", target="y", match=r"column 'b' is not numeric \(e\.g\. 'x7'\)")


def test_parquet_dictionary_column_is_categorical(tmp_path):
    frame = pd.DataFrame({"c": pd.Categorical(["u", "v", "u"]), "x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    frame.to_parquet(tmp_path / "cat.parquet")
    ds = load_dataset(f"parquet:{tmp_path / 'cat.parquet'}", target="y", categorical=["c"])
    assert ds.feature_names == ["c=u", "c=v", "x"]
    np.testing.assert_array_equal(ds.X, [[1, 0, 1], [0, 1, 2], [1, 0, 3]])
    X, _ = read_features(tmp_path / "cat.parquet", feature_names=ds.feature_names, categories=ds.categories)
    np.testing.assert_array_equal(X, ds.X)
