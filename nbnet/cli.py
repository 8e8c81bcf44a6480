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
    # Subcommands register themselves here: sub.add_parser(...).set_defaults(func=cmd_...)
    return parser


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
