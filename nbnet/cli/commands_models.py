"""Using and showing a model: ``nbnet predict``, ``ui``, ``serve``, ``export``, ``plot``."""

from __future__ import annotations

import sys

from nbnet.cli import common


def add_commands(sub) -> None:
    p = sub.add_parser("predict", help="predict a CSV/Parquet/NPZ file with a model (URI or file)",
                       description="Predict every row of INPUT with MODEL (models:/NAME@champion, models:/NAME/3, "
                                   "runs:/RUN_ID/model or a local .nbnet file); chunked, written atomically.")
    p.add_argument("model", metavar="MODEL_URI")
    p.add_argument("input", metavar="INPUT", help="a .csv, .parquet or .npz file (columns as in training)")
    p.add_argument("-o", "--output", required=True, help="output .csv, .parquet or .npz")
    p.add_argument("--proba", action="store_true", help="also write class probabilities (classifiers)")
    p.add_argument("--chunk-rows", type=int, default=100_000, help="rows per chunk (default 100000)")
    common.add_json_option(p, "what was written")
    common.add_store_option(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ui", help="open the MLflow UI on the project's store (./mlflow.db, as `mlflow ui`, or "
                                  "MLFLOW_TRACKING_URI)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    common.add_store_option(p)
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("serve", help="serve a model over REST with MLflow's scoring server (/ping, /invocations)",
                       description="Serve MODEL (models:/NAME@champion, models:/NAME/3, runs:/RUN_ID/model or a local "
                                   ".nbnet file) with `mlflow models serve`: POST /invocations takes dataframe_split, "
                                   "dataframe_records, instances, inputs (JSON) or CSV; Ctrl-C stops it.")
    p.add_argument("model", metavar="MODEL_URI")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--env-manager", choices=("local", "uv", "virtualenv"), default="local",
                   help="local: this environment (default); uv/virtualenv: one MLflow builds from the model's own "
                        "requirements (nbnet from the wheel inside the model)")
    common.add_store_option(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="write a model as one ONNX graph, preprocessing included, for ONNX Runtime",
                       description="Export MODEL_URI (models:/NAME@champion, models:/NAME/3, runs:/RUN_ID/model or a local "
                                   ".nbnet file) as an ONNX graph from raw columns to predictions: imputation, one-hot "
                                   "categories, scaling, selection, PCA, the network and its output transform. "
                                   "Outputs label and probabilities (classifiers) or variable (regressors).")
    p.add_argument("model", metavar="MODEL_URI")
    p.add_argument("--onnx", required=True, metavar="PATH", help="the .onnx file to write (atomically)")
    p.add_argument("--input-type", choices=("float32", "float64"), default="float64",
                   help="element type of the numeric inputs (default float64: raw values kept exactly)")
    common.add_store_option(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="write a run's figures (loss, gradient norms, activations, confusion, ROC) as PNGs",
                       description="Draw RUN_ID's figures from its MLflow metrics and plots/evaluation.json (no "
                                   "retraining): loss curves, per-layer gradient norms, per-layer activation statistics, "
                                   "confusion matrix and ROC (classification) or predicted-vs-true (regression), and "
                                   "the summary panel. For a sweep's parent run, its best trial is drawn and the "
                                   "study's figures are copied. Store: --tracking-uri, MLFLOW_TRACKING_URI or ./mlflow.db.")
    p.add_argument("run_id", metavar="RUN_ID", help="a trial's, nbnet train's or a sweep's parent run id")
    p.add_argument("-o", "--output", metavar="DIR", help="folder for the PNGs (default: ./plots/RUN_ID)")
    common.add_store_option(p)
    p.set_defaults(func=cmd_plot)


def cmd_predict(args) -> int:
    from nbnet.ops.predict import predict_file  # heavy: the command's module loads MLflow

    with common.json_stdout(args.json) as out:
        n = predict_file(args.model, args.input, args.output, proba=args.proba, chunk_rows=args.chunk_rows)
        if args.json:
            common.emit_json(out, {"model": args.model, "input": args.input, "output": args.output, "rows": n,
                                   "proba": args.proba})
            return 0
    print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
    return 0


def cmd_ui(args) -> int:
    from nbnet.ops.serve import serve_ui  # heavy: the command's module loads MLflow

    return serve_ui(args.host, args.port)


def cmd_serve(args) -> int:
    from nbnet.ops.serve import serve_model  # heavy: the command's module loads MLflow

    return serve_model(args.model, args.host, args.port, args.workers, env_manager=args.env_manager)


def cmd_export(args) -> int:
    from nbnet.ops.export import export_onnx  # heavy: the command's module loads MLflow and onnx

    info = export_onnx(args.model, args.onnx, input_type=args.input_type)
    inputs = ", ".join(f"{s.name} {s.dtype}[N,{s.width}]" for s in info.inputs[:6])
    more = f" (+{len(info.inputs) - 6} more)" if len(info.inputs) > 6 else ""
    print(f"wrote {info.path}: inputs {inputs}{more}; outputs {', '.join(info.outputs)}", file=sys.stderr)
    return 0


def cmd_plot(args) -> int:
    common.headless()
    from nbnet.ops.plot import plot_run  # heavy: the command's module loads MLflow

    paths, notes = plot_run(args.run_id, args.output)
    for note in notes:
        print(f"nbnet: {note}", file=sys.stderr)
    for path in paths:
        print(path)
    return 0
