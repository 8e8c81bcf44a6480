"""Real MLflow SQLite stores for tests: a copy of an initialised database (creating the tables
takes seconds, copying it milliseconds), and a store for a whole test module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def fresh_store(folder: Path, template: Path) -> str:
    """``folder/mlflow.db`` (the project store, where MLflow's own tools look) as a copy of
    ``template`` (the ``empty_store_db`` fixture); returns its URI."""
    (folder / "mlruns").mkdir(exist_ok=True)
    shutil.copyfile(template, folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


def module_store(tmp_path_factory, name: str, **env):
    """For a module-scoped fixture (``yield from module_store(...)``): a fresh folder whose
    ``mlflow.db`` is ``MLFLOW_TRACKING_URI`` (plus ``env``) while the module runs; yields
    the folder."""
    root = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        for k, v in env.items():
            mp_.setenv(k, v)
        yield root
