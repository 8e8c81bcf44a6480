"""What every command shares: the common options (``--debug``, ``--tracking-uri``, ``--json``,
``-q``), the store a command uses, ``--json`` output on stdout with everything else on stderr,
and the UI address of a store."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings

from nbnet._sys.environ import environ
#: Where ``nbnet ui`` serves a local store unless told otherwise.
UI_ADDRESS = "http://127.0.0.1:5000"


def add_set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")


def add_debug_option(p: argparse.ArgumentParser) -> None:
    """``--debug`` after the subcommand too (``nbnet sweep digits --debug``); SUPPRESS keeps a
    ``--debug`` given before the subcommand."""
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="print the traceback of an internal or store failure")


def add_store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking store for this command (default: MLFLOW_TRACKING_URI, else the project's "
                        "default store)")


def add_json_option(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as one JSON object on stdout (progress on stderr)")


def add_quiet_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=f"no {what}")


@contextlib.contextmanager
def tracking_uri(uri: str | None):
    """``MLFLOW_TRACKING_URI`` is ``uri`` while the block runs (every store lookup of nbnet and
    MLflow resolves through it; spawned workers inherit it), then as it was."""
    if not uri:
        yield
        return
    with environ(MLFLOW_TRACKING_URI=uri):
        yield


@contextlib.contextmanager
def json_stdout(enabled: bool):
    """With ``--json``, everything the command prints goes to stderr and the block gets the real
    stdout for the one JSON object; else the block gets stdout and nothing changes."""
    real = sys.stdout
    if not enabled:
        yield real
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield real


def emit_json(stream, obj) -> None:
    """One JSON object (indented as ``best``/``rerun``/``monitor`` print theirs) on ``stream``."""
    print(json.dumps(obj, indent=1, default=str), file=stream, flush=True)


def headless() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures are written to files, never shown
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # MLflow's INFO lines would drown the progress lines


def quiet_logs() -> None:
    """stderr is for nbnet's own lines (a user error is exactly one): no MLflow INFO logging."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    # On a tracking server MLflow prints "🏃 View run … at: http://…" to stdout for every run it
    # closes, which would corrupt --json output.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # and if it already was
    # The commands read every input file by the model's own column names and hand the model those
    # columns in its order: scikit-learn's warning that an array's columns cannot be checked (for a
    # model fitted on a data frame) does not apply.
    warnings.filterwarnings("ignore", "X does not have valid feature names", UserWarning, "nbnet")


# --- where to look at a store ------------------------------------------------------------------
def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_hint(uri: str, given: str | None = None) -> str:
    """``open the UI: …`` for the store actually used (``uri``): a server's own address, or the
    command that serves a local store (with ``--tracking-uri`` when the command was ``given``
    one) and where it will listen."""
    if is_server(uri):
        return f"open the UI:  {uri.rstrip('/')}"
    cmd = f"nbnet ui --tracking-uri {uri}" if given else "nbnet ui"
    return f"open the UI:  {cmd}    (MLflow at {UI_ADDRESS}; store {uri})"


def run_address(uri: str, experiment_id: str, run_id: str) -> str:
    """The UI page of one run: on the server itself, or on ``nbnet ui``'s default address."""
    base = uri.rstrip("/") if is_server(uri) else UI_ADDRESS
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
