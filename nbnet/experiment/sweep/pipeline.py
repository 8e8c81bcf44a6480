"""One worker's trials, each trial's tracking overlapping the next trial's training.

A trial has two halves (:class:`~nbnet.experiment.trial.Objective`): ``start`` creates its run
and trains; ``finish`` logs its plots and model, ends the run and returns the value. Then the
study is told. :func:`optimize` runs trial N's ``finish`` in a helper thread while trial N + 1
trains in the worker's own thread, and tells the study trial N's outcome once trial N + 1 has
trained.

That pays where the training leaves a core free and the GIL released: an epoch of small
mini-batches is one compiled call on one thread (:func:`nbnet.kernels.threads.epoch_threads`),
during which the helper runs. Each time the training needs the GIL back it waits for the helper
to yield it, so while a helper runs the interpreter's switch interval is cut to
:data:`SWITCH_SECONDS` (from Python's 5 ms).

What holds as in ``study.optimize``:

* a trial is told COMPLETE only after its run is FINISHED with its model;
* a worker killed at any moment leaves its untold trials RUNNING in the study. The sweep's next
  start fails them, closes their runs FAILED and runs their parameters again (:mod:`.recovery`),
  as for a worker killed during training. No told trial is lost;
* a trial's slot of the budget (:mod:`.budget`) stays taken until it is told. When the budget is
  full, the worker tells its own pending trial instead of waiting for it;
* a seeded sweep repeats itself: trial N + 1 is sampled and pruned while trial N is RUNNING, every
  time. The sampler and the pruner see the trials up to N - 1, one trial fewer than in
  ``study.optimize``;
* the CPU seconds a trial records are its training's; the helper's are left out
  (:mod:`nbnet._sys.cputime`). Its own seconds are the user attribute ``seconds`` (its run's
  start to end), which its progress line shows: Optuna's ``datetime_complete`` comes after the
  next trial's training.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

import optuna

from nbnet._sys import cputime, interrupt
from nbnet.experiment import tags as T
from nbnet.experiment.sweep.budget import BudgetSpent
from nbnet.experiment.trial import retry_later

#: The interpreter's switch interval while a helper tracks a trial: how long the training may wait
#: for the GIL after each compiled call.
SWITCH_SECONDS = 1e-4


class _Finishing(threading.Thread):
    """One trial's ``objective.finish`` in a helper thread, the interpreter's switch interval cut
    to :data:`SWITCH_SECONDS` meanwhile; :meth:`tell` waits for it and tells the study."""

    def __init__(self, objective, run):
        super().__init__(name=f"nbnet-track-{run.trial.number}", daemon=True)
        self.objective, self.run_ = objective, run
        self.value: float | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self.switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self.switch, SWITCH_SECONDS))
        super().start()

    def run(self) -> None:
        with cputime.helper():
            try:
                self.value = self.objective.finish(self.run_)
            except BaseException as e:  # noqa: BLE001 (told, and raised if need be, by tell())
                self.error = e
            finally:
                sys.setswitchinterval(self.switch)

    def tell(self, study, catch: tuple, after_trial) -> None:
        """Wait for ``finish``, tell the study the trial's outcome, then ``after_trial(study,
        frozen)``; an exception of ``finish`` not in ``catch`` (the trial told FAIL) goes on."""
        self.join()
        state, trial, e = optuna.trial.TrialState, self.run_.trial, self.error
        if e is None:
            frozen = study.tell(trial, self.value)
        elif isinstance(e, optuna.TrialPruned):
            frozen = study.tell(trial, state=state.PRUNED)
        elif isinstance(e, catch):
            frozen = study.tell(trial, state=state.FAIL)
        else:
            _fail(study, trial)
            raise e
        after_trial(study, frozen)


def _fail(study, trial, reason: str | None = None) -> None:
    """Tell ``trial`` FAIL (with ``reason``, its parameters enqueued again) on the way out of an
    error, which goes on even when this fails too (a full disk, a lost store)."""
    with contextlib.suppress(Exception):
        if reason:
            trial.set_user_attr(T.TRIAL_FAIL_REASON, reason)
            retry_later(trial)
        study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def optimize(study, objective, *, timeout: float | None, catch: tuple, after_trial) -> None:
    """Run trials of ``study`` (a :class:`.budget.ClaimingStudy`) until its ``ask`` raises
    :class:`.budget.BudgetSpent`, Ctrl-C / SIGTERM is requested (:mod:`nbnet._sys.interrupt`) or
    ``timeout`` seconds have passed; each trial's ``finish`` overlaps the next trial's ``start``,
    and the study is told a trial's outcome once the next trial has trained. An error that
    ``study.optimize`` would raise (not in ``catch``) stops the loop before the next trial."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending: _Finishing | None = None

    def settle() -> bool:
        """Tell the study the pending trial's outcome, if there is one (True then)."""
        nonlocal pending
        if pending is None:
            return False
        done, pending = pending, None
        try:
            done.tell(study, catch, after_trial)
        finally:
            study.busy.discard(done.run_.trial.number)
        return True

    study.before_waiting = settle  # a full budget: finish our own trial before polling for others'
    try:
        while not interrupt.requested() and (deadline is None or time.monotonic() < deadline):
            try:
                trial = study.ask()
            except BudgetSpent:
                break
            try:
                run = objective.start(trial)
            except BaseException:
                _fail(study, trial)
                raise
            try:
                settle()
            except BaseException:  # the trial before could not be recorded: this one is run again later
                _fail(study, trial, "not recorded: the sweep stopped on an error recording the trial before it")
                raise
            pending = _Finishing(objective, run)
            study.busy.add(trial.number)
            pending.start()
            if run.error is not None and not isinstance(run.error, (optuna.TrialPruned, *catch)):
                settle()  # KeyboardInterrupt, a store fault: close the run, tell the trial, then stop
    finally:
        study.before_waiting = None
        settle()
