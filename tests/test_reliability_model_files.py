"""Hostile model files: crafted to execute code, escape the folder, exhaust memory or confuse the
loader. Each must end in one clear NbnetError and nothing else (tests/test_io.py covers the
ordinary round trip and plain damage)."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbnet
from nbnet import MLPClassifier
from nbnet.errors import NbnetError
from nbnet.io import checksum, read_bundle


class Payload:
    """Unpickling this object creates ``marker``: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def npy_bytes(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def craft(path: Path, meta, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    """Write a zip with ``meta.json`` (dict or raw bytes) and the given members, as an attacker would."""
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        if meta is not None:
            z.writestr("meta.json", meta if isinstance(meta, (bytes, str)) else json.dumps(meta))
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real small model file, its meta and its arrays."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    path = tmp_path_factory.mktemp("good") / "m.nbnet"
    MLPClassifier((4,), epochs=1, seed=0, n_threads=1).fit(X, y).save(path)
    meta, arrays = read_bundle(path)
    return path, meta, arrays, X


def rewrite(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> Path:
    """A well-formed file (right checksum) carrying whatever ``meta`` says."""
    meta = dict(meta, checksum=checksum(arrays))
    return craft(path, meta, {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()})


def assert_refused(path, match=None):
    with pytest.raises(NbnetError, match=match) as exc:
        nbnet.load(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


# --- code execution ----------------------------------------------------------------------------
def test_the_payload_is_real(tmp_path):
    """Control: the payload below does run code when something unpickles it."""
    marker = tmp_path / "control"
    data = npy_bytes(np.array([Payload(marker)], dtype=object), allow_pickle=True)
    np.lib.format.read_array(io.BytesIO(data), allow_pickle=True)
    assert marker.exists()


@pytest.mark.parametrize("member", ["params.npy", "rng.npy", "prep.mean.npy"])
def test_pickled_object_array_never_runs(tmp_path, good, member):
    _, meta, arrays, _ = good
    marker = tmp_path / "pwned"
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()}
    members[member] = npy_bytes(np.array([Payload(marker)], dtype=object), allow_pickle=True)
    path = craft(tmp_path / "evil.nbnet", meta, members)
    assert_refused(path, "not a safe nbnet model file")
    assert not marker.exists()


def test_a_plain_pickle_or_torch_style_file_never_runs(tmp_path, good):
    _, meta, arrays, _ = good
    marker = tmp_path / "pwned"
    raw = tmp_path / "model.pkl"
    raw.write_bytes(pickle.dumps(Payload(marker)))
    assert_refused(raw, "corrupt or truncated")
    # a zip with a pickle inside, as torch.save writes, even beside a genuine meta.json
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()}
    members["archive/data.pkl"] = pickle.dumps(Payload(marker))
    assert_refused(craft(tmp_path / "torchish.nbnet", meta, members), "unexpected member")
    assert not marker.exists()


# --- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escape.npy", "/abs/escape.npy", "sub/../../escape.npy", "..\\escape.npy",
                                  "sub/params.npy"])
def test_member_names_cannot_escape(tmp_path, good, name):
    _, meta, arrays, _ = good
    arrays2 = dict(arrays)
    arrays2[name[:-4]] = np.zeros(2)
    inner = tmp_path / "inner"
    inner.mkdir()
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrays2.items()}
    path = craft(inner / "m.nbnet", dict(meta, checksum=checksum(arrays2)), members)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert_refused(path, "unexpected member")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_duplicate_members_are_refused(tmp_path, good):
    _, meta, arrays, _ = good
    path = tmp_path / "dup.nbnet"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta.json", json.dumps(meta))
        for k, v in arrays.items():
            z.writestr(f"{k}.npy", npy_bytes(v))
        with pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr("params.npy", npy_bytes(np.zeros_like(arrays["params"])))
    assert_refused(path, "twice")


# --- sizes ----------------------------------------------------------------------------------------
def test_huge_claimed_array_is_refused_without_allocating(tmp_path, good):
    _, meta, arrays, _ = good
    # an npy header claiming 2**40 float64 (8 TiB) followed by 16 bytes
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()}
    members["params.npy"] = header.getvalue() + b"\0" * 16
    assert_refused(craft(tmp_path / "huge.nbnet", meta, members), "damaged|corrupt|not a safe")


def test_compressed_bomb_is_refused(tmp_path, good):
    _, meta, arrays, _ = good
    bomb = npy_bytes(np.zeros(64 * 2**20 // 8))  # 64 MiB of zeros → ~64 KiB deflated
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()}
    members["params.npy"] = bomb
    path = craft(tmp_path / "bomb.nbnet", meta, members, compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2**20
    assert_refused(path, "compressed")


def test_deeply_nested_meta_json(tmp_path, good):
    _, _, arrays, _ = good
    deep = b"[" * 200_000 + b"]" * 200_000
    path = craft(tmp_path / "deep.nbnet", deep, {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()})
    assert_refused(path)


def test_meta_json_not_utf8_or_not_json(tmp_path, good):
    _, _, arrays, _ = good
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()}
    assert_refused(craft(tmp_path / "a.nbnet", b"\xff\xfe\x00garbage", members))
    assert_refused(craft(tmp_path / "b.nbnet", b'{"format": "nbnet-model", ', members))
    assert_refused(craft(tmp_path / "c.nbnet", b"NaN", members))


# --- wrong types in meta.json (the checksum covers arrays only) ----------------------------------
WRONG = [None, "x", -1, 0, 10**30, 1.5, float("nan"), [], [1, "a"], {}, {"a": 1}, True]
FIELDS = ["estimator", "params", "n_features_in", "n_outputs", "loss", "hidden", "opt_step", "n_epochs",
          "history", "classes", "format_version"]


@pytest.mark.parametrize("field", FIELDS)
def test_wrong_type_in_each_meta_field(tmp_path, good, field):
    path0, meta, arrays, X = good
    ref = nbnet.load(path0).predict(X)
    for i, value in enumerate(WRONG):
        path = rewrite(tmp_path / f"{field}{i}.nbnet", dict(meta, **{field: value}), arrays)
        check_loads_or_refuses(path, X, ref)


PARAMS = ["hidden_layer_sizes", "activation", "dtype", "betas", "image_shape", "preprocessing", "n_threads",
          "batch_size", "seed", "device", "bogus"]


@pytest.mark.parametrize("param", PARAMS)
def test_wrong_type_in_each_hyperparameter(tmp_path, good, param):
    path0, meta, arrays, X = good
    ref = nbnet.load(path0).predict(X)
    for i, value in enumerate(WRONG + ["sigmoid", "float64", [3, 3]]):
        params = dict(meta["params"], **{param: value})
        path = rewrite(tmp_path / f"{param}{i}.nbnet", dict(meta, params=params), arrays)
        check_loads_or_refuses(path, X, ref, strict=False)


def check_loads_or_refuses(path, X, ref, strict=True):
    """Either a clear NbnetError on load (or on first use), or a model that predicts; never a
    raw exception. With ``strict``, a model that loads must predict exactly as the original."""
    try:
        est = nbnet.load(path)
        pred = est.predict(X)
    except NbnetError as e:
        assert "\n" not in str(e)
        return
    if strict:
        assert np.array_equal(pred, ref)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


try:  # the data engineer's preprocessing module; fuzz its saved state once it exists
    import nbnet.data.prep  # noqa: F401

    EXTRA = ["preprocessor", "training_stats"]
except ImportError:
    EXTRA = ["training_stats"]


@settings(max_examples=int(os.environ.get("NBNET_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(FIELDS + ["params." + p for p in PARAMS] + EXTRA),
       value=json_values)
def test_fuzzed_meta_never_raises_raw(tmp_path, good, key, value):
    path0, meta, arrays, X = good
    meta = json.loads(json.dumps(meta))
    if key.startswith("params."):
        meta["params"][key[7:]] = value
    else:
        meta[key] = value
    path = rewrite(tmp_path / "fuzz.nbnet", meta, arrays)
    check_loads_or_refuses(path, X, None, strict=False)


# --- damage anywhere in the file -------------------------------------------------------------------
def test_every_truncation_is_refused(tmp_path, good):
    path0 = good[0]
    blob = path0.read_bytes()
    cut = tmp_path / "cut.nbnet"
    for n in sorted(set(np.linspace(0, len(blob) - 1, 60).astype(int))):
        cut.write_bytes(blob[:n])
        assert_refused(cut)


def test_bit_flips_never_give_silently_wrong_weights(tmp_path, good):
    """A flipped bit is refused, or lands where it does not matter (a zip timestamp, say) and the
    model loads with exactly the original weights."""
    path0, _, _, X = good
    ref = nbnet.load(path0)
    blob = bytearray(path0.read_bytes())
    rng = np.random.default_rng(0)
    flipped = tmp_path / "flip.nbnet"
    refused = 0
    for pos in rng.choice(len(blob), size=150, replace=False):
        b = bytearray(blob)
        b[pos] ^= 1 << int(rng.integers(8))
        flipped.write_bytes(bytes(b))
        try:
            est = nbnet.load(flipped)
        except NbnetError as e:
            assert "\n" not in str(e)
            refused += 1
            continue
        assert all(np.array_equal(u, v) for u, v in zip(est.get_weights(), ref.get_weights())), pos
        assert np.array_equal(est.predict(X), ref.predict(X)), pos
    assert refused > 100


def test_foreign_files(tmp_path):
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    assert_refused(tmp_path / "plain.npz", "no meta.json")
    (tmp_path / "text.nbnet").write_text("hello")
    assert_refused(tmp_path / "text.nbnet", "corrupt or truncated")
    (tmp_path / "empty.nbnet").write_bytes(b"")
    assert_refused(tmp_path / "empty.nbnet")
    (tmp_path / "dir.nbnet").mkdir()
    assert_refused(tmp_path / "dir.nbnet")
    craft(tmp_path / "other.nbnet", {"format": "keras"}, {})
    assert_refused(tmp_path / "other.nbnet", "not an nbnet model file")
    craft(tmp_path / "list.nbnet", [1, 2], {})
    assert_refused(tmp_path / "list.nbnet", "not an nbnet model file")
    craft(tmp_path / "future.nbnet", {"format": "nbnet-model", "format_version": 99}, {})
    assert_refused(tmp_path / "future.nbnet", "upgrade nbnet")
    craft(tmp_path / "strver.nbnet", {"format": "nbnet-model", "format_version": "1"}, {})
    assert_refused(tmp_path / "strver.nbnet", "format version")


@pytest.fixture(scope="module")
def good_prep(tmp_path_factory):
    """A model that carries a fitted preprocessor (impute, scale, select_k) and its arrays."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 5))
    X[3, 1] = np.nan
    y = X[:, 0] > 0
    path = tmp_path_factory.mktemp("prep") / "p.nbnet"
    MLPClassifier((4,), epochs=1, seed=0, n_threads=1,
                  preprocessing={"impute": "median", "scale": "standard", "select_k": 3}).fit(X, y).save(path)
    meta, arrays = read_bundle(path)
    return path, meta, arrays, X


PREP_KEYS = ["format", "n_features_in", "n_features_out", "version", "task", "spec", "spec.impute", "spec.scale",
             "spec.select_k", "spec.pca", "spec.impute_value", "report"]
ARRAY_DAMAGE = [lambda a: a[:-1], lambda a: a.astype(np.int8), lambda a: a.reshape(1, -1), lambda a: a[:0],
                lambda a: np.concatenate([a, a]), lambda a: a.astype(np.complex128), lambda a: np.full_like(a, np.nan)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::numpy.exceptions.ComplexWarning")  # crafted numbers
@settings(max_examples=int(os.environ.get("NBNET_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(PREP_KEYS), value=json_values, member=st.none() | st.sampled_from(
    ["prep.columns", "prep.center", "prep.scale", "prep.fill", "prep.scores"]), damage=st.sampled_from(ARRAY_DAMAGE))
def test_fuzzed_preprocessor_state_never_raises_raw(tmp_path, good_prep, key, value, member, damage):
    path0, meta, arrays, X = good_prep
    meta = json.loads(json.dumps(meta))
    prep = meta["preprocessor"]
    if key.startswith("spec."):
        prep["spec"][key[5:]] = value
    else:
        prep[key] = value
    arrays = dict(arrays)
    if member is not None and member in arrays:
        arrays[member] = np.ascontiguousarray(damage(arrays[member]))
    path = rewrite(tmp_path / "fuzz.nbnet", meta, arrays)
    check_loads_or_refuses(path, X, None, strict=False)
