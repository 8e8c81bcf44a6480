"""Configuration found where users keep it: the study storage from NBNET_STORAGE / OPTUNA_STORAGE,
experiments/NAME.toml or the examples shipped in the package (also from a built wheel), the UI
hint of the store actually used; and shell completion generated from the parser (bash run for
real)."""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from stores import fresh_store, pg_database

from nbnet.cli import build_parser, main
from nbnet.cli.common import ui_hint
from nbnet.cli.completion import bash_script, commands, zsh_script
from nbnet.experiment import config

ROOT = Path(__file__).resolve().parents[1]
TINY = """
[data]
source = "builtin:iris"
val_fraction = 0.3
[model]
hidden_layer_sizes = [4]
[train]
epochs = 2
batch_size = 16
[search]
sampler = "random"
pruner = "none"
n_trials = 1
metric = "val_accuracy"
[search.space]
"train.learning_rate" = { type = "float", low = 1e-3, high = 3e-2, log = true }
"""


# --- experiments: the working directory's, else the shipped ones -----------------------------------
def test_a_name_finds_the_shipped_example_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no experiments/ here
    shipped = importlib.resources.files("nbnet") / "examples"
    assert config.find_experiment("digits") == shipped / "digits.toml"
    assert {"digits", "wine", "breast_cancer", "diabetes", "synthetic"} <= set(config.shipped_experiments())
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "digits.toml").write_text(TINY)
    assert config.find_experiment("digits") == tmp_path / "experiments" / "digits.toml"  # the user's own first
    assert config.load_experiment("digits").data.source == "builtin:iris"


@pytest.mark.slow
def test_the_wheel_ships_the_examples(tmp_path):
    """A wheel built from this tree holds the examples, and nbnet installed from it (unpacked on
    PYTHONPATH, as pip would put it in site-packages) finds them by name from an empty folder."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "nbnet", src / "nbnet", ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "dist").glob("nbnet-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"nbnet/examples/{n}.toml" for n in ("digits", "wine")} <= set(names)
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = "from nbnet.experiment import config; print(config.find_experiment('wine')); print(config.__file__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "empty", env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    found, module = r.stdout.splitlines()
    assert Path(module).is_relative_to(tmp_path / "site")  # the installed copy, not this checkout
    assert Path(found) == tmp_path / "site" / "nbnet" / "examples" / "wine.toml"


# --- the study storage from the environment ----------------------------------------------------------
@pytest.fixture
def project(tmp_path, empty_store_db, monkeypatch):
    fresh_store(tmp_path, empty_store_db)
    (tmp_path / "tiny.toml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    monkeypatch.delenv("NBNET_STORAGE", raising=False)
    return tmp_path


@pytest.mark.slow
def test_storage_from_nbnet_storage(project, monkeypatch, capsys):
    journal = project / "shared" / "studies.log"
    monkeypatch.setenv("NBNET_STORAGE", str(journal))
    monkeypatch.setenv("OPTUNA_STORAGE", str(project / "not-this.log"))  # NBNET_STORAGE wins
    assert main(["sweep", "tiny.toml", "--no-register", "-q"]) == 0
    assert journal.is_file() and not (project / "not-this.log").exists()
    assert not (project / "mlruns" / "optuna" / "tiny.log").exists()  # not the default journal
    capsys.readouterr()
    assert main(["best", "--json"]) == 0  # the newest study of that storage
    b = json.loads(capsys.readouterr().out)
    assert b["study"] == "tiny" and b["n_trials"] == 1


@pytest.fixture
def pg_url():
    with pg_database("nbnet_t") as url:
        yield url


@pytest.mark.slow
def test_storage_from_optuna_storage_on_postgresql(project, pg_url, monkeypatch, capsys):
    import optuna

    monkeypatch.setenv("OPTUNA_STORAGE", pg_url)
    assert main(["sweep", "tiny.toml", "--study", "pg-env", "--no-register", "-q"]) == 0
    assert optuna.get_all_study_names(pg_url) == ["pg-env"]
    assert not (project / "mlruns" / "optuna").exists()
    capsys.readouterr()
    assert main(["best", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["study"] == "pg-env"


# --- the UI address of the store used ----------------------------------------------------------------
def test_ui_hint_names_the_store_used():
    assert ui_hint("http://mlflow.example:5000/") == "open the UI:  http://mlflow.example:5000"
    local = "sqlite:////data/p/mlruns/mlflow.db"
    assert ui_hint(local).startswith("open the UI:  nbnet ui    (MLflow at http://127.0.0.1:5000; store " + local)
    assert ui_hint(local, given=local).startswith(f"open the UI:  nbnet ui --tracking-uri {local}    ")


# --- shell completion ---------------------------------------------------------------------------------
def _bash(script: Path, words: list[str], cwd) -> list[str]:
    """COMPREPLY of the generated completion for ``words`` (the last one being completed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    code = (f"source {script}\ncomplete -p nbnet\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
            "_nbnet_complete\nprintf '%s\\n' \"${COMPREPLY[@]}\"")
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", code], cwd=cwd, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "complete -o default -F _nbnet_complete nbnet"
    return [w for w in lines[1:] if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion(tmp_path, capsys):
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "nbnet.bash"
    script.write_text(capsys.readouterr().out)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "mine.toml").write_text(TINY)
    assert _bash(script, ["nbnet", "sw"], tmp_path) == ["sweep"]
    assert set(_bash(script, ["nbnet", "r"], tmp_path)) == {"rerun", "rollback"}
    assert set(_bash(script, ["nbnet", ""], tmp_path)) >= {c.name for c in commands(build_parser())}
    assert _bash(script, ["nbnet", "sweep", "--sam"], tmp_path) == ["--sampler"]
    assert _bash(script, ["nbnet", "sweep", "--sampler", "r"], tmp_path) == ["random"]
    assert "--tracking-uri" in _bash(script, ["nbnet", "--debug", "train", "--"], tmp_path)
    assert set(_bash(script, ["nbnet", "train", "d"], tmp_path)) == {"digits", "diabetes"}
    assert _bash(script, ["nbnet", "sweep", "mi"], tmp_path) == ["mine"]  # experiments/ of the working directory
    assert _bash(script, ["nbnet", "completion", ""], tmp_path) == ["bash", "zsh"]


def test_completion_scripts_cover_every_command_and_option():
    parser = build_parser()
    bash, zsh = bash_script(parser), zsh_script(parser)
    assert zsh.startswith("#compdef nbnet") and "compdef _nbnet nbnet" in zsh
    for cmd in commands(parser):
        assert f"\n        {cmd.name})" in bash and f"\n            {cmd.name})" in zsh
        assert f"'{cmd.name}:" in zsh
        for opt in cmd.options:
            for name in opt.names:
                assert f" {name}" in bash or f"\"{name}" in bash, (cmd.name, name)
                assert f"'{name}[" in zsh or f"'*{name}[" in zsh, (cmd.name, name)
    assert "--sampler[" in zsh and ":(tpe gp random grid cmaes)'" in zsh


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_parses(tmp_path):
    script = tmp_path / "_nbnet"
    script.write_text(zsh_script(build_parser()))
    r = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
