"""Property tests: random malformed CSV files never crash the loader with a raw exception. Either
the file loads into a consistent data set (which then trains or is refused with an NbnetError),
or the user gets one NbnetError line."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbnet import MLPClassifier, MLPRegressor
from nbnet.data.load import load_dataset, read_features
from nbnet.errors import NbnetError

NUMBERS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(-1e6, 1e6).map(repr),
    st.integers(0, 2).map(str),  # small ints: class labels
)
ODD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "NA", "NaN", "null", "inf", "-inf", "1e999", "-0", "0x1F", "1,5", " 3 ", "true",
                     "False", "é", "\u00a0", "red", "blue", '"quoted, comma"', '"unterminated', '""', "\t",
                     "1e-320", "1e300", "99999999999999999999999"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6),
)
NAMES = st.sampled_from(["x", "y", "color", "a", "b", "c", "", "x", " y", "a,b", "é", "1"])
SEPS = st.sampled_from([",", ",", ",", ",", ";", "\t"])
EOLS = st.sampled_from(["\n", "\n", "\r\n", "\r"])


@st.composite
def csv_files(draw):
    """Bytes of a CSV-ish file: mostly well-formed numeric tables, with a random dose of damage
    (odd fields, rows of the wrong width, odd separators and line ends, BOMs, junk bytes)."""
    n_cols = draw(st.integers(1, 4))
    header = draw(st.lists(NAMES, min_size=n_cols, max_size=n_cols, unique=draw(st.booleans())))
    if draw(st.integers(0, 3)):
        header[draw(st.integers(0, n_cols - 1))] = "target"
    odd_rate = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5]))
    ragged = draw(st.integers(0, 3)) == 0
    sep, eol = (",", "\n") if draw(st.booleans()) else (draw(SEPS), draw(EOLS))
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        width = draw(st.integers(0, n_cols + 2)) if ragged and draw(st.booleans()) else n_cols
        rows.append(sep.join(draw(ODD) if draw(st.floats(0, 1)) < odd_rate else draw(NUMBERS)
                             for _ in range(width)))
    text = eol.join([sep.join(header)] + rows) + (eol if draw(st.booleans()) else "")
    data = text.encode("utf-8")
    junk = draw(st.sampled_from([None] * 6 + ["bom", "latin1", "nul", "binary", "truncate"]))
    if junk == "bom":
        data = b"\xef\xbb\xbf" + data
    elif junk == "latin1":
        data = data.replace(b"e", b"\xe9")
    elif junk == "nul":
        data = data[: len(data) // 2] + b"\0" + data[len(data) // 2:]
    elif junk == "binary":
        data = draw(st.binary(max_size=64)) + data
    elif junk == "truncate" and data:
        data = data[: draw(st.integers(0, len(data)))]
    return data


def one_line(e: NbnetError) -> None:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)


# NBNET_HYPOTHESIS_EXAMPLES=5000 for a long hunt; the default keeps the suite fast
SETTINGS = settings(max_examples=int(os.environ.get("NBNET_HYPOTHESIS_EXAMPLES", 200)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(csv_files(), st.sampled_from(["target", "x", "missing"]), st.sampled_from([None, ["color"], ["x"]]),
       st.sampled_from([None, "classification", "regression"]))
def test_random_csv_loads_or_refuses_cleanly(data, target, categorical, task):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.csv"
        path.write_bytes(data)
        try:
            ds = load_dataset(f"csv:{path}", target=target, categorical=categorical, task=task)
        except NbnetError as e:
            one_line(e)
            return
        # a data set that loads is consistent ...
        assert ds.X.ndim == 2 and ds.X.dtype == np.float64
        assert ds.y.shape == (ds.X.shape[0],)
        assert len(ds.feature_names) == ds.X.shape[1]
        assert ds.task in ("classification", "regression")
        # ... and either trains or is refused with one line (NaN without imputation, one class, ...)
        est = (MLPClassifier if ds.task == "classification" else MLPRegressor)((3,), epochs=1, n_threads=1)
        try:
            est.fit(ds.X, ds.y)
        except NbnetError as e:
            one_line(e)
            return
        assert np.all(np.isfinite(est.predict(ds.X).astype(float) if ds.task == "regression" else 0))
        # the prediction-time reader takes the training file's own features
        try:
            X2, _ = read_features(path, feature_names=ds.feature_names, categories=ds.categories)
        except NbnetError as e:
            one_line(e)
            return
        assert X2.shape == ds.X.shape


@SETTINGS
@given(csv_files())
def test_random_csv_as_prediction_input(data):
    """Reading an arbitrary file for prediction with fixed training columns: same contract."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "input.csv"
        path.write_bytes(data)
        try:
            X, _ = read_features(path, feature_names=["x", "color=red", "color=blue"],
                                 categories={"color": ["blue", "red"]})
        except NbnetError as e:
            one_line(e)
            return
        assert X.ndim == 2 and X.shape[1] == 3 and X.dtype == np.float64


def test_huge_integral_labels_keep_their_value(tmp_path):
    """Found by the property test above: a label 1e23 was cast to int64 and became -2**63."""
    path = tmp_path / "big.csv"
    path.write_text("x,target\n1,99999999999999999999999\n2,63\n3,63\n")
    ds = load_dataset(f"csv:{path}", target="target", task="classification")
    assert ds.y.tolist() == [1e23, 63.0, 63.0]
    assert MLPClassifier((2,), epochs=1).fit(ds.X, ds.y).classes_.tolist() == [63.0, 1e23]


def test_tiny_non_utf8_file_is_refused(tmp_path):
    """Found by the property test: a 3-byte file starting with a stray UTF-8 continuation byte
    passed the text check (taken for a character cut at the end of the sample)."""
    path = tmp_path / "tiny.csv"
    path.write_bytes(b"\x80\n0")
    try:
        load_dataset(f"csv:{path}", target="target")
    except NbnetError as e:
        assert "UTF-8" in str(e)
    else:
        raise AssertionError("loaded a non-UTF-8 file")
