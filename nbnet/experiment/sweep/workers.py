"""The processes that run a sweep's trials.

``workers=N`` runs worker 0 in the sweep's process and spawns N - 1 more (never fork: numba's
threading layers and MLflow clients do not survive it), each running ``study.optimize`` on the
shared study. They share numba's on-disk compile cache, so only the first trial of a fresh checkout
compiles. Together they run exactly the missing trials: each takes a ticket from a shared counter
before a trial, and a callback that counts finished and running trials stops them when other
processes (on any machine) have run the rest.

A worker gets everything it needs in one picklable ``payload`` dict: the resolved config
(``config``, ``name``), ``study``, ``storage``, the MLflow ``uri``, ``experiment_id``,
``parent_run_id``, the sampler ``seed``, ``quiet``, ``workers`` and ``shared`` (the prepared data,
:meth:`nbnet.data.prepared.SharedData.payload`, or None).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
import warnings

import optuna

from nbnet._sys import interrupt
from nbnet.data.prepared import prepare_data, receive_shared
from nbnet.errors import EXIT_STORE_ERROR, NbnetError
from nbnet.experiment import config as C
from nbnet.experiment import faults
from nbnet.experiment.sweep.samplers import make_pruner, make_sampler, worker_seed
from nbnet.experiment.sweep.storage import is_rdb, open_storage
from nbnet.experiment.sweep.summary import counts
from nbnet.experiment.trial import Objective, TrialContext, progress_line


def new_tickets(n: int):
    """A counter of ``n`` trials shared with spawned workers (a ``multiprocessing.Value``)."""
    return mp.get_context("spawn").Value("i", n)


def new_stop_event():
    """The event that stops every worker at its next epoch boundary (:func:`nbnet._sys.interrupt.graceful`)."""
    return mp.get_context("spawn").Event()


def take_ticket(tickets) -> bool:
    """Take one trial off ``tickets``; False when none is left or a stop was requested."""
    if interrupt.requested():  # Ctrl-C / SIGTERM: no new trial
        return False
    with tickets.get_lock():
        if tickets.value <= 0:
            return False
        tickets.value -= 1
        return True


class _WorkerCallbacks:
    """The Optuna callbacks of one worker's ``study.optimize``."""

    def __init__(self, tickets, cfg: C.ExperimentConfig, worker: int, workers: int, quiet: bool):
        self.tickets, self.cfg, self.worker, self.workers, self.quiet = tickets, cfg, worker, workers, quiet

    def enough(self, study, trial) -> None:
        """Stop at search.n_trials over every worker on every machine: finished or RUNNING trials
        count (another machine may be running the last ones); stale trials that were retried do not."""
        c = counts(study)
        if c["COMPLETE"] + c["PRUNED"] + c["FAIL"] + c["RUNNING"] >= self.cfg.search.n_trials:
            study.stop()

    def after_trial(self, study, trial) -> None:
        """Print the trial's progress line and take the ticket of the next trial, or stop."""
        if not self.quiet:
            print(progress_line(trial, self.cfg.search.metric, self.worker, self.workers), flush=True)
        if not take_ticket(self.tickets):
            study.stop()


def worker_main(payload: dict, tickets, worker: int, stop=None) -> None:
    """Entry point of a (spawned) worker process; also called in-process for one worker.
    ``stop``: the sweep's shared stop event (:mod:`nbnet._sys.interrupt`)."""
    with interrupt.graceful(stop, announce=False):
        try:
            _worker_loop(payload, tickets, worker)
        except KeyboardInterrupt:
            if not interrupt.requested():  # e.g. a signal before the handlers were installed
                raise
        except Exception as e:
            fault = faults.describe(e)
            if worker == 0 or fault is None:
                raise  # worker 0 is the sweep's own process: the CLI reports it
            print(f"nbnet: store error: {fault} (worker {worker})", file=sys.stderr, flush=True)
            sys.exit(EXIT_STORE_ERROR)  # one line, not multiprocessing's traceback


def _worker_loop(payload: dict, tickets, worker: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # one line per trial is the progress report
    faults.bounded_retries()  # and a store fault is one line, not MLflow's and Optuna's logged tracebacks
    cfg = C.from_dict(payload["config"], payload["name"])
    if worker > 0:
        receive_shared(payload.get("shared"), cfg)
    data = prepare_data(cfg)
    study = _load_study(payload, cfg, worker)
    ctx = TrialContext(cfg, data, payload["study"], payload["experiment_id"], payload["parent_run_id"], payload["uri"],
                       worker, payload["quiet"])
    callbacks = _WorkerCallbacks(tickets, cfg, worker, payload["workers"], ctx.quiet)
    if not take_ticket(tickets):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(Objective(ctx), timeout=cfg.search.timeout, catch=(NbnetError,),
                       callbacks=[callbacks.enough, callbacks.after_trial])


def _load_study(payload: dict, cfg: C.ExperimentConfig, worker: int):
    """The sweep's study, with this worker's own sampler (seeded per worker) and pruner."""
    s = cfg.search
    storage = open_storage(payload["storage"], uri=payload["uri"])
    sampler = make_sampler(s.sampler, s.space, seed=worker_seed(payload["seed"], worker, is_rdb(payload["storage"])),
                           n_startup_trials=s.n_startup_trials)
    pruner = make_pruner(s.pruner, epochs=cfg.train.epochs, n_startup_trials=s.n_startup_trials,
                         n_warmup_steps=s.n_warmup_steps, epochs_searched="train.epochs" in s.space)
    return optuna.load_study(study_name=payload["study"], storage=storage, sampler=sampler, pruner=pruner)


def run_workers(payload: dict, n: int, tickets, stop=None, share=None) -> list[int]:
    """Worker 0 runs in this process, which has its imports and data loaded already; workers
    1 … n-1 are spawned first, and import while ``share()`` (if given) writes the prepared data
    for them. Returns the spawned workers' exit codes."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(payload, tickets, i, stop), name=f"nbnet-sweep-{i}") for i in range(1, n)]
    for p in procs:
        p.start()
    try:
        if share is not None:
            share()
        worker_main(payload, tickets, 0, stop)
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
