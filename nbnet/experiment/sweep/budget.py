"""The trial budget of a study (``search.n_trials``), claimed atomically in the storage that the
workers share, so that any number of processes on any number of machines together start exactly
the missing trials.

Counting the trials and then asking Optuna for a new one are two steps: two workers that count
at the same moment both see a free slot and both start a trial (Optuna's ``MaxTrialsCallback``
has the same race). So a worker takes the study's **claim lock** before it counts, and keeps it
until the new trial exists, RUNNING, with its owner recorded:

==================  ==========================================================  ================================
storage             claim lock                                                  when its holder dies
==================  ==========================================================  ================================
PostgreSQL          ``pg_advisory_xact_lock`` (study's key) in a transaction     the server ends the session: at
                    on a connection of the storage's own pool                   once when the process dies; when
                                                                                the machine is lost, by TCP
                                                                                keepalive (~25 s), at the latest
                                                                                after 10 min idle in transaction
SQLite file         ``flock`` on ``<database>.claim``                           the kernel drops it at once
journal file        ``flock`` on ``<journal>.claim``                            the kernel drops it at once
==================  ==========================================================  ================================

Holding the lock, the worker (:meth:`ClaimingStudy.ask`)

1. frees the slots of dead workers it can see: a journal's RUNNING trials whose worker process on
   this host is gone (:func:`~nbnet.experiment.sweep.recovery.fail_stale_trials`: failed, their
   parameters enqueued again) and *orphans*, RUNNING trials with no recorded owner older than the
   grace period (their worker died holding the claim, between creating the trial and recording
   itself); in a database, trials whose heartbeat stopped are failed and retried by Optuna
   before every ask (:class:`~nbnet.experiment.sweep.recovery.RetryStaleTrial`);
2. counts the slots in use: finished trials (COMPLETE, PRUNED, FAIL) and RUNNING ones, but not a
   failed trial whose parameters were retried (STALE, :func:`~nbnet.experiment.sweep.summary.counts`)
   and not a WAITING one (a retry waiting to run): a retried trial counts once, as its retry;
3. below ``n_trials``: asks Optuna for the trial (a WAITING retry first, else a new one), and
   records its owner (a first heartbeat in a database, then ``host``/``pid``/``pid_started``)
   before it lets go of the lock.

When every slot is in use but some are still RUNNING, the worker waits and looks again every
:data:`POLL_SECONDS` instead of leaving: if a RUNNING trial's worker dies, its slot comes back
(heartbeat, dead pid or orphan) and a waiting worker runs its parameters. It stops when
``n_trials`` trials have finished, when no RUNNING trial can come back (a journal cannot see the
processes of other machines), on Ctrl-C, or at ``search.timeout``
(:class:`BudgetSpent`, raised out of the worker's ``study.optimize`` or :func:`.pipeline.optimize`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import optuna

from nbnet._sys import interrupt, locks
from nbnet._sys.procs import pid_started
from nbnet.experiment import tags as T
from nbnet.experiment.sweep.recovery import fail_stale_trials, running_trials
from nbnet.experiment.sweep.storage import is_rdb, journal_path
from nbnet.experiment.sweep.summary import counts

POLL_SECONDS = {True: 2.0, False: 0.5}  # how often a waiting worker looks again: database, journal file
IDLE_TIMEOUT = "600s"  # PostgreSQL ends a claim's session left idle in its transaction this long
KEEPALIVE = {"idle": 10, "interval": 5, "count": 3}  # server-side TCP keepalive of the claim's session (s, s, probes)
_PG_NAMESPACE = zlib.crc32(b"nbnet.trial-budget") - 2**31  # first key of the advisory lock; the study's name is the second
_warned: set[str] = set()


class BudgetSpent(Exception):
    """Raised by :meth:`ClaimingStudy.ask` when this worker is to start no more trials."""


START, WAIT, DONE = "start", "wait", "done"


def decide(c: dict, n_trials: int, waitable: int) -> str:
    """What a worker does with the study's counts ``c`` (:func:`~nbnet.experiment.sweep.summary.counts`):
    START a trial while fewer than ``n_trials`` slots are in use (finished + RUNNING), DONE once
    ``n_trials`` have finished, else WAIT while ``waitable`` RUNNING trials may still give their
    slot back (their worker may die), else DONE."""
    finished = c["COMPLETE"] + c["PRUNED"] + c["FAIL"]
    if finished + c["RUNNING"] < n_trials:
        return START
    if finished >= n_trials or not waitable:
        return DONE
    return WAIT


# --- the claim lock ----------------------------------------------------------------------------
def claim_lock(storage: str, storage_obj, study_name: str):
    """A function returning a context manager that holds the study's claim lock (the table in the
    module docstring): exclusive among every process that shares ``storage``."""
    if not is_rdb(storage):
        return lambda: _file_lock(str(journal_path(storage)) + ".claim")
    import sqlalchemy  # heavy: only for database storages

    url = sqlalchemy.engine.make_url(storage)
    backend = url.get_backend_name()
    if backend == "postgresql":
        engine = storage_obj.engine  # the storage's own pool: no extra connection per worker
        keys = {"a": _PG_NAMESPACE, "b": zlib.crc32(study_name.encode()) - 2**31}
        return lambda: _pg_lock(engine, keys)
    if backend == "sqlite" and url.database not in (None, "", ":memory:"):
        return lambda: _file_lock(str(Path(url.database).resolve()) + ".claim")
    if backend != "sqlite" and backend not in _warned:
        _warned.add(backend)
        warnings.warn(f"nbnet claims the trial budget atomically in PostgreSQL, SQLite and journal storages only; "
                      f"workers sharing a {backend} storage may start more trials than search.n_trials", stacklevel=2)
    return contextlib.nullcontext


@contextlib.contextmanager
def _file_lock(path: str):
    fd = locks.acquire(path)  # None where flock does not exist (Windows): one machine, best effort
    try:
        yield
    finally:
        locks.release(fd)


@contextlib.contextmanager
def _pg_lock(engine, keys: dict):
    """``pg_advisory_xact_lock`` held for the block: released by the rollback at its end, or by the
    server when the session ends (process killed: at once; machine lost: TCP keepalive, at the
    latest :data:`IDLE_TIMEOUT`)."""
    import sqlalchemy  # heavy: only for database storages

    conn = engine.connect()
    try:
        tx = conn.begin()
        conn.execute(sqlalchemy.text(f"SET LOCAL idle_in_transaction_session_timeout = '{IDLE_TIMEOUT}'"))
        for k, v in KEEPALIVE.items():
            conn.execute(sqlalchemy.text(f"SET LOCAL tcp_keepalives_{k} = {int(v)}"))
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:a, :b)"), keys)
        try:
            yield
        finally:
            # Nothing to commit: the rollback ends the transaction and so releases the lock. An
            # error here (the server ended the session) must not fail the trial just created.
            with contextlib.suppress(Exception):
                tx.rollback()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# --- the study whose ask() claims a slot ------------------------------------------------------
@dataclass
class Claim:
    """What a worker needs to claim slots of one study's budget: ``n_trials``, the ``storage``
    (URL or journal file) and its opened ``storage_obj``, the MLflow ``uri`` (to close dead
    trials' runs), the ``grace`` seconds after which an unowned RUNNING trial is an orphan, and an
    optional ``deadline`` (``time.monotonic()``; ``search.timeout``) after which it stops waiting."""

    n_trials: int
    storage: str
    storage_obj: object
    uri: str | None
    grace: float
    deadline: float | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def __post_init__(self):
        self.rdb = is_rdb(self.storage)
        self.pid_started = pid_started(self.pid)
        self._sid = None  # the study's id in storage_obj, once looked up

    def verdict(self, study, busy=frozenset()) -> str:
        """Under the lock: free the slots of dead workers that this process can see, then
        :func:`decide` from the study's counts. ``busy``: the trials this process is working on."""
        if not self.rdb:  # a journal has no heartbeat: this host's dead workers, by pid
            fail_stale_trials(study, self.storage_obj, self.uri, busy)
        running = running_trials(study)
        if self._fail_orphans(study, running):
            running = running_trials(study)
        waitable = sum(1 for t in running if self.rdb or t.user_attrs.get(T.TRIAL_HOST, self.host) == self.host)
        return decide(counts(study), self.n_trials, waitable)

    def own(self, study, trial) -> None:
        """Under the lock: record the new trial's owner, so that its slot comes back if this
        process dies (a first heartbeat in a database, then host, pid and its start time)."""
        if self.rdb:
            self.storage_obj.record_heartbeat(self._trial_id(study, trial.number))
        trial.set_user_attr(T.TRIAL_HOST, self.host)
        trial.set_user_attr(T.TRIAL_PID, self.pid)
        if self.pid_started is not None:
            trial.set_user_attr(T.TRIAL_PID_STARTED, self.pid_started)

    def wait(self, study) -> bool:
        """Sleep one poll while every slot is in use; False when this worker is to stop instead
        (Ctrl-C or SIGTERM, ``deadline``)."""
        if interrupt.requested() or (self.deadline is not None and time.monotonic() >= self.deadline):
            return False
        time.sleep(POLL_SECONDS[self.rdb])  # poll the study: a RUNNING trial finishes or gives its slot back
        if self.rdb:  # heartbeats: what Optuna does before each ask, so that a dead worker's slot comes back
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        return not interrupt.requested()

    def _trial_id(self, study, number: int) -> int:
        if self._sid is None:
            self._sid = self.storage_obj.get_study_id_from_name(study.study_name)
        return self.storage_obj.get_trial_id_from_study_id_trial_number(self._sid, number)

    def _fail_orphans(self, study, running: list) -> int:
        """Fail (as stale, parameters enqueued again) the RUNNING trials with no owner that are
        older than ``grace``: their worker died holding the claim. Returns how many."""
        n = 0
        for t in running:
            start = t.datetime_start
            if T.TRIAL_HOST in t.user_attrs or start is None:
                continue
            if (datetime.now(start.tzinfo) - start).total_seconds() < self.grace:
                continue
            tid = self._trial_id(study, t.number)
            self.storage_obj.set_trial_user_attr(tid, T.TRIAL_FAIL_REASON, "its worker died while starting it")
            self.storage_obj.set_trial_user_attr(tid, T.TRIAL_STALE, True)
            try:
                self.storage_obj.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
            except RuntimeError:
                continue  # it finished meanwhile
            n += 1
            if t.params:
                study.enqueue_trial(dict(t.params), user_attrs={T.TRIAL_RETRY_OF: t.number})
        return n


class ClaimingStudy(optuna.Study):
    """An Optuna study whose :meth:`ask` claims a slot of the budget first (see the module
    docstring): a worker's loop then starts trials only while the budget has room, waits while
    it is full of RUNNING trials, and ends with :class:`BudgetSpent`."""

    def __init__(self, study_name: str, storage_obj, claim: Claim, *, sampler=None, pruner=None):
        super().__init__(study_name=study_name, storage=storage_obj, sampler=sampler, pruner=pruner)
        self.claim = claim
        self.claim_lock = claim_lock(claim.storage, storage_obj, study_name)
        #: the numbers of this worker's trials that are still being tracked (:mod:`.pipeline`)
        self.busy: set[int] = set()
        #: called when every slot is in use, before polling: finishes this worker's own pending
        #: trial (:mod:`.pipeline`) and says whether there was one
        self.before_waiting = None

    def ask(self, fixed_distributions=None):
        while True:
            with self.claim_lock():
                verdict = self.claim.verdict(self, self.busy)
                if verdict == START:
                    trial = super().ask(fixed_distributions)
                    self.claim.own(self, trial)
                    return trial
            if verdict == DONE:
                break
            if self.before_waiting is not None and self.before_waiting():
                continue  # this worker's own pending trial is told now: count again
            if not self.claim.wait(self):
                break
        raise BudgetSpent(f"study {self.study_name!r}: no trial left to start of {self.claim.n_trials}")
