"""MLflow tracking: runs, batched metrics, tags, artifacts, the pyfunc model and the registry.

Everything goes through an explicit :class:`mlflow.MlflowClient` and explicit run ids; the fluent
"active run" (per thread, per process) is never used, so nested trial runs stay parented when they
are created by worker threads or processes. Runs are always closed with their real status
(``FINISHED``, ``FAILED``, ``KILLED``); :func:`repair_stale_runs` closes those a killed process
left ``RUNNING``.

The default store is embedded and needs no server: ``sqlite:///<project>/mlruns/mlflow.db`` with
artifacts under ``<project>/mlruns/artifacts``; ``MLFLOW_TRACKING_URI`` overrides it.

Example
-------
>>> exp = ensure_experiment("digits")                              # doctest: +SKIP
>>> parent = start_run(exp, run_name="sweep", params={"model.epochs": 20})  # doctest: +SKIP
>>> child = start_run(exp, run_name="trial-0", parent_run_id=parent)        # doctest: +SKIP
>>> log = MetricLogger(child)                                      # doctest: +SKIP
>>> clf.fit(X, y, callbacks=[log]); log.flush()                    # doctest: +SKIP
>>> log_model(child, clf, X[:5]); end_run(child, "FINISHED")       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import json
import numbers
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import mlflow
import mlflow.pyfunc
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from .errors import NbnetError

MODEL_NAME = "model"  # artifact name of the pyfunc model in a run: runs:/<run_id>/model
MODEL_FILE = "model.nbnet"  # the nbnet file inside the pyfunc model's artifacts/
CHAMPION = "champion"
STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow's limits (mlflow.utils.validation); values beyond them are truncated, not rejected.
_MAX_PARAM_VAL = 6000
_MAX_TAG_VAL = 8000
_MAX_KEY = 250
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000

_PYFUNC_CODE = Path(__file__).with_name("_pyfunc_model.py")


# --- store ---------------------------------------------------------------------------------------
def default_tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root or cwd>/mlruns/mlflow.db``.

    The mlruns/ folder is created when the default is used.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    store = Path(root or Path.cwd()).resolve() / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///"):]).split("?", 1)[0])


def artifact_root(uri: str | None = None) -> str | None:
    """Where experiments created by nbnet keep artifacts: ``<folder of the sqlite db>/artifacts``
    for a SQLite store (so the store is one self-contained folder), None (the server's default)
    for anything else."""
    db = _sqlite_path(uri or default_tracking_uri())
    return None if db is None else str(db.parent / "artifacts")


@functools.lru_cache(maxsize=8)
def _client(uri: str) -> mlflow.MlflowClient:
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def client(uri: str | None = None) -> mlflow.MlflowClient:
    """A (cached) client for ``uri`` (default: :func:`default_tracking_uri`), tracking and registry."""
    return _client(uri or default_tracking_uri())


_URI_LOCK = threading.RLock()


@contextlib.contextmanager
def _global_uri(uri: str):
    """Point MLflow's module-level tracking/registry URI at ``uri`` for the few MLflow helpers that
    only read it (model logging, registration, downloads), then restore it exactly, environment
    variables included (``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI``). The
    active-run state is not touched."""
    from mlflow.tracking._model_registry import utils as rutils
    from mlflow.tracking._tracking_service import utils as tutils

    env_keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    with _URI_LOCK:
        saved = (tutils._tracking_uri, rutils._registry_uri, {k: os.environ.get(k) for k in env_keys})
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            tutils._tracking_uri, rutils._registry_uri, env = saved
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def ensure_experiment(name: str, uri: str | None = None) -> str:
    """The id of experiment ``name``, created if missing (safe when several processes race).

    A deleted experiment of that name is restored rather than shadowed.
    """
    uri = uri or default_tracking_uri()
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        loc = artifact_root(uri)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "experiment"
        try:
            return c.create_experiment(name, artifact_location=None if loc is None else Path(loc, slug).as_uri())
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = c.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return exp.experiment_id


# --- runs ----------------------------------------------------------------------------------------
def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """``{"model": {"hidden": [64]}}`` → ``{"model.hidden": [64]}``; lists and scalars are leaves."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _param_value(v) -> str:
    if isinstance(v, tuple):
        v = list(v)
    if isinstance(v, np.generic):
        v = v.item()
    s = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)
    return s if len(s) <= _MAX_PARAM_VAL else s[: _MAX_PARAM_VAL - 3] + "..."


def _tag_value(v) -> str:
    s = str(v)
    return s if len(s) <= _MAX_TAG_VAL else s[: _MAX_TAG_VAL - 3] + "..."


def _key(k) -> str:
    return str(k)[:_MAX_KEY]


def _retrying(fn, *args, attempts: int = 5, **kwargs):
    """Call ``fn``; retry transient store errors (PostgreSQL deadlocks — mlflow issue 24923 —,
    SQLite "database is locked", dropped connections) with a short exponential back-off."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MlflowException wraps the driver's error text
            msg = str(e).lower()
            transient = any(s in msg for s in ("deadlock", "database is locked", "could not serialize",
                                                "connection reset", "connection refused", "timed out",
                                                "temporarily unavailable", "503", "429"))
            if not transient or i == attempts - 1:
                raise
            time.sleep(0.05 * 2**i)  # back-off before retrying a transient store error


def _log_params(c: mlflow.MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(_key(k), _param_value(v)) for k, v in flatten(params).items()]
    for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        _retrying(c.log_batch, run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])


def start_run(experiment_id: str, *, run_name: str, parent_run_id: str | None = None,
              tags: dict | None = None, params: dict | None = None, uri: str | None = None) -> str:
    """Create a run (nested under ``parent_run_id`` if given) and return its id.

    ``params`` may be nested dicts (flattened as ``model.hidden_layer_sizes``); values are
    str()'d (lists as JSON) and truncated to MLflow's limits. The run also records the host and
    pid that own it, so :func:`repair_stale_runs` can tell a live run from an orphan.
    """
    c = client(uri)
    all_tags = {"nbnet.host": socket.gethostname(), "nbnet.pid": str(os.getpid())}
    all_tags.update(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags = {_key(k): _tag_value(v) for k, v in all_tags.items()}
    run = _retrying(c.create_run, experiment_id, tags=all_tags, run_name=run_name)
    run_id = run.info.run_id
    if params:
        try:
            _log_params(c, run_id, params)
        except BaseException:
            c.set_terminated(run_id, "FAILED")
            raise
    return run_id


def end_run(run_id: str, status: str = "FINISHED", uri: str | None = None) -> None:
    """Close a run with ``status`` (FINISHED, FAILED or KILLED)."""
    if status not in STATUSES:
        raise NbnetError(f"run status must be one of {', '.join(STATUSES)}, got {status!r}")
    _retrying(client(uri).set_terminated, run_id, status)


@contextlib.contextmanager
def run(experiment_id: str, *, run_name: str, parent_run_id: str | None = None, tags=None,
        params=None, uri: str | None = None):
    """``with run(...) as run_id:`` — FINISHED on success, KILLED on Ctrl-C, FAILED otherwise."""
    run_id = start_run(experiment_id, run_name=run_name, parent_run_id=parent_run_id, tags=tags,
                       params=params, uri=uri)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        end_run(run_id, status, uri=uri)


def set_tags(run_id: str, tags: dict, uri: str | None = None) -> None:
    items = [RunTag(_key(k), _tag_value(v)) for k, v in tags.items()]
    c = client(uri)
    for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        _retrying(c.log_batch, run_id, tags=items[i : i + _MAX_PARAMS_PER_BATCH])


def log_params(run_id: str, params: dict, uri: str | None = None) -> None:
    _log_params(client(uri), run_id, params)


def log_metrics(run_id: str, metrics: dict, step: int = 0, uri: str | None = None) -> None:
    """Log every numeric value of ``metrics`` at ``step`` in one batch."""
    with MetricLogger(run_id, uri=uri) as m:
        for k, v in metrics.items():
            m.log(k, v, step)


def repair_stale_runs(experiment_id: str, parent_run_id: str | None = None, uri: str | None = None) -> int:
    """Mark runs left RUNNING by a dead process as KILLED; returns how many were repaired.

    With ``parent_run_id`` only that run's children are considered. A run whose recorded owner
    process is still alive on this host is left alone.
    """
    c = client(uri)
    flt = "attributes.status = 'RUNNING'"
    if parent_run_id:
        flt += f" and tags.mlflow.parentRunId = '{parent_run_id}'"
    host = socket.gethostname()
    n = 0
    token = None
    stale = []
    while True:
        page = c.search_runs([experiment_id], filter_string=flt, max_results=1000, page_token=token)
        stale.extend(page)
        token = page.token
        if not token:
            break
    for r in stale:
        t = r.data.tags
        if t.get("nbnet.host") == host and _pid_alive(t.get("nbnet.pid")):
            continue
        c.set_tag(r.info.run_id, "nbnet.repaired", "left RUNNING by a dead process; marked KILLED")
        c.set_terminated(r.info.run_id, "KILLED")
        n += 1
    return n


def _pid_alive(pid) -> bool:
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- metrics -------------------------------------------------------------------------------------
class MetricLogger:
    """Buffers metrics and sends them with one ``log_batch`` per flush.

    Use it as a training callback: ``logger(epoch, logs)`` records every numeric value of
    ``logs`` at ``step=epoch`` and flushes every ``flush_every`` epochs; call :meth:`flush` (or use
    ``with MetricLogger(...) as logger:``) at the end. ``seconds`` is the wall time spent in
    MLflow calls, for cost accounting.
    """

    def __init__(self, run_id: str, uri: str | None = None, flush_every: int = 20):
        self.run_id = run_id
        self.uri = uri
        self.flush_every = max(1, int(flush_every))
        self.seconds = 0.0
        self._buf: list[Metric] = []
        self._calls = 0

    def log(self, key: str, value, step: int = 0) -> None:
        """Buffer one value (non-numeric values are ignored)."""
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
            return
        self._buf.append(Metric(_key(key), float(value), int(time.time() * 1000), int(step)))
        if len(self._buf) >= _MAX_METRICS_PER_BATCH:
            self.flush()

    def __call__(self, epoch: int, logs: dict) -> None:
        for k, v in logs.items():
            self.log(k, v, epoch)
        self._calls += 1
        if self._calls % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        t = time.perf_counter()
        try:
            c = client(self.uri)
            while self._buf:
                batch = self._buf[:_MAX_METRICS_PER_BATCH]
                _retrying(c.log_batch, self.run_id, metrics=batch)
                del self._buf[: len(batch)]
        finally:
            self.seconds += time.perf_counter() - t

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.flush()
        return False


# --- tags ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _git_info() -> dict:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return {}
        info = {"mlflow.source.git.commit": out.stdout.strip()}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        if dirty.returncode == 0:
            info["nbnet.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
        return info
    except (OSError, subprocess.SubprocessError):
        return {}


def standard_tags(*, data_hash=None, seed=None, trial=None, study=None) -> dict:
    """Tags for every run: git commit (if nbnet runs from a checkout), nbnet/numba/numpy/mlflow
    versions, and the given data hash, seed, Optuna trial number and study name."""
    import numba

    from . import __version__

    tags = dict(_git_info())
    tags.update({"nbnet.version": __version__, "numba.version": numba.__version__,
                 "numpy.version": np.__version__, "mlflow.version": mlflow.__version__})
    for k, v in (("nbnet.data_hash", data_hash), ("nbnet.seed", seed), ("optuna.trial", trial),
                 ("optuna.study", study)):
        if v is not None:
            tags[k] = str(v)
    return tags


# --- artifacts -----------------------------------------------------------------------------------
def log_artifact(run_id: str, path, artifact_path: str | None = None, uri: str | None = None) -> None:
    """Upload a local file or folder into the run's artifacts (under ``artifact_path``)."""
    path = Path(path)
    c = client(uri)
    if path.is_dir():
        _retrying(c.log_artifacts, run_id, str(path), artifact_path)
    elif path.is_file():
        _retrying(c.log_artifact, run_id, str(path), artifact_path)
    else:
        raise NbnetError(f"artifact {str(path)!r} not found; check the path")


def log_figure(run_id: str, fig_or_path, artifact_path: str, uri: str | None = None) -> None:
    """Store a matplotlib/plotly figure, or an existing image/HTML file, as ``artifact_path``
    (a file path inside the run's artifacts, e.g. ``plots/learning_curve.png``)."""
    if isinstance(fig_or_path, (str, os.PathLike)):
        src = Path(fig_or_path)
        if not src.is_file():
            raise NbnetError(f"figure file {str(src)!r} not found; check the path")
        folder, name = os.path.split(artifact_path)
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp, name or src.name)
            shutil.copyfile(src, dst)
            _retrying(client(uri).log_artifact, run_id, str(dst), folder or None)
    else:
        _retrying(client(uri).log_figure, run_id, fig_or_path, artifact_path)


def log_dict(run_id: str, data: dict, artifact_file: str, uri: str | None = None) -> None:
    """Store ``data`` as JSON (or YAML by extension) at ``artifact_file`` in the run's artifacts."""
    _retrying(client(uri).log_dict, run_id, data, artifact_file)


def log_text(run_id: str, text: str, artifact_file: str, uri: str | None = None) -> None:
    _retrying(client(uri).log_text, run_id, text, artifact_file)
