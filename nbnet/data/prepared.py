"""Prepared data: a data set loaded, cleaned and split as an experiment config says, with the
preprocessing fitted on its training split; both cached per process (:data:`CACHE`,
:func:`clear_cache`), and handed to spawned sweep workers as ``.npy`` files (:class:`SharedData`).

The config is read by attribute only (``cfg.data.source``, ``cfg.data.val_fraction``, ...,
``cfg.search.metric``): an :class:`nbnet.experiment.config.ExperimentConfig` or anything shaped
like it. The estimator whose preprocessing is fitted is duck-typed too (``preprocessing``,
``dtype``, ``fit_preprocessing``).

Example
-------
>>> from nbnet.experiment import config                                   # doctest: +SKIP
>>> data = prepare_data(config.load_experiment("wine"))                  # doctest: +SKIP
>>> data.X_train.shape, data.task                                        # doctest: +SKIP
>>> clear_cache()  # the next prepare_data loads the file again          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nbnet._sys.atomic import atomic_write
from nbnet._sys.procs import pid_alive
from nbnet.data.load import Dataset, load_dataset
from nbnet.data.prep import Preprocessor, clean
from nbnet.data.split import train_val_test_split
from nbnet.errors import NbnetError
from nbnet.metrics import check_metric_task

#: The split arrays of :class:`Data`, in the order of its fields.
SPLITS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")


@dataclass
class Data:
    """A loaded, cleaned and split data set. ``hash`` digests the data as loaded (before
    cleaning), which is what ``nbnet rerun`` compares."""

    dataset: Dataset
    X_train: np.ndarray  # (n_train, n_features)
    y_train: np.ndarray  # (n_train,)
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray | None  # None when data.test_fraction is 0
    y_test: np.ndarray | None
    hash: str
    cleaning_report: dict | None = None

    @property
    def task(self) -> str:
        return self.dataset.task


class ProcessCache:
    """The process's prepared data set and the preprocessing fitted on it, one of each at a time
    (the synthetic data set alone takes 370 MB).

    ``data``: {data key of a config: :class:`Data`}. ``preprocessed``: {(preprocessing spec as
    JSON, dtype, estimator class name): (the Data it was fitted on, fitted Preprocessor,
    transformed X_train, transformed X_val)}."""

    def __init__(self):
        self.data: dict[str, Data] = {}
        self.preprocessed: dict[tuple, tuple] = {}

    def keep_data(self, key: str, data: Data) -> None:
        self.data.clear()
        self.data[key] = data

    def keep_preprocessed(self, key: tuple, entry: tuple) -> None:
        self.preprocessed.clear()
        self.preprocessed[key] = entry

    def clear(self) -> None:
        self.data.clear()
        self.preprocessed.clear()


CACHE = ProcessCache()


def clear_cache() -> None:
    """Forget this process's prepared data and fitted preprocessing: the next
    :func:`prepare_data` loads, cleans and splits again."""
    CACHE.clear()


def _data_key(cfg) -> str:
    d = cfg.data
    stamp = None
    kind, _, arg = d.source.partition(":")
    if kind in ("csv", "npz", "parquet"):  # a file edited in place is a different data set
        with contextlib.suppress(OSError):
            st = os.stat(arg)
            stamp = (st.st_mtime_ns, st.st_size)
    return json.dumps([d.source, stamp, d.target, list(d.categorical), d.task, d.cleaning, d.val_fraction,
                       d.test_fraction, d.split_seed, d.stratify], sort_keys=True, default=str)


def _preprocessing_key(spec, dtype, kind: str) -> tuple:
    return json.dumps(spec, sort_keys=True, default=str), dtype, kind


def prepare_data(cfg) -> Data:
    """Load ``cfg.data.source``, clean it (``cfg.data.cleaning``, before splitting, so no
    duplicate straddles train and validation) and split it. Cached per process (:data:`CACHE`).
    An NbnetError when ``cfg.search.metric`` does not apply to the data's task."""
    key = _data_key(cfg)
    data = CACHE.data.get(key)
    if data is None:
        data = _load_and_split(cfg.data)
        CACHE.keep_data(key, data)
    check_metric_task(cfg.search.metric, data.task, cfg.data.source)
    return data


def _load_and_split(d) -> Data:
    ds = load_dataset(d.source, target=d.target, categorical=list(d.categorical) or None, task=d.task)
    digest = ds.hash()
    X, y, report = ds.X, ds.y, None
    if d.cleaning:
        try:
            X, y, report = clean(X, y, **d.cleaning)
        except TypeError as e:  # an unknown key in [data.cleaning]
            raise NbnetError(f"data.cleaning: {e}; valid keys: nan, drop_duplicates") from None
    strat = d.stratify and ds.task == "classification"
    tr, va, te = train_val_test_split(len(y), d.val_fraction, d.test_fraction, y if strat else None, d.split_seed)
    return Data(ds, X[tr], y[tr], X[va], y[va], X[te] if len(te) else None, y[te] if len(te) else None, digest, report)


def preprocessed(est, data: Data) -> tuple:
    """``(fitted preprocessor, X_train, X_val)`` in the model's dtype, for ``est``'s preprocessing
    on ``data``: fitted once per data set, spec and dtype and reused by every later trial of the
    process (fitting the statistics and scaling of 54 000 × 784 takes seconds, more than a short
    trial's training). The result equals fitting inside ``est.fit``; without preprocessing it is
    a pass-through that records the training statistics, so every tracked model can be monitored
    for drift."""
    key = _preprocessing_key(est.preprocessing, est.dtype, type(est).__name__)
    hit = CACHE.preprocessed.get(key)
    if hit is None or hit[0] is not data:  # the split itself (data.hash digests the data before splitting)
        pre, Xt = est.fit_preprocessing(data.X_train, data.y_train)
        if pre is None:  # no preprocessing: a pass-through one still keeps the training statistics (nbnet monitor)
            pre = Preprocessor.from_spec({}).fit(np.asarray(data.X_train, np.float64))
        Xv = pre.transform(np.asarray(data.X_val, np.float64))
        hit = (data, pre, Xt, np.ascontiguousarray(Xv, Xt.dtype))
        CACHE.keep_preprocessed(key, hit)
    return hit[1:]


# --- the hand-off to spawned workers ----------------------------------------------------------
class SharedData:
    """For spawned workers: this process's prepared data and the fitted base preprocessing (the
    config's own: what most trials use), written once as ``.npy`` files (no pickle) that the
    workers map instead of loading, cleaning, splitting and preprocessing it all again (seconds
    for 60 000 × 784). The workers are spawned first and import meanwhile; they wait for
    ``ready``, then find ``meta.json`` (:func:`receive_shared`) or, when nothing could be shared
    (labels that only pickle could store), load the data themselves. :meth:`close` removes the
    folder."""

    PREFIX = "nbnet-sweep-data-"

    def __init__(self):
        where = self.base()
        self.remove_orphans(where)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir=where))
        self.ready = mp.get_context("spawn").Event()

    @staticmethod
    def base() -> Path:
        shm = Path("/dev/shm")
        return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())

    @classmethod
    def remove_orphans(cls, where: Path) -> int:
        """Remove this user's folders of sweeps whose process is gone (a SIGKILL or an OOM kill
        leaves them, and under /dev/shm they hold memory). Returns how many."""
        n = 0
        for p in where.glob(f"{cls.PREFIX}*-*"):
            try:
                pid = int(p.name[len(cls.PREFIX):].split("-", 1)[0])
                if p.stat().st_uid != os.getuid() or pid_alive(pid):
                    continue
            except (ValueError, OSError):
                continue
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        return n

    def payload(self) -> dict:
        """What a spawned worker needs to find the files (picklable: the folder and the event)."""
        return {"folder": str(self.folder), "ready": self.ready}

    def write(self, data: Data, make_estimator) -> None:
        """Write ``data`` and the preprocessing of ``make_estimator()`` (an unfitted estimator of
        the sweep's config) fitted on it, then set ``ready``, also when nothing could be written."""
        try:
            arrays = {k: getattr(data, k) for k in SPLITS if getattr(data, k) is not None}
            if any(a.dtype.hasobject for a in arrays.values()):
                return
            est = make_estimator()
            pre, Xt, Xv = preprocessed(est, data)
            meta, pre_arrays = pre.to_state()
            for name, a in {**arrays, "pre_X_train": Xt, "pre_X_val": Xv,
                            **{f"state_{k}": v for k, v in pre_arrays.items()}}.items():
                np.save(self.folder / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
            ds = data.dataset
            info = {"splits": list(arrays), "state": list(pre_arrays), "pre_meta": meta,
                    "prep_key": [est.preprocessing, est.dtype, type(est).__name__], "hash": data.hash,
                    "cleaning_report": data.cleaning_report,
                    "dataset": {"feature_names": list(ds.feature_names), "task": ds.task, "name": ds.name,
                                "image_shape": list(ds.image_shape) if ds.image_shape else None,
                                "categories": dict(ds.categories or {}),
                                "column_types": dict(ds.column_types or {})}}
            atomic_write(self.folder / "meta.json", lambda f: f.write(json.dumps(info, default=str).encode()))
        finally:
            self.ready.set()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def receive_shared(shared: dict | None, cfg) -> None:
    """In a spawned worker: wait for the parent's files (``shared``: :meth:`SharedData.payload`)
    and seed this process's :data:`CACHE` from them, if any."""
    if not shared or not shared["ready"].wait(timeout=600):
        return
    meta = Path(shared["folder"], "meta.json")
    if meta.is_file():
        _load_shared({**json.loads(meta.read_text()), "folder": shared["folder"]}, cfg)


def _load_shared(shared: dict, cfg) -> None:
    """Seed the data and preprocessing caches from :class:`SharedData`'s files (copy-on-write
    maps: the pages are the parent's until written)."""
    folder = Path(shared["folder"])

    def load(name: str) -> np.ndarray:
        return np.asarray(np.load(folder / f"{name}.npy", mmap_mode="c", allow_pickle=False))

    arrays = {k: load(k) for k in shared["splits"]}
    d = shared["dataset"]
    ds = Dataset(arrays["X_train"], arrays["y_train"], d["feature_names"], d["task"], d["name"],
                 tuple(d["image_shape"]) if d["image_shape"] else None, d["categories"], d.get("column_types") or {})
    data = Data(ds, *(arrays.get(k) for k in SPLITS), shared["hash"], shared["cleaning_report"])
    CACHE.keep_data(_data_key(cfg), data)
    pre = Preprocessor.from_state(shared["pre_meta"], {k: load(f"state_{k}") for k in shared["state"]})
    CACHE.keep_preprocessed(_preprocessing_key(*shared["prep_key"]),
                            (data, pre, load("pre_X_train"), load("pre_X_val")))
