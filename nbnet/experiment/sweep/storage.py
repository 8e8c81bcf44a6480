"""Where a study lives: Optuna journal files (the default, one per study under
``mlruns/optuna/``, locked with ``flock``) and RDB storages (``postgresql://…``, ``sqlite:///…``)
with heartbeats, plus the cross-machine lock of a PostgreSQL study.

The journal lock: Optuna's default journal lock is a symlink (or an ``O_EXCL`` file) next to the
journal: portable to old NFS, but a worker killed with SIGKILL while appending leaves it in place,
and every other process then waits Optuna's 30 s grace period, warning, before breaking it.
``flock(2)`` locks belong to the open file and the kernel drops them when the process dies, so a
dead worker costs nothing. All nbnet processes lock nbnet's journals this way; a plain Optuna
script writing to the same journal at the same time would not be excluded (reading is fine).
Before each append, under that lock, a torn tail left by a crash or a full disk is moved aside
(:mod:`nbnet.experiment.sweep.journal`).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
import zlib
from pathlib import Path

import optuna
from optuna.storages.journal import JournalStorage

from nbnet._sys import locks
from nbnet.errors import NbnetError
from nbnet.experiment import faults
from nbnet.experiment.sweep.journal import RepairingJournalBackend
from nbnet.experiment.sweep.recovery import RetryStaleTrial

try:  # the base class is private in Optuna; JournalFileBackend only calls acquire() and release()
    from optuna.storages.journal._file import BaseJournalFileLock
except ImportError:  # pragma: no cover
    BaseJournalFileLock = object

HEARTBEAT_SECONDS = 10  # NBNET_HEARTBEAT_SECONDS: a running trial writes a heartbeat row this often
GRACE_SECONDS = 60  # NBNET_GRACE_SECONDS: a trial whose heartbeat is older than this is failed and retried
MAX_RETRY = 2  # NBNET_MAX_RETRY: how many times the parameters of a dead worker's trial are retried


# --- journal files -----------------------------------------------------------------------------
class FlockJournalLock(BaseJournalFileLock):
    """Exclusive ``flock`` on ``<journal>.flock``, blocking until it is free."""

    def __init__(self, journal_path: str):
        self._path = journal_path + ".flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        self._fd = locks.acquire(self._path)
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError("Error: did not possess lock")
        locks.release(fd)


def journal_lock(journal_path: str) -> FlockJournalLock | None:
    """The flock lock where ``fcntl`` exists (Linux, macOS), else None (Optuna's default)."""
    return FlockJournalLock(journal_path) if locks.AVAILABLE else None


def default_storage(study_name: str, root: Path | None = None) -> str:
    """The journal file ``<root or cwd>/mlruns/optuna/<study>.log``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in study_name)
    return str(Path(root or Path.cwd()).resolve() / "mlruns" / "optuna" / f"{safe}.log")


def journal_path(storage: str) -> Path:
    """The journal file of a journal storage (a path, optionally ``journal:PATH``)."""
    return Path(storage[len("journal:"):] if storage.startswith("journal:") else storage)


#: The environment variables that name the study storage when none is given, the first set wins.
STORAGE_ENV = ("NBNET_STORAGE", "OPTUNA_STORAGE")


def env_storage() -> str | None:
    """The study storage named by ``NBNET_STORAGE`` or ``OPTUNA_STORAGE`` (a URL such as
    ``postgresql://…`` or a journal file), or None: then each study has its default journal."""
    return next((os.environ[k] for k in STORAGE_ENV if os.environ.get(k)), None)


def list_studies(root: Path | None = None) -> list[tuple[str, Path]]:
    """(study name, journal file) of the default journal storages, newest first."""
    folder = Path(root or Path.cwd()) / "mlruns" / "optuna"
    files = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    return [(f.stem, f) for f in files]


def is_rdb(storage: str) -> bool:
    """Whether ``storage`` is a database URL (shared by machines) rather than a journal file."""
    return "://" in storage


def storage_label(storage: str) -> str:
    """``storage`` for messages: a URL without its password, a file relative to the cwd."""
    if is_rdb(storage):
        return storage.split("://", 1)[0] + "://" + storage.split("@")[-1].split("://")[-1]  # no password
    try:
        return str(Path(storage).relative_to(Path.cwd()))
    except ValueError:
        return storage


_RDB_STORAGES: dict[tuple[str, str | None], object] = {}  # one engine (and its connections) per URL in a process


def open_storage(storage: str, *, uri: str | None = None):
    """An Optuna storage: a URL (``postgresql://…``, ``sqlite:///…``, anything with ``://``) or
    a journal file path (optionally ``journal:PATH``). A URL gets an ``RDBStorage`` with
    heartbeats (see :func:`_rdb_storage`), one per URL and process (its connection pool is
    shared); ``uri`` is the MLflow store whose runs it closes."""
    if is_rdb(storage):
        faults.note_store("study", storage_label(storage))
        if (storage, uri) in _RDB_STORAGES:  # the sweep's own worker 0 shares the sweep's connections
            return _RDB_STORAGES[storage, uri]
        try:  # a server that is restarting gets a few seconds (faults.CONNECT_ATTEMPTS)
            opened = faults.retry_unreachable(lambda: _rdb_storage(storage, uri=uri))
            _RDB_STORAGES[storage, uri] = opened
            return opened
        except Exception as e:  # bad URL, missing driver (a user error); unreachable server (a store fault)
            fault = faults.store_error(e)
            if fault is not None:
                raise fault from e
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise NbnetError(f"cannot open Optuna storage {storage_label(storage)!r}: {msg}") from None
    path = Path(storage[len("journal:"):] if storage.startswith("journal:") else storage)
    faults.note_store("study", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    # a SIGKILLed worker leaves no stale lock behind; a torn tail is repaired before the next append
    return JournalStorage(RepairingJournalBackend(str(path), lock_obj=journal_lock(str(path))))


def close_storage(storage_obj) -> None:
    """Close the database connections of a storage that :func:`open_storage` opened (a journal
    holds none): a program that runs many sweeps would otherwise keep a pool per sweep."""
    engine = getattr(storage_obj, "engine", None)
    if engine is not None:
        engine.dispose()


def optuna_load(study_name: str, storage_obj):
    """``optuna.load_study`` of ``study_name`` in an opened storage (KeyError: no such study)."""
    return optuna.load_study(study_name=study_name, storage=storage_obj)


# --- databases, for workers on many machines ---------------------------------------------------
def _rdb_storage(url: str, *, uri: str | None = None):
    """``optuna.storages.RDBStorage`` for workers on many machines: every running trial records a
    heartbeat; when a worker dies (machine lost, process killed) its trial's heartbeat goes stale,
    and the next worker to start a trial marks it FAIL, closes its MLflow run FAILED and enqueues
    its parameters again (:class:`~nbnet.experiment.sweep.recovery.RetryStaleTrial`). Opening a
    fresh database from several workers at once races on Optuna's table creation; that is retried."""
    import sqlalchemy.exc  # heavy: only for database storages

    beat = int(os.environ.get("NBNET_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))
    grace = int(os.environ.get("NBNET_GRACE_SECONDS", max(GRACE_SECONDS, 3 * beat)))
    retry = RetryStaleTrial(int(os.environ.get("NBNET_MAX_RETRY", MAX_RETRY)), grace, uri)
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=beat,
                                                  grace_period=grace, heartbeat_stale_trial_callback=retry)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                optuna.exceptions.StorageInternalError) as e:
            # Another worker is creating the same tables right now (duplicate key / already exists;
            # Optuna wraps it in StorageInternalError, the driver's text in its cause).
            text = f"{e} {e.__cause__}".lower()
            if attempt == 5 or not any(s in text for s in ("duplicate key", "already exists")):
                raise
            time.sleep(0.2 * 2**attempt)  # back-off before retrying a lost table-creation race


@contextlib.contextmanager
def study_lock(storage: str, key: str):
    """A cross-machine mutex for a PostgreSQL study (``pg_advisory_lock``); a no-op otherwise."""
    if not storage.startswith("postgresql"):
        yield
        return
    import sqlalchemy  # heavy: only for database storages

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
