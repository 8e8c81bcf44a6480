"""Every MLflow tag and Optuna attribute name nbnet writes or reads, in one table.

The strings are part of nbnet's stored format: the MLflow UI, ``nbnet best``, ``nbnet monitor``
and later versions of nbnet read them back from stores written earlier, so a value here never
changes. Code uses the constants, never the literals.

* run tags: on MLflow runs (trials, sweeps, ``nbnet train``/``update``/``monitor`` runs);
* model tags: on MLflow LoggedModels, registered models and their versions;
* ``STUDY_*``: Optuna study user attributes (one sweep); ``TRIAL_*``: Optuna trial user attributes;
  ``OPTUNA_SYS_*``: the trial system attributes that Optuna's own heartbeat retry also writes.
"""

from __future__ import annotations

# --- run tags: who owns a run, why it ended ---------------------------------------------------------
HOST = "nbnet.host"  # host name of the process that created the run (stale-run repair)
PID = "nbnet.pid"  # pid of that process: a run whose owner is gone is closed KILLED
REASON = "nbnet.reason"  # the one-line error of a run that ended FAILED or KILLED
REPAIRED = "nbnet.repaired"  # set on a run that a dead process left RUNNING and nbnet closed
KIND = "nbnet.kind"  # what made a run (or an update's version): trial, sweep, train, rerun, update, monitor
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own nesting tag: a trial's sweep run

# --- run tags: what reproduces a run ------------------------------------------------------------------
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"  # nbnet's git commit when it runs from a checkout
GIT_DIRTY = "nbnet.git_dirty"  # "true" when that checkout had uncommitted changes
NBNET_VERSION = "nbnet.version"  # nbnet's version
NUMBA_VERSION = "numba.version"  # numba's version
NUMPY_VERSION = "numpy.version"  # NumPy's version
MLFLOW_VERSION = "mlflow.version"  # MLflow's version
DATA_HASH = "nbnet.data_hash"  # digest of the training data (rerun refuses changed data)
SEED = "nbnet.seed"  # the training seed
OPTUNA_TRIAL = "optuna.trial"  # the Optuna trial number of a trial run
OPTUNA_STUDY = "optuna.study"  # the Optuna study name of a sweep or trial run
OPTUNA_STATE = "optuna.state"  # a trial run's Optuna state: RUNNING, COMPLETE, PRUNED, FAIL
OPTUNA_STORAGE = "optuna.storage"  # a sweep run's Optuna storage, without its password
OPTUNA_SAMPLER = "optuna.sampler"  # a sweep run's sampler name
OPTUNA_PRUNER = "optuna.pruner"  # a sweep run's pruner name
OPTUNA_DIRECTION = "optuna.direction"  # a sweep run's direction: maximize or minimize
SWEEP_WORKERS = "nbnet.sweep.workers"  # a sweep run's worker processes (this invocation's; see sweep/plan.py)
SWEEP_THREADS = "nbnet.sweep.threads"  # the training threads of each of those workers
SWEEP_PLAN = "nbnet.sweep.plan"  # why that many: "as asked", or the rule --workers auto applied
MODEL_ID = "nbnet.model_id"  # the LoggedModel id of the model a run logged
RERUN_OF = "nbnet.rerun_of"  # the run an ``nbnet rerun`` run retrained
BIT_IDENTICAL = "nbnet.bit_identical"  # whether a rerun reproduced the original weights bit for bit
RESUMED_FROM_RUN = "nbnet.resumed_from_run"  # the killed ``nbnet train`` run a run resumed
RESUMED_FROM_EPOCH = "nbnet.resumed_from_epoch"  # the checkpoint epoch it resumed from
UPDATED_FROM = "nbnet.updated_from"  # run: the model URI an ``nbnet update`` fine-tuned; version: that version

# --- run tags of a sweep's parent run ---------------------------------------------------------------
BEST_TRIAL = "best.trial"  # the best trial's number
BEST_RUN_ID = "best.run_id"  # the best trial's MLflow run
BEST_PARAM_PREFIX = "best."  # + parameter name: the best trial's value of that parameter
REGISTERED_MODEL = "registered_model"  # the model version URI the sweep registered
REGISTERED_CHAMPION = "registered_champion"  # "true" when that version became champion

# --- run tags of ``nbnet monitor`` runs ---------------------------------------------------------------
VERDICT = "nbnet.verdict"  # the monitoring verdict
VERDICT_REASON = "nbnet.verdict_reason"  # why (the thresholds crossed)
MODEL_URI = "nbnet.model_uri"  # the model URI that was monitored
MODEL_VERSION = "nbnet.model_version"  # its registered version
ROLLBACK = "nbnet.rollback"  # what ``--rollback`` did

# --- experiment and LoggedModel tags ------------------------------------------------------------------
MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's experiment type, set on experiments nbnet creates
ESTIMATOR = "nbnet.estimator"  # a LoggedModel's estimator class name

# --- model-version tags: how a version was judged -----------------------------------------------------
METRIC_KEY = "nbnet.metric_key"  # the metric a version is selected on
METRIC = "nbnet.metric"  # its validation value (repr of a float); also a study attribute, see STUDY_METRIC
DIRECTION = "nbnet.direction"  # maximize or minimize
PROMOTED = "nbnet.promoted"  # "true" when registering the version made it champion
PROMOTION_REASON = "nbnet.promotion_reason"  # why it was or was not made champion
GATE = "nbnet.gate"  # the last ``nbnet promote`` gate verdict on the version
MONITOR_LAST_VERDICT = "monitor.last_verdict"  # the verdict of the latest ``nbnet monitor`` of the version
MONITOR_LAST_RUN = "monitor.last_run"  # the MLflow run of that check

# --- model-version tags: the champion alias history (see nbnet.experiment.tracking.registry) -----------
CHAMPION_SINCE = "champion.since"  # UTC time the version became champion
CHAMPION_REASON = "champion.reason"  # ``action: reason`` of that move
CHAMPION_REPLACED = "champion.replaced"  # the version it displaced
CHAMPION_UNTIL = "champion.until"  # on a displaced version: UTC time it stopped being champion
CHAMPION_REPLACED_BY = "champion.replaced_by"  # on a displaced version: the version that displaced it
CHAMPION_ROLLBACK_REASON = "champion.rollback_reason"  # on a version rolled back from: why

# --- registered-model tags ----------------------------------------------------------------------------
CHAMPION_STACK = "champion.stack"  # JSON list of the versions that were champion, current last
CHAMPION_HISTORY = "champion.history"  # JSON list of the latest moves of the champion alias

# --- Optuna study user attributes ---------------------------------------------------------------------
STUDY_PARENT_RUN_ID = "nbnet.parent_run_id"  # the sweep's MLflow parent run, shared by every worker
STUDY_CREATOR = "nbnet.creator"  # ``host:pid`` of the process that created the study
STUDY_METRIC = METRIC  # the metric the sweep optimises (a resumed sweep must use the same)
STUDY_EXPERIMENT = "nbnet.experiment"  # the experiment name the study belongs to
STUDY_TRACKING_URI = "nbnet.tracking_uri"  # the MLflow store of the sweep's runs
STUDY_SPACE = "nbnet.space"  # the search space, as sorted JSON
STUDY_REGISTERED = "nbnet.registered"  # the model URI the sweep registered

# --- Optuna trial user attributes ---------------------------------------------------------------------
TRIAL_HOST = "host"  # host of the worker process running the trial
TRIAL_PID = "pid"  # pid of that worker
TRIAL_PID_STARTED = "pid_started"  # start time of that pid (a reused pid is not the worker)
TRIAL_RUN_ID = "mlflow_run_id"  # the trial's MLflow run
TRIAL_FAIL_REASON = "fail_reason"  # why the trial failed
TRIAL_PRUNE_REASON = "prune_reason"  # why it was pruned
TRIAL_RETRY_OF = "retry_of"  # the trial number whose parameters this waiting trial retries
TRIAL_RETRY_REASON = "retry_reason"  # why that trial is retried (its worker died)
TRIAL_STALE = "stale"  # True on a trial failed because its worker died
TRIAL_TRACKING_SECONDS = "tracking_seconds"  # seconds the trial spent in MLflow calls
TRIAL_SECONDS = "seconds"  # the trial's own seconds, from its run's start to its run's end
TRIAL_COSTS = "costs"  # {cost metric: value} of the trial, summed by the sweep
# (each cost metric and "epochs" is also a trial attribute of its own, under its metric name)

# --- Optuna trial system attributes (the names optuna.storages.RetryHeartbeatStaleTrialCallback uses) --
OPTUNA_SYS_FAILED_TRIAL = "failed_trial"  # the first trial of a chain of retries
OPTUNA_SYS_RETRY_HISTORY = "retry_history"  # the trial numbers of that chain so far
