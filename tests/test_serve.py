"""``nbnet serve MODEL_URI``: MLflow's scoring server in its own process group, answering like
``nbnet.load(...)``; user errors are one line (exit 2) before any server starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest
from servers import cli_server, free_port
from test_predict_cli import COLS, champion, store  # noqa: F401 (fixtures)

import nbnet
from nbnet._sys.procs import group_alive
from nbnet.cli import main
from nbnet.ops.serve import model_dir


def _post(url: str, body, content_type: str = "application/json"):
    """(status, parsed JSON answer) of a POST; ``body`` is sent as is when it is str/bytes."""
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    data = data.encode() if isinstance(data, str) else data
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def server(champion, tmp_path):  # noqa: F811
    """``nbnet serve models:/iris@champion --workers 2`` as a real process; yields (URL, process, pgid)."""
    port = free_port()
    with cli_server(["serve", "models:/iris@champion", "--port", str(port), "--workers", "2"],
                    r"serving \S+ at (http://\S+)/invocations\s+\(process group (\d+)", tmp_path / "serve.stderr") as (
            url, proc, pgid):
        assert url == f"http://127.0.0.1:{port}"
        yield url, proc, pgid


@pytest.mark.slow
def test_serve_answers_every_input_format_like_nbnet_load(champion, server):  # noqa: F811
    clf, _, table = champion
    url, proc, pgid = server
    assert pgid != os.getpgid(0)  # the server runs in its own process group
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as r:
        assert r.status == 200
    rows = table[COLS].iloc[:25].reset_index(drop=True)
    model = nbnet.load("models:/iris@champion")
    expected = model.predict(rows.to_numpy())
    assert len(set(expected)) > 1  # the rows are not all one class: a constant answer would fail
    inv = f"{url}/invocations"
    records = rows.to_dict(orient="records")
    bodies = {
        "dataframe_split": ({"dataframe_split": {"columns": COLS, "data": rows.to_numpy().tolist()}}, "application/json"),
        "dataframe_records": ({"dataframe_records": records}, "application/json"),
        "instances": ({"instances": records}, "application/json"),
        "inputs": ({"inputs": {c: rows[c].tolist() for c in COLS}}, "application/json"),
        "csv": (rows.to_csv(index=False), "text/csv"),
    }
    for fmt, (body, ctype) in bodies.items():
        status, answer = _post(inv, body, ctype)
        assert status == 200, (fmt, answer)
        np.testing.assert_array_equal(np.asarray(answer["predictions"]), expected, err_msg=fmt)

    status, answer = _post(inv, {"dataframe_split": {"columns": COLS, "data": rows.to_numpy().tolist()},
                                 "params": {"proba": True}})
    assert status == 200, answer
    got = pd.DataFrame(answer["predictions"])
    assert list(got.columns) == [str(c) for c in model.classes_]
    np.testing.assert_allclose(got.to_numpy(), model.predict_proba(rows.to_numpy()), rtol=1e-12)

    bad = {
        "broken JSON": ('{"dataframe_split": ', "application/json", "valid JSON"),
        "missing column": ({"dataframe_records": [{c: 1.0 for c in COLS[:3]}]}, "application/json", "petal_width"),
        "not a number": ({"dataframe_split": {"columns": COLS, "data": [[5.1, 3.5, 1.4, "wide"]]}}, "application/json",
                         "petal_width"),
        "unknown field": ({"rows": records[:1]}, "application/json", "dataframe_split"),
    }
    for what, (body, ctype, needle) in bad.items():
        status, answer = _post(inv, body, ctype)
        assert 400 <= status < 500, (what, status, answer)
        assert needle in answer["message"], (what, answer)

    proc.send_signal(signal.SIGTERM)  # nbnet stops the server's whole group, then exits
    assert proc.wait(timeout=60) == 0
    assert not group_alive(pgid), "uvicorn processes outlived nbnet serve"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) != 0, "the port still answers"


def test_serve_user_errors_are_one_line(champion, tmp_path, capsys):  # noqa: F811
    _, run_id, _ = champion
    junk = tmp_path / "junk.nbnet"
    junk.write_text("not a model")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cases = [
            (["models:/iris@champion", "--port", busy], "pick another with --port"),
            (["models:/iris@champion", "--port", 0], "--port must be in 1..65535"),
            (["models:/iris@champion", "--port", 70000], "--port must be in 1..65535"),
            (["models:/iris@champion", "--workers", 0], "--workers must be a positive integer"),
            (["models:/no-such-model@champion", "--port", free_port()], "could not fetch model"),
            ([f"runs:/{run_id}/nothing-here", "--port", free_port()], "could not fetch model"),
            ([tmp_path / "missing.nbnet", "--port", free_port()], "neither an MLflow model URI"),
            ([junk, "--port", free_port()], "corrupt or truncated"),
        ]
        for argv, msg in cases:
            code = main(["serve", *map(str, argv)])
            err = capsys.readouterr().err
            assert code == 2, (argv, err)
            assert msg in err and err.count("\n") == 1, (argv, err)


def test_a_local_file_is_wrapped_as_a_positional_pyfunc_model(champion, tmp_path):  # noqa: F811
    """A bare .nbnet file (it stores no column names) becomes the "models from code" pyfunc model
    log_model logs, taking the request's columns in order, with the proba param."""
    clf, _, table = champion
    clf.save(tmp_path / "iris.nbnet")
    path = model_dir(str(tmp_path / "iris.nbnet"), tmp_path / "served")
    pyfunc = mlflow.pyfunc.load_model(str(path))
    assert pyfunc.metadata.get_input_schema() is None
    rows = table[COLS].iloc[:30]
    X = rows.to_numpy()
    np.testing.assert_array_equal(pyfunc.predict(rows), clf.predict(X))
    np.testing.assert_array_equal(pyfunc.predict(pd.DataFrame(X, columns=list("abcd"))), clf.predict(X))
    proba = pyfunc.predict(rows, params={"proba": True})
    np.testing.assert_allclose(proba.to_numpy(), clf.predict_proba(X), rtol=1e-12)
    with pytest.raises(Exception, match="feature"):
        pyfunc.predict(rows.iloc[:, :3])


def test_env_manager_builds_the_models_own_environment_or_is_a_user_error(champion, tmp_path):  # noqa: F811
    """--env-manager uv|virtualenv reaches `mlflow models serve`; a model folder for it carries the
    wheel its requirements.txt names."""
    from nbnet.errors import NbnetError
    from nbnet.ops.serve import serve_command

    cmd, _ = serve_command(tmp_path, env_manager="uv")
    assert cmd[cmd.index("--env-manager") + 1] == "uv"
    with pytest.raises(NbnetError, match="--env-manager must be one of local, uv, virtualenv"):
        serve_command(tmp_path, env_manager="conda")
    clf, _, _ = champion
    clf.save(tmp_path / "iris.nbnet")
    folder = model_dir(str(tmp_path / "iris.nbnet"), tmp_path / "served")
    wheels = [line for line in (folder / "requirements.txt").read_text().split() if line.endswith(".whl")]
    assert wheels and all((folder / w).is_file() for w in wheels)
    assert not any(line.startswith("nbnet==") for line in (folder / "requirements.txt").read_text().split())
