"""Experiments and sweeps: ``nbnet sweep``, ``train``, ``best``, ``rerun``."""

from __future__ import annotations

import sys

from nbnet.cli import common
from nbnet.cli.progress import EpochProgress, SweepProgress, compile_notice
from nbnet.errors import NbnetError
from nbnet.experiment import config


def add_commands(sub) -> None:
    p = sub.add_parser("sweep", help="run (or resume) an Optuna sweep of an experiment, tracked in MLflow",
                       description="Run or resume the hyperparameter sweep of EXPERIMENT (a .toml path, or NAME for "
                                   "experiments/NAME.toml in the working directory or a shipped example); every "
                                   "trial is an MLflow run; the best model is registered. Exit 1 when no trial "
                                   "completed.")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("--trials", type=int, help="total trials of the study (default: search.n_trials)")
    p.add_argument("--workers", default="auto",
                   help="worker processes on the same study, or auto (the default): one worker using every core "
                        "for long trials or a short sweep, else one single-threaded worker per core "
                        "(docs/experiments.md)")
    p.add_argument("--study", help="study name (default: the experiment's name); the same name resumes it")
    p.add_argument("--storage", help="Optuna storage URL or journal file (default: NBNET_STORAGE or OPTUNA_STORAGE, "
                                     "else mlruns/optuna/STUDY.log)")
    p.add_argument("--sampler", choices=config.SAMPLERS, help="default: search.sampler (tpe)")
    p.add_argument("--pruner", choices=config.PRUNERS, help="default: search.pruner (median)")
    p.add_argument("--no-register", dest="register", action="store_false", help="do not register the best model")
    common.add_quiet_option(p, "progress (no bar, no per-trial lines)")
    common.add_json_option(p, "the outcome (the best trial, its run and model)")
    common.add_store_option(p)
    common.add_set_option(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("train", help="one tracked training run with the experiment's fixed values",
                       description="Train EXPERIMENT (a .toml path, or NAME for experiments/NAME.toml or a shipped "
                                   "example) once as an MLflow run; its id and UI address are printed before the "
                                   "first epoch.")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("--register", action="store_true",
                   help="register the model as a new version; it becomes champion only if it beats the current one")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="write an atomic checkpoint every N epochs; re-run the same command after a crash to resume")
    common.add_quiet_option(p, "progress (no bar, no per-epoch lines)")
    common.add_json_option(p, "the run (id, metrics, model URI)")
    common.add_store_option(p)
    common.add_set_option(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("best", help="the best trial of a sweep: run id, metric, params and model URI")
    p.add_argument("--study", help="study name (default: the most recent sweep under mlruns/optuna or in the storage)")
    p.add_argument("--storage", help="Optuna storage URL or journal file (default: NBNET_STORAGE or OPTUNA_STORAGE, "
                                     "else mlruns/optuna/STUDY.log)")
    common.add_json_option(p, "the best trial")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("rerun", help="retrain a run from its recorded config and seed; report bit-identity",
                       description="Retrain RUN_ID from its recorded config and seed as a new run and compare the "
                                   "weights bit for bit. Exit 1 when they differ.")
    p.add_argument("run_id", metavar="RUN_ID")
    common.add_json_option(p, "the comparison")
    common.add_store_option(p)
    p.set_defaults(func=cmd_rerun)


def _store_uri() -> str:
    """The tracking store this command uses (``--tracking-uri`` is in the environment by now)."""
    from nbnet.experiment import tracking  # heavy: the command's module loads MLflow

    return tracking.default_tracking_uri()


def cmd_sweep(args) -> int:
    common.headless()
    cfg = config.load_experiment(args.experiment, args.overrides)  # before MLflow loads: errors come fast
    from nbnet.experiment import sweep  # heavy: the command's module loads MLflow

    with common.json_stdout(args.json) as out:
        progress = None if args.quiet else SweepProgress(f"sweep {cfg.name}")
        if not args.quiet:
            compile_notice(cfg.train.device)
        r = sweep.run_sweep(cfg, trials=args.trials, workers=args.workers, study_name=args.study,
                            storage=args.storage, sampler=args.sampler, pruner=args.pruner, register=args.register,
                            quiet=args.quiet, progress=progress)
        uri = _store_uri()
        if args.json:
            common.emit_json(out, _sweep_json(r, uri))
            return 0 if r.best_trial is not None else 1
        print(r.summary())
        if r.best_trial is None:
            print("no trial completed; see the reasons above")
            return 1
        print(f"best trial:   {r.best_trial}  {r.metric}={r.best_value:.4f}")
        print(f"best run:     {r.best_run_id}  (model runs:/{r.best_run_id}/model)")
        if r.model_uri:
            print(f"registered:   {r.model_uri}" + (f"  → champion ({r.champion_uri})" if r.champion else
                                                       f"  (champion unchanged: {r.champion_uri} is better)"))
        print(common.ui_hint(uri, args.tracking_uri))
    return 0


def _sweep_json(r, uri: str) -> dict:
    """``nbnet sweep --json``: the best trial under ``nbnet best --json``'s keys, and the counts."""
    return {"study": r.study_name, "experiment": r.experiment, "storage": r.storage, "metric": r.metric,
            "direction": r.direction, "trial": r.best_trial, "value": r.best_value, "params": r.best_params,
            "run_id": r.best_run_id, "model_uri": f"runs:/{r.best_run_id}/model" if r.best_run_id else None,
            "registered": r.model_uri, "champion": r.champion, "champion_uri": r.champion_uri,
            "parent_run_id": r.parent_run_id, "n_trials": r.n_complete + r.n_pruned + r.n_failed,
            "n_complete": r.n_complete, "n_pruned": r.n_pruned, "n_failed": r.n_failed, "n_run": r.n_run,
            "seconds": round(r.seconds, 3), "tracking_uri": uri}


def cmd_train(args) -> int:
    common.headless()
    cfg = config.load_experiment(args.experiment, args.overrides)
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise NbnetError(f"--checkpoint-every must be a positive number of epochs, got {args.checkpoint_every}")
    from nbnet.experiment import run  # heavy: the command's module loads MLflow

    with common.json_stdout(args.json) as out:
        keys = ("loss", "val_loss", cfg.search.metric)
        with EpochProgress(cfg.train.epochs, label=f"train {cfg.name}", keys=keys) as bar:
            def announce(run_id: str, exp_id: str, uri: str) -> None:
                if not args.quiet:
                    print(f"run {run_id} (experiment {cfg.name}): {common.run_address(uri, exp_id, run_id)}"
                          + ("" if common.is_server(uri) else f"  (start the UI: {_ui(uri, args)})"), flush=True)
                    compile_notice(cfg.train.device)

            out_ = run.train_run(cfg, register=args.register, checkpoint_every=args.checkpoint_every,
                                 callbacks=() if args.quiet else (bar,), announce=announce)
        uri = _store_uri()
        if args.json:
            common.emit_json(out, {**out_, "tracking_uri": uri})
            return 0
        _print_train(cfg, out_, uri, args)
    return 0


def _ui(uri: str, args) -> str:
    return f"nbnet ui --tracking-uri {uri}" if args.tracking_uri else "nbnet ui"


def _print_train(cfg, out: dict, uri: str, args) -> None:
    if out["resumed_from_epoch"]:
        print(f"resumed from the checkpoint of epoch {out['resumed_from_epoch']}")
    m = out["metrics"]
    shown = [k for k in (cfg.search.metric, "val_loss", "test_" + cfg.search.metric[4:]) if k in m]
    print(f"run {out['run_id']}: " + "  ".join(f"{k}={m[k]:.4f}" for k in shown)
          + f"  ({m['epochs']} epochs, {m['train_seconds']:.1f}s training, {m['compile_seconds']:.1f}s compile)")
    print(f"model: {out['model_uri']}")
    if out["registered"]:
        print(f"registered: {out['registered']}" + ("  → champion" if out["champion"] else "  (champion unchanged)"))
    print(common.ui_hint(uri, args.tracking_uri))


def cmd_best(args) -> int:
    from nbnet.experiment import sweep  # heavy: the command's module loads MLflow

    b = sweep.best(args.study, args.storage)
    if args.json:
        common.emit_json(sys.stdout, b)
        return 0
    print(f"study {b['study']} ({b['n_trials']} trials), experiment {b['experiment']}")
    print(f"best trial: {b['trial']}  {b['metric']}={b['value']:.4f} ({b['direction']})")
    print(f"run id:     {b['run_id']}")
    print(f"model URI:  {b['model_uri']}")
    if b["registered"]:
        print(f"registered: {b['registered']}  (serving alias {b['champion_uri']})")
    for k, v in b["params"].items():
        print(f"  {k} = {v}")
    return 0


def cmd_rerun(args) -> int:
    common.headless()
    from nbnet.experiment import run  # heavy: the command's module loads MLflow

    with common.json_stdout(args.json) as out:
        r = run.rerun(args.run_id)
        code = 0 if r["bit_identical"] in (True, None) else 1
        if args.json:
            common.emit_json(out, r)
            return code
        v, o = r["value"], r["original_value"]
        print(f"rerun of {r['rerun_of']} → run {r['run_id']}")
        if v is not None:
            print(f"{r['metric']}: {v:.6f} now, " + (f"{o:.6f} originally" if o is not None else "not recorded originally"))
        if r["loss_epochs_compared"]:
            same = "identical" if r["loss_history_identical"] else "DIFFERENT"
            print(f"loss history over {r['loss_epochs_compared']} epochs: {same}")
        if r["bit_identical"] is None:
            print(r["note"])
        else:
            print("weights: bit-identical" if r["bit_identical"] else
                  f"weights: DIFFERENT (max |diff| {r.get('max_abs_diff', float('nan')):.3g})")
    return code
