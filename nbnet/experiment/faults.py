"""Store faults in one line: a full disk, a failing disk, a read-only store or an unreachable
server, whichever library raised it (SQLAlchemy, psycopg, SQLite, MLflow's REST client, Optuna,
the OS), becomes one :class:`~nbnet.errors.StoreError` line that names what could not be read or
written and how to resume. The CLI prints it and exits 3; ``--debug`` shows the traceback.

Retries, where a retry can help (:func:`bounded_retries`, set once per process before any store
is opened): MLflow's REST client retries a refused or dropped connection and HTTP 429/5xx
:data:`HTTP_RETRIES` times, waiting about 0, 2 and 4 s (plus up to 1 s of jitter each); opening a
PostgreSQL study storage is retried :data:`CONNECT_ATTEMPTS` times, waiting 1 s, then 2 s
(:func:`retry_unreachable`). A store that is still unreachable after that is a fault: the command
stops with one line, and the same command run again resumes (see docs/reliability.md).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time

from nbnet._sys.atomic import DISK_ERRORS, RESUME, disk_error_message
from nbnet.errors import StoreError

HTTP_RETRIES = 3  # MLFLOW_HTTP_REQUEST_MAX_RETRIES unless set
HTTP_BACKOFF = 1  # MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR unless set: waits 0, 2, 4 s
CONNECT_ATTEMPTS = 3  # opening a PostgreSQL study storage: 3 tries, 1 s then 2 s apart

#: Texts of the drivers' errors (lower case) → what happened.
_TEXTS = (
    (("database or disk is full",), DISK_ERRORS[errno.ENOSPC]),
    (("disk i/o error",), "I/O error"),
    (("readonly database", "read-only file system", "read-only transaction"), "read-only"),
    (("remaining connection slots are reserved", "too many clients already", "too many connections"), "no slot"),
    (("connection refused", "could not connect", "server closed the connection", "terminating connection",
      "connection reset", "max retries exceeded", "failed to establish a new connection", "name or service not known",
      "connection is closed", "consuming input failed", "connection timed out", "timeout expired",
      "the database system is shutting down", "remotedisconnected", "connection aborted"), "unreachable"),
)

#: Where in the traceback (a path fragment of the innermost frames) → which store it was.
_WHERE = (
    ("/mlflow/store/artifact/", "artifacts"),
    ("/mlflow/store/tracking/rest_store", "mlflow"),
    ("/mlflow/utils/rest_utils", "mlflow"),
    ("/mlflow/store/", "mlflow"),
    ("/optuna/storages/", "study"),
    ("/nbnet/experiment/sweep/budget", "study"),  # the claim lock, on the study storage's engine
    ("/nbnet/experiment/sweep/storage", "study"),
    ("/nbnet/nn/checkpoint", "checkpoint"),
    ("/nbnet/io.py", "model"),
)

#: The stores this process opened: "study" → a label of the Optuna storage (set by the sweep).
STORES: dict[str, str] = {}


def note_store(kind: str, label: str) -> None:
    """Remember the label of a store this process uses, for the messages."""
    STORES[kind] = label


def bounded_retries() -> None:
    """Bound MLflow's HTTP retries (its default waits about 4 minutes on a stopped server) unless
    the user set them, and keep MLflow's and Optuna's logged tracebacks of store faults off stderr
    (the fault is reported once, as one line). Spawned workers inherit the environment."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(HTTP_BACKOFF))
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)  # logs each SQLAlchemy error in full
    # MLflow's system-metrics thread warns when it cannot reach the run; Optuna's RDB storage warns
    # with the whole SQL statement when a query fails before it falls back to another one
    for name in ("mlflow.system_metrics.system_metrics_monitor", "optuna.storages._rdb.storage"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropStoreWarnings) for f in log.filters):
            log.addFilter(_DropStoreWarnings())
    if not isinstance(threading.excepthook, _QuietThreadHook):  # Optuna's heartbeat thread, MLflow's monitor
        threading.excepthook = _QuietThreadHook(threading.excepthook)
    opt = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _DropStoreTracebacks) for f in opt.filters):
        opt.addFilter(_DropStoreTracebacks())


class _QuietThreadHook:
    """``threading.excepthook`` that keeps a background thread's store fault off stderr (the
    command's own thread meets the same fault and reports it as one line); others as before."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, args) -> None:
        if args.exc_value is not None and describe(args.exc_value) is not None:
            return
        self.previous(args)


class _DropStoreWarnings(logging.Filter):
    """Drop a logged warning that is a store fault: the command reports it once, as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return describe(RuntimeError(record.getMessage())) is None


class _DropStoreTracebacks(logging.Filter):
    """Optuna logs a failed trial's traceback as a warning, then "Trial N failed with value None.":
    drop both when the failure is a store fault, which the command reports as one line."""

    def __init__(self):
        super().__init__()
        self.dropped = False

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            self.dropped = describe(exc) is not None
            return not self.dropped
        if self.dropped and "failed with value" in record.getMessage():
            self.dropped = False
            return False
        return True


def _chain(e: BaseException):
    """``e`` and its causes and contexts, outermost first."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _where(e: BaseException) -> str | None:
    """Which store the innermost known frame of the innermost exception belongs to."""
    for frame in _frames(e):
        filename = frame.f_code.co_filename.replace(os.sep, "/")
        for fragment, kind in _WHERE:
            if fragment in filename:
                return kind
    return None


def _redact(uri: str) -> str:
    if "://" in uri and "@" in uri.split("://", 1)[1]:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{rest.rsplit('@', 1)[1]}"
    return uri


def _frames(e: BaseException):
    """The frames of ``e``'s chain, innermost first."""
    for x in reversed(list(_chain(e))):
        frames, tb = [], x.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        yield from reversed(frames)


def _store_uri(e: BaseException) -> str:
    """The MLflow store the failing call used: MLflow's SQL store's ``db_uri`` or the REST host in
    the traceback, else an nbnet function's ``uri`` argument, else ``MLFLOW_TRACKING_URI``."""
    for frame in _frames(e):
        loc = frame.f_locals
        for found in (getattr(loc.get("self"), "db_uri", None), getattr(loc.get("host_creds"), "host", None),
                      loc.get("uri") if "/nbnet/" in frame.f_code.co_filename.replace(os.sep, "/") else None):
            if isinstance(found, str) and found:
                return _redact(found)
    mlflow = sys.modules.get("mlflow")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (mlflow.get_tracking_uri() if mlflow else "")
    return _redact(uri) if uri else "mlruns/"


def _name(kind: str | None, e: BaseException) -> str:
    """What a store kind is called in the message."""
    if kind == "artifacts":
        return f"the MLflow artifacts (store {_store_uri(e)})"
    if kind == "mlflow":
        uri = _store_uri(e)
        return f"the MLflow {'tracking server' if uri.startswith('http') else 'store'} {uri}"
    if kind == "study":
        return f"the Optuna study storage {STORES.get('study', '')}".rstrip()
    if kind == "checkpoint":
        return "a training checkpoint"
    if kind == "model":
        return "a model file"
    return "a store"


def _first_line(e: BaseException, limit: int | None = 200) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def describe(e: BaseException) -> str | None:
    """The one-line message of a store fault, or None when ``e`` is not one."""
    chain = list(_chain(e))
    for x in chain:
        if isinstance(x, StoreError):  # nbnet's own line, which ends with how to resume: whole
            return _first_line(x, limit=None)
    what = _name(_where(e), e)
    for x in chain:
        if isinstance(x, OSError) and x.errno in DISK_ERRORS:
            # a copy (shutil) names its source in filename and the file it was writing in filename2
            target = next((f for f in (getattr(x, "filename2", None), x.filename) if isinstance(f, str)), what)
            return disk_error_message(x, target)
    text = " ".join(str(x) for x in chain).lower()
    for needles, kind in _TEXTS:
        if not any(n in text for n in needles):
            continue
        if kind == "read-only":
            return f"{what} is read-only ({_first_line(chain[-1])}); make it writable and run the same command again to resume"
        if kind == "no slot":
            return (f"{what} has no free connection ({_first_line(chain[-1])}); run fewer workers or raise the "
                    "server's max_connections (docs/scaleout.md), then run the same command again to resume")
        if kind == "unreachable":
            return (f"cannot reach {what} ({_first_line(chain[-1])}); start it (or fix the address) and run the same "
                    "command again to resume")
        return f"{kind} while writing {what}; {RESUME}"
    return None


def store_error(e: BaseException) -> StoreError | None:
    """``e`` as a :class:`StoreError` (chained to it), or None when it is not a store fault."""
    if isinstance(e, StoreError):
        return e
    msg = describe(e)
    if msg is None:
        return None
    err = StoreError(msg)
    err.__cause__ = e
    return err


def retry_unreachable(open_fn, *, attempts: int = CONNECT_ATTEMPTS, wait: float = 1.0):
    """``open_fn()``, tried again (after ``wait``, then twice that, …) while the store is
    unreachable or has no free connection, at most ``attempts`` times in all; other errors are
    raised at once."""
    for i in range(attempts):
        try:
            return open_fn()
        except Exception as e:
            msg = describe(e)
            if i == attempts - 1 or msg is None or not (msg.startswith("cannot reach") or "no free connection" in msg):
                raise
            time.sleep(wait * 2**i)  # back-off while a database server restarts
