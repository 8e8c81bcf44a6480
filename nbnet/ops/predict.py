"""Offline batch prediction (``nbnet predict``): a data file in, a predictions file out.

The input (.csv, .parquet or .npz) is read a chunk of rows at a time and the output (.csv,
.parquet or .npz) appears atomically, so a failure leaves no partial file. A one-line progress
display on stderr counts the rows.

Example
-------
>>> predict_file("models:/digits@champion", "new.parquet", "pred.csv", proba=True)   # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nbnet._sys.atomic import atomic_write
from nbnet.data.load import iter_feature_chunks
from nbnet.data.tables import file_columns
from nbnet.errors import NbnetError
from nbnet.experiment import tracking

_OUTPUT_KINDS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}


def predict_file(model: str, input_path, output_path, *, proba: bool = False, chunk_rows: int = 100_000,
                 progress=None) -> int:
    """Predict every row of ``input_path`` (.csv, .parquet or .npz) with ``model`` (an MLflow URI
    or a local nbnet file) and write ``output_path`` (.csv, .parquet or .npz by extension):
    column ``prediction`` (``prediction_j`` for several outputs) and, with ``proba``, one
    ``proba_<class>`` column per class. The input is read ``chunk_rows`` rows at a time; the output
    appears atomically (a temporary file renamed at the end), so a failure leaves no partial
    file. Returns the number of rows written."""
    inp, out = Path(input_path), Path(output_path)
    kind = _check_paths(inp, out, chunk_rows)
    est, (names, cats) = tracking.load_model(model)
    if proba and not hasattr(est, "predict_proba"):
        raise NbnetError("--proba needs a classifier; this model is a regressor")
    npz = inp.suffix.lower() == ".npz"
    names = tracking.input_columns(est, names, cats, None if npz else file_columns(inp), inp.name)
    bar = _Progress(_input_rows(inp), stream=progress)
    chunks = iter_feature_chunks(inp, chunk_rows, feature_names=names, categories=cats)
    rows = 0

    def frames():
        nonlocal rows
        for X, _ in chunks:
            df = _output_frame(est, X, proba)
            rows += len(df)
            bar.update(len(df))
            yield df

    writer = {"csv": _write_csv, "parquet": _write_parquet, "npz": _write_npz}[kind]
    try:
        atomic_write(out, lambda f: writer(f, frames(), inp, est, proba))
    except OSError as e:
        raise NbnetError(f"could not write {str(out)!r}: {e.strerror or e}") from None
    bar.update(0, final=True)
    return rows


def _check_paths(inp: Path, out: Path, chunk_rows) -> str:
    """The output kind (``csv``, ``parquet``, ``npz``) after checking the arguments."""
    kind = _OUTPUT_KINDS.get(out.suffix.lower())
    if kind is None:
        raise NbnetError(f"output {str(out)!r} must end in .csv, .parquet or .npz")
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise NbnetError(f"--chunk-rows must be a positive integer, got {chunk_rows!r}")
    if not inp.is_file():
        raise NbnetError(f"input file {str(inp)!r} not found; check the path")
    if out.resolve() == inp.resolve():
        raise NbnetError("the output file would overwrite the input; choose another -o path")
    return kind


def _no_rows(inp: Path) -> NbnetError:
    return NbnetError(f"{inp.name} holds no rows; nothing to predict")


def _write_csv(f, frames, inp: Path, est, proba: bool) -> None:
    first = True
    for df in frames:
        f.write(df.to_csv(index=False, header=first).encode())
        first = False
    if first:
        raise _no_rows(inp)


def _write_parquet(f, frames, inp: Path, est, proba: bool) -> None:
    import pyarrow as pa  # heavy: imported on first use
    import pyarrow.parquet as pq  # heavy: imported on first use

    writer = None
    try:
        for df in frames:
            table = pa.Table.from_pandas(df, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(f, table.schema)
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise _no_rows(inp)


def _write_npz(f, frames, inp: Path, est, proba: bool) -> None:
    """An NPZ cannot be appended to: the (small) outputs are gathered, then written once."""
    parts = list(frames)
    if not parts:
        raise _no_rows(inp)
    df = pd.concat(parts, ignore_index=True)
    pred_cols = [c for c in df.columns if c.startswith("prediction")]
    arrays = {"prediction": df[pred_cols[0]].to_numpy() if len(pred_cols) == 1 else df[pred_cols].to_numpy()}
    if proba:
        arrays["proba"] = df[[c for c in df.columns if c.startswith("proba_")]].to_numpy()
        arrays["classes"] = np.asarray(est.classes_)
    if arrays["prediction"].dtype.kind in "OU":
        arrays = {k: (v.astype(str) if v.dtype.kind in "OU" else v) for k, v in arrays.items()}
    np.savez(f, **arrays)


def _output_frame(est, X: np.ndarray, proba: bool) -> pd.DataFrame:
    """The predictions (and with ``proba`` the class probabilities) of one chunk ``X``."""
    pred = est.predict(X)
    cols = {"prediction": pred} if np.ndim(pred) == 1 else {f"prediction_{j}": pred[:, j] for j in range(pred.shape[1])}
    if proba:
        P = est.predict_proba(X)
        cols.update({f"proba_{c}": P[:, j] for j, c in enumerate(est.classes_)})
    return pd.DataFrame(cols)


def _input_rows(path: Path) -> int | None:
    """Row count when it is cheap to know (Parquet metadata, an NPZ header); None for CSV."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq  # heavy: imported on first use

            return pq.ParquetFile(path).metadata.num_rows
        if path.suffix.lower() == ".npz":
            with np.load(path, mmap_mode="r", allow_pickle=False) as z:
                return int(z["X"].shape[0]) if "X" in z.files else None
    except Exception:  # the reader proper reports a broken file with a clear message
        return None
    return None


class _Progress:
    """A one-line progress display on stderr: rows done (and % when the total is known); the final
    line also counts the chunks."""

    def __init__(self, total: int | None, stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self.done, self.chunks, self.t0, self.last = 0, 0, time.perf_counter(), 0.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = 0.2 if self.tty else 5.0  # a redrawn line on a terminal, sparse lines in a log

    def update(self, n: int, final: bool = False) -> None:
        self.done += n
        if n:
            self.chunks += 1
        now = time.perf_counter()
        if not final and now - self.last < self.every:
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        line = f"predict: {self.done:,} rows{pct}, {rate:,.0f} rows/s"
        if final:  # how many pieces the input was read in (chunk_rows at a time)
            line += f", {self.chunks:,} chunk{'s' if self.chunks != 1 else ''}"
        self.stream.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        self.stream.flush()


__all__ = ["predict_file"]
