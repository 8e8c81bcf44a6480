"""End to end: a real store with a sweep-shaped run tree, ``nbnet ui`` on a free port, and headless
Chromium (Debian's, driven by Playwright) finding the experiment, the trial runs and a metric."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest

from servers import cli_server, free_port

from nbnet import MLPClassifier
from nbnet.experiment import tracking
from nbnet._sys.procs import group_alive

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
EXPERIMENT = "digits-ui-e2e"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An experiment with a parent run and two nested trial runs that logged per-epoch metrics
    from a real (tiny) nbnet fit."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] > 0).astype(int)
    exp = tracking.ensure_experiment(EXPERIMENT)
    parent = tracking.start_run(exp, run_name="sweep-e2e", params={"search": {"n_trials": 2}})
    trials = {}
    for i in range(2):
        run_id = tracking.start_run(exp, run_name=f"trial-{i}", parent_run_id=parent,
                                    params={"model": {"hidden_layer_sizes": [4 + i]}}, tags={"optuna.trial": i})
        with tracking.MetricLogger(run_id) as log:
            MLPClassifier((4 + i,), epochs=2, seed=i).fit(X, y, validation_data=(X, y), callbacks=[log])
        tracking.end_run(run_id, "FINISHED")
        trials[f"trial-{i}"] = run_id
    tracking.end_run(parent, "FINISHED")
    metric = tracking.client().get_run(trials["trial-0"]).data.metrics["val_accuracy"]
    return {"uri": uri, "experiment_id": exp, "trials": trials, "metric": metric}


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it as root: apt-get install -y chromium)")
    return CHROMIUM


@pytest.fixture
def ui(chromium, store, tmp_path):
    """``nbnet ui`` in its own process group; yields (base URL, the server's process group)."""
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=store["uri"])
    with cli_server(["ui", "--port", str(port)], r"MLflow UI for .*: (http://\S+)\s+\(process group (\d+)",
                    tmp_path / "ui.stderr", env=env, timeout=180) as (url, proc, pgid):
        assert url == f"http://127.0.0.1:{port}"
        yield url, pgid
        os.killpg(proc.pid, signal.SIGTERM)  # nbnet ui stops the server's group, then exits
        assert proc.wait(timeout=60) == 0
    assert not group_alive(pgid), "mlflow server processes outlived nbnet ui"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the UI port still answers"


def test_ui_shows_experiment_trials_and_metric(chromium, store, ui, tmp_path):
    url, pgid = ui
    assert pgid != os.getpgid(0)  # the server runs in its own process group
    shot = Path(os.environ.get("NBNET_UI_SCREENSHOT", tmp_path / "mlflow-ui.png"))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            # The UI polls forever, so "networkidle" never comes: wait for "load", then for elements.
            page.goto(f"{url}/#/experiments/{store['experiment_id']}/runs?workflowType=machine_learning",
                      wait_until="load")
            page.get_by_text(EXPERIMENT).first.wait_for()
            parent = page.locator('[role="row"]', has_text="sweep-e2e").first
            parent.wait_for()
            # nested trials are folded under their parent: expand it
            parent.locator('[col-id*="Run Name"] button').first.click()
            for name in store["trials"]:
                page.get_by_role("link", name=name).wait_for()
            page.screenshot(path=str(shot))
            page.get_by_role("link", name="trial-0").click()
            page.get_by_text("val_accuracy", exact=True).first.wait_for()
            page.get_by_text(repr(store["metric"]), exact=True).first.wait_for()
            page.get_by_text(store["trials"]["trial-0"], exact=True).first.wait_for()  # the run id
            page.get_by_role("link", name="sweep-e2e").first.wait_for()  # its parent run, linked
            assert store["trials"]["trial-0"] in page.url
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
