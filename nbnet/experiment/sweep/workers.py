"""The processes that run a sweep's trials.

``workers=N`` runs worker 0 in the sweep's process and spawns N - 1 more (never fork: numba's
threading layers and MLflow clients do not survive it), each running trials of the shared study:
``study.optimize``, or for a lone worker on a journal file :func:`.pipeline.optimize`, which tracks
each trial while the next one trains. They share numba's on-disk compile cache, so only the first trial of a fresh checkout
compiles. Together with every other process on the study, on any machine, they run exactly the
missing trials: before each trial a worker claims a slot of the budget in the storage
(:mod:`.budget`), and it stops when none is left.

A worker gets everything it needs in one picklable ``payload`` dict: the resolved config
(``config``, ``name``), ``study``, ``storage``, the MLflow ``uri``, ``experiment_id``,
``parent_run_id``, the sampler ``seed``, ``quiet``, ``workers``, ``shared`` (the prepared data,
:meth:`nbnet.data.prepared.SharedData.payload`, or None) and ``events`` (or None).

Progress events. With a ``progress`` callable, :func:`relay` gives the workers a pipe
(``events``) and passes what they send on it to ``progress`` in a thread of the sweep's process;
the workers then print nothing themselves. Each event is a dict with a ``kind``:

* ``start`` (sent by ``run_sweep``): ``total`` (search.n_trials), ``done``, ``complete``,
  ``pruned``, ``failed`` (trials of the study so far), ``best`` (value or None), ``metric``,
  ``direction``;
* ``epoch``: ``worker``, ``trial``, ``epoch``, ``epochs`` — after every epoch of a trial;
* ``trial``: ``worker``, ``trial``, ``state`` (COMPLETE, PRUNED, FAIL), ``value`` (or None),
  ``line`` (:func:`nbnet.experiment.trial.progress_line`) — when a trial ends;
* ``end`` (sent by ``run_sweep``): no more events.

Without ``progress`` each worker prints a trial's line when it ends, unless ``quiet``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing as mp
import os
import pickle
import sys
import threading
import time
import warnings

import optuna

from nbnet._sys import interrupt
from nbnet.data.prepared import prepare_data, receive_shared
from nbnet.errors import EXIT_STORE_ERROR, NbnetError
from nbnet.experiment import config as C
from nbnet.experiment import faults
from nbnet.experiment.sweep import pipeline
from nbnet.experiment.sweep.budget import BudgetSpent, Claim, ClaimingStudy
from nbnet.experiment.sweep.samplers import make_pruner, make_sampler, worker_seed
from nbnet.experiment.sweep.storage import GRACE_SECONDS, close_storage, is_rdb, open_storage
from nbnet.experiment.trial import Objective, TrialContext, progress_line


def new_stop_event():
    """The event that stops every worker at its next epoch boundary (:func:`nbnet._sys.interrupt.graceful`)."""
    return mp.get_context("spawn").Event()


class _WorkerCallbacks:
    """The callbacks of one worker's ``study.optimize`` (or :func:`.pipeline.optimize`)."""

    def __init__(self, cfg: C.ExperimentConfig, worker: int, workers: int, quiet: bool, events=None):
        self.cfg, self.worker, self.workers, self.quiet = cfg, worker, workers, quiet
        self.events = events

    def after_trial(self, study, trial) -> None:
        """Report the trial's progress line."""
        line = progress_line(trial, self.cfg.search.metric, self.worker, self.workers)
        if self.events is not None:
            value = trial.value if trial.state.name == "COMPLETE" else None
            send_event(self.events, {"kind": "trial", "worker": self.worker, "trial": trial.number,
                                     "state": trial.state.name, "value": value, "line": line})
        elif not self.quiet:
            print(line, flush=True)

    @staticmethod
    def stop_when_asked(study, trial) -> None:
        """After Ctrl-C / SIGTERM, ``study.optimize`` starts no new trial."""
        if interrupt.requested():
            study.stop()


def worker_main(payload: dict, worker: int, stop=None) -> None:
    """Entry point of a (spawned) worker process; also called in-process for one worker.
    ``stop``: the sweep's shared stop event (:mod:`nbnet._sys.interrupt`)."""
    with interrupt.graceful(stop, announce=False):
        try:
            _worker_loop(payload, worker)
        except KeyboardInterrupt:
            if not interrupt.requested():  # e.g. a signal before the handlers were installed
                raise
        except Exception as e:
            fault = faults.describe(e)
            if worker == 0 or fault is None:
                raise  # worker 0 is the sweep's own process: the CLI reports it
            print(f"nbnet: store error: {fault} (worker {worker})", file=sys.stderr, flush=True)
            sys.exit(EXIT_STORE_ERROR)  # one line, not multiprocessing's traceback


def _worker_loop(payload: dict, worker: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # one line per trial is the progress report
    faults.bounded_retries()  # and a store fault is one line, not MLflow's and Optuna's logged tracebacks
    cfg = C.from_dict(payload["config"], payload["name"])
    if worker > 0:
        receive_shared(payload.get("shared"), cfg)
    data = prepare_data(cfg)
    study, storage = _load_study(payload, cfg, worker)
    events = payload.get("events")
    ctx = TrialContext(cfg, data, payload["study"], payload["experiment_id"], payload["parent_run_id"], payload["uri"],
                       worker, payload["quiet"], report=functools.partial(send_event, events) if events is not None else None)
    callbacks = _WorkerCallbacks(cfg, worker, payload["workers"], ctx.quiet, events)
    if interrupt.requested():
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if payload["workers"] > 1 or is_rdb(payload["storage"]) or cfg.search.sampler == "grid":
                # workers beside each other keep the cores busy: overlapping tracking would only slow them
                # (docs/benchmarks.md); in a database Optuna's heartbeat thread watches each trial; the grid
                # sampler stops study.optimize itself when the grid is done
                study.optimize(Objective(ctx), timeout=cfg.search.timeout, catch=(NbnetError,),
                               callbacks=[callbacks.after_trial, callbacks.stop_when_asked])
            else:
                pipeline.optimize(study, Objective(ctx), timeout=cfg.search.timeout, catch=(NbnetError,),
                                  after_trial=callbacks.after_trial)
    except BudgetSpent:  # every slot of search.n_trials is taken, or finished
        pass
    finally:
        storage.remove_session()
        close_storage(storage)


def _load_study(payload: dict, cfg: C.ExperimentConfig, worker: int):
    """(The sweep's study, which claims each trial from the budget (:class:`.budget.ClaimingStudy`),
    with this worker's own sampler (seeded per worker) and pruner; its opened storage)."""
    s = cfg.search
    storage = open_storage(payload["storage"], uri=payload["uri"])
    sampler = make_sampler(s.sampler, s.space, seed=worker_seed(payload["seed"], worker, is_rdb(payload["storage"])),
                           n_startup_trials=s.n_startup_trials)
    pruner = make_pruner(s.pruner, epochs=cfg.train.epochs, n_startup_trials=s.n_startup_trials,
                         n_warmup_steps=s.n_warmup_steps, epochs_searched="train.epochs" in s.space)
    claim = Claim(s.n_trials, payload["storage"], storage, payload["uri"],
                  grace=getattr(storage, "grace_period", None) or float(os.environ.get("NBNET_GRACE_SECONDS", GRACE_SECONDS)),
                  deadline=None if s.timeout is None else time.monotonic() + s.timeout)
    return ClaimingStudy(payload["study"], storage, claim, sampler=sampler, pruner=pruner), storage


#: An event's size at most, in bytes: with its 4-byte header under the smallest ``PIPE_BUF`` (512
#: on macOS, 4096 on Linux), so that sending it is one write the kernel never interleaves.
MAX_EVENT_BYTES = 500


def send_event(conn, event: dict) -> None:
    """Send one progress event on the sweep's pipe (:func:`relay`), its ``line`` shortened if
    needed to stay within :data:`MAX_EVENT_BYTES`."""
    data = pickle.dumps(event)
    if len(data) > MAX_EVENT_BYTES and event.get("line"):
        raw = event["line"].encode()
        keep = max(0, len(raw) - (len(data) - MAX_EVENT_BYTES) - len("…".encode()))
        event = {**event, "line": raw[:keep].decode(errors="ignore") + "…"}
        data = pickle.dumps(event)
    if len(data) <= MAX_EVENT_BYTES:  # else (no line to shorten) it is not shown
        conn.send_bytes(data)


@contextlib.contextmanager
def relay(progress):
    """The pipe the workers send their progress events on (:func:`send_event`), and a thread of
    this process that hands them to ``progress``; yields the pipe's sending end (None without
    ``progress``). Every event sent before the block ends is delivered.

    One pipe and no lock: an event is one write of less than ``PIPE_BUF`` bytes, which the kernel
    never interleaves with another, so a worker killed at any moment leaves neither half a message
    nor a lock held (a ``multiprocessing.Queue`` would: its lock)."""
    if progress is None:
        yield None
        return
    receiver, sender = mp.get_context("spawn").Pipe(duplex=False)

    def deliver():
        while (event := pickle.loads(receiver.recv_bytes())) is not None:
            try:
                progress(event)
            except Exception as e:  # noqa: BLE001 (a display must not stop the sweep)
                logging.getLogger(__name__).warning("progress display failed: %s", e)

    thread = threading.Thread(target=deliver, name="nbnet-sweep-progress", daemon=True)
    thread.start()
    try:
        yield sender
    finally:
        sender.send_bytes(pickle.dumps(None))  # after every worker's events: they sent theirs before they ended
        thread.join(timeout=30)
        sender.close()
        receiver.close()


def run_workers(payload: dict, n: int, stop=None, share=None) -> list[int]:
    """Worker 0 runs in this process, which has its imports and data loaded already; workers
    1 … n-1 are spawned first, and import while ``share()`` (if given) writes the prepared data
    for them. Returns the spawned workers' exit codes."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(payload, i, stop), name=f"nbnet-sweep-{i}") for i in range(1, n)]
    for p in procs:
        p.start()
    try:
        if share is not None:
            share()
        worker_main(payload, 0, stop)
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:  # they got the same SIGINT from the terminal; give them a moment to close runs
            p.join(timeout=10)
        for p in procs:
            if p.is_alive():
                p.terminate()
        raise
    return [p.exitcode for p in procs]
