"""The model file (nbnet/io.py): round trips, atomic writes and plain damage. Hostile, crafted
files are in tests/test_reliability_model_files.py."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

import nbnet
from nbnet import MLPClassifier, MLPRegressor
from nbnet.errors import NbnetError
from nbnet._sys.atomic import atomic_write
from nbnet.io import FORMAT_VERSION, checksum, read_bundle, write_bundle


class Payload:
    """Unpickling this creates ``marker``: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def refused(path, match=None) -> str:
    with pytest.raises(NbnetError, match=match) as e:
        nbnet.load(path)
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def fitted(blobs):
    X, y = blobs
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = MLPClassifier((9, 4), activation="tanh", epochs=3, learning_rate=1e-2, seed=2, n_threads=1)
    return clf.fit(X, labels), X, labels


@pytest.fixture
def saved(fitted, tmp_path):
    clf, X, _ = fitted
    path = tmp_path / "model.nbnet"
    clf.save(path)
    return path


# --- round trips ----------------------------------------------------------------------------------------------
def test_round_trip_classifier_identical(fitted, saved):
    clf, X, labels = fitted
    got = nbnet.load(saved)
    assert type(got) is MLPClassifier and got.get_params() == clf.get_params()
    np.testing.assert_array_equal(got.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(got.predict(X), clf.predict(X))
    np.testing.assert_array_equal(got.classes_, clf.classes_)
    np.testing.assert_equal(got.history_, clf.history_)  # NaN-aware
    assert got.n_epochs_ == clf.n_epochs_ and got.n_features_in_ == 5
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got.get_weights(), clf.get_weights()))


def test_loaded_model_continues_training_exactly(fitted, saved):
    """The file carries the optimizer state and the generator state: one more epoch after a
    load equals one more epoch in memory."""
    clf, X, labels = fitted
    got = nbnet.load(saved)
    import copy

    mem = copy.deepcopy(clf)
    mem.partial_fit(X, labels)
    got.partial_fit(X, labels)
    assert all(np.array_equal(a, b) for a, b in zip(got.get_weights(), mem.get_weights()))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_regressor_and_binary(regression, tmp_path, dtype):
    X, y = regression
    reg = MLPRegressor((6,), epochs=2, dtype=dtype, n_threads=1).fit(X, np.column_stack([y, -y]))
    reg.save(tmp_path / "r.nbnet")
    got = nbnet.load(tmp_path / "r.nbnet")
    assert type(got) is MLPRegressor and got.get_weights()[0].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.predict(X), reg.predict(X))
    clf = MLPClassifier((6,), epochs=2, dtype=dtype, n_threads=1).fit(X, np.where(y > 0, 10, -3))
    clf.save(tmp_path / "c.nbnet")
    got = nbnet.load(tmp_path / "c.nbnet")
    np.testing.assert_array_equal(got.predict_proba(X), clf.predict_proba(X))
    assert list(got.predict(X[:50])) == list(clf.predict(X[:50])) and set(got.classes_) == {10, -3}


def test_file_is_a_plain_zip_of_json_and_npy(saved):
    with zipfile.ZipFile(saved) as z:
        names = set(z.namelist())
        text = z.read("meta.json").decode("utf-8")
        params = np.load(io.BytesIO(z.read("params.npy")), allow_pickle=False)
    assert "meta.json" in names and all(n == "meta.json" or n.endswith(".npy") for n in names)

    def strict(const):  # NaN / Infinity are not JSON (jq, JavaScript and others refuse them)
        raise AssertionError(f"meta.json holds {const}")

    meta = json.loads(text, parse_constant=strict)
    assert meta["history"]["val_loss"] == [None] * 3  # no validation data: NaN stored as null
    assert meta["format"] == "nbnet-model" and meta["format_version"] == FORMAT_VERSION
    assert meta["nbnet_version"] == nbnet.__version__ and meta["classes"] == ["setosa", "versicolor", "virginica"]
    assert meta["params"]["hidden_layer_sizes"] == [9, 4] and len(meta["checksum"]) == 64
    assert params.dtype == np.float32


# --- atomic writes ------------------------------------------------------------------------------------------------
def test_save_leaves_no_temporary_file_and_overwrites(fitted, tmp_path):
    clf, X, _ = fitted
    path = tmp_path / "m.nbnet"
    clf.save(path)
    clf.save(path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nbnet"]
    assert nbnet.load(path).n_epochs_ == clf.n_epochs_


def test_a_failing_write_leaves_the_old_file_intact(fitted, tmp_path):
    clf, X, _ = fitted
    path = tmp_path / "m.nbnet"
    clf.save(path)
    before = path.read_bytes()

    def half_then_fail(f):
        f.write(before[: len(before) // 2])
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nbnet"]
    # a model whose metadata cannot be serialised fails inside the write: same guarantee
    import copy

    bad = copy.deepcopy(clf)
    bad.training_stats_ = {"not json": object()}
    with pytest.raises(TypeError):
        bad.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.nbnet"]
    np.testing.assert_array_equal(nbnet.load(path).predict_proba(X), clf.predict_proba(X))


def test_save_into_a_missing_folder(fitted, tmp_path):
    with pytest.raises(NbnetError, match="does not exist"):
        fitted[0].save(tmp_path / "nope" / "m.nbnet")


def test_object_arrays_are_never_written(tmp_path):
    with pytest.raises(NbnetError, match="dtype object"):
        write_bundle(tmp_path / "x.nbnet", {}, {"a": np.array([1, "x"], dtype=object)})
    assert not any(tmp_path.iterdir())


# --- plain damage --------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    refused(tmp_path / "absent.nbnet", "not found")
    refused(tmp_path, "not found")  # a folder is not a model file


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, -1, -30])
def test_truncated_files(saved, tmp_path, keep):
    data = saved.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    cut = tmp_path / "cut.nbnet"
    cut.write_bytes(data[:n])
    refused(cut)


def test_bit_flip_in_the_weights_is_detected(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as z:
        info = z.getinfo("params.npy")
        # the array bytes sit after the local header (30 bytes + name + extra) and the npy header
        start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 128
    data[start + 17] ^= 0x10
    bad = tmp_path / "flip.nbnet"
    bad.write_bytes(bytes(data))
    refused(bad)


def test_changed_array_with_a_valid_zip_fails_the_checksum(saved, tmp_path):
    """Rewrite the zip with consistent CRCs but one weight changed: only the checksum sees it."""
    meta, arrays = read_bundle(saved)
    arrays["params"] = arrays["params"].copy()
    arrays["params"][3] += 1
    bad = tmp_path / "edited.nbnet"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("meta.json", json.dumps(meta))
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.save(buf, a)
            z.writestr(f"{name}.npy", buf.getvalue())
    refused(bad, "checksum")


def test_every_single_byte_flip_is_refused_or_harmless(fitted, saved, tmp_path):
    """A flip anywhere (sampled) ends in an NbnetError or, in bytes nothing reads (zip timestamps),
    in the very same model; never another exception, never different weights."""
    clf, X, _ = fitted
    data = saved.read_bytes()
    want = clf.predict_proba(X[:20])
    bad = tmp_path / "flip.nbnet"
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "same": 0}
    for pos in rng.choice(len(data), size=120, replace=False):
        b = bytearray(data)
        b[pos] ^= 1 << int(rng.integers(8))
        bad.write_bytes(bytes(b))
        try:
            got = nbnet.load(bad)
        except NbnetError as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
            continue
        np.testing.assert_array_equal(got.predict_proba(X[:20]), want)
        outcomes["same"] += 1
    assert outcomes["refused"] > 100


def test_foreign_files(tmp_path):
    (tmp_path / "text.nbnet").write_text("hello, I am not a model\n")
    refused(tmp_path / "text.nbnet", "corrupt or truncated")
    (tmp_path / "empty.nbnet").write_bytes(b"")
    refused(tmp_path / "empty.nbnet")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "a zip from elsewhere")
    refused(tmp_path / "other.zip", "not an nbnet model file")
    np.savez(tmp_path / "weights.npz", W=np.ones((3, 3)))
    refused(tmp_path / "weights.npz", "not an nbnet model file")
    with zipfile.ZipFile(tmp_path / "foreign_meta.zip", "w") as z:
        z.writestr("meta.json", json.dumps({"format": "keras", "format_version": 1}))
    refused(tmp_path / "foreign_meta.zip", "not an nbnet model file")


def test_newer_format_version_asks_for_an_upgrade(saved, tmp_path):
    meta, arrays = read_bundle(saved)
    for key in ("format", "format_version", "checksum"):
        meta.pop(key)
    newer = tmp_path / "newer.nbnet"
    write_bundle(newer, meta, arrays)
    with zipfile.ZipFile(newer) as z:
        m = json.loads(z.read("meta.json"))
        members = {n: z.read(n) for n in z.namelist() if n != "meta.json"}
    m["format_version"] = FORMAT_VERSION + 1
    with zipfile.ZipFile(newer, "w") as z:
        z.writestr("meta.json", json.dumps(m))
        for n, d in members.items():
            z.writestr(n, d)
    refused(newer, "upgrade nbnet")


# --- no code runs on load --------------------------------------------------------------------------------------
def test_payload_is_live_control(tmp_path):
    """Control: this payload does create the marker when something unpickles it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_pickle_bearing_npy_member_never_executes(saved, tmp_path):
    marker = tmp_path / "pwned"
    meta, arrays = read_bundle(saved)
    evil = np.array([Payload(marker)], dtype=object)
    buf = io.BytesIO()
    np.save(buf, evil, allow_pickle=True)
    bad = tmp_path / "evil.nbnet"
    arrays_ok = dict(arrays)
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("meta.json", json.dumps(dict(meta, checksum=checksum(arrays_ok))))
        for name, a in arrays_ok.items():
            b = io.BytesIO()
            np.save(b, a)
            z.writestr(f"{name}.npy", b.getvalue())
        z.writestr("extra.npy", buf.getvalue())
    refused(bad, "pickle|Python objects|object")
    # the same payload in place of the weights
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("meta.json", json.dumps(meta))
        for name, a in arrays.items():
            if name == "params":
                z.writestr("params.npy", buf.getvalue())
            else:
                b = io.BytesIO()
                np.save(b, a)
                z.writestr(f"{name}.npy", b.getvalue())
    refused(bad)
    # a bare pickle file given as a model
    (tmp_path / "pickle.nbnet").write_bytes(pickle.dumps(Payload(marker)))
    refused(tmp_path / "pickle.nbnet")
    assert not marker.exists()
