"""The model lifecycle: ``nbnet monitor``, ``promote``, ``rollback``, ``update``."""

from __future__ import annotations

import dataclasses

from nbnet.cli import common
from nbnet.cli.progress import EpochProgress, compile_notice


def add_commands(sub) -> None:
    p = sub.add_parser("monitor", help="check new data for drift and the model's metric on it; exit 1 past the thresholds",
                       description="Compare DATA (.csv/.parquet/.npz) with the training statistics stored in MODEL_URI: "
                                   "PSI and KS per feature and, when DATA has the target column, the model's metric "
                                   "against its recorded validation value. Logs a run in the experiment "
                                   "NAME-monitoring. Exit 0 within the thresholds, 1 past them, 2 on a user error, "
                                   "3 when the store fails.")
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
    common.add_json_option(p, "the report")
    common.add_store_option(p)
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
    common.add_json_option(p, "the gate's verdict")
    common.add_store_option(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="move the champion alias back to the previous champion (or --to N)")
    p.add_argument("name", metavar="NAME", help="registered model name")
    p.add_argument("--to", help="the version to roll back to (default: the previous champion in the history)")
    p.add_argument("--reason", default="manual rollback", help="why (recorded in the tags)")
    common.add_json_option(p, "the versions")
    common.add_store_option(p)
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
    common.add_quiet_option(p, "progress (no bar, no per-epoch lines)")
    common.add_json_option(p, "the update (run, new version, metrics)")
    common.add_store_option(p)
    p.set_defaults(func=cmd_update)


def cmd_monitor(args) -> int:
    common.headless()
    from nbnet.ops.monitor import check  # heavy: the command's module loads MLflow

    with common.json_stdout(args.json) as out:
        rep = check(args.model, args.data, target=args.target, psi=args.psi, ks=args.ks, tolerance=args.tolerance,
                    rollback=args.rollback, experiment=args.experiment)
        if args.json:
            common.emit_json(out, rep.to_dict())
        else:
            print(rep.text())
    return 1 if rep.failed else 0


def cmd_promote(args) -> int:
    common.headless()
    from nbnet.ops.promote import promote  # heavy: the command's module loads MLflow

    with common.json_stdout(args.json) as out:
        res = promote(args.name, args.version, data=args.data, target=args.target, tolerance=args.tolerance)
        if args.json:
            common.emit_json(out, {**dataclasses.asdict(res), "champion_uri": f"models:/{args.name}@champion"})
        else:
            print("\n".join(res.lines()))
    return 0 if res.passed else 1


def cmd_rollback(args) -> int:
    common.headless()
    from nbnet.ops.promote import rollback  # heavy: the command's module loads MLflow

    with common.json_stdout(args.json) as out:
        old, new = rollback(args.name, args.to, reason=args.reason)
        if args.json:
            common.emit_json(out, {"name": args.name, "from_version": old, "to_version": new,
                                   "champion_uri": f"models:/{args.name}@champion", "reason": args.reason})
        else:
            print(f"champion of {args.name}: v{old} → v{new}  (models:/{args.name}@champion; reason: {args.reason})")
    return 0


def cmd_update(args) -> int:
    common.headless()
    from nbnet.ops.update import update  # heavy: the command's module loads MLflow

    with common.json_stdout(args.json) as out:
        if not args.quiet:
            compile_notice()
        with EpochProgress(args.epochs, label="update", relative=True) as bar:
            r = update(args.model, args.data, target=args.target, epochs=args.epochs, lr=args.lr,
                       val_fraction=args.val_fraction, quiet=True, callbacks=() if args.quiet else (bar,))
        if args.json:
            common.emit_json(out, r)
            return 0
        _print_update(r, args)
    return 0


def _print_update(r: dict, args) -> None:
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
