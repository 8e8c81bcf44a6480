"""Data sets as MLflow 3 records them: run inputs with a name, a digest and a context.

Every run nbnet logs names its data with ``log_inputs`` (MLflow's ``mlflow.log_input``): the
training split with context ``training``, the validation (and test) split with ``validation``
(``test``), so the runs table's Dataset column shows ``digits-train (3f2a…)``, and a run's final
scores name the split they were scored on. The digest is the first 16 hex digits of
:func:`nbnet.data.load.data_hash` of the split (SHA-256 over the values, dtypes and shapes; :func:`data_digest`).

Example
-------
>>> d = dataset(X, y, "penguins-train")                      # doctest: +SKIP
>>> log_inputs(run_id, [(d, TRAINING)])                      # doctest: +SKIP
"""

from __future__ import annotations

import mlflow.data
import numpy as np
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from nbnet.data.load import data_hash
from nbnet.data.prepared import Data

from .client import client, retrying

TRAINING, VALIDATION, TEST = "training", "validation", "test"
#: split of :class:`nbnet.data.prepared.Data` -> (name suffix, context, metric prefix)
SPLITS = {"train": ("train", TRAINING, None), "val": ("val", VALIDATION, "val_"), "test": ("test", TEST, "test_")}
DIGEST_CHARS = 16  # MLflow keeps at most 36


def data_digest(X, y=None) -> str:
    """The data set digest nbnet records: :func:`data_hash` of (X, y), shortened to 16 hex digits."""
    return data_hash(X, np.zeros(0) if y is None else y)[:DIGEST_CHARS]


def dataset(X, y, name: str, *, digest: str | None = None):
    """An MLflow data set (``mlflow.data`` NumPy or pandas data set) of features ``X`` (array
    (n, d) or DataFrame) and labels ``y`` (array (n,), or None) named ``name``, with ``digest``
    (default: :func:`data_digest` of X and y)."""
    d = digest or data_digest(X, y)
    if isinstance(X, pd.DataFrame):
        return mlflow.data.from_pandas(X, name=name, digest=d)
    return mlflow.data.from_numpy(np.asarray(X), targets=None if y is None else np.asarray(y), name=name, digest=d)


class _SplitCache:
    """The data sets of the process's current :class:`Data` (hashing a large split takes a
    while; every trial of a sweep logs the same ones)."""

    def __init__(self):
        self.data: Data | None = None
        self.entries: list = []


_CACHE = _SplitCache()


def split_datasets(data: Data) -> list[tuple]:
    """``[(mlflow data set, context, metric prefix), ...]`` of ``data``'s train, validation and
    (if any) test split, named ``<data set>-train`` etc."""
    if _CACHE.data is data:
        return _CACHE.entries
    out = []
    for split, (suffix, context, prefix) in SPLITS.items():
        X, y = getattr(data, f"X_{split}"), getattr(data, f"y_{split}")
        if X is not None:
            out.append((dataset(X, y, f"{data.dataset.name}-{suffix}"), context, prefix))
    _CACHE.data, _CACHE.entries = data, out
    return out


#: What a store answers when two processes add the same new data set to an experiment at once:
#: MLflow looks for it, then inserts it, in one transaction (rolled back whole). Once more, it
#: finds the other's and links it.
_ADDED_MEANWHILE = ("unique constraint failed", "duplicate key value violates unique constraint")


def log_inputs(run_id: str, datasets, uri: str | None = None) -> None:
    """Record ``datasets`` (``(mlflow data set, context, ...)`` tuples) as the run's inputs, in
    one store call."""
    inputs = [DatasetInput(dataset=Dataset(**d.to_dict()), tags=[InputTag(MLFLOW_DATASET_CONTEXT, ctx)])
              for d, ctx, *_ in datasets]
    if inputs:
        retrying(client(uri).log_inputs, run_id, datasets=inputs, retry_on=_ADDED_MEANWHILE)


def metric_dataset(datasets, key: str) -> tuple | None:
    """``(name, digest)`` of the split a final score ``key`` (``val_…``, ``test_…``) was computed on."""
    for d, _, prefix in datasets:
        if prefix and key.startswith(prefix):
            return d.name, d.digest
    return None
