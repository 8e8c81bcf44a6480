"""Real stores for tests: a copy of an initialised MLflow SQLite database (creating the tables
takes seconds, copying it milliseconds), a store for a whole test module, and a fresh database on
the real PostgreSQL of ``NBNET_TEST_PG_URL``."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest


@contextlib.contextmanager
def pg_database(prefix: str):
    """A new database ``<prefix>_<pid>_<random>`` on the PostgreSQL server of ``NBNET_TEST_PG_URL``,
    dropped afterwards; yields its URL. Skips the test when psycopg or that variable is missing."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg, the PostgreSQL driver, is not installed")
    url = os.environ.get("NBNET_TEST_PG_URL")
    if not url:
        pytest.skip("NBNET_TEST_PG_URL is not set (scripts/ci_services.sh starts PostgreSQL and prints it)")
    db = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        yield urlunsplit(urlsplit(url)._replace(path=f"/{db}"))
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


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
