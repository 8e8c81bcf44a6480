"""MLflow runs: start and end them, batched metrics and tags, artifacts, and stale-run repair.

Everything goes through an explicit :class:`mlflow.MlflowClient` and explicit run ids; the fluent
"active run" (per thread, per process) is never used, so nested trial runs stay parented when they
are created by worker threads or processes. Runs are always closed with their real status
(``FINISHED``, ``FAILED``, ``KILLED``); :func:`repair_stale_runs` closes those a killed process
left ``RUNNING``.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
import numba
import numpy as np
from mlflow.entities import Metric, Param, RunTag

from nbnet._sys.procs import pid_alive
from nbnet.errors import NbnetError
from nbnet.experiment import tags as T
from nbnet.version import __version__

from .client import (
    MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, client, flatten, param_value, retrying, tag_value, truncated_key,
)

STATUSES = ("FINISHED", "FAILED", "KILLED")


def _log_params(c: mlflow.MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(truncated_key(k), param_value(v)) for k, v in flatten(params).items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        retrying(c.log_batch, run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])


def log_params(run_id: str, params: dict, uri: str | None = None) -> None:
    """Log ``params`` (nested dicts flattened, values str()'d and truncated as in
    :func:`start_run`) to an existing run, 100 to a batch."""
    _log_params(client(uri), run_id, params)


def start_run(experiment_id: str, *, run_name: str, parent_run_id: str | None = None,
              tags: dict | None = None, params: dict | None = None, uri: str | None = None) -> str:
    """Create a run (nested under ``parent_run_id`` if given) and return its id.

    ``params`` may be nested dicts (flattened as ``model.hidden_layer_sizes``); values are
    str()'d (lists as JSON) and truncated to MLflow's limits. The run also records the host and
    pid that own it, so :func:`repair_stale_runs` can tell a live run from an orphan.
    """
    c = client(uri)
    all_tags = {T.HOST: socket.gethostname(), T.PID: str(os.getpid())}
    all_tags.update(tags or {})
    if parent_run_id:
        all_tags[T.MLFLOW_PARENT_RUN_ID] = parent_run_id
    all_tags = {truncated_key(k): tag_value(v) for k, v in all_tags.items()}
    run_id = retrying(c.create_run, experiment_id, tags=all_tags, run_name=run_name).info.run_id
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
        set_tags(run_id, {T.REASON: str(e)}, uri=uri)
        raise
    finally:
        end_run(run_id, status, uri=uri)


def set_tags(run_id: str, tags: dict, uri: str | None = None) -> None:
    """Set every tag of ``tags`` on the run (values str()'d and truncated to MLflow's limit)."""
    items = [RunTag(truncated_key(k), tag_value(v)) for k, v in tags.items()]
    c = client(uri)
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        retrying(c.log_batch, run_id, tags=items[i : i + MAX_PARAMS_PER_BATCH])


def log_metrics(run_id: str, metrics: dict, step: int = 0, uri: str | None = None) -> None:
    """Log every numeric value of ``metrics`` at ``step`` in one batch."""
    with MetricLogger(run_id, uri=uri) as m:
        for k, v in metrics.items():
            m.log(k, v, step)


def _running_runs(c: mlflow.MlflowClient, experiment_id: str, parent_run_id: str | None) -> list:
    """Every RUNNING run of the experiment (only ``parent_run_id``'s children if given)."""
    flt = "attributes.status = 'RUNNING'"
    if parent_run_id:
        flt += f" and tags.{T.MLFLOW_PARENT_RUN_ID} = '{parent_run_id}'"
    token, found = None, []
    while True:
        page = c.search_runs([experiment_id], filter_string=flt, max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def repair_stale_runs(experiment_id: str, parent_run_id: str | None = None, uri: str | None = None) -> int:
    """Mark runs left RUNNING by a dead process as KILLED; returns how many were repaired.

    With ``parent_run_id`` only that run's children are considered. A run whose recorded owner
    process is still alive on this host is left alone.
    """
    c = client(uri)
    host = socket.gethostname()
    n = 0
    for r in _running_runs(c, experiment_id, parent_run_id):
        t = r.data.tags
        if t.get(T.HOST) == host and pid_alive(t.get(T.PID)):
            continue
        c.set_tag(r.info.run_id, T.REPAIRED, "left RUNNING by a dead process; marked KILLED")
        c.set_terminated(r.info.run_id, "KILLED")
        n += 1
    return n


# --- metrics -------------------------------------------------------------------------------------
class MetricLogger:
    """Buffers metrics (and tags) and sends them with one ``log_batch`` per flush.

    Use it as a training callback: ``logger(epoch, logs)`` records every numeric value of
    ``logs`` at ``step=epoch``; the buffer is sent every ``flush_every`` epochs if that is given,
    else once ``flush_seconds`` have passed since the last send (so a short fit costs one store
    transaction at its end, and a long one still shows its curves live). :meth:`tag` buffers a
    tag for the same batch. Call :meth:`flush` (or use ``with MetricLogger(...) as logger:``) at
    the end. ``seconds`` is the wall time spent in MLflow calls, for cost accounting.

    ``model_id`` is the run's LoggedModel once :func:`nbnet.experiment.tracking.log_model` has
    tagged it through this logger (tag ``nbnet.model_id``); :meth:`log` with ``model=True`` links
    a value to it (the run's final scores: MLflow's Models tab shows them), and with
    ``dataset=(name, digest)`` to the data set it was scored on (logged with :func:`log_inputs`).
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
        self.model_id: str | None = None  # the run's LoggedModel, once tagged (see the class docstring)
        self._calls = 0
        self._last = time.monotonic()

    def log(self, key: str, value, step: int = 0, *, model: bool = False, dataset: tuple | None = None) -> None:
        """Buffer one value (non-numeric values are ignored); ``model``: linked to
        :attr:`model_id` too, ``dataset``: ``(name, digest)`` of the data it was scored on."""
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
            return
        name, digest = dataset or (None, None)
        self._buf.append(Metric(truncated_key(key), float(value), int(time.time() * 1000), int(step),
                                model_id=self.model_id if model else None, dataset_name=name, dataset_digest=digest))
        self.latest[key] = float(value)
        if len(self._buf) >= MAX_METRICS_PER_BATCH:
            self.flush()

    def link_latest(self, step: int, dataset_of=lambda key: None) -> None:
        """Link the last value of every key logged at ``step`` to :attr:`model_id` (and to
        ``dataset_of(key)``, a ``(name, digest)`` or None): values still buffered are changed in
        place, those sent already are sent again, linked (a fit's last epoch, logged before its
        model existed)."""
        pending = {m.key: i for i, m in enumerate(self._buf) if m.step == int(step)}
        for key, value in list(self.latest.items()):
            key = truncated_key(key)
            name, digest = dataset_of(key) or (None, None)
            i = pending.get(key)
            if i is not None:
                m = self._buf[i]
                self._buf[i] = Metric(m.key, m.value, m.timestamp, m.step, model_id=self.model_id, dataset_name=name,
                                      dataset_digest=digest)
            else:
                self.log(key, value, step, model=True, dataset=(name, digest) if name else None)

    def tag(self, key: str, value) -> None:
        """Buffer a tag, sent with the next flush (a later value of the same key wins)."""
        if key == T.MODEL_ID:
            self.model_id = str(value)
        self._tags[truncated_key(key)] = RunTag(truncated_key(key), tag_value(value))

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
                batch, send = self._buf[:MAX_METRICS_PER_BATCH], tags[:MAX_PARAMS_PER_BATCH]
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
        info = {T.MLFLOW_GIT_COMMIT: out.stdout.strip()}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        if dirty.returncode == 0:
            info[T.GIT_DIRTY] = str(bool(dirty.stdout.strip())).lower()
        return info
    except (OSError, subprocess.SubprocessError):
        return {}


def standard_tags(*, data_hash=None, seed=None, trial=None, study=None) -> dict:
    """Tags for every run: git commit (if nbnet runs from a checkout), nbnet/numba/numpy/mlflow
    versions, and the given data hash, seed, Optuna trial number and study name."""
    tags = dict(_git_info())
    tags.update({T.NBNET_VERSION: __version__, T.NUMBA_VERSION: numba.__version__,
                 T.NUMPY_VERSION: np.__version__, T.MLFLOW_VERSION: mlflow.__version__})
    for k, v in ((T.DATA_HASH, data_hash), (T.SEED, seed), (T.OPTUNA_TRIAL, trial), (T.OPTUNA_STUDY, study)):
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

