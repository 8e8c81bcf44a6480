"""The ``nbnet`` command line.

Each subcommand is a ``cmd_NAME(args) -> int`` function registered in :func:`build_parser`.
Errors print one line on stderr, with no traceback unless ``--debug``; the exit codes are those of
:mod:`nbnet.errors` (0 ok, 1 a check failed, 2 user error, 3 internal or store failure, 130
interrupted).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from nbnet import errors
from nbnet.errors import NbnetError
from nbnet.experiment import config
from nbnet.version import __version__


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other user error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nbnet", description="Numba-compiled MLPs with tracked Optuna sweeps.")
    parser.add_argument("--version", action="version", version=f"nbnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal or store failure")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_search_commands(sub)
    _add_model_commands(sub)
    _add_lifecycle_commands(sub)
    _add_deploy_commands(sub)
    _add_viz_commands(sub)
    # Subcommands register themselves here: sub.add_parser(...).set_defaults(func=cmd_...)
    return parser


# --- experiments and sweeps: sweep, train, best, rerun -------------------------------
def _add_search_commands(sub) -> None:
    p = sub.add_parser("sweep", help="run (or resume) an Optuna sweep of an experiment, tracked in MLflow",
                       description="Run or resume the hyperparameter sweep of EXPERIMENT (a .toml path or a name in "
                                   "experiments/); every trial is an MLflow run; the best model is registered.")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("--trials", type=int, help="total trials of the study (default: search.n_trials)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on the same study (default 1)")
    p.add_argument("--study", help="study name (default: the experiment's name); the same name resumes it")
    p.add_argument("--storage", help="Optuna storage URL or journal file (default: mlruns/optuna/STUDY.log)")
    p.add_argument("--sampler", choices=config.SAMPLERS, help="default: search.sampler (tpe)")
    p.add_argument("--pruner", choices=config.PRUNERS, help="default: search.pruner (median)")
    p.add_argument("--no-register", dest="register", action="store_false", help="do not register the best model")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-trial lines")
    add_set_option(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("train", help="one tracked training run with the experiment's fixed values")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("--register", action="store_true",
                   help="register the model as a new version; it becomes champion only if it beats the current one")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="write an atomic checkpoint every N epochs; re-run the same command after a crash to resume")
    add_set_option(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("best", help="the best trial of a sweep: run id, metric, params and model URI")
    p.add_argument("--study", help="study name (default: the most recent sweep under mlruns/optuna)")
    p.add_argument("--storage", help="Optuna storage URL or journal file (default: mlruns/optuna/STUDY.log)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("rerun", help="retrain a run from its recorded config and seed; report bit-identity")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_rerun)


def _headless() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures are written to files, never shown
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # MLflow's INFO lines would drown the progress lines


def cmd_sweep(args) -> int:
    _headless()
    cfg = config.load_experiment(args.experiment, args.overrides)  # before MLflow loads: errors come fast
    from nbnet.experiment import sweep  # heavy: the command's module loads MLflow

    r = sweep.run_sweep(cfg, trials=args.trials, workers=args.workers, study_name=args.study, storage=args.storage,
                        sampler=args.sampler, pruner=args.pruner, register=args.register, quiet=args.quiet)
    print(r.summary())
    if r.best_trial is None:
        print("no trial completed; see the reasons above")
        return 1
    print(f"best trial:   {r.best_trial}  {r.metric}={r.best_value:.4f}")
    print(f"best run:     {r.best_run_id}  (model runs:/{r.best_run_id}/model)")
    if r.model_uri:
        print(f"registered:   {r.model_uri}" + (f"  → champion ({r.champion_uri})" if r.champion else
                                                   f"  (champion unchanged: {r.champion_uri} is better)"))
    print("open the UI:  nbnet ui    (MLflow at http://127.0.0.1:5000)")
    return 0


def cmd_train(args) -> int:
    _headless()
    cfg = config.load_experiment(args.experiment, args.overrides)
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise NbnetError(f"--checkpoint-every must be a positive number of epochs, got {args.checkpoint_every}")
    from nbnet.experiment import run  # heavy: the command's module loads MLflow

    out = run.train_run(cfg, register=args.register, checkpoint_every=args.checkpoint_every)
    if out["resumed_from_epoch"]:
        print(f"resumed from the checkpoint of epoch {out['resumed_from_epoch']}")
    m = out["metrics"]
    shown = [k for k in (cfg.search.metric, "val_loss", "test_" + cfg.search.metric[4:]) if k in m]
    print(f"run {out['run_id']}: " + "  ".join(f"{k}={m[k]:.4f}" for k in shown)
          + f"  ({m['epochs']} epochs, {m['train_seconds']:.1f}s training, {m['compile_seconds']:.1f}s compile)")
    print(f"model: {out['model_uri']}")
    if out["registered"]:
        print(f"registered: {out['registered']}" + ("  → champion" if out["champion"] else "  (champion unchanged)"))
    return 0


def cmd_best(args) -> int:
    from nbnet.experiment import sweep  # heavy: the command's module loads MLflow

    b = sweep.best(args.study, args.storage)
    if args.json:
        print(json.dumps(b, indent=1, default=str))
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
    _headless()
    from nbnet.experiment import run  # heavy: the command's module loads MLflow

    r = run.rerun(args.run_id)
    if args.json:
        print(json.dumps(r, indent=1, default=str))
        return 0
    v, o = r["value"], r["original_value"]
    print(f"rerun of {r['rerun_of']} → run {r['run_id']}")
    if v is not None:
        print(f"{r['metric']}: {v:.6f} now, " + (f"{o:.6f} originally" if o is not None else "not recorded originally"))
    if r["loss_epochs_compared"]:
        print(f"loss history over {r['loss_epochs_compared']} epochs: {'identical' if r['loss_history_identical'] else 'DIFFERENT'}")
    if r["bit_identical"] is None:
        print(r["note"])
    else:
        print("weights: bit-identical" if r["bit_identical"] else f"weights: DIFFERENT (max |diff| {r.get('max_abs_diff', float('nan')):.3g})")
    return 0 if r["bit_identical"] in (True, None) else 1


# --- using the result: predict, ui ------------------------------------------------------
def _add_model_commands(sub) -> None:
    p = sub.add_parser("predict", help="predict a CSV/Parquet/NPZ file with a model (URI or file)",
                       description="Predict every row of INPUT with MODEL (models:/NAME@champion, models:/NAME/3, "
                                   "runs:/RUN_ID/model or a local .nbnet file); chunked, written atomically.")
    p.add_argument("model", metavar="MODEL_URI")
    p.add_argument("input", metavar="INPUT", help="a .csv, .parquet or .npz file (columns as in training)")
    p.add_argument("-o", "--output", required=True, help="output .csv, .parquet or .npz")
    p.add_argument("--proba", action="store_true", help="also write class probabilities (classifiers)")
    p.add_argument("--chunk-rows", type=int, default=100_000, help="rows per chunk (default 100000)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ui", help="open the MLflow UI on the project's store (mlruns/ or MLFLOW_TRACKING_URI)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.set_defaults(func=cmd_ui)


def cmd_predict(args) -> int:
    from nbnet.ops.predict import predict_file  # heavy: the command's module loads MLflow

    n = predict_file(args.model, args.input, args.output, proba=args.proba, chunk_rows=args.chunk_rows)
    print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
    return 0


def cmd_ui(args) -> int:
    from nbnet.ops.serve import serve_ui  # heavy: the command's module loads MLflow

    return serve_ui(args.host, args.port)


# --- deployment: serve ------------------------------------------------------------------
def _add_deploy_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over REST with MLflow's scoring server (/ping, /invocations)",
                       description="Serve MODEL (models:/NAME@champion, models:/NAME/3, runs:/RUN_ID/model or a local "
                                   ".nbnet file) with `mlflow models serve`: POST /invocations takes dataframe_split, "
                                   "dataframe_records, instances, inputs (JSON) or CSV; Ctrl-C stops it.")
    p.add_argument("model", metavar="MODEL_URI")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from nbnet.ops.serve import serve_model  # heavy: the command's module loads MLflow

    return serve_model(args.model, args.host, args.port, args.workers)


# --- model lifecycle: monitor, promote, rollback, update --------------------------------
def _add_lifecycle_commands(sub) -> None:
    p = sub.add_parser("monitor", help="check new data for drift and the model's metric on it; exit 1 past the thresholds",
                       description="Compare DATA (.csv/.parquet/.npz) with the training statistics stored in MODEL_URI: "
                                   "PSI and KS per feature and, when DATA has the target column, the model's metric "
                                   "against its recorded validation value. Logs a run in the experiment "
                                   "NAME-monitoring. Exit 0 within the thresholds, 1 past them, 2 on a user error.")
    p.add_argument("model", metavar="MODEL_URI", help="models:/NAME@champion, models:/NAME/N or runs:/RUN_ID/model")
    p.add_argument("data", metavar="DATA", help="a .csv, .parquet or .npz file with the model's input columns")
    p.add_argument("--target", help="label column (default: the training target, when the file has it)")
    p.add_argument("--psi", type=float, help="PSI threshold per feature (default: [monitor] psi, 0.25)")
    p.add_argument("--ks", type=float, help="KS threshold per feature (default: [monitor] ks, 0.2)")
    p.add_argument("--tolerance", type=float,
                   help="how much worse than recorded the metric may be (default: [monitor] tolerance, 0.02)")
    p.add_argument("--experiment", metavar="EXP", help="take the thresholds from this experiment file's [monitor] table")
    p.add_argument("--rollback", action="store_true",
                   help="when the check fails and MODEL_URI is the champion, move champion back to the previous one")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("promote", help="move the champion alias to a version if it passes the gate",
                       description="Move champion of NAME to --version N only if N is not worse than the current "
                                   "champion by more than the tolerance: on DATA when given (both models scored on it), "
                                   "else on each version's recorded validation metric. Exit 1 when the gate fails.")
    p.add_argument("name", metavar="NAME", help="registered model name (the experiment's name)")
    p.add_argument("--version", required=True, help="the version to promote")
    p.add_argument("--data", help="holdout .csv/.parquet/.npz to compare both versions on")
    p.add_argument("--target", help="label column of --data (default: the training target)")
    p.add_argument("--tolerance", type=float,
                   help="how much worse than the champion N may be (default: its run's monitor.tolerance, 0.02)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="move the champion alias back to the previous champion (or --to N)")
    p.add_argument("name", metavar="NAME", help="registered model name")
    p.add_argument("--to", help="the version to roll back to (default: the previous champion in the history)")
    p.add_argument("--reason", default="manual rollback", help="why (recorded in the tags)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("update", help="fine-tune a registered model on new data; register it as challenger",
                       description="Warm-start MODEL_URI (weights, optimizer state, generator state; preprocessing kept "
                                   "as fitted) and train it on DATA for --epochs epochs; log the run and register the "
                                   "result as a new version with the alias challenger. Promote it with nbnet promote.")
    p.add_argument("model", metavar="MODEL_URI", help="models:/NAME@champion or models:/NAME/N")
    p.add_argument("data", metavar="DATA", help="a .csv, .parquet or .npz file with the input columns and labels")
    p.add_argument("--target", help="label column (default: the training target)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of fine-tuning (default 10)")
    p.add_argument("--lr", type=float, help="learning rate (default: the model's own)")
    p.add_argument("--val-fraction", type=float,
                   help="share of DATA held out and scored each epoch (default: the model's data.val_fraction; 0: none)")
    p.set_defaults(func=cmd_update)


def cmd_monitor(args) -> int:
    _headless()
    from nbnet.ops.monitor import check  # heavy: the command's module loads MLflow

    rep = check(args.model, args.data, target=args.target, psi=args.psi, ks=args.ks, tolerance=args.tolerance,
                rollback=args.rollback, experiment=args.experiment)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1))
    else:
        print(rep.text())
    return 1 if rep.failed else 0


def cmd_promote(args) -> int:
    _headless()
    from nbnet.ops.promote import promote  # heavy: the command's module loads MLflow

    res = promote(args.name, args.version, data=args.data, target=args.target, tolerance=args.tolerance)
    print("\n".join(res.lines()))
    return 0 if res.passed else 1


def cmd_rollback(args) -> int:
    _headless()
    from nbnet.ops.promote import rollback  # heavy: the command's module loads MLflow

    old, new = rollback(args.name, args.to, reason=args.reason)
    print(f"champion of {args.name}: v{old} → v{new}  (models:/{args.name}@champion; reason: {args.reason})")
    return 0


def cmd_update(args) -> int:
    _headless()
    from nbnet.ops.update import update  # heavy: the command's module loads MLflow

    r = update(args.model, args.data, target=args.target, epochs=args.epochs, lr=args.lr,
               val_fraction=args.val_fraction, quiet=False)
    m, key = r["metrics"], r["metric_key"]
    s0, s1 = r["optimizer_step"]
    print(f"updated v{r['source_version']} of {r['name']} on {args.data}: {args.epochs} epochs on {r['train_rows']} rows "
          f"(lr {r['learning_rate']:g}; optimizer step {s0} → {s1}; preprocessing kept as fitted)")
    if key in m:
        print(f"run {r['run_id']}: {key}={m[key]:.4f} on {r['rows'] - r['train_rows']} held-out rows of the new data")
    else:
        print(f"run {r['run_id']} (no held-out rows: no validation metric)")
    print(f"registered: {r['model_uri']}  (alias challenger: {r['alias_uri']}; champion unchanged)")
    print(f"promote it through the gate:  {r['promote_command']}")
    return 0


# --- visualisation: plot ----------------------------------------------------------------
def _add_viz_commands(sub) -> None:
    p = sub.add_parser("plot", help="write a run's figures (loss, gradient norms, activations, confusion, ROC) as PNGs",
                       description="Draw RUN_ID's figures from its MLflow metrics and plots/evaluation.json (no "
                                   "retraining): loss curves, per-layer gradient norms, per-layer activation statistics, "
                                   "confusion matrix and ROC (classification) or predicted-vs-true (regression), and "
                                   "the summary panel. For a sweep's parent run, its best trial is drawn and the "
                                   "study's figures are copied. Store: MLFLOW_TRACKING_URI or ./mlruns.")
    p.add_argument("run_id", metavar="RUN_ID", help="a trial's, nbnet train's or a sweep's parent run id")
    p.add_argument("-o", "--output", metavar="DIR", help="folder for the PNGs (default: ./plots/RUN_ID)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args) -> int:
    _headless()
    from nbnet.ops.plot import plot_run  # heavy: the command's module loads MLflow

    paths, notes = plot_run(args.run_id, args.output)
    for note in notes:
        print(f"nbnet: {note}", file=sys.stderr)
    for path in paths:
        print(path)
    return 0


def _quiet_logs() -> None:
    """stderr is for nbnet's own lines (a user error is exactly one): no MLflow INFO logging."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    # On a tracking server MLflow prints "🏃 View run … at: http://…" to stdout for every run it
    # closes, which would corrupt --json output.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # and if it already was


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_logs()
    from nbnet.experiment import faults  # heavy: the experiment layer (faults itself imports no MLflow or Optuna)

    faults.bounded_retries()
    try:
        return int(args.func(args) or 0)
    except NbnetError as e:
        print(f"nbnet: error: {e}", file=sys.stderr)
        return errors.EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("nbnet: interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except Exception as e:  # a store or internal failure: one line, the traceback only on --debug
        if args.debug:
            raise
        store = faults.describe(e)  # a full disk, a read-only or unreachable store: what failed, how to resume
        kind = "store error" if store is not None else f"internal error: {type(e).__name__}"
        first = store or (str(e).strip().splitlines()[0] if str(e).strip() else "")
        print(f"nbnet: {kind}: {first} (run again with --debug for the traceback)", file=sys.stderr)
        return errors.EXIT_STORE_ERROR


if __name__ == "__main__":
    sys.exit(main())
