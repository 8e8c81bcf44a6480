"""Hyperparameter sweeps: an Optuna study whose trials are tracked MLflow runs.

``run_sweep(cfg)`` turns an experiment config into a study and runs it:

* **Storage** (:mod:`.storage`). By default an Optuna journal file ``mlruns/optuna/<study>.log``
  (``JournalStorage(JournalFileBackend)`` with a ``flock`` lock: safe for several processes, no
  server); any Optuna storage URL (``postgresql://…``, ``sqlite:///…``) is accepted. Re-running
  the same study resumes it and runs only the missing trials.
* **Samplers and pruners** (:mod:`.samplers`): ``search.sampler`` ``tpe`` (Bergstra et al. 2011;
  Optuna's default), ``gp``, ``random``, ``grid``, ``cmaes`` (Hansen 2016); ``search.pruner``
  ``median``, ``hyperband`` (Li et al. 2018), ``none``; fed each epoch with the validation metric
  (:class:`nbnet.experiment.trial.PruningReport`).
* **Workers** (:mod:`.workers`). ``workers=N`` runs worker 0 in this process and spawns N - 1
  more, each running ``study.optimize`` on the shared study; with every other process on the
  study they run exactly the missing trials: each trial's slot of ``n_trials`` is claimed under a
  lock in the storage (:mod:`.budget`). Spawned workers map the parent's prepared data
  (:class:`nbnet.data.prepared.SharedData`) instead of loading it again.
* **Failures** (:mod:`.recovery`). A diverging trial (NaN/inf loss) or an invalid combination of
  suggested values is recorded FAIL with its reason (user attr ``fail_reason``) and the sweep goes
  on. A journal storage has no heartbeat, so on start and before each new trial, RUNNING trials
  whose worker process on this host (recorded as trial user attrs ``host``/``pid``) is gone are
  marked FAIL and their parameters re-enqueued.
* **Many machines.** With an RDB URL (PostgreSQL) any number of ``nbnet sweep`` processes on any
  machines join one study: the process that creates the study makes the one parent run the others
  attach to; trials carry Optuna heartbeats, and a trial whose worker died is failed, its run
  closed FAILED and its parameters retried; each process draws its own sampler seed; the best run
  is registered once (an advisory lock).
* **Tracking.** One MLflow parent run per study (reopened on resume); one child run per trial
  (:class:`nbnet.experiment.trial.Objective`) with an explicit ``parent_run_id``, closed FINISHED /
  FAILED / KILLED (pruned) with the Optuna state as tag ``optuna.state``. Each child logs what
  :func:`nbnet.experiment.run.train_once` logs: the flattened resolved config, per-epoch metrics
  (batched; with per-layer activation statistics), final validation/test metrics, cost metrics
  (``compile_seconds``, ``train_seconds``, ``cpu_seconds``, ``tracking_seconds``), ``config.json``,
  ``plots/evaluation.json`` and ``plots/summary.png`` and the model (pyfunc from code). The parent
  gets the best trial's params and metric, summed costs, the study's figures and ``trials.csv``
  (:mod:`.summary`); the best model is then registered under the experiment's name and becomes
  ``champion`` if it beats the current one.

``sweep_arrays(X, y, space=...)`` (:mod:`.arrays`; ``nbnet.sweep``) runs the same sweep on data
in memory.

Example
-------
>>> from nbnet.experiment import config, sweep
>>> cfg = config.load_experiment("wine", ["search.n_trials=3", "train.epochs=3"])  # doctest: +SKIP
>>> result = sweep.run_sweep(cfg, workers=1)                                        # doctest: +SKIP
>>> result.best_value, result.model_uri                                             # doctest: +SKIP
"""

from .arrays import sweep_arrays, sweep_config
from .best import best
from .core import SweepResult, run_sweep
from .recovery import fail_stale_trials
from .samplers import make_pruner, make_sampler
from .storage import default_storage, list_studies, open_storage, optuna_load
from .summary import param_importances

__all__ = ["SweepResult", "best", "default_storage", "fail_stale_trials", "list_studies", "make_pruner", "make_sampler",
           "open_storage", "optuna_load", "param_importances", "run_sweep", "sweep_arrays", "sweep_config"]
