"""The ``nbnet`` command line.

Each subcommand is a ``cmd_NAME(args) -> int`` function registered in :func:`build_parser`.
A user error (:class:`~nbnet.errors.NbnetError`) prints one line on stderr and exits 2, with no
traceback; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sys

from .errors import NbnetError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other user error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="nbnet", description="Numba-compiled MLPs with tracked Optuna sweeps.")
    parser.add_argument("--version", action="version", version=f"nbnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_model_commands(sub)
    # Subcommands register themselves here: sub.add_parser(...).set_defaults(func=cmd_...)
    return parser


# --- using the result (issue 4): predict, ui ------------------------------------------------------
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
    from .tracking import predict_file

    n = predict_file(args.model, args.input, args.output, proba=args.proba, chunk_rows=args.chunk_rows)
    print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
    return 0


def cmd_ui(args) -> int:
    from .tracking import serve_ui

    return serve_ui(args.host, args.port)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NbnetError as e:
        print(f"nbnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nbnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
