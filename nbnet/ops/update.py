"""Fine-tuning a registered model on new data (``nbnet update``), registered as ``challenger``.

``update(MODEL_URI, DATA)`` loads the model file — weights, the optimizer state (Adam/momentum
moments and step count) and the generator state — and trains it ``epochs`` more epochs on
DATA with :meth:`~nbnet.nn.estimator.MLPClassifier.partial_fit`, so training continues exactly
where it stopped: the same optimizer settings (``--lr`` may change the learning rate only), the
same bias-correction step count, and the shuffling/dropout stream going on from the stored
generator state. Updating a model with the data it was trained on, for ``k`` epochs, gives the
very weights a fit of ``epochs + k`` epochs would have given.

**Preprocessing is kept as fitted**: imputation, scaling, feature selection and PCA learned
from the original training data are applied unchanged to DATA (refitting them would change the
meaning of every input weight). Only the training statistics that drift monitoring compares
against (``Preprocessor.stats_``) are replaced by those of the update's training rows, so
``nbnet monitor`` of the updated model asks "does new data look like what this model last
learned from?".

A fraction of DATA (``val_fraction``; default the model's ``data.val_fraction``, stratified for
classifiers, seeded by ``data.split_seed``) is held out and scored every epoch; ``0`` trains on all
of it (no validation metric is then recorded, and the gate needs ``--data``).

The run goes to the registered model's experiment (tag ``nbnet.kind=update``) with params
``update.source_uri``, ``update.source_version``, ``update.epochs``, ``update.learning_rate``,
``update.val_fraction``, ``data.path``/``data.rows``/``data.hash``, per-epoch metrics
(``loss``, ``grad_norm_<l>``, ``epoch_time``, ``val_loss`` and the validation metrics),
the final ``val_*`` metrics, and the model (:func:`nbnet.experiment.tracking.log_model`, servable). It is
registered as a new version of the same model with the alias ``challenger`` — never
``champion``: promote it with ``nbnet promote NAME --version N`` (the gate).
"""

from __future__ import annotations

import time

import numpy as np

from nbnet.errors import NbnetError


def update(model_uri: str, data, *, target: str | None = None, epochs: int = 10, lr: float | None = None,
           val_fraction: float | None = None, uri: str | None = None, quiet: bool = True) -> dict:
    """Warm-start ``model_uri`` on ``data`` for ``epochs`` epochs, log and register the result as
    ``challenger``; returns ``{"run_id", "name", "version", "source_version", "model_uri",
    "metrics", "metric_key", "promote_command", ...}``."""
    from nbnet._sys import interrupt
    from nbnet.experiment.tracking import registry
    from nbnet.experiment import tracking
    from nbnet.data.load import data_hash
    from nbnet.data.prep import feature_stats
    from nbnet.data.split import train_val_split
    from nbnet.ops.monitor import load_labelled, task_of
    from nbnet.experiment.search import evaluate

    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise NbnetError(f"--epochs must be a positive integer, got {epochs!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
        raise NbnetError(f"--lr must be a positive number, got {lr!r}")
    uri = uri or tracking.default_tracking_uri()
    ref = registry.resolve(model_uri, uri)
    if ref.name is None or ref.version is None:
        raise NbnetError(f"{model_uri} is not a registered model version; update models:/NAME@champion or "
                         "models:/NAME/N (register the run first with nbnet train --register)")
    est, (names, cats) = tracking.load_model(ref.uri, tracking_uri=uri)
    X, y, tcol = load_labelled(data, (names, cats), target, est, require_target=True)
    cfg = getattr(est, "config_", None) or {}
    dcfg = cfg.get("data") or {}
    vf = float(dcfg.get("val_fraction", 0.2)) if val_fraction is None else float(val_fraction)
    if not 0.0 <= vf < 1.0:
        raise NbnetError(f"--val-fraction must be in [0, 1), got {vf}")
    task = task_of(est)
    if vf > 0:
        strat = y if task == "classification" and dcfg.get("stratify", True) else None
        tr, va = train_val_split(len(y), vf, strat, int(dcfg.get("split_seed", 0)))
        Xtr, ytr, Xva, yva = X[tr], y[tr], X[va], y[va]
    else:
        Xtr, ytr, Xva, yva = X, y, None, None
    mv = tracking.client(uri).get_model_version(ref.name, str(ref.version))
    key = registry.metric_key(mv, uri) or (cfg.get("search") or {}).get("metric") \
        or ("val_accuracy" if task == "classification" else "val_r2")
    direction = registry.direction_of(mv, key)
    base = key.split("_", 1)[1] if key.startswith("val_") else key
    if lr is not None:
        est.set_params(learning_rate=float(lr))
    step0 = int(est._opt.step)
    dh = data_hash(X, y)

    exp = tracking.ensure_experiment(ref.name, uri)
    # the training config as the sweep's runs log it (comparable columns in the UI), with what
    # this run changed, then the update's own values
    plain = {k: ({a: b for a, b in v.items() if a != "space"} if k == "search" else v)
             for k, v in cfg.items() if k != "name" and isinstance(v, dict)}
    params = dict(tracking.flatten(plain))
    params.update({"train.epochs": epochs, "train.learning_rate": est.learning_rate})
    params.update({"update.source_uri": str(model_uri), "update.source_version": ref.version,
                   "update.source_run_id": ref.run_id, "update.epochs": epochs,
                   "update.learning_rate": est.learning_rate, "update.val_fraction": vf,
                   "update.optimizer": est.optimizer, "update.optimizer_step_before": step0,
                   "data.path": str(data), "data.target": tcol, "data.rows": len(X), "data.train_rows": len(Xtr),
                   "data.hash": dh, "search.metric": key})
    tags = tracking.standard_tags(data_hash=dh, seed=est.seed)
    tags.update({"nbnet.kind": "update", "nbnet.updated_from": f"models:/{ref.name}/{ref.version}"})
    run_id = tracking.start_run(exp, run_name=f"update-v{ref.version}", tags=tags, params=params, uri=uri)
    final: dict = {}
    with tracking.closing(run_id, uri), tracking.MetricLogger(run_id, uri=uri) as logger:
        with interrupt.graceful():
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                est.partial_fit(Xtr, ytr)
                logs = {"loss": est.history_["loss"][-1], "epoch_time": time.perf_counter() - t0}
                for i, g in enumerate(est.history_["grad_norm"][-1]):
                    logs[f"grad_norm_{i}"] = g
                if Xva is not None:
                    logs.update(evaluate(est, Xva, yva, task, "val_", (base,) if base != "loss" else ()))
                logger(epoch, logs)
                if not quiet:
                    shown = "  ".join(f"{k} {logs[k]:.4f}" for k in ("loss", "val_loss", key) if k in logs)
                    print(f"epoch {epoch:>3}/{epochs}  {shown}", flush=True)
                interrupt.check(epoch, logs)
        if est.preprocessor_ is not None:  # the drift reference: the data this model last learned from
            est.preprocessor_.stats_ = feature_stats(Xtr)
        final = evaluate(est, Xva, yva, task, "val_", (base,) if base != "loss" else ()) if Xva is not None else {}
        final.update(evaluate(est, Xtr, ytr, task, "train_", (base,) if base != "loss" else ()))
        final["epochs"] = epochs
        final["optimizer_step"] = int(est._opt.step)
        for k, v in final.items():
            logger.log(k, v, epochs)
        logger.flush()
        tracking.log_model(run_id, est, Xtr[:5], uri=uri, feature_names=names, categories=cats)

    new = registry.create_version(ref.name, run_id, uri)
    version = int(new.version)
    c = tracking.client(uri)
    value = final.get(key)
    vtags = {"nbnet.metric_key": key, "nbnet.direction": direction, "nbnet.promoted": "false",
             "nbnet.kind": "update", "nbnet.updated_from": str(ref.version),
             "nbnet.promotion_reason": "an update is a challenger; promote it with nbnet promote"}
    if value is not None:
        vtags["nbnet.metric"] = repr(float(value))
    for k, v in vtags.items():
        c.set_model_version_tag(ref.name, str(version), k, v)
    c.set_registered_model_alias(ref.name, registry.CHALLENGER, str(version))
    data_arg = f" --data {data}" + (f" --target {tcol}" if tcol and not str(data).endswith(".npz") else "")
    return {"run_id": run_id, "name": ref.name, "version": version, "source_version": ref.version,
            "model_uri": f"models:/{ref.name}/{version}", "alias_uri": f"models:/{ref.name}@{registry.CHALLENGER}",
            "metrics": final, "metric_key": key, "val_fraction": vf, "rows": len(X), "train_rows": len(Xtr),
            "optimizer_step": (step0, int(est._opt.step)), "learning_rate": est.learning_rate,
            "promote_command": f"nbnet promote {ref.name} --version {version}{data_arg}"}


__all__ = ["update"]
