"""One sweep trial: Optuna's suggestions → a config → one tracked child run → the metric.

:func:`suggest` turns a config's ``[search.space]`` into ``trial.suggest_*`` calls (and
:func:`grid_space` into the grid sampler's grid); :class:`Objective` is ``objective(trial)``,
which trains through :func:`nbnet.experiment.run.fit_once` with a :class:`PruningReport`
callback, logs the results with :func:`~nbnet.experiment.run.log_fitted` and closes the child run
FINISHED / FAILED / KILLED (pruned) with the Optuna state as tag
``optuna.state``; :func:`progress_line` is the line a sweep prints per finished trial.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field

import optuna

from nbnet._sys import interrupt
from nbnet._sys.fmt import number
from nbnet.data.prepared import Data
from nbnet.errors import NbnetError
from nbnet.experiment import config as C
from nbnet.experiment import faults
from nbnet.experiment import tags as T
from nbnet.experiment import resources, tracking
from nbnet.experiment.run import COST_KEYS, Clock, Fitted, fit_once, log_fitted
from nbnet.metrics import default_metric


# --- the search space --------------------------------------------------------------------------
def _encode_choice(c):
    """Optuna categorical choices must be None/bool/int/float/str: lists travel as JSON text."""
    return json.dumps(list(c)) if isinstance(c, (tuple, list)) else c


def _decode_choice(c, spec: C.ParamSpec):
    if isinstance(c, str) and any(isinstance(x, (tuple, list)) for x in spec.choices):
        return tuple(json.loads(c))
    return c


def suggest(trial, space: dict) -> dict:
    """Dotted config path → value suggested by ``trial`` for every entry of ``space``."""
    out = {}
    for path, spec in space.items():
        if spec.type == "categorical":
            choice = trial.suggest_categorical(path, [_encode_choice(c) for c in spec.choices])
            out[path] = _decode_choice(choice, spec)
        elif spec.type == "int":
            out[path] = trial.suggest_int(path, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            out[path] = trial.suggest_float(path, float(spec.low), float(spec.high), step=spec.step, log=spec.log)
    return out


def grid_space(space: dict) -> dict:
    """The grid of a space: categorical choices, int ranges and stepped float ranges."""
    grid = {}
    for path, spec in space.items():
        if spec.type == "categorical":
            grid[path] = [_encode_choice(c) for c in spec.choices]
        elif spec.type == "int":
            grid[path] = list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
        elif spec.type == "float" and spec.step:
            n = int(round((spec.high - spec.low) / spec.step))
            grid[path] = [float(spec.low + i * spec.step) for i in range(n + 1)]
        else:
            raise NbnetError(f"the grid sampler needs choices, an int range or a float step for {path!r}; "
                             f"add step = ... to it or use another sampler")
    return grid


# --- pruning -----------------------------------------------------------------------------------
class PruningReport:
    """Training callback: ``trial.report`` the validation metric every epoch and raise
    ``optuna.TrialPruned`` when the pruner says so.

    The reported key is the search metric when the training loop logs it each epoch
    (``val_accuracy``, ``val_r2``, ``val_loss``); otherwise the loop's own validation score for
    maximised metrics (e.g. ``val_f1`` → ``val_accuracy``) or ``val_loss`` for minimised ones
    (e.g. ``val_rmse``) — same direction as the study, which is what pruners compare.
    """

    def __init__(self, trial, key: str):
        self.trial = trial
        self.key = key

    def __call__(self, epoch: int, logs: dict):
        value = logs.get(self.key)
        if value is None or not math.isfinite(value):
            return None
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.key}={value:.4g})")
        return None


def report_key(cfg: C.ExperimentConfig, task: str) -> str:
    """The per-epoch key :class:`PruningReport` reports for ``cfg``'s search metric on ``task`` data."""
    metric = cfg.search.metric
    native = default_metric(task)
    if metric in ("val_loss", native):
        return metric
    return native if cfg.direction() == "maximize" else "val_loss"


# --- the objective -----------------------------------------------------------------------------
@dataclass
class TrialContext:
    """What every trial of one sweep shares (rebuilt in each worker process)."""

    cfg: C.ExperimentConfig
    data: Data
    study_name: str
    experiment_id: str
    parent_run_id: str
    uri: str
    worker: int = 0
    quiet: bool = False
    report: object = None  # progress events (see nbnet.experiment.sweep.workers) go to report(event), if set


@dataclass
class _Outcome:
    """How a trial ended: the MLflow run status, the Optuna state and why (None: it completed)."""

    status: str = "FAILED"
    state: str = "FAIL"
    reason: str | None = None


@dataclass
class TrialRun:
    """A trial between :meth:`Objective.start` and :meth:`Objective.finish`: its run, what training
    left (a :class:`~nbnet.experiment.run.Fitted`, or the exception that stopped it) and the
    tracking so far."""

    trial: object
    run_id: str
    logger: object
    clock: Clock
    started: float  # time.perf_counter() when the run was created
    fitted: Fitted | None = None
    error: BaseException | None = None
    usage: dict = field(default_factory=dict)  # resources.TrialUsage's metrics at the end of training


class Objective:
    """``objective(trial)``: suggestions → config → one tracked child run → the metric. A
    diverging trial or an invalid combination of suggested values raises NbnetError (recorded
    FAIL with user attr ``fail_reason``); an interrupted one is enqueued again. The trial's owner
    (host, pid) is recorded when its slot is claimed (:mod:`nbnet.experiment.sweep.budget`).

    It runs in two halves: :meth:`start` creates the run and trains, :meth:`finish` logs the
    results (plots, model), ends the run and returns the value or raises why there is none; a
    sweep may run one trial's ``finish`` while the next one trains
    (:mod:`nbnet.experiment.sweep.pipeline`)."""

    def __init__(self, ctx: TrialContext):
        self.ctx = ctx

    def __call__(self, trial) -> float:
        return self.finish(self.start(trial))

    def start(self, trial) -> TrialRun:
        """Create the trial's run and train; an exception of the training is kept for :meth:`finish`."""
        with _faults(trial):
            cfg = self.ctx.cfg
            values = suggest(trial, cfg.search.space)
            try:
                tcfg, invalid = C.with_values(cfg, values), None
            except NbnetError as e:  # an invalid combination, e.g. nesterov with momentum 0: a FAILED run says so
                tcfg, invalid = cfg, e
            params = C.to_flat_dict(tcfg) if invalid is None else {**C.to_flat_dict(cfg), **values}
            clock, usage, started = Clock(), resources.TrialUsage(), time.perf_counter()
            with clock():
                run_id = self._start_run(trial, tcfg, params)
            trial.set_user_attr(T.TRIAL_RUN_ID, run_id)
            logger = tracking.MetricLogger(run_id, uri=self.ctx.uri)  # sends the trial's last values with its end tags, at once
            run = TrialRun(trial, run_id, logger, clock, started)
            try:
                if invalid is not None:
                    raise invalid
                run.fitted = self._train(trial, tcfg, run_id, logger)
            except BaseException as e:  # noqa: BLE001 (finish() raises it, once the run is closed)
                run.error = e
            run.usage = usage.metrics()  # the training's: the next trial may start before this one is closed
            return run

    def finish(self, run: TrialRun) -> float:
        """Log the trial's results, end its run with its state and return the search metric; or
        raise what stopped it (``optuna.TrialPruned``, an NbnetError, KeyboardInterrupt…)."""
        trial = run.trial
        with _faults(trial):
            out, metrics = _Outcome(), {}
            try:
                if run.error is not None:
                    raise run.error
                _, metrics = log_fitted(run.fitted, uri=self.ctx.uri, experiment_id=self.ctx.experiment_id)
                value = _objective_value(trial, self.ctx.cfg.search.metric, metrics)
                out.status, out.state = "FINISHED", "COMPLETE"
                return value
            except optuna.TrialPruned as e:
                out.status, out.state, out.reason = "KILLED", "PRUNED", str(e)
                raise
            except KeyboardInterrupt:
                out.status, out.state, out.reason = "KILLED", "FAIL", "interrupted"
                retry_later(trial)
                raise
            except NbnetError as e:  # DivergedError included
                out.reason = str(e)
                raise
            except BaseException as e:
                out.reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
                raise
            finally:
                self._close(run, out, metrics)

    def _start_run(self, trial, tcfg: C.ExperimentConfig, params: dict) -> str:
        ctx = self.ctx
        tags = tracking.standard_tags(data_hash=ctx.data.hash, seed=tcfg.train.seed, trial=trial.number, study=ctx.study_name)
        tags.update({T.OPTUNA_STATE: "RUNNING", T.KIND: "trial"})
        return tracking.start_run(ctx.experiment_id, run_name=f"trial-{trial.number}", parent_run_id=ctx.parent_run_id,
                                  tags=tags, params=params, uri=ctx.uri)

    def _train(self, trial, tcfg: C.ExperimentConfig, run_id: str, logger) -> Fitted:
        ctx = self.ctx
        key = report_key(tcfg, ctx.data.task)
        callbacks = [PruningReport(trial, key), interrupt.check]
        if ctx.report is not None:
            callbacks.append(EpochEvents(ctx.report, ctx.worker, trial.number, tcfg.train.epochs))
        return fit_once(tcfg, run_id=run_id, callbacks=callbacks, uri=ctx.uri, data=ctx.data, logger=logger)

    def _close(self, run: TrialRun, out: _Outcome, metrics: dict) -> None:
        """Record why the trial did not complete, send the run's last values and end tags in one
        batch, end the run, and record the trial's tracking time, costs and seconds on the trial."""
        trial, run_id, logger, clock = run.trial, run.run_id, run.logger, run.clock
        if out.reason:
            trial.set_user_attr(T.TRIAL_FAIL_REASON if out.state == "FAIL" else T.TRIAL_PRUNE_REASON, out.reason)
        # tracking so far: run creation, fit_once's and log_fitted's (if training raised: the logger's flushes)
        inside = metrics["tracking_seconds"] if "tracking_seconds" in metrics else logger.seconds
        with clock():
            logger.tag(T.OPTUNA_STATE, out.state)
            if out.reason:
                logger.tag(T.REASON, out.reason)
            step = int(metrics.get("epochs", 0))
            for k, v in run.usage.items():  # system/cpu_percent, peak_rss_mb
                logger.log(k, v, step)
            logger.log("tracking_seconds", clock.seconds + inside, step)
            logger.flush()
            tracking.end_run(run_id, out.status, uri=self.ctx.uri)
        # all of it, the last batch and the run's end included (the run's metric cannot hold those);
        # "costs" lets the sweep sum them from the study instead of reading every run back
        trial.set_user_attr(T.TRIAL_TRACKING_SECONDS, clock.seconds + inside)
        costs = {k: logger.latest[k] for k in COST_KEYS if k in logger.latest}
        trial.set_user_attr(T.TRIAL_COSTS, {**costs, "tracking_seconds": clock.seconds + inside})
        trial.set_user_attr(T.TRIAL_SECONDS, time.perf_counter() - run.started)


class EpochEvents:
    """Training callback: an ``epoch`` progress event per epoch of a trial, to ``report``."""

    def __init__(self, report, worker: int, trial: int, epochs: int):
        self.report, self.worker, self.trial, self.epochs = report, worker, trial, epochs

    def __call__(self, epoch: int, logs: dict) -> None:
        self.report({"kind": "epoch", "worker": self.worker, "trial": self.trial, "epoch": epoch, "epochs": self.epochs})


def _objective_value(trial, metric: str, metrics: dict) -> float:
    """The trial's value of ``metric`` (an NbnetError when it is missing or not finite); records
    the costs and epochs on the trial."""
    value = metrics.get(metric)
    if value is None or not math.isfinite(value):
        raise NbnetError(f"{metric} is {value} for this trial; the model predicts nothing useful")
    for k in COST_KEYS + ("epochs",):
        trial.set_user_attr(k, metrics.get(k))
    return float(value)


@contextlib.contextmanager
def _faults(trial):
    """A full disk or an unreachable store is not the trial's fault: the trial says so and runs
    again when the sweep resumes; the exception goes on."""
    try:
        yield
    except Exception as e:
        fault = faults.describe(e)
        if fault is not None:
            with contextlib.suppress(Exception):
                trial.set_user_attr(T.TRIAL_FAIL_REASON, fault)
            retry_later(trial)
        raise


def retry_later(trial) -> None:
    """An interrupted trial does not count towards n_trials: its parameters are enqueued to run
    again when the sweep resumes (``retry_of``, as for a dead worker's trial)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # Optuna would log the interrupt with a traceback
    with contextlib.suppress(Exception):
        if trial.params:
            trial.study.enqueue_trial(dict(trial.params), user_attrs={T.TRIAL_RETRY_OF: trial.number})


def trial_seconds(trial) -> float:
    """A finished trial's own seconds (its run's start to its end; a lone worker tells the study
    of a trial only after the next one has trained), else its Optuna start to complete, else NaN."""
    if T.TRIAL_SECONDS in trial.user_attrs:
        return float(trial.user_attrs[T.TRIAL_SECONDS])
    if trial.datetime_complete and trial.datetime_start:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return float("nan")


def progress_line(trial, metric: str, worker: int, workers: int) -> str:
    """The line a sweep prints when ``trial`` finishes: worker, number, state, seconds, result, params."""
    state = trial.state.name
    secs = trial_seconds(trial)
    if state == "COMPLETE":
        res = f"{metric}={trial.value:.4f}"
    elif state == "PRUNED":
        res = trial.user_attrs.get(T.TRIAL_PRUNE_REASON, "pruned")
    else:
        res = "failed: " + str(trial.user_attrs.get(T.TRIAL_FAIL_REASON, "see the log"))[:120]
    params = " ".join(f"{k.split('.')[-1]}={number(v)}" for k, v in trial.params.items())
    who = f"[w{worker}] " if workers > 1 else ""
    return f"{who}trial {trial.number:>3} {state:<8} {secs:6.1f}s  {res}  {params}"
