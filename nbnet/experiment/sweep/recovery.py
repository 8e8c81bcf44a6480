"""Trials whose worker died: found, failed with a reason, their MLflow runs closed FAILED, and
their parameters enqueued again so the study still runs them.

A journal storage has no heartbeat: on start, a sweep fails the RUNNING trials whose worker
process on this host is gone (:func:`fail_stale_trials`; the worker is recorded as trial user
attrs ``host``/``pid``/``pid_started``). An RDB storage has heartbeats: Optuna fails a trial whose
heartbeat went stale and calls :class:`RetryStaleTrial`, on any machine.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import warnings

import optuna

from nbnet._sys.procs import pid_started
from nbnet.experiment import faults
from nbnet.experiment import tags as T
from nbnet.experiment import tracking


class RetryStaleTrial:
    """Optuna's ``heartbeat_stale_trial_callback``: Optuna has just set a trial whose worker stopped
    beating to FAIL. Record why, close the trial's MLflow run FAILED, and enqueue its parameters as
    a WAITING trial (user attr ``retry_of``), at most ``max_retry`` times per original trial — the
    behaviour of ``optuna.storages.RetryHeartbeatStaleTrialCallback`` plus the MLflow side."""

    def __init__(self, max_retry: int, grace: int, uri: str | None):
        self.max_retry, self.grace, self.uri = max_retry, grace, uri

    def __call__(self, study, trial) -> None:
        a = trial.user_attrs
        reason = (f"no heartbeat for {self.grace}s from worker {a.get(T.TRIAL_PID, '?')} on {a.get(T.TRIAL_HOST, '?')} "
                  "(process or machine died)")
        run_id = a.get(T.TRIAL_RUN_ID)
        if run_id:
            with contextlib.suppress(Exception):  # the tracking server may be what died
                tracking.set_tags(run_id, {T.OPTUNA_STATE: "FAIL", T.REASON: reason}, uri=self.uri)
                tracking.end_run(run_id, "FAILED", uri=self.uri)
        history = list(trial.system_attrs.get(T.OPTUNA_SYS_RETRY_HISTORY, [])) + [trial.number]
        if len(history) > self.max_retry:
            return
        keep = {k: v for k, v in a.items() if k not in (T.TRIAL_RUN_ID, T.TRIAL_HOST, T.TRIAL_PID, T.TRIAL_PID_STARTED)}
        keep.update({T.TRIAL_RETRY_OF: trial.number, T.TRIAL_RETRY_REASON: reason})
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs=keep, system_attrs={T.OPTUNA_SYS_FAILED_TRIAL: history[0], T.OPTUNA_SYS_RETRY_HISTORY: history}))


def running_trials(study) -> list:
    """The study's RUNNING trials (shallow copies)."""
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def _unowned_grace() -> float:
    """Seconds after which a RUNNING trial that never recorded its worker counts as dead
    (``NBNET_GRACE_SECONDS``, default 60: the heartbeat grace period)."""
    return float(os.environ.get("NBNET_GRACE_SECONDS", 60))


def _stale_trials(study, busy=frozenset()) -> list:
    """RUNNING trials whose worker process on this host is gone (or is this one, except the trial
    numbers in ``busy``, which it is working on), and those whose worker never recorded itself (it
    died, or lost its store, within moments of starting the trial) once they are older than the
    grace period: no heartbeat will ever fail them."""
    host = socket.gethostname()
    stale = []
    for t in running_trials(study):
        a = t.user_attrs
        if a.get(T.TRIAL_HOST) is None or T.TRIAL_PID not in a:
            age = (datetime.datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else 0.0
            if age > _unowned_grace():
                stale.append(t)
            continue
        if a.get(T.TRIAL_HOST) != host:
            continue  # another machine's worker: its heartbeat tells
        pid = int(a[T.TRIAL_PID])
        started = pid_started(pid)
        alive = started is not None and (a.get(T.TRIAL_PID_STARTED) is None or abs(started - float(a[T.TRIAL_PID_STARTED])) < 1.0)
        if (pid == os.getpid() and t.number not in busy) or not alive:
            stale.append(t)
    return stale


def _run_of_dead_trial(study, trial, uri: str | None) -> str | None:
    """The MLflow run of a trial whose worker died before recording its run id: the child run
    named ``trial-N`` if the worker got as far as creating it, else a new one (so that every
    trial keeps exactly one run, closed FAILED by the caller)."""
    parent = study.user_attrs.get(T.STUDY_PARENT_RUN_ID)
    if not parent:
        return None
    with contextlib.suppress(Exception):
        c = tracking.client(uri)
        exp = c.get_run(parent).info.experiment_id
        name = f"trial-{trial.number}"
        found = c.search_runs([exp], filter_string=f"tags.{T.MLFLOW_PARENT_RUN_ID} = '{parent}' and attributes.run_name = '{name}'",
                              max_results=1)
        if found:
            return found[0].info.run_id
        tags = {T.KIND: "trial", T.OPTUNA_TRIAL: str(trial.number), T.OPTUNA_STUDY: study.study_name}
        return tracking.start_run(exp, run_name=name, parent_run_id=parent, tags=tags, params=dict(trial.params), uri=uri)
    return None


def fail_stale_trials(study, storage, uri: str | None = None, busy=frozenset()) -> int:
    """Mark trials left RUNNING by a dead worker FAIL (with a reason), close their MLflow runs
    FAILED, and enqueue their parameters so they are retried. Returns how many. ``busy``: numbers
    of trials this process is still working on."""
    stale = _stale_trials(study, busy)
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in stale:
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        who = (f"worker process {t.user_attrs[T.TRIAL_PID]} on {t.user_attrs.get(T.TRIAL_HOST)}" if T.TRIAL_PID in t.user_attrs
               else "its worker, which never recorded itself,")
        reason = f"{who} died; parameters re-enqueued"
        storage.set_trial_user_attr(tid, T.TRIAL_FAIL_REASON, reason)
        storage.set_trial_user_attr(tid, T.TRIAL_STALE, True)
        try:
            storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
        except RuntimeError:
            continue  # finished meanwhile
        run_id = t.user_attrs.get(T.TRIAL_RUN_ID) or _run_of_dead_trial(study, t, uri)
        if run_id:
            with contextlib.suppress(Exception):
                tracking.set_tags(run_id, {T.OPTUNA_STATE: "FAIL", T.REASON: reason}, uri=uri)
                tracking.end_run(run_id, "FAILED", uri=uri)
        if t.params:
            study.enqueue_trial(dict(t.params), user_attrs={T.TRIAL_RETRY_OF: t.number})
    return len(stale)


#: A finished trial's state → the status its MLflow run must have.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def close_runs_of_finished_trials(study, uri: str | None) -> int:
    """End the MLflow runs still RUNNING although their trial finished (the tracking store was
    unreachable when the trial ended), with the status of the trial's state; returns how many.
    Only finished trials' runs are touched, so this is safe while other machines run trials."""
    parent = study.user_attrs.get(T.STUDY_PARENT_RUN_ID)
    finished = {t.user_attrs.get(T.TRIAL_RUN_ID): t for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    if not parent or not finished:
        return 0
    c = tracking.client(uri)
    try:
        exp = c.get_run(parent).info.experiment_id
    except Exception as e:
        if faults.describe(e) is not None:
            raise
        return 0  # the tracking store was reset: the sweep starts a new parent run
    running = c.search_runs([exp], filter_string=f"tags.`{T.MLFLOW_PARENT_RUN_ID}` = '{parent}' and "
                                                 "attributes.status = 'RUNNING'", max_results=10_000)
    n = 0
    for r in running:
        t = finished.get(r.info.run_id)
        if t is None:
            continue
        reason = t.user_attrs.get(T.TRIAL_FAIL_REASON, "closed on resume: its trial had finished")
        tracking.set_tags(r.info.run_id, {T.OPTUNA_STATE: t.state.name, T.REASON: reason}, uri=uri)
        tracking.end_run(r.info.run_id, RUN_STATUS[t.state.name], uri=uri)
        n += 1
    return n


def recover_study(study, storage_obj, rdb: bool, uri: str | None) -> int:
    """Fail and retry the trials of dead workers: this host's (:func:`fail_stale_trials`, whose
    count it returns) and, in a database storage (``rdb``), every machine's whose heartbeat stopped;
    then end the runs that a finished trial left RUNNING (:func:`close_runs_of_finished_trials`)."""
    n_stale = fail_stale_trials(study, storage_obj, uri)
    if rdb:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    close_runs_of_finished_trials(study, uri)
    return n_stale
