"""Exit codes scripts can trust, per command: 0 ok, 1 a check failed, 2 a user error, 3 a store
failure (a stopped MLflow server, an unreachable database), documented in ``nbnet --help``; and
``--json``: one JSON object on stdout, everything else on stderr. Every command here reaches its
store through ``--tracking-uri`` only (no MLFLOW_TRACKING_URI, a working directory of its own)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from servers import free_port
from stores import fresh_store
from tables import make_table

from nbnet import errors
from nbnet.cli import build_parser, main

EXPERIMENT = """
[data]
source = "csv:{csv}"
target = "label"
val_fraction = 0.25
preprocessing = {{ scale = "standard" }}
[model]
hidden_layer_sizes = [16]
[train]
epochs = 20
batch_size = 16
learning_rate = 0.01
[search]
sampler = "random"
pruner = "none"
n_trials = 1
metric = "val_accuracy"
[search.space]
"train.learning_rate" = {{ type = "float", low = 1e-3, high = 3e-2, log = true }}
"""


def run_cli(argv, capfd):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def project(tmp_path_factory, empty_store_db):
    """``cli``: v1 (20 epochs) champion and v2 (1 epoch at a tiny learning rate) registered,
    worse; in-distribution and drifted tables; a store outside the working directory."""
    root = tmp_path_factory.mktemp("exit-codes")
    (root / "elsewhere").mkdir()
    uri = fresh_store(root / "elsewhere", empty_store_db)
    make_table(400, 1).to_csv(root / "train.csv", index=False)
    make_table(300, 2).to_csv(root / "same.csv", index=False)
    make_table(300, 3, shift=2.0).to_csv(root / "drift.csv", index=False)
    (root / "cli.toml").write_text(EXPERIMENT.format(csv=root / "train.csv"))
    (root / "work").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MPLBACKEND", "Agg")
        mp.chdir(root / "work")
        base = ["train", root / "cli.toml", "--tracking-uri", uri, "--register", "-q"]
        assert main([str(a) for a in base]) == 0
        assert main([str(a) for a in base + ["--set", "train.epochs=1", "--set", "train.learning_rate=1e-5"]]) == 0
        yield {"root": root, "uri": uri}


@pytest.fixture
def here(project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(project["root"] / "work")
    return project


def test_help_documents_the_exit_codes(capfd):
    code, out, _ = run_cli(["--help"], capfd)
    assert code == 0
    table = out[out.index("exit status:"):]
    for c, says in ((errors.EXIT_OK, "ok"), (errors.EXIT_CHECK_FAILED, "a check failed"),
                    (errors.EXIT_USER_ERROR, "user error"), (errors.EXIT_STORE_ERROR, "internal or store failure"),
                    (errors.EXIT_INTERRUPTED, "interrupted")):
        assert f"\n  {c:<3}  {says}" in table, table
    assert "--debug" in table and "NBNET_STORAGE" in out and "OPTUNA_STORAGE" in out


def test_debug_is_accepted_before_and_after_the_subcommand():
    p = build_parser()
    argv = ["predict", "m.nbnet", "in.csv", "-o", "out.csv"]
    assert p.parse_args(argv).debug is False
    assert p.parse_args(["--debug", *argv]).debug is True
    assert p.parse_args([*argv, "--debug"]).debug is True


# --- 3: the store failed -------------------------------------------------------------------------
DEAD = object()  # stands for the stopped server's URI
ZEROS = "0" * 32
STORE_FAILURES = {  # every command that reaches the MLflow store, against a server that is not running
    "sweep": ["sweep", "{root}/cli.toml", "--study", "dead"],
    "train": ["train", "{root}/cli.toml"],
    "rerun": ["rerun", ZEROS],
    "predict": ["predict", "models:/cli@champion", "{root}/same.csv", "-o", "{root}/work/out.csv"],
    "serve": ["serve", "models:/cli@champion", "--port", "{port}"],
    "export": ["export", "models:/cli@champion", "--onnx", "{root}/work/out.onnx"],
    "monitor": ["monitor", "models:/cli@champion", "{root}/same.csv"],
    "promote": ["promote", "cli", "--version", "2"],
    "rollback": ["rollback", "cli"],
    "update": ["update", "models:/cli@champion", "{root}/same.csv"],
    "plot": ["plot", ZEROS],
}


@pytest.fixture
def dead_server(monkeypatch):
    """A tracking URI where no server runs (as after a crash), with MLflow's HTTP retries off so
    that the failure comes at once instead of after its back-off."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return f"http://127.0.0.1:{free_port()}"


def test_every_store_command_is_covered():
    with_store = {name for name, sub in build_parser()._subparsers._group_actions[0].choices.items()
                  if any("--tracking-uri" in a.option_strings for a in sub._actions)}
    assert with_store - {"ui"} == set(STORE_FAILURES)  # ui only prints a server's own address


@pytest.mark.parametrize("command", sorted(STORE_FAILURES))
def test_store_failure_exits_3_with_one_line(command, here, dead_server, capfd):
    argv = [a.format(root=here["root"], port=free_port()) for a in STORE_FAILURES[command]]
    code, out, err = run_cli([*argv, "--tracking-uri", dead_server], capfd)
    assert code == errors.EXIT_STORE_ERROR, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbnet: ") and "--debug" in lines[0], err
    assert "Traceback" not in err and out == ""


def test_debug_shows_the_store_failures_traceback(here, dead_server, capfd):
    with pytest.raises(Exception, match="127.0.0.1"):
        main(["rollback", "cli", "--tracking-uri", dead_server, "--debug"])


def test_unreachable_study_database_exits_3(capfd):
    pytest.importorskip("psycopg", reason="psycopg, the PostgreSQL driver, is not installed")
    dead = f"postgresql://nbnet:nbnet@127.0.0.1:{free_port()}/nbnet"
    code, out, err = run_cli(["best", "--storage", dead, "--study", "s"], capfd)
    assert code == errors.EXIT_STORE_ERROR, err
    assert len(err.strip().splitlines()) == 1 and "Optuna study storage" in err and "nbnet:nbnet@" not in err


# --- 0, 1, 2 and --json --------------------------------------------------------------------------
def _json(code, out, err, expect):
    assert code == expect, err
    return json.loads(out)  # exactly one object: json.loads refuses anything after it


@pytest.mark.slow
def test_lifecycle_exit_codes_and_json(here, capfd):
    root, uri = here["root"], here["uri"]
    store = ["--tracking-uri", uri]
    p = _json(*run_cli(["predict", "models:/cli@champion", root / "same.csv", "-o", root / "p.csv", "--json", *store],
                       capfd), 0)
    assert p["rows"] == 300 and (root / "p.csv").is_file()

    m = _json(*run_cli(["monitor", "models:/cli@champion", root / "same.csv", "--json", *store], capfd), 0)
    assert m["verdict"] == "pass"
    m = _json(*run_cli(["monitor", "models:/cli@champion", root / "drift.csv", "--json", *store], capfd), 1)
    assert m["verdict"] == "fail"

    g = _json(*run_cli(["promote", "cli", "--version", "2", "--tolerance", "0", "--json", *store], capfd), 1)
    assert (g["passed"], g["moved"], g["champion"]) == (False, False, 1)
    g = _json(*run_cli(["promote", "cli", "--version", "2", "--tolerance", "1", "--json", *store], capfd), 0)
    assert (g["passed"], g["moved"]) == (True, True)
    r = _json(*run_cli(["rollback", "cli", "--json", *store], capfd), 0)
    assert (r["from_version"], r["to_version"], r["champion_uri"]) == (2, 1, "models:/cli@champion")

    code, out, err = run_cli(["update", "models:/cli@champion", root / "same.csv", "--epochs", "2", "--json", *store],
                             capfd)
    u = _json(code, out, err, 0)
    assert u["model_uri"] == "models:/cli/3" and u["source_version"] == 1 and u["metrics"]["epochs"] == 2
    assert "epoch   2/2" in err  # progress on stderr

    for argv in (["promote", "no-such-model", "--version", "1", "--json"], ["rollback", "no-such-model", "--json"],
                 ["update", "models:/cli@champion", root / "missing.csv", "--json"],
                 ["predict", "models:/cli@champion", root / "missing.csv", "-o", root / "x.csv", "--json"]):
        code, out, err = run_cli([*argv, *store], capfd)
        assert code == errors.EXIT_USER_ERROR and out == "" and len(err.strip().splitlines()) == 1, (argv, err)


def _model_file(uri: str, run_id: str) -> Path:
    """The nbnet file of the model run ``run_id`` logged, where the (local) store keeps it."""
    c = mlflow.MlflowClient(uri)
    model = c.get_logged_model(c.get_run(run_id).data.tags["nbnet.model_id"])
    return next(Path(urlparse(model.artifact_location).path).rglob("model.nbnet"))


@pytest.mark.slow
def test_train_rerun_and_sweep_json(here, capfd):
    root, uri = here["root"], here["uri"]
    t = _json(*run_cli(["train", root / "cli.toml", "--set", "train.epochs=2", "--json", "--tracking-uri", uri], capfd), 0)
    assert t["tracking_uri"] == uri and mlflow.MlflowClient(uri).get_run(t["run_id"]).info.status == "FINISHED"
    assert not list((root / "work").rglob("mlflow.db"))  # --tracking-uri, not a default store here

    r = _json(*run_cli(["rerun", t["run_id"], "--json", "--tracking-uri", uri], capfd), 0)
    assert r["bit_identical"] is True and r["rerun_of"] == t["run_id"]

    # the stored model no longer matches its run (replaced by another seed's): rerun's check fails, 1
    code, out, err = run_cli(["train", root / "cli.toml", "--set", "train.epochs=2", "--set", "train.seed=7",
                              "--tracking-uri", uri], capfd)
    assert code == 0 and out.splitlines()[-1].startswith(f"open the UI:  nbnet ui --tracking-uri {uri}    ("), out
    other = next(ln.split()[1].rstrip(":") for ln in out.splitlines() if ln.startswith("run ") and "val_" in ln)
    _model_file(uri, t["run_id"]).write_bytes(_model_file(uri, other).read_bytes())
    r = _json(*run_cli(["rerun", t["run_id"], "--json", "--tracking-uri", uri], capfd), errors.EXIT_CHECK_FAILED)
    assert r["bit_identical"] is False and r["max_abs_diff"] > 0

    s = _json(*run_cli(["sweep", root / "cli.toml", "--study", "ok", "--no-register", "--json", "--tracking-uri", uri],
                       capfd), 0)
    assert s["n_complete"] == 1 and s["run_id"] and s["model_uri"] == f"runs:/{s['run_id']}/model"
    assert s["tracking_uri"] == uri and s["registered"] is None

    # every trial fails (an invalid suggested value): nothing completed is a failed check (1), in the JSON too
    failing = (root / "cli.toml").read_text() + '"train.batch_size" = { type = "int", low = 0, high = 0 }\n'
    (root / "failing.toml").write_text(failing)
    code, out, err = run_cli(["sweep", root / "failing.toml", "--no-register", "--json", "--tracking-uri", uri], capfd)
    s = _json(code, out, err, errors.EXIT_CHECK_FAILED)
    assert s["n_failed"] == 1 and s["trial"] is None
