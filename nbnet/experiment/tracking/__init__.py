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

import atexit
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
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from nbnet.errors import NbnetError

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

PYFUNC_CODE = Path(__file__).with_name("model_code.py")


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
            return c.create_experiment(name, artifact_location=None if loc is None else Path(loc, slug).as_uri(),
                                       tags={"mlflow.experimentKind": "custom_model_development"})
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


_TRANSIENT = ("deadlock", "database is locked", "could not serialize", "connection reset",
              "server closed the connection unexpectedly")


def retrying(fn, *args, attempts: int = 5, **kwargs):
    """Call ``fn``; retry transient database errors (PostgreSQL deadlocks between concurrent
    ``log_batch`` calls — mlflow issue 24923 —, SQLite "database is locked", a dropped connection)
    with a short exponential back-off. MLflow's REST client already retries HTTP 429/5xx itself."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MlflowException wraps the driver's error text
            msg = str(e).lower()
            if i == attempts - 1 or not any(s in msg for s in _TRANSIENT):
                raise
            time.sleep(0.05 * 2**i)  # back-off before retrying a transient store error


def _log_params(c: mlflow.MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(_key(k), _param_value(v)) for k, v in flatten(params).items()]
    for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        retrying(c.log_batch, run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])


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
    run = retrying(c.create_run, experiment_id, tags=all_tags, run_name=run_name)
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
    retrying(client(uri).set_terminated, run_id, status)


@contextlib.contextmanager
def run(experiment_id: str, *, run_name: str, parent_run_id: str | None = None, tags=None,
        params=None, uri: str | None = None):
    """``with run(...) as run_id:`` — a new run, closed as :func:`closing` does."""
    run_id = start_run(experiment_id, run_name=run_name, parent_run_id=parent_run_id, tags=tags,
                       params=params, uri=uri)
    with closing(run_id, uri):
        yield run_id


@contextlib.contextmanager
def closing(run_id: str, uri: str | None = None):
    """Ends ``run_id`` with the block: FINISHED on success, KILLED on Ctrl-C/SIGTERM, FAILED
    otherwise, with a user error's one line as the ``nbnet.reason`` tag."""
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except NbnetError as e:
        set_tags(run_id, {"nbnet.reason": str(e)}, uri=uri)
        raise
    finally:
        end_run(run_id, status, uri=uri)


def set_tags(run_id: str, tags: dict, uri: str | None = None) -> None:
    items = [RunTag(_key(k), _tag_value(v)) for k, v in tags.items()]
    c = client(uri)
    for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        retrying(c.log_batch, run_id, tags=items[i : i + _MAX_PARAMS_PER_BATCH])


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
    try:
        import psutil
    except ImportError:
        return True
    try:  # a killed process stays a zombie until init reaps it (seconds in some containers)
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


# --- metrics -------------------------------------------------------------------------------------
class MetricLogger:
    """Buffers metrics (and tags) and sends them with one ``log_batch`` per flush.

    Use it as a training callback: ``logger(epoch, logs)`` records every numeric value of
    ``logs`` at ``step=epoch``; the buffer is sent every ``flush_every`` epochs if that is given,
    else once ``flush_seconds`` have passed since the last send (so a short fit costs one store
    transaction at its end, and a long one still shows its curves live). :meth:`tag` buffers a
    tag for the same batch. Call :meth:`flush` (or use ``with MetricLogger(...) as logger:``) at
    the end. ``seconds`` is the wall time spent in MLflow calls, for cost accounting.
    """

    def __init__(self, run_id: str, uri: str | None = None, flush_every: int | None = None,
                 flush_seconds: float = 10.0):
        self.run_id = run_id
        self.uri = uri
        self.flush_every = None if flush_every is None else max(1, int(flush_every))
        self.flush_seconds = float(flush_seconds)
        self.seconds = 0.0
        self._buf: list[Metric] = []
        self._tags: dict[str, RunTag] = {}
        self.latest: dict[str, float] = {}  # the last value logged of each key
        self._calls = 0
        self._last = time.monotonic()

    def log(self, key: str, value, step: int = 0) -> None:
        """Buffer one value (non-numeric values are ignored)."""
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
            return
        self._buf.append(Metric(_key(key), float(value), int(time.time() * 1000), int(step)))
        self.latest[key] = float(value)
        if len(self._buf) >= _MAX_METRICS_PER_BATCH:
            self.flush()

    def tag(self, key: str, value) -> None:
        """Buffer a tag, sent with the next flush (a later value of the same key wins)."""
        self._tags[_key(key)] = RunTag(_key(key), _tag_value(value))

    def __call__(self, epoch: int, logs: dict) -> None:
        for k, v in logs.items():
            self.log(k, v, epoch)
        self._calls += 1
        if (self._calls % self.flush_every == 0 if self.flush_every
                else time.monotonic() - self._last >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._buf and not self._tags:
            return
        t = time.perf_counter()
        try:
            c = client(self.uri)
            tags = list(self._tags.values())
            while self._buf or tags:  # MLflow's batch limits: 1000 metrics, 100 tags
                batch, send = self._buf[:_MAX_METRICS_PER_BATCH], tags[:_MAX_PARAMS_PER_BATCH]
                retrying(c.log_batch, self.run_id, metrics=batch, tags=send)
                del self._buf[: len(batch)]
                del tags[: len(send)]
                for tg in send:
                    self._tags.pop(tg.key, None)
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

    from nbnet.version import __version__

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
        retrying(c.log_artifacts, run_id, str(path), artifact_path)
    elif path.is_file():
        retrying(c.log_artifact, run_id, str(path), artifact_path)
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
            retrying(client(uri).log_artifact, run_id, str(dst), folder or None)
    else:
        retrying(client(uri).log_figure, run_id, fig_or_path, artifact_path)


def log_dict(run_id: str, data: dict, artifact_file: str, uri: str | None = None) -> None:
    """Store ``data`` as JSON (or YAML by extension) at ``artifact_file`` in the run's artifacts."""
    retrying(client(uri).log_dict, run_id, data, artifact_file)


def log_text(run_id: str, text: str, artifact_file: str, uri: str | None = None) -> None:
    retrying(client(uri).log_text, run_id, text, artifact_file)


# --- the model: MLflow pyfunc "from code" around nbnet's safe file ---------------------------------
def feature_spec(estimator, model_config: dict | None = None) -> tuple[list[str] | None, dict]:
    """``(feature_names, categories)`` of a model's raw input: from the estimator's
    ``feature_names_in_`` / ``categories_`` if it has them, else from the pyfunc model's config;
    ``(None, {})`` when neither knows (inputs are then taken by position)."""
    names = getattr(estimator, "feature_names_in_", None)
    cats = getattr(estimator, "categories_", None)
    if names is None and model_config:
        names, cats = model_config.get("feature_names"), model_config.get("categories")
    return (None if names is None else [str(n) for n in names]), dict(cats or {})


def input_columns(estimator, names: list[str] | None, categories: dict, file_columns: list[str] | None,
                  label: str) -> list[str]:
    """The raw columns to read for ``estimator``: its own ``names``, or, for a model that stores
    none (``x0, x1, ...``), the file's feature columns in order (``file_columns``; None where the
    file has no column names, e.g. NPZ). ``label`` names the file in the error."""
    n = estimator.n_features_in_
    generic = names is None or (not categories and names == [f"x{j}" for j in range(n)])
    if generic and file_columns is not None and (names is None or not set(names) <= set(file_columns)):
        if len(file_columns) != n:
            raise NbnetError(f"{label} has {len(file_columns)} feature columns but the model takes {n} "
                             "(and stores no column names to pick them by)")
        names = list(file_columns)
    return names if names is not None else [f"x{j}" for j in range(n)]


def frame_to_matrix(X, feature_names: list[str] | None, categories: dict, n_features: int) -> np.ndarray:
    """A pandas DataFrame (columns matched by name; extra columns ignored; categorical columns
    one-hot with the training categories, unseen → zeros) or an array → float64 (n, n_features)."""
    if not isinstance(X, pd.DataFrame):
        return np.asarray(X)
    X = X.rename(columns=str)
    cols = list(X.columns)
    if feature_names is None:
        return X.to_numpy(dtype=np.float64)
    if categories:
        from nbnet.data.load import raw_columns

        raw = raw_columns(feature_names, categories)
    else:
        raw = list(feature_names)
    missing = [c for c in raw if c not in set(cols)]
    if missing:
        if not categories and len(cols) == n_features and not set(raw) & set(cols):
            return X.to_numpy(dtype=np.float64)  # unnamed columns (0, 1, ...): taken by position
        raise NbnetError(f"input lacks column(s) {missing[:5]}; the model reads {raw[:10]}"
                         f"{' ...' if len(raw) > 10 else ''}")
    if not categories:
        return X[raw].to_numpy(dtype=np.float64)
    out = np.empty((len(X), len(feature_names)), np.float64)
    groups = {f"{c}={k}": (c, str(k)) for c, cats in categories.items() for k in cats}
    for j, name in enumerate(feature_names):
        if name in groups:
            c, k = groups[name]
            col = X[c]
            out[:, j] = (col.notna() & (col.astype(str) == k)).to_numpy()
        else:
            out[:, j] = pd.to_numeric(X[name], errors="raise").to_numpy(dtype=np.float64)
    return out


class NbnetPyfuncModel(mlflow.pyfunc.PythonModel):
    """The MLflow pyfunc face of an nbnet model. MLflow loads it through the code file
    ``nbnet/experiment/tracking/model_code.py`` (models from code: nothing is pickled); the weights come from the
    safe nbnet file in ``context.artifacts["model"]``.

    ``predict(DataFrame)`` returns class labels for a classifier, values for a regressor; with
    ``params={"proba": True}`` a classifier returns a DataFrame of class probabilities.
    """

    def load_context(self, context) -> None:
        from nbnet.nn.estimator import load

        self.estimator = load(context.artifacts["model"])
        self.features = feature_spec(self.estimator, context.model_config)

    # The pd.DataFrame hint is one MLflow accepts without deriving a schema from it (the explicit
    # signature does that); without any hint MLflow warns on every import.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        est = self.estimator
        X = frame_to_matrix(model_input, *self.features, est.n_features_in_)
        if params and params.get("proba"):
            if not hasattr(est, "predict_proba"):
                raise NbnetError("proba=True needs a classifier; this model is a regressor")
            return pd.DataFrame(est.predict_proba(X), columns=[str(c) for c in est.classes_])
        return est.predict(X)


def _example_frame(estimator, X_example, feature_names, categories):
    """The raw-input example: a DataFrame as given, or the first rows of an (encoded) matrix with
    its one-hot groups folded back into their categorical columns."""
    if isinstance(X_example, pd.DataFrame):
        return X_example.head(5).rename(columns=str)
    X = np.asarray(X_example, dtype=np.float64)[:5]
    if X.ndim == 1:
        X = X.reshape(1, -1)
    names = feature_names or [f"x{j}" for j in range(X.shape[1])]
    if not categories:
        return pd.DataFrame(X, columns=names)
    from nbnet.data.load import raw_columns

    pos = {n: j for j, n in enumerate(names)}
    cols = {}
    for c in raw_columns(names, categories):
        if c in categories:
            cats = [str(k) for k in categories[c]]
            onehot = X[:, [pos[f"{c}={k}"] for k in cats]] if cats else np.zeros((len(X), 0))
            cols[c] = [cats[int(r.argmax())] if r.size and r.max() > 0 else None for r in onehot]
        else:
            cols[c] = X[:, pos[c]]
    return pd.DataFrame(cols)


def pip_requirements() -> list[str]:
    import numba

    from nbnet.version import __version__

    return [f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}", f"numba=={numba.__version__}",
            f"nbnet=={__version__}"]


# Fields of a model's MLmodel file that differ between two models of one template (see _template).
_PLACEHOLDERS = {"artifact_path": "NBNETXARTIFACTPATHX", "run_id": "NBNETXRUNIDX", "model_uuid": "NBNETXMODELUUIDX",
                 "model_id": "NBNETXMODELIDX", "utc_time_created": "NBNETXCREATEDX"}
_TEMPLATES: dict = {}  # key -> (folder, MLmodel text, size of the folder's model file, model_size_bytes)


def template_cache_dir() -> Path:
    """Where pyfunc model templates are kept between processes: ``NBNET_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/nbnet`` (``~/.cache/nbnet``), sub-folder ``pyfunc-templates``."""
    root = os.environ.get("NBNET_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nbnet"
    return Path(root) / "pyfunc-templates"


def _private_dir(path: Path) -> Path | None:
    """``path`` created 0700 if missing; None if it cannot be, or if it is not this user's alone
    (a template holds the code file MLflow runs when the model is loaded: nobody else may plant one)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError:
        return None
    return path if st.st_uid == os.getuid() and not st.st_mode & 0o022 else None


def _usable_template(local: Path, code: str) -> bool:
    """A whole template whose code file is nbnet's own (the one MLflow runs at load time)."""
    try:
        return (_PLACEHOLDERS["run_id"] in (local / "MLmodel").read_text()
                and (local / PYFUNC_CODE.name).read_text() == code and (local / "artifacts" / MODEL_FILE).is_file())
    except OSError:
        return False


def _template(key: tuple, estimator, example, config: dict, signature_of) -> tuple:
    """A pyfunc model folder written by ``mlflow.pyfunc.save_model`` with placeholders where a
    model's own ids go, for every model with the same class, input columns, example, signature
    and requirements (every trial of a sweep). :func:`log_model` copies it and swaps in the
    weights and ids: ``save_model`` infers the schema, writes the example and the environment
    files, checks the requirements against every installed distribution (~0.45 s the first time
    in a process) and dumps the YAML for every model otherwise, and nothing of that differs
    between two trials. Kept in :func:`template_cache_dir` (private to the user, named by a
    digest of the key, MLflow's and Python's versions and nbnet's pyfunc code file, created
    atomically), so a sweep's worker processes and later sweeps reuse it; in a temporary folder
    of the process if that cannot be written."""
    hit = _TEMPLATES.get(key)
    if hit is not None and Path(hit[0]).is_dir():
        return hit
    import hashlib
    import sys

    code = PYFUNC_CODE.read_text()
    digest = hashlib.sha256(json.dumps([list(map(str, key)), mlflow.__version__, sys.version, code]).encode()).hexdigest()[:32]
    cache = _private_dir(template_cache_dir())
    local = cache / digest / MODEL_NAME if cache else None
    if local is None or not _usable_template(local, code):
        from mlflow.models import Model

        if cache is None:
            folder = Path(tempfile.mkdtemp(prefix="nbnet-pyfunc-template-"))
            atexit.register(shutil.rmtree, folder, True)
        else:
            folder = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
        src = folder / MODEL_FILE
        estimator.save(src)
        built = folder / MODEL_NAME
        with quiet():
            mlflow.pyfunc.save_model(path=str(built), python_model=str(PYFUNC_CODE), artifacts={"model": str(src)},
                                     model_config=config, signature=signature_of(), input_example=example,
                                     pip_requirements=pip_requirements(), mlflow_model=Model(**_PLACEHOLDERS))
        if cache is None:
            local = built
        else:
            if (cache / digest).exists():  # damaged or not nbnet's: moved aside (atomically) and removed
                aside = Path(tempfile.mkdtemp(prefix=".bad-", dir=cache))
                with contextlib.suppress(OSError):
                    os.rename(cache / digest, aside / "old")
                shutil.rmtree(aside, ignore_errors=True)
            try:
                os.rename(folder, cache / digest)  # atomic: a reader sees no folder or a whole one
            except OSError:  # another process made it meanwhile: use theirs
                shutil.rmtree(folder, ignore_errors=True)
            if not _usable_template(local, code):
                raise NbnetError(f"pyfunc model template {local.parent} is damaged; delete it and log the model again")
    text = (local / "MLmodel").read_text()
    m = re.search(r"^model_size_bytes: (\d+)$", text, re.M)
    hit = (local, text, (local / "artifacts" / MODEL_FILE).stat().st_size, int(m.group(1)) if m else None)
    _TEMPLATES.clear()  # one sweep's models at a time
    _TEMPLATES[key] = hit
    return hit


def _write_model(dst: Path, estimator, template: tuple, ids: dict) -> None:
    """The pyfunc model folder ``dst``: the template's files with this estimator's nbnet file and
    an MLmodel naming this model's ids."""
    from datetime import datetime, timezone

    folder, text, tmpl_bytes, tmpl_size = template
    shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("MLmodel", MODEL_FILE))
    model_file = dst / "artifacts" / MODEL_FILE
    estimator.save(model_file)
    ids = {**ids, "utc_time_created": str(datetime.now(timezone.utc).replace(tzinfo=None))}
    for field, ph in _PLACEHOLDERS.items():
        text = text.replace(ph, json.dumps(str(ids[field])))  # a JSON string is a valid YAML scalar
    if tmpl_size is not None:
        size = tmpl_size - tmpl_bytes + model_file.stat().st_size
        text = re.sub(r"^model_size_bytes: \d+$", f"model_size_bytes: {size}", text, count=1, flags=re.M)
    (dst / "MLmodel").write_text(text)


def log_model(run_id: str, estimator, X_example, uri: str | None = None, *,
              feature_names: list[str] | None = None, categories: dict | None = None,
              experiment_id: str | None = None, params: dict | None = None,
              logger: "MetricLogger | None" = None) -> str:
    """Log ``estimator`` to run ``run_id`` as an MLflow pyfunc model and return ``runs:/<id>/model``.

    The model directory holds the nbnet file (``artifacts/model.nbnet``: npz + JSON, checksummed),
    the three-line code file ``python_model.py`` (a copy of ``nbnet/experiment/tracking/model_code.py``, which
    imports :class:`NbnetPyfuncModel` from the installed nbnet), ``MLmodel`` with the signature,
    and the input example (the first rows of ``X_example``, a DataFrame or an array). Nothing is
    pickled.

    ``feature_names`` (the matrix columns; one-hot groups as ``col=category``) and ``categories``
    (``{column: [category, ...]}``, as in :class:`nbnet.data.load.Dataset`) name the raw input
    columns; default: the estimator's ``feature_names_in_``/``categories_``, else the example's
    DataFrame columns, else ``x0, x1, ...``. ``experiment_id`` and ``params`` (the run's flat
    params, given to the LoggedModel) save reading the run back; with ``logger`` the run's
    ``nbnet.model_id`` tag goes out with the logger's next flush instead of on its own.
    """
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import infer_signature

    uri = uri or default_tracking_uri()
    names, cats = feature_spec(estimator)
    if feature_names is not None:
        names, cats = [str(f) for f in feature_names], dict(categories or {})
    example = _example_frame(estimator, X_example, names, cats)
    if names is None:
        names = [str(c) for c in example.columns]
    config = {"feature_names": names, "categories": cats}
    X = frame_to_matrix(example, names, cats, estimator.n_features_in_)
    proba = hasattr(estimator, "predict_proba")
    pred = np.asarray(estimator.predict(X))
    key = (type(estimator).__name__, json.dumps(config, sort_keys=True, default=str), example.to_json(orient="split"),
           tuple(str(t) for t in example.dtypes), str(pred.dtype), pred.shape[1:], proba, tuple(pip_requirements()))
    template = _template(key, estimator, example, config,
                         lambda: infer_signature(example, pred, params={"proba": False} if proba else None))
    c = client(uri)
    if experiment_id is None or params is None:
        run = c.get_run(run_id)
        experiment_id, params = run.info.experiment_id, dict(run.data.params)
    # Create the LoggedModel ourselves: left to MLflow it would land in the fluent "current"
    # experiment (the default one), not the run's.
    logged = retrying(c.create_logged_model, experiment_id, name=MODEL_NAME, source_run_id=run_id,
                       params={_key(k): _param_value(v) for k, v in params.items()},
                       tags={"nbnet.nn.estimator": type(estimator).__name__})
    # What Model.log does, minus its check that the input example serves (it loads the model back
    # and predicts: ~0.1 s a trial; tests/test_tracking.py loads and serves logged models instead).
    with tempfile.TemporaryDirectory(prefix="nbnet-model-") as tmp:
        local = Path(tmp, MODEL_NAME)
        _write_model(local, estimator, template, {"artifact_path": logged.artifact_location, "run_id": run_id,
                                                  "model_uuid": logged.model_id, "model_id": logged.model_id})
        retrying(c.log_outputs, run_id, [LoggedModelOutput(logged.model_id, step=0)])
        retrying(c.log_model_artifacts, logged.model_id, str(local))
        retrying(c.finalize_logged_model, logged.model_id, "READY")
    if logger is not None:
        logger.tag("nbnet.model_id", logged.model_id)
    else:
        set_tags(run_id, {"nbnet.model_id": logged.model_id}, uri=uri)
    return f"runs:/{run_id}/{MODEL_NAME}"


def download_model(uri: str, dst: str | None = None, tracking_uri: str | None = None) -> tuple[str, dict]:
    """Download the pyfunc model at ``uri`` (``models:/NAME@alias``, ``models:/NAME/VERSION``,
    ``runs:/RUN_ID/model``, or any MLflow artifact URI of such a model) and return
    ``(local path of the nbnet file, the model's config)``."""
    import yaml

    tracking = tracking_uri or default_tracking_uri()
    try:
        with global_uri(tracking), quiet():
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst, tracking_uri=tracking)
    except MlflowException as e:
        msg = str(e).splitlines()[0][:200]
        raise NbnetError(f"could not fetch model {uri!r} from {tracking}: {msg}") from None
    path = Path(local, "artifacts", MODEL_FILE)
    mlmodel = Path(local, "MLmodel")
    if not path.is_file() or not mlmodel.is_file():
        raise NbnetError(f"{uri!r} is not an nbnet model (no artifacts/{MODEL_FILE}); log it with nbnet")
    meta = yaml.safe_load(mlmodel.read_text()) or {}
    config = (meta.get("flavors", {}).get("python_function", {}) or {}).get("config") or {}
    return str(path), config


def download_model_file(uri: str, tracking_uri: str | None = None) -> str:
    """Local path of the nbnet model file behind an MLflow model URI (used by ``nbnet.load``)."""
    return download_model(uri, tracking_uri=tracking_uri)[0]


def load_model(uri_or_path: str, tracking_uri: str | None = None):
    """``(estimator, (feature_names, categories))`` from an MLflow model URI or a local file."""
    from nbnet.nn.estimator import load

    s = str(uri_or_path)
    if s.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        path, config = download_model(s, tracking_uri=tracking_uri)
        est = load(path)
        return est, feature_spec(est, config)
    est = load(s)
    return est, feature_spec(est)


# --- registry ------------------------------------------------------------------------------------
def metric_of(c, run_id: str, key: str):
    v = c.get_run(run_id).data.metrics.get(key)
    return None if v is None or not np.isfinite(v) else float(v)


def register_champion(name: str, run_id: str, metric_key: str, direction: str,
                      uri: str | None = None) -> tuple[int, bool]:
    """Register ``runs:/<run_id>/model`` as a new version of ``name`` and move the alias
    ``champion`` to it only if its run's ``metric_key`` beats the current champion's
    (``direction`` "maximize" or "minimize"; a tie keeps the incumbent) or there is none.

    Every version gets tags ``nbnet.metric_key``, ``nbnet.metric`` and ``nbnet.promoted``; the
    alias history is kept as version tags: ``champion.since`` (and ``champion.replaced``) on the
    new champion, ``champion.until`` and ``champion.replaced_by`` on the one it displaced, and
    as the model's ``champion.stack``/``champion.history`` tags (see :mod:`nbnet.registry`).
    Returns ``(version, promoted)``.
    """
    if direction not in ("maximize", "minimize"):
        raise NbnetError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    uri = uri or default_tracking_uri()
    c = client(uri)
    new = metric_of(c, run_id, metric_key)
    if new is None:
        raise NbnetError(f"run {run_id} has no finite metric {metric_key!r}; cannot compare it with the champion")
    from nbnet.experiment.tracking import (  # the alias history lives there (promote/rollback use it too)
        registry,
    )

    version = str(registry.create_version(name, run_id, uri).version)
    try:
        old = c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        old = None
    old_metric = None if old is None or old.run_id is None else metric_of(c, old.run_id, metric_key)
    if old is None or old_metric is None:
        promoted, why = True, "no champion yet" if old is None else f"champion v{old.version} has no {metric_key}"
    else:
        better = new > old_metric if direction == "maximize" else new < old_metric
        promoted = bool(better)
        why = f"{metric_key} {new:.6g} vs champion v{old.version} {old_metric:.6g} ({direction})"
    for k, v in {"nbnet.metric_key": metric_key, "nbnet.metric": repr(new), "nbnet.direction": direction,
                 "nbnet.promoted": str(promoted).lower(), "nbnet.promotion_reason": why}.items():
        c.set_model_version_tag(name, version, k, v)
    if promoted:  # alias, champion.* version tags and the champion.stack/history of the model
        registry.move_champion(name, int(version), action="register", reason=why, uri=uri, old=old)
    return int(version), promoted
