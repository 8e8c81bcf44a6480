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
  (:mod:`nbnet._sys.cputime`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

import optuna

from nbnet._sys import cputime, interrupt

#: The interpreter's switch interval while a helper tracks a trial: how long the training may wait
#: for the GIL after each compiled call.
SWITCH_SECONDS = 1e-4


class _Finishing(threading.Thread):
    """One trial's ``objective.finish`` in a helper thread; :meth:`outcome` waits for it."""

    def __init__(self, objective, run):
        super().__init__(name=f"nbnet-track-{run.trial.number}", daemon=True)
        self.objective, self.run_ = objective, run
        self.value: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        with cputime.helper():
            try:
                self.value = self.objective.finish(self.run_)
            except BaseException as e:  # noqa: BLE001 (told, and raised if need be, by tell())
                self.error = e

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
        else:  # the trial's own fault goes on, even when telling it fails too (a full disk)
            with contextlib.suppress(Exception):
                study.tell(trial, state=state.FAIL, skip_if_finished=True)
            raise e
        after_trial(study, frozen)


def optimize(study, objective, *, timeout: float | None, catch: tuple, after_trial, budget_spent: type) -> None:
    """Run trials of ``study`` (a :class:`.budget.ClaimingStudy`) until its ``ask`` raises
    ``budget_spent``, Ctrl-C / SIGTERM is requested (:mod:`nbnet._sys.interrupt`) or ``timeout``
    seconds have passed; each trial's ``finish`` overlaps the next trial's ``start``, and the
    study is told a trial's outcome once the next trial has trained."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending: _Finishing | None = None
    switch = sys.getswitchinterval()

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
            sys.setswitchinterval(switch)
        return True

    study.before_waiting = settle  # a full budget: finish our own trial before polling for others'
    try:
        while not interrupt.requested() and (deadline is None or time.monotonic() < deadline):
            try:
                trial = study.ask()
            except budget_spent:
                break
            run = objective.start(trial)
            settle()
            pending = _Finishing(objective, run)
            study.busy.add(trial.number)
            sys.setswitchinterval(min(switch, SWITCH_SECONDS))
            pending.start()
            if run.error is not None and not isinstance(run.error, Exception):
                settle()  # KeyboardInterrupt, SystemExit: close the run now, then stop
    finally:
        study.before_waiting = None
        settle()
