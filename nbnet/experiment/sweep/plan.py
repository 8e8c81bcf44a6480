"""How many worker processes a sweep runs, and how many threads each trains with.

``--workers auto`` (the command line's default) decides from the cores this process may use, the
trials left to run and the size of the largest trial the search space allows:

* **Long trials** (a single-threaded estimate over :data:`LONG_TRIAL_SECONDS`): one worker with
  every core's thread, so each trial finishes as soon as it can (several workers would share the
  cores and make each trial slower).
* **Short trials**: one single-threaded worker per core. A small network barely gains from a
  second thread (the per-batch work is too small to split), while a second worker trains, tracks
  and samples a whole other trial in the same time.
* **A short sweep** (its trials on one worker estimated under :data:`MIN_SWEEP_SECONDS`), or a
  single trial to run: one worker. A spawned worker starts in about 2.5 s (imports, data) and two
  workers on two cores each train about a fifth slower than one alone, so two pay off from about
  6 s of trials; 10 s leaves a margin for the estimate's error.

A trial's estimate is ``6 × rows × parameters × epochs`` floating-point operations (forward and
backward) at :data:`FLOPS_PER_THREAD`, plus :data:`TRACKING_SECONDS`: for the largest network
the space allows (every searched size at its top: is any trial long?) and for a typical one (every
searched size at its middle, geometric on a log scale: how long is the sweep?). On the shipped
digits example it says 0.3 s for a typical trial, as measured. A ``train.n_threads`` set in the config is kept:
auto then runs ``cores // n_threads`` workers for short trials.

The choice is printed in the sweep's first line and recorded on the sweep's parent run (tags
``nbnet.sweep.workers``, ``nbnet.sweep.threads``, ``nbnet.sweep.plan``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nbnet.data.prepared import Data
from nbnet.errors import NbnetError
from nbnet.experiment import config as C
from nbnet.kernels.threads import default_threads

FLOPS_PER_THREAD = 20e9  # a conservative single-thread training rate (float32; docs/benchmarks.md)
TRACKING_SECONDS = 0.15  # a trial's run, metrics and model in the embedded store
LONG_TRIAL_SECONDS = 10.0
MIN_SWEEP_SECONDS = 10.0
AUTO = "auto"


@dataclass(frozen=True)
class WorkerPlan:
    """``workers`` processes with ``threads`` threads each, and why (one line)."""

    workers: int
    threads: int
    reason: str


def parse_workers(value) -> int | str:
    """``value`` (an int, a digit string or "auto") as a worker count or :data:`AUTO`."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise NbnetError(f"--workers takes a number of worker processes or 'auto', not {value!r}") from None
    if n < 1:
        raise NbnetError(f"--workers must be at least 1, got {n}")
    return n


def _size(choice, n_in: int, n_out: int) -> float:
    """How large a network a categorical choice makes: the weights of a list of hidden sizes
    between ``n_in`` inputs and ``n_out`` outputs, a number as it is, 0 for anything else (an
    activation, an optimizer)."""
    if isinstance(choice, (tuple, list)):
        widths = [n_in, *(int(w) for w in choice), n_out]
        return float(sum(a * b for a, b in zip(widths, widths[1:])))
    return float(choice) if isinstance(choice, (int, float)) and not isinstance(choice, bool) else 0.0


def _largest(spec: C.ParamSpec, n_in: int, n_out: int):
    """The value of a searched parameter that makes the largest network: its upper bound, or the
    choice of the largest :func:`_size`."""
    if spec.type == "categorical":
        return max(spec.choices, key=lambda c: _size(c, n_in, n_out))
    return int(spec.high) if spec.type == "int" else float(spec.high)


def _middle(spec: C.ParamSpec, n_in: int, n_out: int):
    """The value of a searched parameter in the middle of its range (geometric on a log scale),
    or its middle choice by :func:`_size`."""
    if spec.type == "categorical":
        return sorted(spec.choices, key=lambda c: _size(c, n_in, n_out))[len(spec.choices) // 2]
    mid = float(np.sqrt(spec.low * spec.high)) if spec.log else (spec.low + spec.high) / 2
    return int(round(mid)) if spec.type == "int" else mid


def _sized_trial(cfg: C.ExperimentConfig, n_in: int, n_out: int, pick) -> C.ExperimentConfig:
    """``cfg`` with the searched depth, widths and epochs at ``pick(spec, n_in, n_out)``
    (:func:`_largest` or :func:`_middle`); ``n_in``/``n_out``: the data's inputs and outputs, which
    size lists of hidden layers."""
    values = {path: pick(spec, n_in, n_out) for path, spec in cfg.search.space.items()
              if path.startswith("model.") and path != "model.activation" or path == "train.epochs"}
    try:
        return C.with_values(cfg, values)
    except NbnetError:  # a combination the space never draws together: each value that fits on its own
        for path, value in values.items():
            try:
                cfg = C.with_values(cfg, {path: value})
            except NbnetError:
                pass
        return cfg


def largest_trial(cfg: C.ExperimentConfig, n_in: int, n_out: int) -> C.ExperimentConfig:
    """``cfg`` with the searched depth, widths and epochs at their largest."""
    return _sized_trial(cfg, n_in, n_out, _largest)


def typical_trial(cfg: C.ExperimentConfig, n_in: int, n_out: int) -> C.ExperimentConfig:
    """``cfg`` with the searched depth, widths and epochs in the middle of their ranges."""
    return _sized_trial(cfg, n_in, n_out, _middle)


def trial_seconds(cfg: C.ExperimentConfig, data: Data, *, typical: bool = False) -> float:
    """An estimate of the largest (or a ``typical``) trial's seconds on one thread (see the module
    docstring)."""
    n_rows, n_in = data.X_train.shape[0], data.X_train.shape[1]
    n_out = len(np.unique(data.y_train)) if data.task == "classification" else (
        1 if data.y_train.ndim == 1 else data.y_train.shape[1])
    big = (typical_trial if typical else largest_trial)(cfg, n_in, n_out)
    sizes = [n_in, *big.model.hidden(), n_out]
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return 6.0 * n_rows * params * big.train.epochs / FLOPS_PER_THREAD + TRACKING_SECONDS


def plan_workers(cfg: C.ExperimentConfig, requested, remaining: int, data: Data,
                 cores: int | None = None) -> WorkerPlan:
    """The sweep's workers and threads: ``requested`` workers (threads: the cores split between
    them unless ``train.n_threads`` is set), or for :data:`AUTO` the rule of the module docstring."""
    cores = cores or default_threads()
    fixed = cfg.train.n_threads
    requested = parse_workers(requested)
    if requested != AUTO:
        threads = fixed or max(1, cores // requested)
        return WorkerPlan(requested, threads, f"{requested} worker{'s' if requested > 1 else ''} as asked")
    longest = trial_seconds(cfg, data)
    per_core = max(1, cores // (fixed or 1))
    if longest > LONG_TRIAL_SECONDS:
        why = f"trials of up to about {longest:.0f} s: every core trains one trial at a time"
        return WorkerPlan(1, fixed or cores, f"auto, {why}")
    if per_core == 1:
        return WorkerPlan(1, fixed or cores, f"auto, {fixed or cores} thread{'s' if (fixed or cores) > 1 else ''} "
                                             f"fill the {cores} core{'s' if cores > 1 else ''}: one worker")
    sweep = trial_seconds(cfg, data, typical=True) * remaining
    if remaining <= 1 or sweep < MIN_SWEEP_SECONDS:
        return WorkerPlan(1, fixed or cores, f"auto, {remaining} short trial{'s' if remaining != 1 else ''} left "
                                             f"(about {sweep:.0f} s): one worker")
    n = min(per_core, remaining)
    return WorkerPlan(n, fixed or 1, f"auto, {remaining} short trials (about {sweep:.0f} s on one worker) on {cores} "
                                     "cores: a single-threaded worker per core")
