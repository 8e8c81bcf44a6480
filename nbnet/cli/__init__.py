"""The ``nbnet`` command line.

Each subcommand is a ``cmd_NAME(args) -> int`` function, registered by the ``add_commands(sub)``
of its module: experiments and sweeps (:mod:`.commands_search`), using and serving a model
(:mod:`.commands_models`), the model lifecycle (:mod:`.commands_lifecycle`), shell completion
(:mod:`.completion`). Live progress is :mod:`.progress`; options and output shared by commands
are :mod:`.common`. Errors print one line on stderr, with no traceback unless ``--debug``; the
exit codes are those of :mod:`nbnet.errors` (see :data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import sys

from nbnet import errors
from nbnet.cli import commands_lifecycle, commands_models, commands_search, common, completion
from nbnet.errors import NbnetError
from nbnet.version import __version__

#: The epilog of ``nbnet --help``: what scripts can rely on.
EXIT_CODES = f"""\
exit status:
  {errors.EXIT_OK:<3}  ok
  {errors.EXIT_CHECK_FAILED:<3}  a check failed: drift or a worse metric (monitor), the promotion gate (promote),
       bit-identity (rerun), no trial completed (sweep)
  {errors.EXIT_USER_ERROR:<3}  user error: a bad option, file, value or name (one line on stderr)
  {errors.EXIT_STORE_ERROR:<3}  internal or store failure: MLflow, the study's database or journal, the disk
       (one line on stderr; add --debug for the traceback)
  {errors.EXIT_INTERRUPTED:<3}  interrupted (Ctrl-C or SIGTERM)

environment:
  MLFLOW_TRACKING_URI            the MLflow store (or --tracking-uri); default: the project folder's local store
  NBNET_STORAGE, OPTUNA_STORAGE  the sweeps' Optuna storage (or --storage); default: mlruns/optuna/STUDY.log

progress: a live bar on a terminal, one plain line per trial or epoch otherwise; -q for none.
completion: eval "$(nbnet completion bash)"   (or zsh)
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other user error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nbnet", description="Numba-compiled MLPs with tracked Optuna sweeps.", epilog=EXIT_CODES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nbnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal or store failure")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Subcommands register themselves: sub.add_parser(...).set_defaults(func=cmd_...)
    commands_search.add_commands(sub)
    commands_models.add_commands(sub)
    commands_lifecycle.add_commands(sub)
    completion.add_commands(sub, parser)
    for p in sub.choices.values():  # `nbnet CMD ... --debug` as well as `nbnet --debug CMD ...`
        common.add_debug_option(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    common.quiet_logs()
    from nbnet.experiment import faults  # heavy: the experiment layer (faults itself imports no MLflow or Optuna)

    faults.bounded_retries()
    try:
        with common.tracking_uri(getattr(args, "tracking_uri", None)):
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


__all__ = ["EXIT_CODES", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
