"""The CLI contract: every subcommand has --help; every user error exits 2 with exactly one line on
stderr (no traceback, no log noise) and leaves no partial output file.

Subcommands are enumerated from the parser, so a new one is covered without editing this file.
Commands with specific user errors get them from ``USER_ERRORS`` when they exist."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nbnet import MLPClassifier
from nbnet.cli import build_parser, main


def subcommands(parser=None, prefix=()):
    """[(("sweep",), parser), (("model", "promote"), parser), ...] for every (nested) subcommand."""
    parser = parser or build_parser()
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(((*prefix, name), sub))
                out += subcommands(sub, (*prefix, name))
    return out


COMMANDS = [c for c, _ in subcommands()]


def run_cli(argv, capfd):
    """main(argv) in-process; returns (exit code, stdout, stderr) captured at the fd level, so
    stray logging or warnings count too."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    out, err = capfd.readouterr()
    return code, out, err


def assert_user_error(code, err):
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err and lines[0].startswith("nbnet")


def test_there_are_subcommands():
    assert COMMANDS, "the parser registers no subcommand"


def test_top_level_help_and_errors(capfd):
    code, out, err = run_cli(["--help"], capfd)
    assert code == 0 and out.startswith("usage: nbnet") and err == ""
    assert_user_error(*run_cli([], capfd)[::2])
    assert_user_error(*run_cli(["no-such-command"], capfd)[::2])


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_on_every_subcommand(command, capfd):
    code, out, err = run_cli([*command, "--help"], capfd)
    assert code == 0, err
    assert out.startswith(f"usage: nbnet {' '.join(command)}")
    assert err == ""


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_unknown_option_on_every_subcommand(command, capfd):
    code, _, err = run_cli([*command, "--no-such-option-xyz"], capfd)
    assert_user_error(code, err)


def test_console_script_one_line_error(tmp_path):
    """The installed entry point, as a user runs it: exit 2, one line, nothing else."""
    exe = Path(sys.executable).with_name("nbnet")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "nbnet"]
    r = subprocess.run([*cmd, "no-such-command"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    r = subprocess.run([*cmd, "--version"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("nbnet ")


# --- specific user errors, per command (generated only for commands the parser has) -------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A model, a good input, and inputs that break in different ways (one only in its 3rd chunk)."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    y = (X[:, 0] > 0).astype(int)
    MLPClassifier((4,), epochs=1, n_threads=1).fit(X, y).save(d / "model.nbnet")
    header = "x0,x1,x2\n"
    rows = [",".join(f"{v:.3f}" for v in r) for r in X]
    (d / "good.csv").write_text(header + "\n".join(rows) + "\n")
    (d / "late_bad.csv").write_text(header + "\n".join(rows[:25] + ["1.0,oops,2.0"] + rows[25:]) + "\n")
    (d / "ragged.csv").write_text(header + "1,2\n")
    (d / "other_cols.csv").write_text("a,b\n1,2\n")
    (d / "corrupt.nbnet").write_bytes((d / "model.nbnet").read_bytes()[:200])
    (d / "text.nbnet").write_text("not a model")
    (d / "junk.parquet").write_bytes(b"PAR1" + bytes(range(256)) + b"PAR1")
    (d / "binary.csv").write_bytes(bytes(range(256)))
    return d


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


# (command, argv with {d} for the files folder and {o} for the output, what the message must say)
USER_ERRORS = [
    ("predict", ["{d}/missing.nbnet", "{d}/good.csv", "-o", "{o}.csv"], "not found"),
    ("predict", ["{d}/corrupt.nbnet", "{d}/good.csv", "-o", "{o}.csv"], "corrupt or truncated"),
    ("predict", ["{d}/text.nbnet", "{d}/good.csv", "-o", "{o}.csv"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/missing.csv", "-o", "{o}.csv"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/ragged.csv", "-o", "{o}.csv"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/other_cols.csv", "-o", "{o}.csv"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/junk.parquet", "-o", "{o}.csv"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/binary.csv", "-o", "{o}.csv"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/late_bad.csv", "-o", "{o}.csv", "--chunk-rows", "10"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/late_bad.csv", "-o", "{o}.parquet", "--chunk-rows", "10"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/late_bad.csv", "-o", "{o}.npz", "--chunk-rows", "10"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/good.csv", "-o", "{o}.txt"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/good.csv", "-o", "{d}/no/such/folder/out.csv"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/good.csv", "-o", "{o}.csv", "--chunk-rows", "0"], ""),
    ("predict", ["runs:/0123456789abcdef/model", "{d}/good.csv", "-o", "{o}.csv"], ""),
    ("predict", ["models:/no-such-model@champion", "{d}/good.csv", "-o", "{o}.csv"], ""),
    ("predict", ["{d}/model.nbnet", "{d}/good.csv"], "required"),
    ("ui", ["--port", "http"], "invalid int"),
    ("train", ["no-such-experiment"], ""),
    ("train", ["digits", "--checkpoint-every", "0"], "checkpoint-every"),
    ("train", ["{d}/missing.toml"], ""),
    ("train", ["digits", "--set", "train.epochs=abc"], ""),
    ("train", ["digits", "--set", "no.such.key=1"], ""),
    ("train", ["digits", "--set", "data.source=csv:{d}/ragged.csv", "--set", "data.target=x0"], ""),
    ("sweep", ["no-such-experiment"], ""),
    ("sweep", ["digits", "--workers", "0"], ""),
    ("sweep", ["digits", "--trials", "-1"], ""),
    ("sweep", ["digits", "--sampler", "nope"], "invalid choice"),
    ("sweep", ["digits", "--set", "search.metric=val_nonsense"], ""),
    ("best", ["--study", "no-such-study"], ""),
    ("rerun", ["0123456789abcdef0123456789abcdef"], ""),
]
CASES = [c for c in USER_ERRORS if (c[0],) in COMMANDS]


@pytest.mark.parametrize("command, argv, says", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_user_errors_exit_2_with_one_line_and_no_output(command, argv, says, files, store, tmp_path, monkeypatch,
                                                        capfd):
    monkeypatch.chdir(tmp_path)  # Optuna's default journal (mlruns/optuna) lands here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # one MLflow store for all cases (creating one takes seconds)
    out = tmp_path / "out"
    argv = [a.format(d=files, o=out) for a in argv]
    before = {p for p in tmp_path.rglob("*") if p.is_file() and "mlruns" not in p.parts}
    code, _, err = run_cli([command, *argv], capfd)
    assert_user_error(code, err)
    assert says.lower() in err.lower()
    after = {p for p in tmp_path.rglob("*") if p.is_file() and "mlruns" not in p.parts}
    assert after == before, f"left files behind: {sorted(map(str, after - before))}"


def test_failed_predict_keeps_an_existing_output(files, tmp_path, capfd):
    """An error half-way does not clobber the previous output either."""
    out = tmp_path / "out.csv"
    out.write_text("previous result\n")
    code, _, err = run_cli(["predict", str(files / "model.nbnet"), str(files / "late_bad.csv"), "-o", str(out),
                            "--chunk-rows", "10"], capfd)
    assert_user_error(code, err)
    assert out.read_text() == "previous result\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_hostile_model_on_the_command_line(tmp_path, files, capfd):
    """The CLI path of a crafted pickle-bearing model: one line, exit 2, no code run."""
    import io
    import zipfile

    from nbnet.io import read_bundle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    meta, arrays = read_bundle(files / "model.nbnet")
    evil = tmp_path / "evil.nbnet"
    with zipfile.ZipFile(evil, "w") as z:
        import json

        z.writestr("meta.json", json.dumps(meta))
        for k, v in arrays.items():
            buf = io.BytesIO()
            obj = np.array([Payload()], dtype=object) if k == "params" else v
            np.lib.format.write_array(buf, obj, allow_pickle=True)
            z.writestr(f"{k}.npy", buf.getvalue())
    code, _, err = run_cli(["predict", str(evil), str(files / "good.csv"), "-o", str(tmp_path / "o.csv")], capfd)
    assert_user_error(code, err)
    assert not marker.exists() and not (tmp_path / "o.csv").exists()
