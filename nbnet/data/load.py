"""Loading data sets: CSV, NPZ, Parquet, scikit-learn's built-in sets and a seeded generator.

A data *spec* is one string, the same in Python, the TOML experiment files and the CLI::

    builtin:digits | builtin:breast_cancer | builtin:wine | builtin:iris | builtin:diabetes
    csv:path/train.csv          (needs target="column")
    parquet:path/train.parquet  (needs target="column")
    npz:path/train.npz          (arrays X (n, d) or (n, h, w) and y (n,))
    synthetic:n=60000,d=784,classes=10,seed=0   (classes=0: regression)
    memory:NAME@DIGEST          (arrays or a DataFrame of this process: :func:`register_arrays`)

Tables (CSV, Parquet) become a float64 matrix, one column per numeric column, in file order.
Columns named in ``categorical`` are one-hot encoded in place: column ``color`` with the
categories ``blue, red`` (sorted, from the training file) becomes ``color=blue, color=red``.
At prediction time :func:`read_features` encodes a file with the *training* categories: an
unseen category (or a missing value) in a categorical column gives an all-zeros row in that
column's group. A non-numeric column that is not declared categorical is an error.

CSV files are parsed with pyarrow (not pandas): pyarrow rejects a row with too few fields,
where pandas would silently pad it with NaN. Empty fields and ``NA``/``NaN``/``null`` are
missing values (NaN in X); ``inf``/``-inf`` are read as infinities.

Example
-------
>>> ds = load_dataset("builtin:iris")
>>> ds.X.shape, ds.task, ds.y[:3]
((150, 4), 'classification', array([0, 0, 0]))
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from nbnet.data.tables import (
    column_types, csv_batches, encode_columns, one_line, parquet_batches, read_table, rebatch, target_column,
)
from nbnet.errors import NbnetError

BUILTINS = ("digits", "breast_cancer", "wine", "iris", "diabetes")
TASKS = ("classification", "regression")
SYNTHETIC_DEFAULTS = {"n": 1000, "d": 20, "classes": 2, "seed": 0, "noise": 0.1}
_TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set.

    X : float64 array of shape (n_samples, n_features); may hold NaN (missing values).
    y : array of shape (n_samples,): int or str labels (classification) or float64 (regression).
    feature_names : the names of X's columns (one-hot columns are ``"col=category"``).
    task : ``"classification"`` or ``"regression"``.
    name : a short name (``"digits"``, the file's stem, ``"synthetic"``).
    image_shape : (height, width) when the rows are flattened images, else None.
    categories : {column: [category, ...]} of the one-hot encoded columns; {} if none.
    column_types : {column: {"type": ..., "required": ...}} of a CSV/Parquet file's feature
        columns as pandas reads that file: ``"long"`` (whole numbers, none missing), ``"double"``,
        ``"boolean"`` or ``"string"`` (categorical columns), ``required`` False where values are
        missing; {} for arrays (every column a double). A logged model's signature is built from it.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    task: str
    name: str
    image_shape: tuple | None = None
    categories: dict = field(default_factory=dict)
    column_types: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    def hash(self) -> str:
        """:func:`data_hash` of (X, y)."""
        return data_hash(self.X, self.y)


# --- public entry points --------------------------------------------------------------------
def load_dataset(spec: str, *, target: str | None = None, categorical: list[str] | None = None,
                 base_dir=None, task: str | None = None) -> Dataset:
    """Load the data set named by ``spec`` (see the module docstring).

    Parameters
    ----------
    spec : ``"kind:argument"``; kind is builtin, csv, parquet, npz or synthetic.
    target : the label column of a CSV or Parquet file (required there); for NPZ the name of
        the label array (default ``"y"``); refused for built-in and synthetic data.
    categorical : CSV/Parquet columns to one-hot encode.
    base_dir : folder that relative paths resolve against (default: the working directory).
    task : force ``"classification"`` or ``"regression"``. By default string, bool and
        integer-valued targets are classification and other float targets regression.
    """
    kind, arg = _split_spec(spec)
    if task is not None and task not in TASKS:
        raise NbnetError(f"task must be 'classification' or 'regression', got {task!r}")
    if categorical and kind not in ("csv", "parquet"):
        raise NbnetError(f"categorical columns apply to csv/parquet data only, not {kind!r}; remove 'categorical'")
    if kind in ("csv", "parquet"):
        if not target:
            raise NbnetError(f"{kind} data needs the label column: set target = \"<column name>\"")
        path = _resolve(arg, base_dir)
        table = read_table(path, kind, list(categorical or []))
        return _dataset_from_table(table, target=target, categorical=list(categorical or []),
                                   name=path.stem, path=path, task=task)
    if target is not None and kind != "npz":
        raise NbnetError(f"target applies to csv/parquet/npz data only, not {kind!r}; remove 'target'")
    if kind == "memory":
        return _load_memory(spec, task)
    if kind == "builtin":
        return _load_builtin(arg, task)
    if kind == "npz":
        return _load_npz(_resolve(arg, base_dir), task, target or "y")
    return synthetic(**_parse_synthetic(arg), task=task)


def data_hash(X, y) -> str:
    """Hex SHA-256 digest of the contents of X and y, including their dtypes and shapes:
    the same numbers stored as float32 and float64 hash differently."""
    h = hashlib.sha256()
    for name, a in (("X", X), ("y", y)):
        a = np.asarray(a)
        if a.dtype.hasobject:  # e.g. pandas string labels: hash their text
            a = a.astype(str)
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_features(path, *, feature_names, categories=None, target: str | None = None,
                  base_dir=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a prediction-input file into a float64 matrix with the training columns.

    ``path`` is a ``.csv``, ``.parquet``/``.pq`` or ``.npz`` file (or a ``kind:path`` spec).
    Tables are matched by column name (extra columns such as ids are ignored); categorical
    columns are one-hot encoded with the training ``categories`` (unseen → all zeros). With
    ``target``, that column (for NPZ: that array, e.g. ``"y"``) is returned as labels, else
    None. Returns ``(X, y_or_None)``.
    """
    chunks = list(iter_feature_chunks(path, None, feature_names=feature_names, categories=categories,
                                      target=target, base_dir=base_dir))
    if not chunks:
        raise NbnetError(f"{path} holds no rows; nothing to predict")
    X = np.concatenate([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
    if target is None:
        return X, None
    y = np.concatenate([c[1] for c in chunks]) if len(chunks) > 1 else chunks[0][1]
    return X, y


def iter_feature_chunks(path, chunk_rows: int | None, *, feature_names, categories=None,
                        target: str | None = None, base_dir=None
                        ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Like :func:`read_features`, but yields ``(X_chunk, y_chunk_or_None)`` of at most
    ``chunk_rows`` rows (None: one chunk), so files larger than memory can be scored.

    CSV is streamed by pyarrow's incremental reader, Parquet by ``ParquetFile.iter_batches``,
    and an uncompressed NPZ member is memory-mapped (a compressed one is read whole).
    """
    if chunk_rows is not None and (not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1):
        raise NbnetError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    feature_names = [str(f) for f in feature_names]
    categories = {str(k): [str(c) for c in v] for k, v in (categories or {}).items()}
    kind, p = _file_kind(path)
    path = _resolve(p, base_dir)
    if kind == "npz":
        yield from _npz_chunks(path, chunk_rows, len(feature_names), target)
        return
    columns = raw_columns(feature_names, categories)
    if kind == "csv":
        batches = csv_batches(path, columns, categories, target)
    else:
        batches = parquet_batches(path, columns, target, chunk_rows)
    for table in rebatch(batches, chunk_rows):
        X, _, _ = encode_columns(table, columns, categories, path, fixed_categories=True)
        y = None
        if target is not None:
            y = _labels(target_column(table, target, path), None, _target_what(target, path))[0]
        yield X, y


def raw_columns(feature_names: list[str], categories: dict) -> list[str]:
    """The table columns behind ``feature_names``: each one-hot group ``c=a, c=b`` (the
    categories of ``c`` in order) collapses back to ``c``; numeric columns stay as they are."""
    out, i = [], 0
    groups = {c: [f"{c}={k}" for k in cats] for c, cats in categories.items()}
    placed = set()
    while i < len(feature_names):
        for c, names in groups.items():
            if c not in placed and names and feature_names[i:i + len(names)] == names:
                out.append(c)
                placed.add(c)
                i += len(names)
                break
        else:
            out.append(feature_names[i])
            i += 1
    # a categorical column with no categories (all missing in training) has no feature columns
    out += [c for c, cats in categories.items() if not cats and c not in placed]
    return out


def synthetic(n: int = 1000, d: int = 20, classes: int = 2, seed: int = 0, noise: float = 0.1,
              task: str | None = None) -> Dataset:
    """A seeded teacher-network data set for tests and benchmarks.

    X ~ N(0, 1) of shape (n, d); a random one-hidden-layer tanh network (32 units) maps X to
    ``classes`` logits (labels = argmax of logits + ``noise``-scaled Gumbel noise) or, with
    ``classes=0``, to one standardised regression target plus N(0, noise²) noise. The same
    arguments give the same bytes on every machine.
    """
    for key, v in (("n", n), ("d", d)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise NbnetError(f"synthetic {key} must be a positive int, got {v!r}")
    if not isinstance(classes, (int, np.integer)) or classes < 0 or classes == 1:
        raise NbnetError(f"synthetic classes must be 0 (regression) or >= 2, got {classes!r}")
    if not (isinstance(noise, (int, float)) and np.isfinite(noise) and noise >= 0):
        raise NbnetError(f"synthetic noise must be a non-negative number, got {noise!r}")
    if task is not None and task != ("regression" if classes == 0 else "classification"):
        raise NbnetError(f"synthetic classes={classes} is not a {task} task; use classes=0 for regression")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    width = 32
    W1 = rng.standard_normal((d, width)) * (2.0 / np.sqrt(d))
    H = np.tanh(X @ W1)  # (n, 32)
    name = f"synthetic(n={n},d={d},classes={classes},seed={seed})"
    names = [f"x{j}" for j in range(d)]
    if classes == 0:
        f = H @ rng.standard_normal(width)
        f = (f - f.mean()) / (f.std() or 1.0)
        y = f + noise * rng.standard_normal(n)
        return Dataset(X, y, names, "regression", name)
    logits = H @ rng.standard_normal((width, classes)) * 3.0
    logits -= np.median(logits, axis=0)  # roughly balance the classes
    gumbel = -np.log(-np.log(rng.uniform(1e-12, 1.0, (n, classes))))
    y = np.argmax(logits + noise * gumbel, axis=1).astype(np.int64)
    return Dataset(X, y, names, "classification", name)


# --- specs and paths ----------------------------------------------------------------------------
def _split_spec(spec) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec:
        raise NbnetError(f"data spec must look like 'builtin:digits', 'csv:path.csv', 'npz:…', 'parquet:…' "
                         f"or 'synthetic:n=…,d=…', got {spec!r}")
    kind, arg = spec.split(":", 1)
    kind = kind.strip().lower()
    if kind not in ("builtin", "csv", "npz", "parquet", "synthetic", "memory"):
        raise NbnetError(f"unknown data source {kind!r} in {spec!r}; use builtin, csv, npz, parquet or synthetic")
    if kind != "synthetic" and not arg.strip():
        raise NbnetError(f"data spec {spec!r} names no {'data set' if kind == 'builtin' else 'file'}")
    return kind, arg.strip()


def _file_kind(path) -> tuple[str, str]:
    s = str(path)
    m = re.match(r"^(csv|parquet|npz):(.+)$", s)
    if m:
        return m.group(1), m.group(2)
    kind = _TABLE_SUFFIXES.get(Path(s).suffix.lower())
    if kind is None:
        raise NbnetError(f"cannot tell the format of {s!r}: use a .csv, .parquet or .npz file (or prefix csv:/parquet:/npz:)")
    return kind, s


def _resolve(p, base_dir) -> Path:
    path = Path(os.path.expanduser(str(p)))
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else os.getcwd()) / path
    if not path.is_file():
        where = "" if Path(str(p)).is_absolute() else f" (relative paths resolve against {base_dir or os.getcwd()})"
        raise NbnetError(f"data file {str(path)!r} not found{where}; check the path")
    return path


def _parse_synthetic(arg: str) -> dict:
    out = dict(SYNTHETIC_DEFAULTS)
    for part in filter(None, (s.strip() for s in arg.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in SYNTHETIC_DEFAULTS:
            raise NbnetError(f"bad synthetic option {part!r}; use key=value with keys {', '.join(SYNTHETIC_DEFAULTS)}")
        try:
            out[key] = float(value) if key == "noise" else int(value)
        except ValueError:
            raise NbnetError(f"synthetic {key} must be a {'number' if key == 'noise' else 'whole number'}, got {value!r}") from None
    return out


# --- in-memory data ----------------------------------------------------------------------------
#: This process's in-memory data sets, by spec (``memory:NAME@DIGEST``): see :func:`register_arrays`.
MEMORY: dict[str, Dataset] = {}


def register_arrays(X, y, *, name: str = "data", task: str | None = None,
                    categorical: list[str] | None = None) -> str:
    """Keep (X, y) as a data set of this process and return its data spec ``memory:NAME@DIGEST``
    (DIGEST: the first 16 hex digits of :func:`data_hash`), which ``load_dataset`` and every
    config accept like a file's spec; the same data gives the same spec, so a sweep over it
    resumes. Spawned sweep workers get the prepared data from their parent
    (:class:`nbnet.data.prepared.SharedData`); another process (``nbnet rerun``) cannot load it.

    X : array (n, d), images (n, h, w), or a pandas DataFrame (its non-numeric columns, or
        those named in ``categorical``, are one-hot encoded as a CSV file's would be; NaN are
        missing values). y : array (n,) of labels or targets. ``task`` as for :func:`load_dataset`.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise NbnetError(f"name must be a short name of letters, digits, '_', '.' or '-', got {name!r}")
    if task is not None and task not in TASKS:
        raise NbnetError(f"task must be 'classification' or 'regression', got {task!r}")
    if hasattr(X, "columns") and hasattr(X, "dtypes"):
        ds = _dataset_from_frame(X, y, name, task, categorical)
    elif categorical:
        raise NbnetError("categorical columns need X as a pandas DataFrame (columns named); remove 'categorical'")
    else:
        ds = _dataset_from_arrays(X, y, name, task)
    spec = f"memory:{name}@{ds.hash()[:16]}"
    MEMORY[spec] = ds
    return spec


def _dataset_from_arrays(X, y, name: str, task: str | None) -> Dataset:
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise NbnetError(f"X must be numeric, got dtype {X.dtype}; pass a DataFrame to one-hot encode text columns")
    image_shape = None
    if X.ndim == 3:  # (n, h, w) images, as for NPZ
        image_shape = (int(X.shape[1]), int(X.shape[2]))
        X = X.reshape(len(X), -1)
    if X.ndim != 2 or X.shape[0] == 0:
        raise NbnetError(f"X must be 2-D (n, d) or 3-D (n, h, w) images with at least one row, got shape {X.shape}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise NbnetError(f"y must be 1-D with one label per row of X ({len(X)}), got shape {y.shape}")
    y, task = _labels(y, task, "y")
    names = [f"x{j}" for j in range(X.shape[1])]
    return Dataset(np.ascontiguousarray(X, dtype=np.float64), y, names, task, name, image_shape=image_shape)


def _dataset_from_frame(X, y, name: str, task: str | None, categorical: list[str] | None) -> Dataset:
    """A DataFrame through the same encoding as a CSV file's table."""
    import pyarrow as pa  # heavy: imported on first use

    X = X.rename(columns=str)
    if categorical is None:  # text, category and bool columns
        categorical = [c for c, t in X.dtypes.items() if t.kind not in "iuf"]
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise NbnetError(f"y must be 1-D with one label per row of X ({len(X)}), got shape {y.shape}")
    target = next(t for t in ("y", "target", "__nbnet_target__") if t not in X.columns)
    try:
        table = pa.Table.from_pandas(X, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise NbnetError(f"cannot read the DataFrame's columns ({one_line(e)}); give each column one type") from None
    table = table.append_column(target, pa.array(y.astype(str) if y.dtype.hasobject else y))
    return _dataset_from_table(table, target=target, categorical=list(categorical), name=name, path=Path(name),
                               task=task)


def _load_memory(spec: str, task: str | None) -> Dataset:
    ds = MEMORY.get(spec.strip())
    if ds is None:
        raise NbnetError(f"{spec!r} names in-memory data of another process; pass the arrays again "
                         "(nbnet.sweep(X, y, ...)) or save them to a file (np.savez) and use npz:PATH")
    if task is not None and task != ds.task:
        raise NbnetError(f"{spec} holds {ds.task} data, not {task}")
    return ds


# --- built-in and NPZ -------------------------------------------------------------------------
def _load_builtin(name: str, task: str | None) -> Dataset:
    name = name.lower()
    if name not in BUILTINS:
        raise NbnetError(f"unknown built-in data set {name!r}; choose one of {', '.join(BUILTINS)}")
    from sklearn import datasets  # heavy: ships these offline; imported only when asked for

    bunch = getattr(datasets, f"load_{name}")()
    X = np.ascontiguousarray(bunch.data, dtype=np.float64)
    natural = "regression" if name == "diabetes" else "classification"
    if task is not None and task != natural:
        raise NbnetError(f"builtin:{name} is a {natural} data set, not {task}")
    y = bunch.target.astype(np.float64 if natural == "regression" else np.int64)
    names = [str(f) for f in getattr(bunch, "feature_names", [f"x{j}" for j in range(X.shape[1])])]
    return Dataset(X, y, names, natural, name, image_shape=(8, 8) if name == "digits" else None)


def _check_zip(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise NbnetError(f"{path.name} is not an NPZ file (not a zip archive); save it with numpy.savez(path, X=X, y=y)")


def _load_npz(path: Path, task: str | None, label: str = "y") -> Dataset:
    _check_zip(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if not {"X", label} <= files:
                raise NbnetError(f"{path.name} must hold arrays 'X' and {label!r}, it holds {sorted(files)}; "
                                 f"save with np.savez(path, X=X, {label}=y)")
            X, y = z["X"], z[label]
            names = [str(s) for s in z["feature_names"]] if "feature_names" in files else None
    except NbnetError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise NbnetError(f"cannot read {path.name} as an NPZ file ({one_line(e)}); save it with numpy.savez") from None
    if X.dtype.kind not in "biuf":
        raise NbnetError(f"{path.name}: X must be numeric, got dtype {X.dtype}")
    image_shape = None
    if X.ndim == 3:  # (n, h, w) images: flatten row-major, remember the shape for augmentation
        image_shape = (int(X.shape[1]), int(X.shape[2]))
        X = X.reshape(len(X), -1)
    if X.ndim != 2:
        raise NbnetError(f"{path.name}: X must be 2-D (n, d) or 3-D (n, h, w) images, got {X.ndim}-D")
    if y.ndim != 1 or len(y) != len(X):
        raise NbnetError(f"{path.name}: y must be 1-D with one label per row of X ({len(X)}), got shape {y.shape}")
    if names is None or len(names) != X.shape[1]:
        names = [f"x{j}" for j in range(X.shape[1])]
    y, task = _labels(y, task, f"{path.name} y")
    return Dataset(np.ascontiguousarray(X, dtype=np.float64), y, names, task, path.stem, image_shape=image_shape)


def _target_what(target: str, path: Path) -> str:
    return f"target column {target!r} of {path.name}"


def _labels(y: np.ndarray, task: str | None, what: str) -> tuple[np.ndarray, str]:
    """Decide the task and normalise the label dtype (see :func:`load_dataset`)."""
    if y.dtype.kind in "OUS":
        y = y.astype(str)
        if task == "regression":
            raise NbnetError(f"{what} holds text labels; a regression target must be numeric")
        return y, "classification"
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    if y.dtype.kind == "f":
        if np.isnan(y).any():
            raise NbnetError(f"{what} has {int(np.isnan(y).sum())} missing values (first at row "
                             f"{int(np.argmax(np.isnan(y)))}); drop those rows")
        integral = bool(np.all(np.isfinite(y)) and np.all(y == np.round(y)))
        if task is None:
            task = "classification" if integral else "regression"
        if task == "classification" and integral and np.all(np.abs(y) <= 2.0**53):  # exact as int64
            y = y.astype(np.int64)
        return (y.astype(np.float64) if task == "regression" else y), task
    if y.dtype.kind in "iu":
        task = task or "classification"
        return (y.astype(np.float64) if task == "regression" else y.astype(np.int64)), task
    raise NbnetError(f"{what} has unsupported dtype {y.dtype}")


def memmap_npz_member(path: Path, name: str):
    """Memory-map the ``.npy`` member ``name`` of an uncompressed zip; None if it is compressed."""
    with zipfile.ZipFile(path) as z:
        try:
            info = z.getinfo(f"{name}.npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        n_name = int.from_bytes(local[26:28], "little")
        n_extra = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + n_name + n_extra)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        if dtype.hasobject:
            return None
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _npz_chunks(path: Path, chunk_rows, n_features: int, target):
    _check_zip(path)
    try:
        X = memmap_npz_member(path, "X")
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z.files:
                raise NbnetError(f"{path.name} holds no array 'X'; save with np.savez(path, X=X)")
            if X is None:
                X = z["X"]
            y = None
            if target is not None:
                if target not in z.files:
                    raise NbnetError(f"{path.name} holds no array {target!r} (it has {sorted(z.files)})")
                y = z[target]
    except NbnetError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise NbnetError(f"cannot read {path.name} as an NPZ file ({one_line(e)}); save it with numpy.savez") from None
    if X.dtype.kind not in "biuf":
        raise NbnetError(f"{path.name}: X must be numeric, got dtype {X.dtype}")
    if X.ndim == 3:
        X = X.reshape(X.shape[0], -1)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise NbnetError(f"{path.name}: X has shape {X.shape} but the model expects {n_features} features")
    if y is not None and len(y) != len(X):
        raise NbnetError(f"{path.name}: {target} has {len(y)} rows but X has {len(X)}")
    step = len(X) if chunk_rows is None else int(chunk_rows)
    for s in range(0, len(X), max(step, 1)):
        yield np.asarray(X[s:s + step], dtype=np.float64), (None if y is None else np.asarray(y[s:s + step]))


def _dataset_from_table(table, *, target: str, categorical: list[str], name: str, path: Path, task) -> Dataset:
    if table.num_rows == 0:
        raise NbnetError(f"{path.name} has a header but no rows")
    cols = table.column_names
    if len(set(cols)) != len(cols):
        dup = next(c for c in cols if cols.count(c) > 1)
        raise NbnetError(f"{path.name} has two columns named {dup!r}; column names must be unique")
    y, task = _labels(target_column(table, target, path), task, _target_what(target, path))
    unknown = [c for c in categorical if c not in cols]
    if unknown:
        raise NbnetError(f"categorical column {unknown[0]!r} not found in {path.name}; its columns are: {', '.join(cols[:12])}")
    if target in categorical:
        raise NbnetError(f"the target {target!r} cannot also be a categorical feature; remove it from categorical")
    features = [c for c in cols if c != target]
    if not features:
        raise NbnetError(f"{path.name} has no feature columns besides the target {target!r}")
    X, names, cats = encode_columns(table, features, {c: None for c in categorical}, path, fixed_categories=False)
    return Dataset(X, y, names, task, name, categories=cats, column_types=column_types(table, features, categorical))
