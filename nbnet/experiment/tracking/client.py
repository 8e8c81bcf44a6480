"""The MLflow store: its URI, a cached client, experiments, retries, and MLflow's size limits.

The default store is MLflow's own: ``sqlite:///<project>/mlflow.db`` (what ``mlflow ui``,
``mlflow models …``, ``mlflow runs …`` and ``mlflow.search_runs()`` open when no URI is set), with
the artifacts of nbnet's experiments under ``<project>/mlruns/artifacts``. ``MLFLOW_TRACKING_URI``
or an explicit URI overrides it (:func:`resolve_tracking_uri`). A store an earlier nbnet wrote to
``mlruns/mlflow.db`` keeps being used, with a one-line notice saying how to move it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from nbnet._sys.environ import environ
from nbnet.errors import NbnetError, StoreError
from nbnet.experiment import tags as T

# MLflow's limits (mlflow.utils.validation); values beyond them are truncated, not rejected.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_PER_BATCH = 100  # also tags per batch
MAX_METRICS_PER_BATCH = 1000


STORE_FILE = "mlflow.db"  # MLflow's own default store file, in the project folder
LEGACY_STORE = Path("mlruns", "mlflow.db")  # where nbnet 0.1 kept it (MLflow's tools do not look there)
_NOTICE_ENV = "NBNET_STORE_NOTICE_SHOWN"  # the legacy-store notice is printed once per process tree


def project_store_file(root: Path | None = None) -> Path | None:
    """The MLflow store file of the project folder ``root`` (default: the working directory):
    ``mlruns/mlflow.db`` when an earlier nbnet left one there, else ``mlflow.db`` if it exists,
    else None (no store yet)."""
    folder = Path(root or Path.cwd()).resolve()
    for f in (folder / LEGACY_STORE, folder / STORE_FILE):
        if f.is_file():
            return f
    return None


def _legacy_notice(folder: Path) -> None:
    """One line on stderr, once per process tree: how to move an earlier nbnet's store to where
    MLflow's own tools look (artifact locations are absolute, so moving the file is enough)."""
    if os.environ.get(_NOTICE_ENV):
        return
    os.environ[_NOTICE_ENV] = "1"  # sweep workers and other child processes inherit it
    aside = "mv mlflow.db mlflow.db.bak && " if (folder / STORE_FILE).exists() else ""
    print(f"nbnet: using {folder / LEGACY_STORE} (an earlier nbnet's store); MLflow's own tools read "
          f"./{STORE_FILE}: move it with `cd {folder} && {aside}mv {LEGACY_STORE} {STORE_FILE}`", file=sys.stderr)


def project_tracking_uri(root: Path | None = None) -> str:
    """The project folder's own store: ``sqlite:///<root or cwd>/mlflow.db`` (MLflow's default
    location), or an earlier nbnet's ``mlruns/mlflow.db`` when that exists (with a one-line
    notice). The ``mlruns/`` folder (artifacts, Optuna journals) is created."""
    folder = Path(root or Path.cwd()).resolve()
    (folder / "mlruns").mkdir(parents=True, exist_ok=True)
    if (folder / LEGACY_STORE).is_file():
        _legacy_notice(folder)
        return f"sqlite:///{folder / LEGACY_STORE}"
    return f"sqlite:///{folder / STORE_FILE}"


def resolve_tracking_uri(uri: str | None = None, root: Path | None = None) -> str:
    """The tracking URI in effect: ``uri`` if given, else ``MLFLOW_TRACKING_URI``, else the
    project folder's store (:func:`project_tracking_uri` of ``root``, default the working
    directory). Every nbnet command resolves its store through this function."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or project_tracking_uri(root)


def default_tracking_uri(root: Path | None = None) -> str:
    """:func:`resolve_tracking_uri` with no explicit URI."""
    return resolve_tracking_uri(None, root)


def set_tracking_uri(uri: str) -> str:
    """Make ``uri`` the tracking URI in effect for this process and every process it starts
    (sweep workers, ``mlflow`` servers): it becomes ``MLFLOW_TRACKING_URI``, which
    :func:`resolve_tracking_uri` and MLflow itself read. Returns ``uri``."""
    if not isinstance(uri, str) or not uri.strip():
        raise NbnetError(f"a tracking URI must be a non-empty string like sqlite:///mlflow.db, got {uri!r}")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///"):]).split("?", 1)[0])


def artifact_root(uri: str | None = None) -> str | None:
    """Where experiments created by nbnet keep artifacts for a SQLite store ``<folder>/<file>.db``:
    ``<folder>/mlruns/artifacts`` (beside MLflow's default ``mlflow.db``), or ``<folder>/artifacts``
    when the database itself lies in ``mlruns/`` (an earlier nbnet's layout); None (the server's
    default) for anything else."""
    db = _sqlite_path(uri or default_tracking_uri())
    if db is None:
        return None
    folder = db.parent
    return str((folder if folder.name == "mlruns" else folder / "mlruns") / "artifacts")


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
    with _URI_LOCK, environ(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
        yield


@contextlib.contextmanager
def global_uri(uri: str):
    """Point MLflow's module-level tracking/registry URI at ``uri`` for the few MLflow helpers that
    only read it (model logging, registration, downloads), then restore it exactly, environment
    variables included (``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI``). The
    active-run state is not touched."""
    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}  # restored as they are
    with _URI_LOCK, environ(**env):
        saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            tracking_utils._tracking_uri, registry_utils._registry_uri = saved


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


def retrying(fn, *args, attempts: int = 5, retry_on: tuple[str, ...] = (), **kwargs):
    """Call ``fn``; retry transient database errors (PostgreSQL deadlocks between concurrent
    ``log_batch`` calls, mlflow/mlflow#24923; SQLite "database is locked"; a dropped connection),
    and errors whose text has one of ``retry_on`` (lower case), with a short exponential back-off.
    MLflow's REST client already retries HTTP 429/5xx itself."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MlflowException wraps the driver's error text
            msg = str(e).lower()
            if i == attempts - 1 or not any(s in msg for s in _TRANSIENT + retry_on):
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
