"""MLflow tracking: runs, batched metrics, tags, artifacts, the pyfunc model and the registry.

The public names of the package's modules, in one place:

* :mod:`.client` — the store's URI (:func:`resolve_tracking_uri`), a cached client, experiments, retries;
* :mod:`.runs` — start/end runs, :class:`MetricLogger`, tags, artifacts, stale-run repair;
* :mod:`.pyfunc` — :class:`NbnetPyfuncModel`, log/download/load a model;
* :mod:`.registry` — versions, the ``champion`` alias and its history;
from . import datasets, registry

Example
-------
>>> exp = ensure_experiment("digits")                              # doctest: +SKIP
>>> parent = start_run(exp, run_name="sweep", params={"model.epochs": 20})  # doctest: +SKIP
>>> child = start_run(exp, run_name="trial-0", parent_run_id=parent)        # doctest: +SKIP
>>> log = MetricLogger(child)                                      # doctest: +SKIP
>>> clf.fit(X, y, callbacks=[log]); log.flush()                    # doctest: +SKIP
>>> log_model(child, clf, X[:5]); end_run(child, "FINISHED")       # doctest: +SKIP
"""

from . import datasets, registry
from .client import (
    STORE_FILE, artifact_root, client, default_tracking_uri, ensure_experiment, flatten, global_uri, not_found,
    project_store_file, project_tracking_uri, quiet, resolve_tracking_uri, retrying, set_tracking_uri, store_error,
)
from .pyfunc import (
    MODEL_FILE, MODEL_NAME, PYFUNC_CODE, NbnetPyfuncModel, download_model, download_model_file, feature_spec,
    frame_to_matrix, input_columns, load_model, log_model, pip_requirements, template_cache_dir,
)
from .wheel import WHEEL_DIR, build_wheel
from .registry import CHALLENGER, CHAMPION, metric_of, register_champion
from .runs import (
    STATUSES, MetricLogger, closing, end_run, log_artifact, log_dict, log_figure, log_metrics, log_params,
    repair_stale_runs, run, set_tags, standard_tags, start_run,
)

__all__ = [
    "datasets", "registry",
    # client
    "STORE_FILE", "artifact_root", "client", "default_tracking_uri", "ensure_experiment", "flatten", "global_uri",
    "not_found", "project_store_file", "project_tracking_uri", "quiet", "resolve_tracking_uri", "retrying",
    "set_tracking_uri", "store_error",
    # runs
    "STATUSES", "MetricLogger", "closing", "end_run", "log_artifact", "log_dict", "log_figure", "log_metrics",
    "log_params", "repair_stale_runs", "run", "set_tags", "standard_tags", "start_run",
    # pyfunc
    "MODEL_FILE", "MODEL_NAME", "PYFUNC_CODE", "NbnetPyfuncModel", "download_model", "download_model_file",
    "feature_spec", "frame_to_matrix", "input_columns", "load_model", "log_model", "pip_requirements",
    "template_cache_dir",
    # wheel
    "WHEEL_DIR", "build_wheel",
    # registry
    "CHALLENGER", "CHAMPION", "metric_of", "register_champion",
]
