"""``run_sweep``: open (or resume) a study, give it one MLflow parent run, run the missing trials
in worker processes, then summarise the study on the parent run and register the best model."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field

import optuna

from nbnet._sys import interrupt
from nbnet._sys.fmt import number
from nbnet.data.prepared import Data, SharedData, prepare_data
from nbnet.errors import EXIT_STORE_ERROR, NbnetError, StoreError
from nbnet.experiment import config as C
from nbnet.experiment import tags as T
from nbnet.experiment import resources, tracking
from nbnet.experiment.run import Clock, build_estimator
from nbnet.experiment.sweep.plan import parse_workers, plan_workers
from nbnet.experiment.sweep.recovery import recover_study, running_trials
from nbnet.experiment.sweep.samplers import make_sampler
from nbnet.experiment.sweep.storage import (
    close_storage, default_storage, env_storage, is_rdb, open_storage, optuna_load, storage_label, study_lock,
)
from nbnet.experiment.sweep.summary import counts, summarize
from nbnet.experiment.sweep.workers import new_stop_event, relay, run_workers
from nbnet.experiment.trial import grid_space, trial_seconds


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns and ``nbnet sweep`` prints."""

    experiment: str
    study_name: str
    storage: str
    metric: str
    direction: str
    parent_run_id: str
    n_complete: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    n_run: int = 0  # trials run by this call
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict = field(default_factory=dict)
    best_run_id: str | None = None
    model_uri: str | None = None  # models:/NAME/VERSION of the registered best model
    champion: bool = False  # did the best model become the champion
    champion_uri: str | None = None
    seconds: float = 0.0
    trials: list = field(default_factory=list)  # FrozenTrials, best first
    best_estimator: object = None  # the best trial's fitted estimator (nbnet.sweep loads it; None from run_sweep)

    def summary(self, top: int = 5) -> str:
        """A table of the best trials and the outcome, for the terminal."""
        lines = [f"study {self.study_name!r}: {self.n_complete} complete, {self.n_pruned} pruned, "
                 f"{self.n_failed} failed ({self.n_run} run now, {self.seconds:.0f}s)"]
        done = [t for t in self.trials if t.state.name == "COMPLETE"][:top]
        if done:
            keys = list(dict.fromkeys(k for t in done for k in t.params))
            head = ["rank", "trial", self.metric, "seconds"] + [k.split(".")[-1] for k in keys]
            rows = []
            for i, t in enumerate(done, 1):
                secs = trial_seconds(t)
                rows.append([str(i), str(t.number), f"{t.value:.4f}", f"{secs:.1f}"] + [number(t.params.get(k, "")) for k in keys])
            widths = [max(len(r[j]) for r in [head] + rows) for j in range(len(head))]
            for r in [head] + rows:
                lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if self.best_trial is not None:
            lines.append(f"best: trial {self.best_trial}  {self.metric}={self.best_value:.4f}  run {self.best_run_id}")
        return "\n".join(lines)


def run_sweep(cfg: C.ExperimentConfig, *, trials: int | None = None, workers: int | str = 1, study_name: str | None = None,
              storage: str | None = None, sampler: str | None = None, pruner: str | None = None,
              uri: str | None = None, register: bool = True, quiet: bool = False,
              registered_model_name: str | None = None, progress=None) -> SweepResult:
    """Run (or resume) the study ``study_name`` (default: the experiment's name) until it has
    ``trials`` (default ``search.n_trials``) finished trials; with ``register``, register the best
    model under ``registered_model_name`` (default: the experiment's name). See
    :mod:`nbnet.experiment.sweep`. ``storage`` defaults to ``NBNET_STORAGE`` or ``OPTUNA_STORAGE``,
    else the study's journal file. ``progress``: a callable given the sweep's progress events
    (:mod:`.workers`) instead of the workers printing a line per trial. ``workers``: a number of
    worker processes, or "auto" (:mod:`.plan`)."""
    cfg = _sweep_config(cfg, trials, sampler, pruner)
    workers = parse_workers(workers)  # a bad value fails before any store is opened
    study_name = study_name or cfg.name
    storage = storage or env_storage() or default_storage(study_name)
    direction = cfg.direction()
    t_start = time.perf_counter()
    data = prepare_data(cfg)  # fail fast on bad data, before any store or run is created
    if cfg.search.sampler == "grid":
        grid_space(cfg.search.space)
    make_sampler(cfg.search.sampler, cfg.search.space, seed=0, n_startup_trials=1)  # missing packages → error now
    uri = uri or tracking.default_tracking_uri()

    storage_obj = open_storage(storage, uri=uri)
    study = _open_study(cfg, study_name, storage_obj, direction)
    exp_id = tracking.ensure_experiment(cfg.name, uri)
    n_stale = recover_study(study, storage_obj, is_rdb(storage), uri)
    c = counts(study)
    done = c["COMPLETE"] + c["PRUNED"] + c["FAIL"]
    remaining = max(0, cfg.search.n_trials - done - c["RUNNING"])
    n_existing = len(study.trials)
    plan = plan_workers(cfg, workers, remaining, data)
    cfg = cfg if cfg.train.n_threads else C.with_values(cfg, {"train.n_threads": plan.threads})
    parent = _parent_run(cfg, study, study_name, storage, exp_id, data, uri)
    if not quiet:
        print(_header(cfg, study_name, storage, (done, remaining, n_stale), plan, parent), flush=True)
    status = "FAILED"
    result = SweepResult(cfg.name, study_name, storage, cfg.search.metric, direction, parent)
    try:
        tracking.set_tags(parent, {T.SWEEP_WORKERS: plan.workers, T.SWEEP_THREADS: plan.threads,
                                   T.SWEEP_PLAN: plan.reason}, uri=uri)
        if remaining:
            payload = {"config": C.to_dict(cfg), "name": cfg.name, "study": study_name, "storage": storage, "uri": uri,
                       "experiment_id": exp_id, "parent_run_id": parent, "quiet": quiet, "workers": plan.workers,
                       "seed": (cfg.train.seed * 1_000_003 + n_existing) % 2**31}
            start = _start_event(cfg, study, c, done) if progress is not None else None
            _run_trials(payload, cfg, data, progress, start)
        model_name = registered_model_name or cfg.name
        _finish(result, cfg, optuna_load(study_name, storage_obj), exp_id, uri, model_name if register else None,
                n_existing)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        result.seconds = time.perf_counter() - t_start
        with contextlib.suppress(Exception):
            tracking.end_run(parent, status, uri=uri)
        close_storage(storage_obj)
    return result


def _header(cfg: C.ExperimentConfig, study_name: str, storage: str, trials: tuple[int, int, int], plan, parent: str) -> str:
    """The sweep's first line: study, trials (done, to run, stale retried), workers, search, run."""
    done, remaining, n_stale = trials
    stale = f", {n_stale} stale retried" if n_stale else ""
    return (f"sweep {cfg.name}: study {study_name!r} ({storage_label(storage)}), {cfg.search.n_trials} trials "
            f"({done} done, {remaining} to run{stale}), {plan.workers} worker{'s' if plan.workers > 1 else ''} × "
            f"{plan.threads} thread{'s' if plan.threads > 1 else ''} ({plan.reason}), sampler {cfg.search.sampler}, "
            f"pruner {cfg.search.pruner}, {cfg.search.metric} ({cfg.direction()}); MLflow run {parent}")


def _sweep_config(cfg: C.ExperimentConfig, trials, sampler, pruner) -> C.ExperimentConfig:
    """``cfg`` with the command line's search overrides."""
    overrides = {}
    if trials is not None:
        overrides["n_trials"] = int(trials)
    if sampler is not None:
        overrides["sampler"] = sampler
    if pruner is not None:
        overrides["pruner"] = pruner
    if overrides:
        cfg = C.apply_overrides(cfg, [f"search.{k}={v!r}" for k, v in overrides.items()])
    return cfg


def _open_study(cfg: C.ExperimentConfig, study_name: str, storage_obj, direction: str):
    """Create the study, or load it when it exists (exactly one of several workers starting
    together creates it); an NbnetError when it belongs to another metric, experiment or direction."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(study_name=study_name, storage=storage_obj, direction=direction)
        study.set_user_attr(T.STUDY_CREATOR, _process_id())
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage_obj)
    attrs = study.user_attrs
    if study.direction.name.lower() != direction:
        raise NbnetError(f"study {study_name!r} was created to {study.direction.name.lower()} and this sweep wants to "
                         f"{direction}; pick another --study name")
    for key, mine in ((T.STUDY_METRIC, cfg.search.metric), (T.STUDY_EXPERIMENT, cfg.name)):
        theirs = attrs.get(key)
        if theirs is not None and theirs != mine:
            raise NbnetError(f"study {study_name!r} belongs to {key.split('.')[1]} {theirs!r}, not {mine!r}; "
                             f"pick another --study name")
    if attrs.get(T.STUDY_SPACE) not in (None, _space_json(cfg)):
        print(f"note: the search space differs from the one study {study_name!r} started with; "
              "the sampler treats changed parameters as new", file=sys.stderr)
    return study


def _process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _space_json(cfg: C.ExperimentConfig) -> str:
    return json.dumps(C.to_dict(cfg)["search"]["space"], sort_keys=True)


def _parent_run(cfg: C.ExperimentConfig, study, study_name: str, storage: str, exp_id: str, data: Data, uri: str) -> str:
    """The study's one MLflow parent run, reopened (RUNNING) on resume: the one the study records,
    the one another worker that created an RDB study is making right now, or a new one."""
    parent = study.user_attrs.get(T.STUDY_PARENT_RUN_ID)
    if not parent and is_rdb(storage) and study.user_attrs.get(T.STUDY_CREATOR) != _process_id():
        parent = _await_parent_run(study)  # another worker created the study just now: share its parent run
    if parent:
        try:
            tracking.client(uri).update_run(parent, status="RUNNING")
        except Exception:
            parent = None  # the tracking store was reset: start a new parent run
        else:
            if not is_rdb(storage) and not running_trials(study):
                # nobody else works on this study: RUNNING child runs are orphans (an RDB study is shared
                # by machines whose processes this one cannot see; heartbeats close dead trials' runs)
                tracking.repair_stale_runs(exp_id, parent_run_id=parent, uri=uri)
            return parent
    tags = tracking.standard_tags(data_hash=data.hash, seed=cfg.train.seed, study=study_name)
    tags.update({T.KIND: "sweep", T.OPTUNA_STORAGE: storage_label(storage), T.OPTUNA_SAMPLER: cfg.search.sampler,
                 T.OPTUNA_PRUNER: cfg.search.pruner, T.OPTUNA_DIRECTION: cfg.direction()})
    parent = tracking.start_run(exp_id, run_name=f"sweep-{study_name}", tags=tags, params=C.to_flat_dict(cfg), uri=uri)
    for k, v in ((T.STUDY_PARENT_RUN_ID, parent), (T.STUDY_METRIC, cfg.search.metric), (T.STUDY_EXPERIMENT, cfg.name),
                 (T.STUDY_TRACKING_URI, uri), (T.STUDY_SPACE, _space_json(cfg))):
        study.set_user_attr(k, v)
    return parent


def _await_parent_run(study, timeout: float = 120.0) -> str | None:
    """The parent run id that the worker which created this RDB study is recording on it
    (polled), or None: when no such worker shows up within 5 s (a study created outside nbnet), or
    it records no parent run within ``timeout`` seconds (it died) — then the caller makes its own."""
    t0 = time.monotonic()
    while True:
        attrs = study.user_attrs
        if attrs.get(T.STUDY_PARENT_RUN_ID):
            return attrs[T.STUDY_PARENT_RUN_ID]
        waited = time.monotonic() - t0
        if waited > timeout or (waited > 5.0 and T.STUDY_CREATOR not in attrs):
            return None
        time.sleep(0.25)  # poll the study for the creator's parent run id


def _start_event(cfg: C.ExperimentConfig, study, c: dict, done: int) -> dict:
    """The ``start`` progress event: the study's trials so far and its best value."""
    best = None
    with contextlib.suppress(ValueError):  # no completed trial yet
        best = study.best_value
    return {"kind": "start", "total": cfg.search.n_trials, "done": done, "complete": c["COMPLETE"],
            "pruned": c["PRUNED"], "failed": c["FAIL"], "best": best, "metric": cfg.search.metric,
            "direction": cfg.direction()}


def _run_trials(payload: dict, cfg: C.ExperimentConfig, data: Data, progress=None,
                start: dict | None = None) -> None:
    """Run the missing trials in ``payload["workers"]`` workers, sampling the parent run's system
    metrics meanwhile; an NbnetError when a spawned worker died. ``progress`` gets the ``start``
    event, the workers' progress events and ``end``."""
    workers, parent, uri = payload["workers"], payload["parent_run_id"], payload["uri"]
    shared = SharedData() if workers > 1 else None  # the prepared data, for spawned workers
    payload["shared"] = shared.payload() if shared else None
    if progress is not None:
        progress(start)
    try:
        # the first Ctrl-C / SIGTERM stops every worker at its next epoch boundary (nbnet._sys.interrupt)
        with interrupt.graceful(new_stop_event()) as stop, resources.SystemMetrics(parent, uri=uri), \
                relay(progress) as events:
            payload["events"] = events
            codes = run_workers(payload, workers, stop,
                               share=shared and (lambda: shared.write(data, lambda: build_estimator(cfg, data))))
            if interrupt.requested():
                raise interrupt.Interrupted()
    finally:
        if progress is not None:
            progress({"kind": "end"})
        if shared:
            shared.close()
    bad = [c for c in codes if c != 0]
    if bad and all(c == EXIT_STORE_ERROR for c in bad):  # each said which store failed, in one line
        raise StoreError(f"{len(bad)} of {workers} sweep workers stopped on a store error (above); fix the store and "
                         "run the same command again to resume")
    if bad:
        how = "; ".join(f"killed by signal {-c}" if c < 0 else f"exit code {c}" for c in bad)
        raise NbnetError(f"{len(bad)} of {workers} sweep workers died ({how}); run the same command again "
                         "to finish the study")


def _finish(result: SweepResult, cfg: C.ExperimentConfig, study, exp_id: str, uri: str, model_name: str | None,
            n_before: int) -> None:
    """Fill ``result``; log the parent run's summary, figures and trials table; register the best
    model under ``model_name`` (None: not at all); log the seconds all that took as
    ``sweep_tracking_seconds``."""
    parent = result.parent_run_id
    clock = Clock()
    with clock():
        best = summarize(result, cfg.search.metric, study, exp_id, parent, uri, n_before)
        if model_name and best is not None and result.best_run_id:
            version, promoted = _register_once(cfg, result, uri, model_name)
            result.model_uri = f"models:/{model_name}/{version}"
            result.champion = promoted
            result.champion_uri = f"models:/{model_name}@{tracking.CHAMPION}"
            tracking.set_tags(parent, {T.REGISTERED_MODEL: result.model_uri, T.REGISTERED_CHAMPION: str(promoted).lower()}, uri=uri)
            study.set_user_attr(T.STUDY_REGISTERED, result.model_uri)
    tracking.log_metrics(parent, {"sweep_tracking_seconds": clock.seconds}, step=len(study.trials), uri=uri)


def _register_once(cfg: C.ExperimentConfig, result: SweepResult, uri: str, name: str) -> tuple[int, bool]:
    """``tracking.register_champion`` for the best run unless a version of that run is registered
    already: workers of one RDB study finish together and would each register the same run. On
    PostgreSQL the check and the registration hold an advisory lock of the study."""
    c = tracking.client(uri)
    with study_lock(result.storage, f"nbnet.register:{result.study_name}"):
        have = c.search_model_versions(f"name = '{name}' and run_id = '{result.best_run_id}'")
        if not have:
            return tracking.register_champion(name, result.best_run_id, cfg.search.metric, result.direction, uri=uri)
    version = max(int(v.version) for v in have)
    try:
        champion = c.get_model_version_by_alias(name, tracking.CHAMPION).version
    except Exception:  # no champion alias
        champion = None
    return version, str(champion) in {str(v.version) for v in have}
