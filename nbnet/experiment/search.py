"""Hyperparameter sweeps: an Optuna study whose trials are tracked MLflow runs.

``run_sweep(cfg)`` turns an experiment config into a study and runs it:

* **Storage.** By default an Optuna journal file ``mlruns/optuna/<study>.log``
  (``JournalStorage(JournalFileBackend)``: safe for several processes, no server); any Optuna
  storage URL (``postgresql://…``, ``sqlite:///…``) is accepted. Re-running the same study
  resumes it and runs only the missing trials.
* **Samplers** (``search.sampler``): ``tpe`` (Bergstra et al. 2011; Optuna's default,
  multivariate with constant liar), ``gp`` (Gaussian process; needs torch and scipy), ``random``,
  ``grid`` (the space's choices and int/stepped ranges) and ``cmaes`` (Hansen 2016; needs
  ``cmaes``). **Pruners** (``search.pruner``): ``median``, ``hyperband`` (Li et al. 2018),
  ``none``; fed each epoch with the validation metric (see :class:`PruningReport`).
* **Workers.** ``workers=N`` runs worker 0 in this process and spawns N - 1 more (never fork:
  numba's threading layers and MLflow clients do not survive it), each running
  ``study.optimize`` on the shared study. They
  share numba's on-disk compile cache, so only the first trial of a fresh checkout compiles.
  Together they run exactly the missing trials (a shared ticket counter), and a callback that
  counts finished and running trials stops them if other processes work on the same study.
* **Failures.** A diverging trial (NaN/inf loss) or an invalid combination of suggested values
  is recorded FAIL with its reason (user attr ``fail_reason``) and the sweep goes on. A journal
  storage has no heartbeat, so on start, RUNNING trials whose worker process (recorded as trial
  user attrs ``host``/``pid``) is gone are marked FAIL and their parameters re-enqueued.
* **Many machines** (issue 8). With an RDB URL (PostgreSQL) any number of ``nbnet sweep``
  processes on any machines join one study: the process that creates the study makes the one
  parent run the others attach to; trials carry Optuna heartbeats, and a trial whose worker died
  is failed, its run closed FAILED and its parameters retried (:func:`_rdb_storage`); each
  process draws its own sampler seed; the best run is registered once (an advisory lock).
* **Tracking.** One MLflow parent run per study (reopened on resume); one child run per trial
  with an explicit ``parent_run_id``, closed FINISHED / FAILED / KILLED (pruned) with the Optuna
  state as tag ``optuna.state``. Each child logs the flattened resolved config, per-epoch metrics
  (batched; with per-layer activation statistics), final validation/test metrics, cost metrics
  (``compile_seconds``, ``train_seconds``, ``cpu_seconds``, ``tracking_seconds``), ``config.json``,
  ``plots/evaluation.json`` and ``plots/summary.png`` (:mod:`nbnet.plots`) and the model (pyfunc
  from code). The parent gets the best trial's params and metric, summed costs, the study's
  figures and ``trials.csv``; the best model is then registered under the experiment's name and becomes
  ``champion`` if it beats the current one.

Example
-------
>>> from nbnet import config, search
>>> cfg = config.load_experiment("wine", ["search.n_trials=3", "train.epochs=3"])  # doctest: +SKIP
>>> result = search.run_sweep(cfg, workers=1)                                       # doctest: +SKIP
>>> result.best_value, result.model_uri                                             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nbnet.experiment import config as C
from nbnet._sys import interrupt
from nbnet.experiment import resources, tracking
from nbnet.errors import DivergedError, NbnetError

COST_KEYS = ("compile_seconds", "train_seconds", "cpu_seconds", "tracking_seconds", "compile_wait_seconds",
             "kernels_compiled")
CONFIG_ARTIFACT = "config.json"


# --- data --------------------------------------------------------------------------------------
@dataclass
class Data:
    """A loaded, cleaned and split data set. ``hash`` digests the data as loaded (before
    cleaning), which is what ``rerun`` compares."""

    dataset: object  # nbnet.data.load.Dataset
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    hash: str
    cleaning_report: dict | None = None

    @property
    def task(self) -> str:
        return self.dataset.task


_DATA_CACHE: dict = {}


def _data_key(cfg: C.ExperimentConfig) -> str:
    d = cfg.data
    stamp = None
    kind, _, arg = d.source.partition(":")
    if kind in ("csv", "npz", "parquet"):  # a file edited in place is a different data set
        with contextlib.suppress(OSError):
            st = os.stat(arg)
            stamp = (st.st_mtime_ns, st.st_size)
    return json.dumps([d.source, stamp, d.target, list(d.categorical), d.task, d.cleaning, d.val_fraction,
                       d.test_fraction, d.split_seed, d.stratify], sort_keys=True, default=str)


def split_indices(n: int, y, *, val: float, test: float, seed: int, stratify: bool):
    """(train, val, test) sorted index arrays; ``test`` is empty when ``test == 0``."""
    from nbnet.data.split import train_val_test_split

    return train_val_test_split(n, val, test, y if stratify else None, seed)


def prepare_data(cfg: C.ExperimentConfig) -> Data:
    """Load ``cfg.data.source``, clean it (``cfg.data.cleaning``, before splitting, so no
    duplicate straddles train and validation) and split it. Cached per process."""
    key = _data_key(cfg)
    if key in _DATA_CACHE:
        _check_metric_task(cfg, _DATA_CACHE[key].task)
        return _DATA_CACHE[key]
    from nbnet.data.load import load_dataset

    d = cfg.data
    ds = load_dataset(d.source, target=d.target, categorical=list(d.categorical) or None, task=d.task)
    digest = ds.hash()
    X, y, report = ds.X, ds.y, None
    if d.cleaning:
        from nbnet.data.prep import clean

        try:
            X, y, report = clean(X, y, **d.cleaning)
        except TypeError as e:  # an unknown key in [data.cleaning]
            raise NbnetError(f"data.cleaning: {e}; valid keys: nan, drop_duplicates") from None
    strat = d.stratify and ds.task == "classification"
    tr, va, te = split_indices(len(y), y, val=d.val_fraction, test=d.test_fraction, seed=d.split_seed, stratify=strat)
    data = Data(ds, X[tr], y[tr], X[va], y[va], X[te] if len(te) else None, y[te] if len(te) else None,
                digest, report)
    _DATA_CACHE.clear()  # keep one data set per process (the synthetic one is 370 MB)
    _DATA_CACHE[key] = data
    _check_metric_task(cfg, data.task)
    return data


def _check_metric_task(cfg: C.ExperimentConfig, task: str) -> None:
    from nbnet.metrics import REGRESSION

    base = cfg.search.metric[len("val_"):]
    if (task == "regression") != (base in REGRESSION) and base != "loss":
        fix = "val_r2 or val_rmse" if task == "regression" else "val_accuracy or val_f1"
        raise NbnetError(f"search.metric {cfg.search.metric!r} does not apply to {task} data ({cfg.data.source}); use {fix}")


# --- one training run -------------------------------------------------------------------------
def build_estimator(cfg: C.ExperimentConfig, data: Data):
    """MLPClassifier or MLPRegressor (by the data's task) with the config's hyperparameters."""
    from nbnet.nn.estimator import MLPClassifier, MLPRegressor

    kw = cfg.estimator_kwargs()
    if cfg.train.shift_images:
        if data.dataset.image_shape is None:
            raise NbnetError(f"train.shift_images needs image-shaped data (e.g. builtin:digits); {cfg.data.source} is not")
        kw["image_shape"] = tuple(data.dataset.image_shape)
    cls = MLPClassifier if data.task == "classification" else MLPRegressor
    return cls(**kw)


_CLF_METRICS = {True: ("accuracy", "precision", "recall", "f1", "f1_macro", "roc_auc", "log_loss"),
                False: ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc_ovr", "log_loss")}


def evaluate(est, X, y, task: str, prefix: str = "val_", extra=(), *, predictions=None) -> dict:
    """Scores of a fitted estimator on (X, y), keys ``prefix + name`` (nbnet.metrics names):
    classification accuracy, precision/recall/F1 (binary, or macro/weighted), ROC-AUC, log-loss;
    regression MSE, RMSE, MAE, R²; plus ``loss`` (log-loss or MSE, the training objective
    without penalties) and any metric named in ``extra``. An undefined metric (e.g. F1 of
    pos_label 1 with string labels) is left out. ``predictions``: ``predict_proba(X)``
    (classifier) or ``predict(X)`` (regressor), if already computed."""
    from nbnet import metrics as M

    if predictions is None:
        predictions = est.predict_proba(X) if task == "classification" else est.predict(X)
    if task == "classification":
        proba = np.array(predictions, dtype=np.float64)
        proba /= proba.sum(1, keepdims=True)
        pred = est.classes_[proba.argmax(1)]
        names = list(dict.fromkeys(_CLF_METRICS[len(est.classes_) == 2] + tuple(n for n in extra if n in M.CLASSIFICATION)))
    else:
        proba, pred = None, predictions
        names = list(dict.fromkeys(M.REGRESSION + tuple(n for n in extra if n in M.REGRESSION)))
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined metrics → NaN, reported as missing
        for name in names:
            try:
                v = M.score_predictions([name], y, pred, proba, getattr(est, "classes_", None))[name]
            except NbnetError:
                continue
            if math.isfinite(v):
                out[prefix + name] = v
    loss = "log_loss" if task == "classification" else "mse"
    if prefix + loss in out:
        out[prefix + "loss"] = out[prefix + loss]
    return out


class _Clock:
    """Accumulates wall seconds spent in tracking calls (for the ``tracking_seconds`` metric)."""

    def __init__(self):
        self.seconds = 0.0

    @contextlib.contextmanager
    def __call__(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t


def train_once(cfg: C.ExperimentConfig, *, run_id: str | None = None, callbacks=(), uri: str | None = None,
               data: Data | None = None, log_artifacts: bool = True, logger: tracking.MetricLogger | None = None,
               experiment_id: str | None = None):
    """Load/split the data, build the estimator from ``cfg`` and fit it.

    With ``run_id``, the run gets per-epoch metrics, final validation/test metrics, cost metrics,
    ``config.json``, plots and the model, through ``logger`` (the caller's
    :class:`tracking.MetricLogger` for the run, left with its last batch buffered for the caller
    to send along with its own closing values: one store transaction at the end of a trial) or
    a logger of train_once's own, flushed here, also when training stops with an exception
    (pruned, diverged). Returns ``(estimator, metrics)`` where ``metrics`` holds ``val_*`` (and
    ``test_*``) scores, ``epochs`` and the cost metrics; its ``tracking_seconds`` are the
    seconds spent tracking inside train_once (store calls, plots, the model). ``experiment_id``
    (the run's) saves reading the run back when its model is logged.
    """
    data = data or prepare_data(cfg)
    est = build_estimator(cfg, data)
    est.config_ = C.to_dict(cfg)
    spec, (pre, X_train, X_val) = est.preprocessing, _preprocessed(est, data)
    est.set_params(preprocessing=None)  # trains on the cached transformed data; pre is put back after fit
    own = run_id is not None and logger is None
    if own:
        logger = tracking.MetricLogger(run_id, uri=uri)
    elif run_id is None:
        logger = None
    flushed0 = logger.seconds if logger else 0.0
    from nbnet.viz import (  # act_mean/std/dead_{l} per epoch, added to logs before the logger sees them
        ActivationStats,
    )
    cbs = ([ActivationStats(X_val), logger] if logger else []) + list(callbacks)
    cost: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        est.fit(X_train, data.y_train, validation_data=(X_val, data.y_val), callbacks=cbs)
        est.use_preprocessor(pre, spec)
    finally:
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        compile_s = float(getattr(est, "compile_seconds_", 0.0))
        wait_s = float(getattr(est, "compile_wait_seconds_", 0.0))  # another worker was compiling
        in_fit = logger.seconds - flushed0 if logger else 0.0
        cost = {"compile_seconds": compile_s, "train_seconds": max(0.0, wall - compile_s - wait_s - in_fit),
                "cpu_seconds": cpu, "compile_wait_seconds": wait_s,
                "kernels_compiled": float(getattr(est, "kernels_compiled_", 0))}
        if logger:
            step = int(getattr(est, "n_epochs_", 0))
            for k, v in cost.items():
                logger.log(k, v, step)
            if own:
                logger.flush()
    extra = (cfg.search.metric[len("val_"):],)
    pv = est.predict_proba(data.X_val) if data.task == "classification" else est.predict(data.X_val)
    metrics = evaluate(est, data.X_val, data.y_val, data.task, "val_", extra, predictions=pv)
    if data.X_test is not None:
        metrics.update(evaluate(est, data.X_test, data.y_test, data.task, "test_", extra))
    metrics["epochs"] = int(est.n_epochs_)
    if getattr(est, "best_epoch_", None):
        metrics["best_epoch"] = int(est.best_epoch_)
    metrics.update(cost)
    metrics["tracking_seconds"] = 0.0
    if logger:
        step = int(est.n_epochs_)  # the run's latest value of val_* is the final score
        t, flushed = time.perf_counter(), logger.seconds
        for k, v in metrics.items():
            if k not in cost and k != "tracking_seconds":
                logger.log(k, v, step)
        if log_artifacts:
            _log_run_artifacts(run_id, cfg, est, data, uri, predictions=pv, logger=logger, experiment_id=experiment_id)
        # flushes inside the block are in logger.seconds already
        work = time.perf_counter() - t - (logger.seconds - flushed)
        metrics["tracking_seconds"] = (logger.seconds - flushed0) + work
        if own:
            logger.log("tracking_seconds", metrics["tracking_seconds"], step)
            logger.flush()
    return est, metrics


_PREP_CACHE: dict = {}


def _preprocessed(est, data: Data) -> tuple:
    """``(fitted preprocessor, X_train, X_val)`` in the model's dtype, for ``est``'s preprocessing
    on ``data``: fitted once per data set, spec and dtype and reused by every later trial of the
    process (fitting the statistics and scaling of 54 000 × 784 takes seconds, more than a short
    trial's training). The result equals fitting inside ``est.fit``; without preprocessing it is
    a pass-through that records the training statistics, so every tracked model can be monitored
    for drift."""
    key = (json.dumps(est.preprocessing, sort_keys=True, default=str), est.dtype, type(est).__name__)
    hit = _PREP_CACHE.get(key)
    if hit is None or hit[0] is not data:  # the split itself (data.hash digests the data before splitting)
        pre, Xt = est.fit_preprocessing(data.X_train, data.y_train)
        if pre is None:  # no preprocessing: a pass-through one still keeps the training statistics (nbnet monitor)
            from nbnet.data.prep import Preprocessor

            pre = Preprocessor.from_spec({}).fit(np.asarray(data.X_train, np.float64))
        Xv = pre.transform(np.asarray(data.X_val, np.float64))
        hit = (data, pre, Xt, np.ascontiguousarray(Xv, Xt.dtype))
        _PREP_CACHE.clear()  # one data set at a time
        _PREP_CACHE[key] = hit
    return hit[1:]


_SPLITS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")


class _SharedData:
    """For spawned workers: this process's prepared data and the fitted base preprocessing (the
    config's own: what most trials use), written once as ``.npy`` files (no pickle) that the
    workers map instead of loading, cleaning, splitting and preprocessing it all again (seconds
    for 60 000 × 784). The workers are spawned first and import meanwhile; they wait for
    ``ready``, then find ``meta.json`` (:func:`_load_shared`) or, when nothing could be shared
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
        import shutil

        n = 0
        for p in where.glob(f"{cls.PREFIX}*-*"):
            try:
                pid = int(p.name[len(cls.PREFIX):].split("-", 1)[0])
                if p.stat().st_uid != os.getuid():
                    continue
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(p, ignore_errors=True)
                n += 1
            except (ValueError, OSError):
                continue
        return n

    def payload(self) -> dict:
        return {"folder": str(self.folder), "ready": self.ready}

    def write(self, cfg: C.ExperimentConfig, data: Data) -> None:
        try:
            arrays = {k: getattr(data, k) for k in _SPLITS if getattr(data, k) is not None}
            if any(a.dtype.hasobject for a in arrays.values()):
                return
            est = build_estimator(cfg, data)
            pre, Xt, Xv = _preprocessed(est, data)
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
                                "categories": dict(ds.categories or {})}}
            from nbnet._sys.atomic import atomic_write

            atomic_write(self.folder / "meta.json", lambda f: f.write(json.dumps(info, default=str).encode()))
        finally:
            self.ready.set()

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def _shared_for_worker(shared: dict | None, cfg: C.ExperimentConfig) -> None:
    """In a spawned worker: wait for the parent's files and seed the caches from them, if any."""
    if not shared or not shared["ready"].wait(timeout=600):
        return
    meta = Path(shared["folder"], "meta.json")
    if meta.is_file():
        _load_shared({**json.loads(meta.read_text()), "folder": shared["folder"]}, cfg)


def _load_shared(shared: dict, cfg: C.ExperimentConfig) -> None:
    """Seed this worker's data and preprocessing caches from :class:`_SharedData`'s files
    (copy-on-write maps: the pages are the parent's until written)."""
    from nbnet.data.load import Dataset
    from nbnet.data.prep import Preprocessor

    folder = Path(shared["folder"])
    load = lambda name: np.asarray(np.load(folder / f"{name}.npy", mmap_mode="c", allow_pickle=False))  # noqa: E731
    arrays = {k: load(k) for k in shared["splits"]}
    d = shared["dataset"]
    ds = Dataset(arrays["X_train"], arrays["y_train"], d["feature_names"], d["task"], d["name"],
                 tuple(d["image_shape"]) if d["image_shape"] else None, d["categories"])
    data = Data(ds, *(arrays.get(k) for k in _SPLITS), shared["hash"], shared["cleaning_report"])
    _DATA_CACHE.clear()
    _DATA_CACHE[_data_key(cfg)] = data
    pre = Preprocessor.from_state(shared["pre_meta"], {k: load(f"state_{k}") for k in shared["state"]})
    spec, dtype, kind = shared["prep_key"]
    _PREP_CACHE.clear()
    _PREP_CACHE[(json.dumps(spec, sort_keys=True, default=str), dtype, kind)] = (data, pre, load("pre_X_train"),
                                                                                load("pre_X_val"))


def _log_run_artifacts(run_id: str, cfg: C.ExperimentConfig, est, data: Data, uri: str | None, *, predictions=None,
                       logger: tracking.MetricLogger | None = None, experiment_id: str | None = None) -> str:
    """config.json, data/cleaning_report.json and plots/ (nbnet.plots) in one upload, then the
    model (``predictions``: the estimator's on the validation split, if computed already)."""
    from nbnet.ops import plot as plots

    params = C.to_flat_dict(cfg)
    with tempfile.TemporaryDirectory(prefix="nbnet-run-") as tmp:
        Path(tmp, CONFIG_ARTIFACT).write_text(json.dumps(C.to_dict(cfg), indent=2))
        if data.cleaning_report:
            Path(tmp, "data").mkdir()
            Path(tmp, "data", "cleaning_report.json").write_text(json.dumps(data.cleaning_report, indent=2, default=str))
        plots.write_run_plots(Path(tmp, plots.ARTIFACT_DIR), est, data.X_val, data.y_val, data.task, title=cfg.name,
                              predictions=predictions)
        tracking.log_artifact(run_id, tmp, uri=uri)
    est.feature_names_in_ = list(data.dataset.feature_names)
    est.categories_ = dict(data.dataset.categories or {})
    return tracking.log_model(run_id, est, data.X_val[:5], uri=uri, experiment_id=experiment_id,
                              params=params if experiment_id else None, logger=logger)


# --- samplers, pruners, storages --------------------------------------------------------------
def _encode_choice(c):
    """Optuna categorical choices must be None/bool/int/float/str: lists travel as JSON text."""
    return json.dumps(list(c)) if isinstance(c, (tuple, list)) else c


def _decode_choice(c, spec: C.ParamSpec):
    if isinstance(c, str) and any(isinstance(x, (tuple, list)) for x in spec.choices):
        return tuple(json.loads(c))
    return c


def suggest(trial, space: dict) -> dict:
    """Dotted config path → value suggested by ``trial`` for every entry of ``space``."""
    out = {}
    for path, spec in space.items():
        if spec.type == "categorical":
            choice = trial.suggest_categorical(path, [_encode_choice(c) for c in spec.choices])
            out[path] = _decode_choice(choice, spec)
        elif spec.type == "int":
            out[path] = trial.suggest_int(path, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            out[path] = trial.suggest_float(path, float(spec.low), float(spec.high), step=spec.step, log=spec.log)
    return out


def grid_space(space: dict) -> dict:
    """The grid of a space: categorical choices, int ranges and stepped float ranges."""
    grid = {}
    for path, spec in space.items():
        if spec.type == "categorical":
            grid[path] = [_encode_choice(c) for c in spec.choices]
        elif spec.type == "int":
            grid[path] = list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
        elif spec.type == "float" and spec.step:
            n = int(round((spec.high - spec.low) / spec.step))
            grid[path] = [float(spec.low + i * spec.step) for i in range(n + 1)]
        else:
            raise NbnetError(f"the grid sampler needs choices, an int range or a float step for {path!r}; "
                             f"add step = ... to it or use another sampler")
    return grid


def make_sampler(name: str, space: dict, *, seed: int | None, n_startup_trials: int):
    import optuna

    S = optuna.samplers
    if name == "tpe":
        return S.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "random":
        return S.RandomSampler(seed=seed)
    if name == "grid":
        return S.GridSampler(grid_space(space), seed=seed)
    if name == "gp":
        for mod in ("torch", "scipy"):
            try:
                __import__(mod)
            except ImportError:
                raise NbnetError(f"the gp sampler needs {mod}; pip install 'nbnet[parity]' or use --sampler tpe") from None
        return S.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise NbnetError("the cmaes sampler needs the cmaes package; pip install cmaes or use --sampler tpe") from None
        return S.CmaEsSampler(seed=seed, n_startup_trials=max(1, n_startup_trials), warn_independent_sampling=False)
    raise NbnetError(f"unknown sampler {name!r}; choose one of {', '.join(C.SAMPLERS)}")


def make_pruner(name: str, *, epochs: int, n_startup_trials: int, n_warmup_steps: int, epochs_searched: bool):
    import optuna

    P = optuna.pruners
    if name == "median":
        return P.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
    if name == "hyperband":
        return P.HyperbandPruner(min_resource=1, max_resource="auto" if epochs_searched else int(epochs), reduction_factor=3)
    if name == "none":
        return P.NopPruner()
    raise NbnetError(f"unknown pruner {name!r}; choose one of {', '.join(C.PRUNERS)}")


def default_storage(study_name: str, root: Path | None = None) -> str:
    """The journal file ``<root or cwd>/mlruns/optuna/<study>.log``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in study_name)
    return str(Path(root or Path.cwd()).resolve() / "mlruns" / "optuna" / f"{safe}.log")


def open_storage(storage: str, *, uri: str | None = None):
    """An Optuna storage: a URL (``postgresql://…``, ``sqlite:///…``, anything with ``://``) or
    a journal file path (optionally ``journal:PATH``). A URL gets an ``RDBStorage`` with
    heartbeats (see :func:`_rdb_storage`); ``uri`` is the MLflow store whose runs it closes."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" in storage:
        try:
            return _rdb_storage(storage, uri=uri)
        except Exception as e:  # bad URL, missing driver, unreachable server
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise NbnetError(f"cannot open Optuna storage {storage!r}: {msg}") from None
    path = Path(storage[len("journal:"):] if storage.startswith("journal:") else storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    from nbnet.experiment.journal_lock import journal_lock  # a SIGKILLed worker leaves no stale lock behind

    return JournalStorage(JournalFileBackend(str(path), lock_obj=journal_lock(str(path))))


# --- scale-out over an RDB (issue 8) ----------------------------------------------------------
HEARTBEAT_SECONDS = 10  # NBNET_HEARTBEAT_SECONDS: a running trial writes a heartbeat row this often
GRACE_SECONDS = 60  # NBNET_GRACE_SECONDS: a trial whose heartbeat is older than this is failed and retried
MAX_RETRY = 2  # NBNET_MAX_RETRY: how many times the parameters of a dead worker's trial are retried


def _rdb_storage(url: str, *, uri: str | None = None):
    """``optuna.storages.RDBStorage`` for workers on many machines: every running trial records a
    heartbeat; when a worker dies (machine lost, process killed) its trial's heartbeat goes stale,
    and the next worker to start a trial marks it FAIL, closes its MLflow run FAILED and enqueues
    its parameters again (:class:`_RetryStaleTrial`). Opening a fresh database from several
    workers at once races on Optuna's table creation; that is retried."""
    import optuna
    import sqlalchemy.exc

    beat = int(os.environ.get("NBNET_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))
    grace = int(os.environ.get("NBNET_GRACE_SECONDS", max(GRACE_SECONDS, 3 * beat)))
    retry = _RetryStaleTrial(int(os.environ.get("NBNET_MAX_RETRY", MAX_RETRY)), grace, uri)
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=beat,
                                                  grace_period=grace, heartbeat_stale_trial_callback=retry)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # Another worker is creating the same tables right now (duplicate key / already exists).
            if attempt == 5 or not any(s in str(e).lower() for s in ("duplicate key", "already exists")):
                raise
            time.sleep(0.2 * 2**attempt)  # back-off before retrying a lost table-creation race


class _RetryStaleTrial:
    """Optuna's ``heartbeat_stale_trial_callback``: Optuna has just set a trial whose worker stopped
    beating to FAIL. Record why, close the trial's MLflow run FAILED, and enqueue its parameters as
    a WAITING trial (user attr ``retry_of``), at most ``max_retry`` times per original trial — the
    behaviour of ``optuna.storages.RetryHeartbeatStaleTrialCallback`` plus the MLflow side."""

    def __init__(self, max_retry: int, grace: int, uri: str | None):
        self.max_retry, self.grace, self.uri = max_retry, grace, uri

    def __call__(self, study, trial) -> None:
        import optuna

        a = trial.user_attrs
        reason = (f"no heartbeat for {self.grace}s from worker {a.get('pid', '?')} on {a.get('host', '?')} "
                  "(process or machine died)")
        run_id = a.get("mlflow_run_id")
        if run_id:
            with contextlib.suppress(Exception):  # the tracking server may be what died
                tracking.set_tags(run_id, {"optuna.state": "FAIL", "nbnet.reason": reason}, uri=self.uri)
                tracking.end_run(run_id, "FAILED", uri=self.uri)
        history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
        if len(history) > self.max_retry:
            return
        keep = {k: v for k, v in a.items() if k not in ("mlflow_run_id", "host", "pid", "pid_started")}
        keep.update(retry_of=trial.number, retry_reason=reason)
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs=keep, system_attrs={"failed_trial": history[0], "retry_history": history}))


def _process_salt(storage: str) -> int:
    """A per-process sampler-seed offset for studies in an RDB: workers started at the same moment
    on several machines would otherwise draw identical random/startup suggestions."""
    if "://" not in storage:
        return 0
    import zlib

    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())


def _register_once(cfg: C.ExperimentConfig, result, uri: str) -> tuple[int, bool]:
    """``tracking.register_champion`` for the best run unless a version of that run is registered
    already: workers of one RDB study finish together and would each register the same run. On
    PostgreSQL the check and the registration hold an advisory lock of the study."""
    c = tracking.client(uri)
    with _study_lock(result.storage, f"nbnet.register:{result.study_name}"):
        have = c.search_model_versions(f"name = '{cfg.name}' and run_id = '{result.best_run_id}'")
        if not have:
            return tracking.register_champion(cfg.name, result.best_run_id, cfg.search.metric, result.direction, uri=uri)
    version = max(int(v.version) for v in have)
    try:
        champion = c.get_model_version_by_alias(cfg.name, tracking.CHAMPION).version
    except Exception:  # no champion alias
        champion = None
    return version, str(champion) in {str(v.version) for v in have}


@contextlib.contextmanager
def _study_lock(storage: str, key: str):
    """A cross-machine mutex for a PostgreSQL study (``pg_advisory_lock``); a no-op otherwise."""
    if not storage.startswith("postgresql"):
        yield
        return
    import zlib

    import sqlalchemy

    engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            k = zlib.crc32(key.encode()) - 2**31  # a signed 32-bit key
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": k})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": k})
    finally:
        engine.dispose()


def _await_parent_run(study, timeout: float = 120.0) -> str | None:
    """The parent run id that the worker which created this RDB study is recording on it
    (polled), or None: when no such worker shows up within 5 s (a study created outside nbnet), or
    it records no parent run within ``timeout`` seconds (it died) — then the caller makes its own."""
    t0 = time.monotonic()
    while True:
        attrs = study.user_attrs
        if attrs.get("nbnet.parent_run_id"):
            return attrs["nbnet.parent_run_id"]
        waited = time.monotonic() - t0
        if waited > timeout or (waited > 5.0 and "nbnet.creator" not in attrs):
            return None
        time.sleep(0.25)  # poll the study for the creator's parent run id


def _storage_label(storage: str) -> str:
    if "://" in storage:
        return storage.split("://", 1)[0] + "://" + storage.split("@")[-1].split("://")[-1]  # no password
    try:
        return str(Path(storage).relative_to(Path.cwd()))
    except ValueError:
        return storage


# --- the objective ----------------------------------------------------------------------------
class PruningReport:
    """Training callback: ``trial.report`` the validation metric every epoch and raise
    ``optuna.TrialPruned`` when the pruner says so.

    The reported key is the search metric when the training loop logs it each epoch
    (``val_accuracy``, ``val_r2``, ``val_loss``); otherwise the loop's own validation score for
    maximised metrics (e.g. ``val_f1`` → ``val_accuracy``) or ``val_loss`` for minimised ones
    (e.g. ``val_rmse``) — same direction as the study, which is what pruners compare.
    """

    def __init__(self, trial, key: str):
        self.trial = trial
        self.key = key

    def __call__(self, epoch: int, logs: dict):
        import optuna

        value = logs.get(self.key)
        if value is None or not math.isfinite(value):
            return None
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.key}={value:.4g})")
        return None


def report_key(cfg: C.ExperimentConfig, task: str) -> str:
    metric = cfg.search.metric
    native = "val_accuracy" if task == "classification" else "val_r2"
    if metric in ("val_loss", native):
        return metric
    return native if cfg.direction() == "maximize" else "val_loss"


def _pid_started(pid: int) -> float | None:
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by init: dead
            return None
        return proc.create_time()
    except Exception:
        return None


@dataclass
class _Context:
    """What every trial of one sweep shares (rebuilt in each worker process)."""

    cfg: C.ExperimentConfig
    data: Data
    study_name: str
    experiment_id: str
    parent_run_id: str
    uri: str
    worker: int = 0
    quiet: bool = False


class Objective:
    """``objective(trial)``: suggestions → config → one tracked child run → the metric."""

    def __init__(self, ctx: _Context):
        self.ctx = ctx
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.pid_started = _pid_started(self.pid)

    def __call__(self, trial) -> float:
        import optuna

        ctx, cfg = self.ctx, self.ctx.cfg
        trial.set_user_attr("host", self.host)
        trial.set_user_attr("pid", self.pid)
        if self.pid_started is not None:
            trial.set_user_attr("pid_started", self.pid_started)
        values = suggest(trial, cfg.search.space)
        try:
            tcfg, invalid = C.with_values(cfg, values), None
        except NbnetError as e:  # an invalid combination, e.g. nesterov with momentum 0: a FAILED run says so
            tcfg, invalid = cfg, e
        params = C.to_flat_dict(tcfg) if invalid is None else {**C.to_flat_dict(cfg), **values}
        tags = tracking.standard_tags(data_hash=ctx.data.hash, seed=tcfg.train.seed, trial=trial.number, study=ctx.study_name)
        tags.update({"optuna.state": "RUNNING", "nbnet.kind": "trial"})
        clock, usage = _Clock(), resources.TrialUsage()
        with clock():
            run_id = tracking.start_run(ctx.experiment_id, run_name=f"trial-{trial.number}", parent_run_id=ctx.parent_run_id,
                                        tags=tags, params=params, uri=ctx.uri)
        trial.set_user_attr("mlflow_run_id", run_id)
        logger = tracking.MetricLogger(run_id, uri=ctx.uri)  # sends the trial's last values with its end tags, at once
        status, state, reason = "FAILED", "FAIL", None
        metrics: dict = {}
        try:
            if invalid is not None:
                raise invalid
            key = report_key(tcfg, ctx.data.task)
            _, metrics = train_once(tcfg, run_id=run_id, callbacks=[PruningReport(trial, key), interrupt.check],
                                    uri=ctx.uri, data=ctx.data, logger=logger, experiment_id=ctx.experiment_id)
            value = metrics.get(cfg.search.metric)
            if value is None or not math.isfinite(value):
                raise NbnetError(f"{cfg.search.metric} is {value} for this trial; the model predicts nothing useful")
            for k in COST_KEYS + ("epochs",):
                trial.set_user_attr(k, metrics.get(k))
            status, state = "FINISHED", "COMPLETE"
            return float(value)
        except optuna.TrialPruned as e:
            status, state, reason = "KILLED", "PRUNED", str(e)
            raise
        except KeyboardInterrupt:
            status, state, reason = "KILLED", "FAIL", "interrupted"
            _retry_later(trial)
            raise
        except DivergedError as e:
            reason = str(e)
            raise
        except NbnetError as e:
            reason = str(e)
            raise
        except BaseException as e:
            reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            raise
        finally:
            if reason:
                trial.set_user_attr("fail_reason" if state == "FAIL" else "prune_reason", reason)
            # tracking so far: run creation + train_once's (or, if it raised, the logger's flushes)
            inside = metrics["tracking_seconds"] if "tracking_seconds" in metrics else logger.seconds
            with clock():
                logger.tag("optuna.state", state)
                if reason:
                    logger.tag("nbnet.reason", reason)
                step = int(metrics.get("epochs", 0))
                for k, v in usage.metrics().items():  # system/cpu_percent, peak_rss_mb
                    logger.log(k, v, step)
                logger.log("tracking_seconds", clock.seconds + inside, step)
                logger.flush()
                tracking.end_run(run_id, status, uri=ctx.uri)
            # all of it, the last batch and the run's end included (the run's metric cannot hold those);
            # "costs" lets the sweep sum them from the study instead of reading every run back
            trial.set_user_attr("tracking_seconds", clock.seconds + inside)
            costs = {k: logger.latest[k] for k in COST_KEYS if k in logger.latest}
            trial.set_user_attr("costs", {**costs, "tracking_seconds": clock.seconds + inside})


def _progress_line(study, trial, metric: str, worker: int, workers: int) -> str:
    state = trial.state.name
    secs = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete and trial.datetime_start else float("nan")
    if state == "COMPLETE":
        res = f"{metric}={trial.value:.4f}"
    elif state == "PRUNED":
        res = trial.user_attrs.get("prune_reason", "pruned")
    else:
        res = "failed: " + str(trial.user_attrs.get("fail_reason", "see the log"))[:120]
    params = " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in trial.params.items())
    who = f"[w{worker}] " if workers > 1 else ""
    return f"{who}trial {trial.number:>3} {state:<8} {secs:6.1f}s  {res}  {params}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v).replace(" ", "")


# --- workers ----------------------------------------------------------------------------------
def _retry_later(trial) -> None:
    """An interrupted trial does not count towards n_trials: its parameters are enqueued to run
    again when the sweep resumes (``retry_of``, as for a dead worker's trial)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # Optuna would log the interrupt with a traceback
    with contextlib.suppress(Exception):
        if trial.params:
            trial.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def _worker_main(payload: dict, tickets, worker: int, stop=None) -> None:
    """Entry point of a (spawned) worker process; also called in-process for one worker.
    ``stop``: the sweep's shared stop event (:mod:`nbnet.interrupt`)."""
    with interrupt.graceful(stop, announce=False):
        try:
            _worker_loop(payload, tickets, worker)
        except KeyboardInterrupt:
            if not interrupt.requested():  # e.g. a signal before the handlers were installed
                raise


def _worker_loop(payload: dict, tickets, worker: int) -> None:
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # one line per trial is the progress report
    cfg = C.from_dict(payload["config"], payload["name"])
    if worker > 0:
        _shared_for_worker(payload.get("shared"), cfg)
    data = prepare_data(cfg)
    storage = open_storage(payload["storage"], uri=payload["uri"])
    space = cfg.search.space
    seed = (payload["seed"] + 7919 * worker + _process_salt(payload["storage"])) % 2**31
    sampler = make_sampler(cfg.search.sampler, space, seed=seed,
                           n_startup_trials=cfg.search.n_startup_trials)
    pruner = make_pruner(cfg.search.pruner, epochs=cfg.train.epochs, n_startup_trials=cfg.search.n_startup_trials,
                         n_warmup_steps=cfg.search.n_warmup_steps, epochs_searched="train.epochs" in space)
    study = optuna.load_study(study_name=payload["study"], storage=storage, sampler=sampler, pruner=pruner)
    ctx = _Context(cfg, data, payload["study"], payload["experiment_id"], payload["parent_run_id"], payload["uri"],
                   worker, payload["quiet"])
    workers = payload["workers"]

    def take_ticket() -> bool:
        if interrupt.requested():  # Ctrl-C / SIGTERM: no new trial
            return False
        with tickets.get_lock():
            if tickets.value <= 0:
                return False
            tickets.value -= 1
            return True

    def after_trial(study, trial) -> None:
        if not ctx.quiet:
            print(_progress_line(study, trial, cfg.search.metric, worker, workers), flush=True)
        if not take_ticket():
            study.stop()

    if not take_ticket():
        return
    def enough(study, trial) -> None:
        # search.n_trials over every worker on every machine (issue 8): finished or RUNNING trials
        # count (another machine may be running the last ones); stale trials that were retried do not.
        c = _counts(study)
        if c["COMPLETE"] + c["PRUNED"] + c["FAIL"] + c["RUNNING"] >= cfg.search.n_trials:
            study.stop()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(Objective(ctx), timeout=cfg.search.timeout, catch=(NbnetError,),
                       callbacks=[enough, after_trial])


def _run_workers(payload: dict, n: int, tickets, stop=None, share=None) -> list[int]:
    """Worker 0 runs in this process, which has its imports and data loaded already; workers
    1 … n-1 are spawned first, and import while ``share()`` (if given) writes the prepared data
    for them. Returns the spawned workers' exit codes."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(payload, tickets, i, stop), name=f"nbnet-sweep-{i}") for i in range(1, n)]
    for p in procs:
        p.start()
    try:
        if share is not None:
            share()
        _worker_main(payload, tickets, 0, stop)
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:  # they got the same SIGINT from the terminal; give them a moment to close runs
            p.join(timeout=10)
        for p in procs:
            if p.is_alive():
                p.terminate()
        raise
    return [p.exitcode for p in procs]


# --- the sweep --------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What :func:`run_sweep` returns and ``nbnet sweep`` prints."""

    experiment: str
    study_name: str
    storage: str
    metric: str
    direction: str
    parent_run_id: str
    n_complete: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    n_run: int = 0  # trials run by this call
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict = field(default_factory=dict)
    best_run_id: str | None = None
    model_uri: str | None = None  # models:/NAME/VERSION of the registered best model
    champion: bool = False  # did the best model become the champion
    champion_uri: str | None = None
    seconds: float = 0.0
    trials: list = field(default_factory=list)  # FrozenTrials, best first

    def summary(self, top: int = 5) -> str:
        """A table of the best trials and the outcome, for the terminal."""
        lines = [f"study {self.study_name!r}: {self.n_complete} complete, {self.n_pruned} pruned, "
                 f"{self.n_failed} failed ({self.n_run} run now, {self.seconds:.0f}s)"]
        done = [t for t in self.trials if t.state.name == "COMPLETE"][:top]
        if done:
            keys = list(dict.fromkeys(k for t in done for k in t.params))
            head = ["rank", "trial", self.metric, "seconds"] + [k.split(".")[-1] for k in keys]
            rows = []
            for i, t in enumerate(done, 1):
                secs = (t.datetime_complete - t.datetime_start).total_seconds()
                rows.append([str(i), str(t.number), f"{t.value:.4f}", f"{secs:.1f}"] + [_fmt(t.params.get(k, "")) for k in keys])
            widths = [max(len(r[j]) for r in [head] + rows) for j in range(len(head))]
            for r in [head] + rows:
                lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if self.best_trial is not None:
            lines.append(f"best: trial {self.best_trial}  {self.metric}={self.best_value:.4f}  run {self.best_run_id}")
        return "\n".join(lines)


def _stale_trials(study, storage) -> list:
    """RUNNING trials whose worker process on this host is gone."""
    import optuna

    host = socket.gethostname()
    stale = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        a = t.user_attrs
        if a.get("host") != host or "pid" not in a:
            continue  # another machine's worker (or one that died before recording itself): leave it
        pid = int(a["pid"])
        started = _pid_started(pid)
        alive = started is not None and (a.get("pid_started") is None or abs(started - float(a["pid_started"])) < 1.0)
        if pid == os.getpid() or not alive:
            stale.append(t)
    return stale


def _run_of_dead_trial(study, trial, uri: str | None) -> str | None:
    """The MLflow run of a trial whose worker died before recording its run id: the child run
    named ``trial-N`` if the worker got as far as creating it, else a new one (so that every
    trial keeps exactly one run, closed FAILED by the caller)."""
    parent = study.user_attrs.get("nbnet.parent_run_id")
    if not parent:
        return None
    with contextlib.suppress(Exception):
        c = tracking.client(uri)
        exp = c.get_run(parent).info.experiment_id
        name = f"trial-{trial.number}"
        found = c.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}' and attributes.run_name = '{name}'",
                              max_results=1)
        if found:
            return found[0].info.run_id
        tags = {"nbnet.kind": "trial", "optuna.trial": str(trial.number), "optuna.study": study.study_name}
        return tracking.start_run(exp, run_name=name, parent_run_id=parent, tags=tags, params=dict(trial.params), uri=uri)
    return None


def fail_stale_trials(study, storage, uri: str | None = None) -> int:
    """Mark trials left RUNNING by a dead worker FAIL (with a reason), close their MLflow runs
    FAILED, and enqueue their parameters so they are retried. Returns how many."""
    import optuna

    stale = _stale_trials(study, storage)
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in stale:
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        reason = f"worker process {t.user_attrs.get('pid')} on {t.user_attrs.get('host')} died; parameters re-enqueued"
        storage.set_trial_user_attr(tid, "fail_reason", reason)
        storage.set_trial_user_attr(tid, "stale", True)
        try:
            storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
        except RuntimeError:
            continue  # finished meanwhile
        run_id = t.user_attrs.get("mlflow_run_id") or _run_of_dead_trial(study, t, uri)
        if run_id:
            with contextlib.suppress(Exception):
                tracking.set_tags(run_id, {"optuna.state": "FAIL", "nbnet.reason": reason}, uri=uri)
                tracking.end_run(run_id, "FAILED", uri=uri)
        if t.params:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
    return len(stale)


def _counts(study) -> dict:
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0, "STALE": 0}
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}  # also the heartbeat retries of an RDB study
    for t in trials:
        name = t.state.name
        if name == "FAIL" and (t.user_attrs.get("stale") or t.number in retried):
            out["STALE"] += 1
        else:
            out[name] = out.get(name, 0) + 1
    return out


def _open_study(cfg: C.ExperimentConfig, study_name: str, storage_obj, direction: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:  # exactly one of several workers starting together creates the study (issue 8)
        study = optuna.create_study(study_name=study_name, storage=storage_obj, direction=direction)
        study.set_user_attr("nbnet.creator", f"{socket.gethostname()}:{os.getpid()}")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage_obj)
    attrs = study.user_attrs
    if study.direction.name.lower() != direction:
        raise NbnetError(f"study {study_name!r} was created to {study.direction.name.lower()} and this sweep wants to "
                         f"{direction}; pick another --study name")
    for key, mine in (("nbnet.metric", cfg.search.metric), ("nbnet.experiment", cfg.name)):
        theirs = attrs.get(key)
        if theirs is not None and theirs != mine:
            raise NbnetError(f"study {study_name!r} belongs to {key.split('.')[1]} {theirs!r}, not {mine!r}; "
                             f"pick another --study name")
    if attrs.get("nbnet.space") not in (None, json.dumps(C.to_dict(cfg)["search"]["space"], sort_keys=True)):
        print(f"note: the search space differs from the one study {study_name!r} started with; "
              "the sampler treats changed parameters as new", file=sys.stderr)
    return study


def run_sweep(cfg: C.ExperimentConfig, *, trials: int | None = None, workers: int = 1, study_name: str | None = None,
              storage: str | None = None, sampler: str | None = None, pruner: str | None = None,
              uri: str | None = None, register: bool = True, quiet: bool = False) -> SweepResult:
    """Run (or resume) the study ``study_name`` (default: the experiment's name) until it has
    ``trials`` (default ``search.n_trials``) finished trials. See the module docstring."""
    overrides = {}
    if trials is not None:
        overrides["n_trials"] = int(trials)
    if sampler is not None:
        overrides["sampler"] = sampler
    if pruner is not None:
        overrides["pruner"] = pruner
    if overrides:
        cfg = C.apply_overrides(cfg, [f"search.{k}={v!r}" for k, v in overrides.items()])
    workers = int(workers)
    if workers < 1:
        raise NbnetError(f"--workers must be at least 1, got {workers}")
    if cfg.train.n_threads is None:  # split the cores between the workers (the thread budget)
        from nbnet.kernels.threads import default_threads

        cfg = C.with_values(cfg, {"train.n_threads": max(1, default_threads() // workers)})
    study_name = study_name or cfg.name
    storage = storage or default_storage(study_name)
    direction = cfg.direction()
    t_start = time.perf_counter()
    data = prepare_data(cfg)  # fail fast on bad data, before any store or run is created
    if cfg.search.sampler == "grid":
        grid_space(cfg.search.space)
    make_sampler(cfg.search.sampler, cfg.search.space, seed=0, n_startup_trials=1)  # missing packages → error now
    uri = uri or tracking.default_tracking_uri()

    storage_obj = open_storage(storage, uri=uri)
    study = _open_study(cfg, study_name, storage_obj, direction)
    exp_id = tracking.ensure_experiment(cfg.name, uri)
    n_stale = fail_stale_trials(study, storage_obj, uri)
    if "://" in storage:  # RDB (issue 8): fail and retry now the trials whose heartbeat stopped, on any machine
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

    parent = study.user_attrs.get("nbnet.parent_run_id")
    if not parent and "://" in storage and study.user_attrs.get("nbnet.creator") != f"{socket.gethostname()}:{os.getpid()}":
        parent = _await_parent_run(study)  # another worker created the study just now: share its parent run
    c = tracking.client(uri)
    if parent:
        try:
            c.update_run(parent, status="RUNNING")
        except Exception:
            parent = None  # the tracking store was reset: start a new parent run
    if not parent:
        tags = tracking.standard_tags(data_hash=data.hash, seed=cfg.train.seed, study=study_name)
        tags.update({"nbnet.kind": "sweep", "optuna.storage": _storage_label(storage), "optuna.sampler": cfg.search.sampler,
                     "optuna.pruner": cfg.search.pruner, "optuna.direction": direction})
        parent = tracking.start_run(exp_id, run_name=f"sweep-{study_name}", tags=tags, params=C.to_flat_dict(cfg), uri=uri)
        for k, v in (("nbnet.parent_run_id", parent), ("nbnet.metric", cfg.search.metric), ("nbnet.experiment", cfg.name),
                     ("nbnet.tracking_uri", uri), ("nbnet.space", json.dumps(C.to_dict(cfg)["search"]["space"], sort_keys=True))):
            study.set_user_attr(k, v)
    elif "://" not in storage and not _live_running(study):  # nobody else works on this study: RUNNING child runs are orphans
        # (an RDB study is shared by machines whose processes this one cannot see; heartbeats close dead trials' runs)
        tracking.repair_stale_runs(exp_id, parent_run_id=parent, uri=uri)

    counts = _counts(study)
    done = counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"]
    remaining = max(0, cfg.search.n_trials - done - counts["RUNNING"])
    n_existing = len(study.trials)
    if not quiet:
        print(f"sweep {cfg.name}: study {study_name!r} ({_storage_label(storage)}), {cfg.search.n_trials} trials "
              f"({done} done, {remaining} to run{f', {n_stale} stale retried' if n_stale else ''}), "
              f"{workers} worker{'s' if workers > 1 else ''}, sampler {cfg.search.sampler}, pruner {cfg.search.pruner}, "
              f"{cfg.search.metric} ({direction}); MLflow run {parent}", flush=True)
    status = "FAILED"
    result = SweepResult(cfg.name, study_name, storage, cfg.search.metric, direction, parent)
    try:
        if remaining:
            payload = {"config": C.to_dict(cfg), "name": cfg.name, "study": study_name, "storage": storage, "uri": uri,
                       "experiment_id": exp_id, "parent_run_id": parent, "seed": (cfg.train.seed * 1_000_003 + n_existing) % 2**31,
                       "max_total": cfg.search.n_trials + counts["STALE"], "quiet": quiet, "workers": workers}
            tickets = mp.get_context("spawn").Value("i", remaining)
            # the first Ctrl-C / SIGTERM stops every worker at its next epoch boundary (nbnet.interrupt)
            shared = _SharedData() if workers > 1 else None  # the prepared data, for spawned workers
            payload["shared"] = shared.payload() if shared else None
            try:
                with interrupt.graceful(mp.get_context("spawn").Event()) as stop, resources.SystemMetrics(parent, uri=uri):
                    codes = _run_workers(payload, workers, tickets, stop, share=shared and (lambda: shared.write(cfg, data)))
                    if interrupt.requested():
                        raise interrupt.Interrupted()
            finally:
                if shared:
                    shared.close()
            bad = [c for c in codes if c != 0]
            if bad:
                how = "; ".join(f"killed by signal {-c}" if c < 0 else f"exit code {c}" for c in bad)
                raise NbnetError(f"{len(bad)} of {workers} sweep workers died ({how}); run the same command again "
                                 "to finish the study")
        study = optuna_load(study_name, storage_obj)
        _finish(result, cfg, study, exp_id, parent, uri, register, n_existing)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        result.seconds = time.perf_counter() - t_start
        with contextlib.suppress(Exception):
            tracking.end_run(parent, status, uri=uri)
    return result


def _live_running(study) -> bool:
    import optuna

    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def optuna_load(study_name: str, storage_obj):
    import optuna

    return optuna.load_study(study_name=study_name, storage=storage_obj)


def _best_first(study, direction: str) -> list:
    done = [t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
    done.sort(key=lambda t: t.value, reverse=direction == "maximize")
    rest = [t for t in study.trials if t not in done]
    return done + rest


def _finish(result: SweepResult, cfg, study, exp_id: str, parent: str, uri: str, register: bool, n_before: int) -> None:
    """Fill ``result``; log the parent run's summary, figures and trials table; register the best."""
    counts = _counts(study)
    result.n_complete, result.n_pruned, result.n_failed = counts["COMPLETE"], counts["PRUNED"], counts["FAIL"] + counts["STALE"]
    result.n_run = len(study.trials) - n_before
    result.trials = _best_first(study, result.direction)
    best = result.trials[0] if result.trials and result.trials[0].state.name == "COMPLETE" else None
    clock = _Clock()
    with clock():
        sums = _child_cost_sums(exp_id, parent, uri, study)
        metrics = {f"sum_{k}": v for k, v in sums.items()}
        metrics.update({"n_complete": result.n_complete, "n_pruned": result.n_pruned, "n_failed": result.n_failed})
        if best is not None:
            result.best_trial, result.best_value = best.number, float(best.value)
            result.best_params = dict(best.params)
            result.best_run_id = best.user_attrs.get("mlflow_run_id")
            metrics[f"best_{cfg.search.metric}"] = result.best_value
            tags = {"best.trial": best.number, "best.run_id": result.best_run_id}
            tags.update({f"best.{k}": v for k, v in best.params.items()})
            tracking.set_tags(parent, tags, uri=uri)
        tracking.log_metrics(parent, metrics, step=len(study.trials), uri=uri)
        _log_study_artifacts(parent, study, uri)
        if register and best is not None and result.best_run_id:
            version, promoted = _register_once(cfg, result, uri)
            result.model_uri = f"models:/{cfg.name}/{version}"
            result.champion = promoted
            result.champion_uri = f"models:/{cfg.name}@{tracking.CHAMPION}"
            tracking.set_tags(parent, {"registered_model": result.model_uri, "registered_champion": str(promoted).lower()}, uri=uri)
            study.set_user_attr("nbnet.registered", result.model_uri)
    tracking.log_metrics(parent, {"sweep_tracking_seconds": clock.seconds}, step=len(study.trials), uri=uri)


def _child_cost_sums(exp_id: str, parent: str, uri: str, study=None) -> dict:
    """The trials' cost metrics summed: from the study's ``costs`` user attributes when every
    finished trial has them (one read of the study), else from the child runs (every run read
    back from the store: ~20 ms a run)."""
    sums = dict.fromkeys(COST_KEYS, 0.0)
    done = [t for t in study.trials if t.state.is_finished()] if study is not None else None
    if done is not None and all("costs" in t.user_attrs for t in done):
        for t in done:
            for k in COST_KEYS:
                v = t.user_attrs["costs"].get(k)
                if v is not None and math.isfinite(v):
                    sums[k] += v
        return sums
    c = tracking.client(uri)
    token = None
    while True:
        page = c.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=1000, page_token=token)
        for r in page:
            for k in COST_KEYS:
                v = r.data.metrics.get(k)
                if v is not None and math.isfinite(v):
                    sums[k] += v
        token = page.token
        if not token:
            break
    return sums


def param_importances(study, bins: int = 4) -> dict[str, float]:
    """Each parameter's share of the variance of the finished trials' objective values that its
    value alone explains (the correlation ratio η², first-order as in fANOVA's main effects, on the
    trials themselves rather than a fitted forest): trials grouped by choice (categorical), by
    value (numbers taking at most ``bins`` values) or by ``bins`` quantile bins (other numbers,
    log-scaled ones by their logarithm). Normalised to sum to 1,
    largest first; empty with fewer than 3 finished trials or no variance. Microseconds, where
    ``optuna.importance`` imports scikit-learn's forests (~0.7 s) at the end of every sweep."""
    from optuna.distributions import CategoricalDistribution

    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None
            and math.isfinite(t.value)]
    y = np.array([t.value for t in done], float)
    if len(done) < 3 or not y.var() > 0:
        return {}
    out = {}
    for name in sorted({k for t in done for k in t.params}):
        rows = [i for i, t in enumerate(done) if name in t.params]
        dist = done[rows[0]].distributions[name]
        vals = [done[i].params[name] for i in rows]
        if isinstance(dist, CategoricalDistribution):
            groups = np.unique([dist.choices.index(v) for v in vals], return_inverse=True)[1]
        else:
            v = np.array(vals, float)
            v = np.log(v) if getattr(dist, "log", False) else v
            if len(np.unique(v)) <= bins:  # e.g. an int range of a few values: one group per value
                groups = np.unique(v, return_inverse=True)[1]
            else:
                edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1]))
                groups = np.searchsorted(edges, v, side="right")
        yy = y[rows]
        between = sum(len(g) * (g.mean() - y.mean()) ** 2 for g in (yy[groups == k] for k in np.unique(groups)))
        out[name] = between / (len(y) * y.var())
    total = sum(out.values())
    if not total > 0:
        return {}
    return dict(sorted(((k, float(v / total)) for k, v in out.items()), key=lambda kv: -kv[1]))


def _log_study_artifacts(parent: str, study, uri: str) -> None:
    """trials.csv and the study's figures (:func:`nbnet.viz.study_pngs`: optimisation history,
    parameter importances (:func:`param_importances`), parallel coordinates, intermediate values)
    on the parent run, in one upload."""
    from nbnet import viz

    with tempfile.TemporaryDirectory(prefix="nbnet-study-") as tmp:
        study.trials_dataframe().to_csv(Path(tmp, "trials.csv"), index=False)
        for name, png in viz.study_pngs(study, importances=param_importances(study)).items():
            Path(tmp, f"{name}.png").write_bytes(png)
        tracking.log_artifact(parent, tmp, "study", uri=uri)


# --- best / rerun -----------------------------------------------------------------------------
def list_studies(root: Path | None = None) -> list[tuple[str, Path]]:
    """(study name, journal file) of the default journal storages, newest first."""
    folder = Path(root or Path.cwd()) / "mlruns" / "optuna"
    files = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    return [(f.stem, f) for f in files]


def best(study_name: str | None = None, storage: str | None = None) -> dict:
    """The best trial of a study: number, value, metric, params, run id and model URIs."""
    if study_name is None:
        studies = list_studies()
        if not studies:
            raise NbnetError("no sweep found under mlruns/optuna; run nbnet sweep EXPERIMENT first (or pass --study/--storage)")
        study_name = studies[0][0]
    storage = storage or default_storage(study_name)
    if "://" not in storage and not Path(storage.removeprefix("journal:")).is_file():
        raise NbnetError(f"no study {study_name!r} at {_storage_label(storage)}; run nbnet sweep first or pass --storage")
    try:
        study = optuna_load(study_name, open_storage(storage))
    except KeyError:
        raise NbnetError(f"no study {study_name!r} in {_storage_label(storage)}; check --study") from None
    a = study.user_attrs
    direction = study.direction.name.lower()
    done = _best_first(study, direction)
    if not done or done[0].state.name != "COMPLETE":
        raise NbnetError(f"study {study_name!r} has no completed trial yet ({len(study.trials)} trials)")
    t = done[0]
    run_id = t.user_attrs.get("mlflow_run_id")
    return {"study": study_name, "experiment": a.get("nbnet.experiment"), "metric": a.get("nbnet.metric", "value"),
            "direction": direction, "trial": t.number, "value": t.value, "params": dict(t.params), "run_id": run_id,
            "model_uri": f"runs:/{run_id}/{tracking.MODEL_NAME}" if run_id else None,
            "registered": a.get("nbnet.registered"),
            "champion_uri": f"models:/{a['nbnet.experiment']}@{tracking.CHAMPION}" if a.get("nbnet.registered") else None,
            "n_trials": len(study.trials)}


def _run_config(run_id: str, uri: str) -> C.ExperimentConfig:
    c = tracking.client(uri)
    with tempfile.TemporaryDirectory(prefix="nbnet-rerun-") as tmp:
        try:
            path = c.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        except Exception:
            raise NbnetError(f"run {run_id} has no {CONFIG_ARTIFACT}; only runs made by nbnet train/sweep can be rerun") from None
        raw = json.loads(Path(path).read_text())
    return C.from_dict(raw, raw.get("name", "experiment"))


def rerun(run_id: str, *, uri: str | None = None, quiet: bool = False) -> dict:
    """Retrain run ``run_id`` from its recorded config and seed as a new run (tag
    ``nbnet.rerun_of``), refusing if the data's hash changed. Compares the new weights with the
    original model's, bit for bit, and the per-epoch loss history."""
    if uri is None and not os.environ.get("MLFLOW_TRACKING_URI") and not (Path.cwd() / "mlruns" / "mlflow.db").is_file():
        raise NbnetError(f"no tracking store here ({Path.cwd() / 'mlruns'}); run nbnet rerun from the project folder "
                         "or set MLFLOW_TRACKING_URI")
    uri = uri or tracking.default_tracking_uri()
    c = tracking.client(uri)
    try:
        orig = c.get_run(run_id)
    except Exception:
        raise NbnetError(f"run {run_id!r} not found in {uri}; check the id (nbnet best prints it)") from None
    cfg = _run_config(run_id, uri)
    _DATA_CACHE.clear()
    data = prepare_data(cfg)
    recorded = orig.data.tags.get("nbnet.data_hash")
    if recorded and recorded != data.hash:
        raise NbnetError(f"the data changed since run {run_id[:12]} (hash {recorded[:12]}… then, {data.hash[:12]}… now); "
                         f"restore {cfg.data.source} or train a new run with nbnet train")
    tags = tracking.standard_tags(data_hash=data.hash, seed=cfg.train.seed)
    tags.update({"nbnet.kind": "rerun", "nbnet.rerun_of": run_id})
    new = tracking.start_run(orig.info.experiment_id, run_name=f"rerun-{orig.info.run_name or run_id[:8]}", tags=tags,
                             params=C.to_flat_dict(cfg), uri=uri)
    status = "FAILED"
    try:
        est, metrics = train_once(cfg, run_id=new, uri=uri, data=data)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.end_run(new, status, uri=uri)
    report = {"run_id": new, "rerun_of": run_id, "metric": cfg.search.metric,
              "value": metrics.get(cfg.search.metric), "original_value": orig.data.metrics.get(cfg.search.metric)}
    history = [m.value for m in sorted(c.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
    k = len(history)
    report["loss_history_identical"] = bool(k) and [float(x) for x in est.history_["loss"][:k]] == history
    report["loss_epochs_compared"] = k
    try:
        old = tracking.load_model(f"runs:/{run_id}/{tracking.MODEL_NAME}")[0]
    except NbnetError:
        old = None
    if old is None:
        report["bit_identical"] = None
        report["note"] = f"run {run_id[:12]} has no model ({orig.info.status}); compared its loss history only"
    else:
        a, b = old.get_weights(), est.get_weights()
        same = len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b))
        report["bit_identical"] = same
        if not same and len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b)):
            report["max_abs_diff"] = float(max(np.max(np.abs(x.astype(np.float64) - y)) for x, y in zip(a, b)))
    tracking.set_tags(new, {"nbnet.bit_identical": str(report["bit_identical"]).lower()}, uri=uri)
    return report


def train_run(cfg: C.ExperimentConfig, *, uri: str | None = None, register: bool = False, run_name: str = "train",
              checkpoint_every: int | None = None) -> dict:
    """One tracked training run with the config's fixed values (``nbnet train``). With
    ``register``, the model is registered under the experiment's name and becomes champion
    only if it beats the current one on ``search.metric``.

    With ``checkpoint_every``, the fit writes an atomic checkpoint every that many epochs
    (:mod:`nbnet.checkpoint`, under mlruns/checkpoints). Re-running the same command after a
    crash resumes from it with the same final weights; the dead run is marked KILLED and the new
    one carries the whole per-epoch history (the restored epochs are replayed to it)."""
    data = prepare_data(cfg)  # bad data fails before any store or run is created
    uri = uri or tracking.default_tracking_uri()
    exp_id = tracking.ensure_experiment(cfg.name, uri)
    tags = tracking.standard_tags(data_hash=data.hash, seed=cfg.train.seed)
    tags["nbnet.kind"] = "train"
    ck = prev = None
    if checkpoint_every is not None:
        from nbnet.nn import checkpoint

        ck_path = checkpoint.config_checkpoint_path(cfg.name, C.to_dict(cfg), data.hash)
        prev = checkpoint.peek(ck_path)  # left by a killed `nbnet train` of this same config
        if prev:
            tags.update({"nbnet.resumed_from_run": str((prev.get("extra") or {}).get("run_id")),
                         "nbnet.resumed_from_epoch": str(prev.get("epoch"))})
    run_id = tracking.start_run(exp_id, run_name=run_name, tags=tags, params=C.to_flat_dict(cfg), uri=uri)
    dead = (prev.get("extra") or {}).get("run_id") if prev else None
    if dead:
        with contextlib.suppress(Exception):  # the killed process could not close its run
            if tracking.client(uri).get_run(dead).info.status == "RUNNING":
                tracking.end_run(dead, "KILLED", uri=uri)
    if checkpoint_every is not None:
        ck = checkpoint.Checkpoint(ck_path, every=checkpoint_every, fingerprint=data.hash, extra={"run_id": run_id})
    with tracking.closing(run_id, uri):
        # Ctrl-C / SIGTERM: stop at the next epoch boundary, run KILLED; system metrics sampled meanwhile
        with interrupt.graceful(), resources.SystemMetrics(run_id, uri=uri):
            est, metrics = train_once(cfg, run_id=run_id, uri=uri, data=data,
                                      callbacks=([ck] if ck else []) + [interrupt.check])
        if ck is not None and ck.resumed_from_epoch:
            with tracking.MetricLogger(run_id, uri=uri) as replay:
                for epoch, logs in checkpoint.history_logs(est, ck.resumed_from_epoch):
                    replay(epoch, logs)
    out = {"run_id": run_id, "experiment_id": exp_id, "metrics": metrics, "model_uri": f"runs:/{run_id}/{tracking.MODEL_NAME}",
           "registered": None, "champion": False, "resumed_from_epoch": ck.resumed_from_epoch if ck is not None else 0}
    if register:
        version, promoted = tracking.register_champion(cfg.name, run_id, cfg.search.metric, cfg.direction(), uri=uri)
        out["registered"], out["champion"] = f"models:/{cfg.name}/{version}", promoted
    return out


__all__ = ["run_sweep", "train_once", "train_run", "rerun", "best", "SweepResult", "prepare_data", "evaluate",
           "make_sampler", "make_pruner", "open_storage", "default_storage", "fail_stale_trials", "suggest"]
