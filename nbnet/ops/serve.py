"""Deployment: online serving (``nbnet serve``) and the MLflow UI (``nbnet ui``); batch
prediction is :mod:`nbnet.ops.predict`.

Both servers are MLflow's own (``mlflow models serve``: FastAPI under uvicorn; ``mlflow
server``). :func:`run_server` starts one in its own process group with the venv's bin folder
first on PATH (both start uvicorn by name), waits until it answers a readiness URL (polled,
with a deadline), turns SIGTERM/SIGHUP into Ctrl-C, and stops the whole group on every exit.

Example
-------
>>> serve_model("models:/digits@champion", port=5001)   # blocks; Ctrl-C stops it  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from nbnet._sys.procs import group_alive
from nbnet.errors import NbnetError
from nbnet.io import MLFLOW_URI_PREFIXES
from nbnet.experiment import tracking
from nbnet.nn.estimator import load


# --- servers in their own process group (nbnet ui, nbnet serve) ----------------------------------
def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _check_port(host: str, port) -> None:
    """A bad or taken port is a one-line user error before anything starts, not a server traceback."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise NbnetError(f"--port must be in 1..65535, got {port!r}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise NbnetError(f"cannot listen on {host}:{port} ({e.strerror}); pick another with --port") from None


def _server_env() -> dict:
    env = dict(os.environ)
    # mlflow starts uvicorn (and helpers) by name: the venv's bin must come first on PATH
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the whole group (server, uvicorn, workers, helpers); SIGKILL what is left after
    ``grace`` seconds; reap the leader."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the stragglers' exit
    if group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_server(cmd: list[str], env: dict, *, ready_url: str, what: str, banner, ready_timeout: float = 120.0,
               stream=None) -> int:
    """Run ``cmd`` in its own process group until it exits, Ctrl-C, SIGTERM or SIGHUP; returns its
    exit status (0 after a signal).

    ``ready_url`` is polled (2 s per request, every 0.25 s, for at most ``ready_timeout`` s) until
    it answers 200; then ``banner(pgid)`` is printed on ``stream``. The group is stopped as a whole
    on every way out, so no uvicorn worker outlives nbnet.
    """
    stream = stream or sys.stdout
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        deadline = time.monotonic() + ready_timeout
        while True:  # wait for the server to answer before printing its address
            if proc.poll() is not None:
                raise NbnetError(f"{what} exited with status {proc.returncode} before it was ready; "
                                 "see its messages above")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise NbnetError(f"{what} did not answer on {ready_url} within {ready_timeout:.0f} s")
            time.sleep(0.25)  # polling interval while the server starts
        print(banner(proc.pid), file=stream, flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_group(proc)
        for sig, h in old.items():
            signal.signal(sig, h)


# --- the MLflow UI (nbnet ui) ----------------------------------------------------------------------
def ui_command(host: str = "127.0.0.1", port: int = 5000, uri: str | None = None) -> tuple[list[str], dict]:
    """The ``mlflow server`` command line and environment that serve the project's store."""
    uri = uri or tracking.default_tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--registry-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    root = tracking.artifact_root(uri)
    if root is not None:  # artifacts uploaded through this server land beside the database too
        cmd += ["--artifacts-destination", Path(root).as_uri()]
    env = _server_env()
    env.pop("MLFLOW_TRACKING_URI", None)  # the server is the store's owner, not a client of itself
    # the GenAI job runner (uvicorn + seven task consumers) serves nothing nbnet logs
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return cmd, env


def serve_ui(host: str = "127.0.0.1", port: int = 5000, uri: str | None = None, *, ready_timeout: float = 120.0,
             stream=None) -> int:
    """Run the MLflow UI for the project's store until Ctrl-C or SIGTERM; returns its exit status.

    ``mlflow server`` spawns several processes (uvicorn, a job runner, task consumers), so it runs
    in its own process group, which is stopped as a whole when nbnet ui exits.
    """
    stream = stream or sys.stdout
    uri = uri or tracking.default_tracking_uri()
    if uri.startswith(("http://", "https://")):  # already a tracking server: it serves its own UI
        print(f"MLflow UI: {uri}  (MLFLOW_TRACKING_URI is a tracking server; open it in a browser)", file=stream)
        return 0
    _check_port(host, port)
    cmd, env = ui_command(host, port, uri)
    url = _base_url(host, port)
    return run_server(cmd, env, ready_url=f"{url}/health", what="mlflow server", ready_timeout=ready_timeout,
                      stream=stream, banner=lambda pgid: f"MLflow UI for {uri}: {url}  (process group {pgid}; "
                                                         "Ctrl-C stops it)")


# --- online serving (nbnet serve) ------------------------------------------------------------------
def _pyfunc_from_file(path: Path, dst: Path) -> Path:
    """Wrap a local nbnet file as an MLflow pyfunc model folder at ``dst``: the same "models from
    code" model ``tracking.log_model`` logs (code file, the nbnet file, the ``proba`` param), so
    ``mlflow models serve`` can serve it without a tracking store.

    An nbnet file stores no column names, so the signature has no input schema: the request's
    columns are taken in order (n_features_in_ of them), as ``nbnet predict`` takes a bare
    file's. A model logged to MLflow keeps its names and categories: serve its URI instead."""
    import mlflow.pyfunc  # heavy: imported on first use
    from mlflow.models import ModelSignature  # heavy: imported on first use
    from mlflow.types.schema import ParamSchema, ParamSpec  # heavy: imported on first use

    est = load(path)
    n = est.n_features_in_
    example = pd.DataFrame(np.zeros((1, n)), columns=[f"x{j}" for j in range(n)])
    params = ParamSchema([ParamSpec("proba", "boolean", False)]) if hasattr(est, "predict_proba") else None
    with tracking.quiet():
        mlflow.pyfunc.save_model(str(dst), python_model=str(tracking.PYFUNC_CODE), artifacts={"model": str(path)},
                                 model_config={"feature_names": None, "categories": {}},
                                 signature=ModelSignature(inputs=None, params=params), input_example=example,
                                 pip_requirements=tracking.pip_requirements())
    tracking.build_wheel(dst / tracking.WHEEL_DIR)  # requirements.txt names it: any env manager can build the model
    return dst


def model_dir(model: str, dst, tracking_uri: str | None = None) -> Path:
    """A local MLflow pyfunc folder for ``model`` under ``dst``: an MLflow URI of an nbnet model
    (``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``) is downloaded from
    the tracking store; a local ``.nbnet`` file is wrapped (:func:`_pyfunc_from_file`)."""
    s, dst = str(model), Path(dst)
    if s.startswith(MLFLOW_URI_PREFIXES):
        nbnet_file, _ = tracking.download_model(s, dst=str(dst), tracking_uri=tracking_uri)
        return Path(nbnet_file).parent.parent  # <model>/artifacts/model.nbnet → <model>
    if Path(s).is_file():
        return _pyfunc_from_file(Path(s), dst / "model")
    raise NbnetError(f"model {s!r} is neither an MLflow model URI (models:/NAME@champion, models:/NAME/VERSION, "
                     "runs:/RUN_ID/model) nor an existing .nbnet file")


ENV_MANAGERS = ("local", "uv", "virtualenv")


def serve_command(model_path, host: str = "127.0.0.1", port: int = 5001, workers: int = 1,
                  env_manager: str = "local") -> tuple[list[str], dict]:
    """The ``mlflow models serve`` command line and environment for a local pyfunc folder. With
    ``env_manager="local"`` the model runs in this interpreter (nbnet is importable here); with
    ``"uv"`` or ``"virtualenv"`` MLflow first builds an environment from the model's own
    requirements (the package index for the pinned packages, nbnet from the wheel the model
    carries)."""
    if env_manager not in ENV_MANAGERS:
        raise NbnetError(f"--env-manager must be one of {', '.join(ENV_MANAGERS)}, got {env_manager!r}")
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_path), "--env-manager", env_manager,
           "-h", host, "-p", str(port), "-w", str(workers)]
    env = _server_env()
    env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no INFO chatter; uvicorn's access lines stay
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # it copies the folder once to read MLmodel
    return cmd, env


def serve_model(model: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1, *,
                tracking_uri: str | None = None, env_manager: str = "local", ready_timeout: float | None = None,
                stream=None) -> int:
    """Serve ``model`` over MLflow's scoring protocol until Ctrl-C or SIGTERM; returns the server's
    exit status (0 after a signal).

    ``GET /ping`` answers 200 once the model is loaded; ``POST /invocations`` takes JSON
    (``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``; optional
    ``"params": {"proba": true}`` for class probabilities) or CSV (``Content-Type: text/csv``) and
    answers ``{"predictions": [...]}``; a malformed request gets a 400 with a message. The model
    is fetched (or wrapped) once into a temporary folder that is removed on exit. ``env_manager``:
    see :func:`serve_command` (building an environment takes minutes the first time: the default
    ``ready_timeout`` is 180 s for ``local``, 1800 s otherwise).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise NbnetError(f"--workers must be a positive integer, got {workers!r}")
    if env_manager not in ENV_MANAGERS:
        raise NbnetError(f"--env-manager must be one of {', '.join(ENV_MANAGERS)}, got {env_manager!r}")
    if ready_timeout is None:
        ready_timeout = 180.0 if env_manager == "local" else 1800.0
    _check_port(host, port)  # before the download: a taken port fails in a second
    stream = stream or sys.stdout
    url = _base_url(host, port)
    with tempfile.TemporaryDirectory(prefix="nbnet-serve-") as tmp:
        path = model_dir(model, tmp, tracking_uri)
        cmd, env = serve_command(path, host, port, workers, env_manager)
        return run_server(cmd, env, ready_url=f"{url}/ping", what="mlflow models serve", ready_timeout=ready_timeout,
                          stream=stream, banner=lambda pgid: f"serving {model} at {url}/invocations  "
                                                             f"(process group {pgid}; Ctrl-C stops it)")
