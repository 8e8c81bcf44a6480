"""Reading tables (CSV, Parquet) with pyarrow: whole, or streamed in batches; the numeric and
one-hot encoded feature matrix and the target column of a table; one-line errors for broken files.
:mod:`nbnet.data.load` builds data sets and prediction inputs from these.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from nbnet.errors import NbnetError


def one_line(e: BaseException, limit: int = 160) -> str:
    """An exception's message on one printable line of at most ``limit`` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "…"


def _csv_options(columns=None, categories=None, target=None):
    import pyarrow as pa  # heavy: imported on first use
    import pyarrow.csv as pcsv  # heavy

    if columns is None:
        return pcsv.ConvertOptions(strings_can_be_null=True)
    types = {c: (pa.string() if c in categories else pa.float64()) for c in columns}
    include = list(columns) + ([target] if target is not None and target not in columns else [])
    return pcsv.ConvertOptions(column_types=types, include_columns=include, strings_can_be_null=True)


def _check_text(path: Path) -> None:
    """Refuse a binary file up front (pyarrow would report a confusing parse error)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise NbnetError(f"cannot open {path.name} ({one_line(e)})") from None
    try:
        head.decode("utf-8")
        ok = True
    except UnicodeDecodeError as e:
        # a multi-byte character cut at the end of a full sample; a short file was read whole
        ok = len(head) == 1 << 16 and e.start >= len(head) - 3
    if not ok or b"\0" in head:
        raise NbnetError(f"{path.name} is not a UTF-8 text CSV file (binary or another encoding); export it as UTF-8 CSV")


def table_error(path: Path, kind: str, e: BaseException) -> NbnetError:
    """The one-line NbnetError for pyarrow's error ``e`` reading ``path`` as ``kind``."""
    msg = one_line(e)
    m = re.search(r"Expected (\d+) columns, got (\d+): ?(.*)", msg)
    if m:
        row = m.group(3)
        return NbnetError(f"{path.name}: ragged rows — the row {row!r} has {m.group(2)} fields, the header has "
                          f"{m.group(1)}; fix the file")
    if "Empty CSV file" in msg:
        return NbnetError(f"{path.name} is empty; a CSV needs a header line and rows")
    m = re.search(r"No match for FieldRef\.Name\((.*?)\)|Column '(.*?)' in include_columns does not exist", msg)
    if m:
        col = m.group(1) or m.group(2)
        return NbnetError(f"{path.name} has no column {col!r}; it must have the training columns")
    m = re.search(r"In CSV column #(\d+): .*?conversion error to double: invalid value '(.*?)'", msg)
    if m:
        return NbnetError(f"{path.name}: column #{m.group(1)} holds non-numeric value {m.group(2)!r}; "
                          "declare the column categorical or fix the file")
    return NbnetError(f"cannot read {path.name} as {kind} ({msg}); check that it is a valid {kind} file")


def read_table(path: Path, kind: str, categorical: list[str]):
    """The whole table of a CSV or Parquet file (the ``categorical`` CSV columns read as text)."""
    import pyarrow as pa  # heavy: imported on first use

    try:
        if kind == "csv":
            import pyarrow.csv as pcsv  # heavy

            _check_text(path)
            # categorical columns stay text, exactly as read_features will read them later
            convert = _csv_options()
            convert.column_types = {c: pa.string() for c in categorical}
            return pcsv.read_csv(path, convert_options=convert)
        import pyarrow.parquet as pq  # heavy

        return pq.read_table(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        raise table_error(path, kind, e) from None


def csv_batches(path: Path, columns, categories, target):
    """Tables of a CSV file's ``columns`` (and ``target``) as pyarrow's incremental reader yields them."""
    import pyarrow as pa  # heavy: imported on first use
    import pyarrow.csv as pcsv  # heavy

    _check_text(path)
    convert = _csv_options(columns, categories, target)
    try:
        reader = pcsv.open_csv(path, convert_options=convert)
        for batch in reader:
            yield pa.Table.from_batches([batch])
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        raise table_error(path, "csv", e) from None


def parquet_batches(path: Path, columns, target, chunk_rows):
    """Tables of a Parquet file's ``columns`` (and ``target``), ``chunk_rows`` rows at a time."""
    import pyarrow as pa  # heavy: imported on first use
    import pyarrow.parquet as pq  # heavy

    try:
        f = pq.ParquetFile(path)
        have = set(f.schema_arrow.names)
        need = list(columns) + ([target] if target is not None and target not in columns else [])
        missing = [c for c in need if c not in have]
        if missing:
            raise NbnetError(f"{path.name} has no column {missing[0]!r}; it must have the training columns")
        for batch in f.iter_batches(batch_size=chunk_rows or 65536, columns=need):
            yield pa.Table.from_batches([batch])
    except NbnetError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise table_error(path, "parquet", e) from None


def rebatch(tables, chunk_rows):
    """Regroup a stream of tables into tables of exactly ``chunk_rows`` rows (the last one shorter);
    ``chunk_rows=None``: one table."""
    import pyarrow as pa  # heavy: imported on first use

    pending, n_pending = [], 0
    for t in tables:
        if t.num_rows == 0:
            continue
        pending.append(t)
        n_pending += t.num_rows
        while chunk_rows is not None and n_pending >= chunk_rows:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, chunk_rows)
            rest = whole.slice(chunk_rows)
            pending, n_pending = ([rest] if rest.num_rows else []), rest.num_rows
    if n_pending:
        yield pa.concat_tables(pending)


def _parses_as_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _is_numeric(t) -> bool:
    import pyarrow.types as pt  # heavy

    return pt.is_integer(t) or pt.is_floating(t) or pt.is_boolean(t) or pt.is_null(t) or pt.is_decimal(t)


def encode_columns(table, columns, categories, path: Path, *, fixed_categories: bool):
    """(X float64, feature_names, categories) from ``columns`` of a pyarrow table; categorical
    columns one-hot (learning their categories unless ``fixed_categories``)."""
    import pyarrow as pa  # heavy: imported on first use
    import pyarrow.compute as pc  # heavy

    n = table.num_rows
    have = set(table.column_names)
    for c in columns:
        if c not in have:
            raise NbnetError(f"{path.name} has no column {c!r}; it must have the training columns")
    cats_out, names, blocks = {}, [], []
    for c in columns:
        col = table.column(c)
        if c in categories:
            text = pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
            if fixed_categories:
                cats = categories[c]
            else:
                cats = sorted(str(v) for v in pc.unique(text).to_pylist() if v is not None)
            cats_out[c] = cats
            idx = pc.index_in(text, value_set=pa.array(cats, pa.string())).to_numpy(zero_copy_only=False)
            block = np.zeros((n, len(cats)))
            ok = ~np.isnan(idx.astype(np.float64)) if idx.dtype.kind == "f" else np.ones(n, bool)
            block[np.flatnonzero(ok), idx[ok].astype(np.int64)] = 1.0
            blocks.append(block)
            names += [f"{c}={k}" for k in cats]
            continue
        if not _is_numeric(col.type):
            sample = next((v for v in col.to_pylist() if v is not None and not _parses_as_number(v)), None)
            raise NbnetError(f"{path.name}: column {c!r} is not numeric (e.g. {sample!r}); declare it categorical "
                             f"(categorical = [\"{c}\"]) or drop it")
        blocks.append(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).reshape(n, 1))
        names.append(c)
    X = np.hstack(blocks) if blocks else np.zeros((n, 0))
    return np.ascontiguousarray(X, dtype=np.float64), names, cats_out


def column_types(table, columns, categorical) -> dict:
    """``{column: {"type": ..., "required": ...}}`` of a pyarrow table's ``columns`` as pandas
    reads the same file: whole numbers with none missing are ``"long"`` (int64), true/false with
    none missing ``"boolean"``, other numbers ``"double"`` (a missing value makes pandas read an
    integer column as float64), ``categorical`` columns ``"string"``; ``required`` is False for
    a column with a missing (null or NaN) value."""
    import pyarrow.compute as pc  # heavy: imported on first use
    import pyarrow.types as pt  # heavy

    out = {}
    for c in columns:
        col = table.column(c)
        missing = col.null_count > 0 or (pt.is_floating(col.type) and bool(pc.any(pc.is_nan(col)).as_py()))
        if c in categorical:
            kind = "string"
        elif pt.is_integer(col.type) and not missing:
            kind = "long"
        elif pt.is_boolean(col.type) and not missing:
            kind = "boolean"
        else:
            kind = "double"
        out[c] = {"type": kind, "required": not missing}
    return out


def target_column(table, target: str, path: Path) -> np.ndarray:
    """The values of column ``target`` (numbers, or text as ``str``); an NbnetError when it is
    missing or has missing values."""
    import pyarrow as pa  # heavy: imported on first use
    import pyarrow.compute as pc  # heavy

    if target not in table.column_names:
        shown = ", ".join(table.column_names[:12]) + (" …" if table.num_columns > 12 else "")
        raise NbnetError(f"target column {target!r} not found in {path.name}; its columns are: {shown}")
    col = table.column(target)
    if col.null_count:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise NbnetError(f"target column {target!r} of {path.name} has {col.null_count} missing values "
                         f"(first at row {first}); drop those rows")
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, pa.string())
    if _is_numeric(col.type):
        return col.to_numpy(zero_copy_only=False)
    return np.asarray(pc.cast(col, pa.string()).to_pylist(), dtype=str)


def file_columns(path: Path) -> list[str]:
    """The columns (CSV/Parquet: from the header or schema, no rows read) or arrays (NPZ) of a
    data file; a file that cannot be read is a one-line :class:`nbnet.errors.NbnetError`."""
    suffix = path.suffix.lower()
    kind = "npz" if suffix == ".npz" else "parquet" if suffix in (".parquet", ".pq") else "csv"
    try:
        if kind == "npz":
            with np.load(path, allow_pickle=False) as z:
                return list(z.files)
        if kind == "parquet":
            import pyarrow.parquet as pq  # heavy: imported on first use

            return list(pq.read_schema(path).names)
        import pyarrow.csv as pcsv  # heavy: imported on first use

        with pcsv.open_csv(path) as r:
            return list(r.schema.names)
    except Exception as e:  # ragged rows, junk bytes, not a zip: one line, not a traceback
        raise table_error(path, kind, e) from None
