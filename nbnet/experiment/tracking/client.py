"""The MLflow store: its URI, a cached client, experiments, retries, and MLflow's size limits.

The default store is embedded and needs no server: ``sqlite:///<project>/mlruns/mlflow.db`` with
artifacts under ``<project>/mlruns/artifacts``; ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from nbnet.errors import StoreError
from nbnet.experiment import tags as T

# MLflow's limits (mlflow.utils.validation); values beyond them are truncated, not rejected.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_PER_BATCH = 100  # also tags per batch
MAX_METRICS_PER_BATCH = 1000


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
def quiet():
    """No artifact progress bars: they would garble ``nbnet predict``'s own."""
    with _URI_LOCK:
        old = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            else:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = old


@contextlib.contextmanager
def global_uri(uri: str):
    """Point MLflow's module-level tracking/registry URI at ``uri`` for the few MLflow helpers that
    only read it (model logging, registration, downloads), then restore it exactly, environment
    variables included (``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI``). The
    active-run state is not touched."""
    env_keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    with _URI_LOCK:
        saved = (tracking_utils._tracking_uri, registry_utils._registry_uri, {k: os.environ.get(k) for k in env_keys})
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            tracking_utils._tracking_uri, registry_utils._registry_uri, env = saved
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
            return c.create_experiment(name, artifact_location=None if loc is None else Path(loc, slug).as_uri(),
                                       tags={T.MLFLOW_EXPERIMENT_KIND: "custom_model_development"})
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = c.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def store_error(what: str, uri: str, e: Exception) -> StoreError:
    """A one-line :class:`StoreError`: ``what`` failed on store ``uri``, and MLflow's first line why."""
    why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    return StoreError(f"{what} failed on the tracking store {uri}: {why}; check the store and run the command again")


def not_found(e: Exception) -> bool:
    """Whether MLflow answered that what was asked for does not exist (a user's wrong id or name),
    as opposed to failing to answer at all (a store failure)."""
    return isinstance(e, MlflowException) and e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


_TRANSIENT = ("deadlock", "database is locked", "could not serialize", "connection reset",
              "server closed the connection unexpectedly")


def retrying(fn, *args, attempts: int = 5, **kwargs):
    """Call ``fn``; retry transient database errors (PostgreSQL deadlocks between concurrent
    ``log_batch`` calls, mlflow/mlflow#24923; SQLite "database is locked"; a dropped connection)
    with a short exponential back-off. MLflow's REST client already retries HTTP 429/5xx itself."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MlflowException wraps the driver's error text
            msg = str(e).lower()
            if i == attempts - 1 or not any(s in msg for s in _TRANSIENT):
                raise
            time.sleep(0.05 * 2**i)  # back-off before retrying a transient store error


# --- values as MLflow stores them ------------------------------------------------------------------
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


def param_value(v) -> str:
    """A param value as MLflow stores it: str()'d (lists, dicts, bools and None as JSON),
    truncated to MLflow's limit."""
    if isinstance(v, tuple):
        v = list(v)
    if isinstance(v, np.generic):
        v = v.item()
    s = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)
    return s if len(s) <= MAX_PARAM_VALUE else s[: MAX_PARAM_VALUE - 3] + "..."


def tag_value(v) -> str:
    """A tag value as MLflow stores it: str()'d, truncated to MLflow's limit."""
    s = str(v)
    return s if len(s) <= MAX_TAG_VALUE else s[: MAX_TAG_VALUE - 3] + "..."


def truncated_key(k) -> str:
    """A param, tag or metric key cut to MLflow's limit."""
    return str(k)[:MAX_KEY]
