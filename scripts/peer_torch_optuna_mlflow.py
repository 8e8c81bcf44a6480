#!/usr/bin/env python
"""The sweep a PyTorch user writes from MLflow's documented Optuna pattern, for the digits data.

It is the peer that ``scripts/bench_sweep.py --peer`` times against ``nbnet sweep digits``, and
a plain reading of MLflow's hyperparameter-tuning guide (a parent run for the study, a nested run
per trial) with PyTorch:

- one parent run (``mlflow.start_run``) holding the search settings, the best parameters, the
  best validation accuracy and the best model's test accuracy;
- a nested run per trial (``mlflow.start_run(nested=True)``) with the trial's parameters, per-epoch
  ``train_loss`` and ``val_accuracy``, Optuna's median pruning on ``val_accuracy`` (a pruned
  trial's run is tagged ``pruned`` and ends FAILED, as an exception inside ``start_run`` leaves it);
- every completed trial's model logged with ``mlflow.pytorch.log_model`` (with an input example,
  so the model has a signature; MLflow 3's default format, ``pt2``, exports it with
  ``torch.export``), and the best one registered with ``mlflow.register_model``, then loaded back
  from the registry to score the test set.

Training is the usual PyTorch loop: ``DataLoader(TensorDataset(...), shuffle=True)``, an
``nn.Sequential`` MLP, ``CrossEntropyLoss`` and the chosen ``torch.optim`` optimizer.

The search space, epochs (30), pruner settings (5 startup trials, 2 warm-up epochs) and TPE's 5
startup trials are those of ``experiments/digits.toml``. The data: ``--data FILE.npz`` with
``X_train, y_train, X_val, y_val, X_test, y_test`` (bench_sweep writes nbnet's own splits there,
so both use the same rows); without it, scikit-learn's digits split 70/20/10, stratified.
Features are standardised with the training rows' mean and deviation (``scale = "standard"``).

    python scripts/peer_torch_optuna_mlflow.py --trials 20          # tracks to $MLFLOW_TRACKING_URI or ./mlruns

The last line printed is ``RESULT {json}``: wall seconds, best validation accuracy, test
accuracy of the registered model, trial counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import mlflow
import mlflow.pytorch
import numpy as np
import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

EPOCHS = 30
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


def load_data(path: str | None, seed: int = 0):
    """(X_train, y_train, X_val, y_val, X_test, y_test), standardised with the training rows."""
    if path:
        z = np.load(path, allow_pickle=False)
        parts = [z[k] for k in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")]
    else:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, y = load_digits(return_X_y=True)
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.1, stratify=y, random_state=seed)
        X_tr, X_va, y_tr, y_va = train_test_split(X_tr, y_tr, test_size=2 / 9, stratify=y_tr, random_state=seed)
        parts = [X_tr, y_tr, X_va, y_va, X_te, y_te]
    X_tr = parts[0].astype(np.float32)
    mu, sd = X_tr.mean(0), X_tr.std(0)
    sd[sd == 0] = 1.0
    out = []
    for i, a in enumerate(parts):
        if i % 2 == 0:
            out.append(torch.from_numpy(((a.astype(np.float32) - mu) / sd).astype(np.float32)))
        else:
            out.append(torch.from_numpy(a.astype(np.int64)))
    return tuple(out)


def suggest(trial: optuna.Trial) -> dict:
    """The search space of experiments/digits.toml."""
    return {
        "n_layers": trial.suggest_int("n_layers", 1, 3),
        "width": trial.suggest_int("width", 32, 256, log=True),
        "activation": trial.suggest_categorical("activation", ["relu", "tanh", "elu"]),
        "dropout": trial.suggest_float("dropout", 0.0, 0.3),
        "optimizer": trial.suggest_categorical("optimizer", ["adam", "adamw", "nesterov"]),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128]),
        "l2": trial.suggest_float("l2", 1e-6, 1e-2, log=True),
    }


def build_model(p: dict, n_in: int, n_out: int) -> nn.Module:
    layers, width = [], n_in
    for _ in range(p["n_layers"]):
        layers += [nn.Linear(width, p["width"]), ACTIVATIONS[p["activation"]]()]
        if p["dropout"] > 0:
            layers.append(nn.Dropout(p["dropout"]))
        width = p["width"]
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def make_optimizer(p: dict, params):
    if p["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=p["learning_rate"], weight_decay=p["l2"])
    if p["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=p["learning_rate"], weight_decay=p["l2"])
    return torch.optim.SGD(params, lr=p["learning_rate"], momentum=0.9, nesterov=True, weight_decay=p["l2"])


def accuracy(model, X, y) -> float:
    with torch.no_grad():
        return (model(X).argmax(1) == y).float().mean().item()


def make_objective(data, epochs: int):
    X_tr, y_tr, X_va, y_va, _, _ = data
    n_classes = int(y_tr.max()) + 1

    def objective(trial: optuna.Trial) -> float:
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True) as run:
            p = suggest(trial)
            mlflow.log_params(p)
            trial.set_user_attr("run_id", run.info.run_id)
            torch.manual_seed(trial.number)
            model = build_model(p, X_tr.shape[1], n_classes)
            opt = make_optimizer(p, model.parameters())
            lossf = nn.CrossEntropyLoss()
            loader = DataLoader(TensorDataset(X_tr, y_tr), batch_size=p["batch_size"], shuffle=True)
            val = 0.0
            for epoch in range(epochs):
                total = 0.0
                model.train()
                for xb, yb in loader:
                    opt.zero_grad()
                    loss = lossf(model(xb), yb)
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(yb)
                model.eval()
                val = accuracy(model, X_va, y_va)
                mlflow.log_metrics({"train_loss": total / len(y_tr), "val_accuracy": val}, step=epoch)
                trial.report(val, epoch)
                if trial.should_prune():
                    mlflow.set_tag("pruned", "true")
                    raise optuna.TrialPruned()
            mlflow.pytorch.log_model(model, name="model", input_example=X_tr[:5].numpy())  # in eval mode
            return val

    return objective


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--data", help=".npz with X_train, y_train, X_val, y_val, X_test, y_test (default: sklearn digits)")
    ap.add_argument("--experiment", default="digits-torch")
    ap.add_argument("--model-name", default="digits-torch")
    ap.add_argument("--seed", type=int, default=0, help="TPE's seed")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    data = load_data(a.data)
    mlflow.set_experiment(a.experiment)
    with mlflow.start_run(run_name="sweep"):
        mlflow.log_params({"n_trials": a.trials, "epochs": a.epochs, "sampler": "tpe", "pruner": "median"})
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=a.seed, n_startup_trials=5),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2))
        study.optimize(make_objective(data, a.epochs), n_trials=a.trials)
        best = study.best_trial
        mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
        mlflow.log_metric("best_val_accuracy", best.value)
        version = mlflow.register_model(f"runs:/{best.user_attrs['run_id']}/model", a.model_name)
        model = mlflow.pytorch.load_model(f"models:/{a.model_name}/{version.version}")
        if isinstance(model, torch.export.ExportedProgram):  # MLflow 3's default format, pt2
            model = model.module()
        test = accuracy(model, data[4], data[5])
        mlflow.log_metric("test_accuracy", test)
    states = [t.state for t in study.trials]
    out = {"wall_s": time.perf_counter() - t0, "best_val": best.value, "test_accuracy": test,
           "complete": states.count(optuna.trial.TrialState.COMPLETE),
           "pruned": states.count(optuna.trial.TrialState.PRUNED), "model_version": int(version.version)}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
