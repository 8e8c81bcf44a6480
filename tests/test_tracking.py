"""nbnet.experiment.tracking against a real MLflow SQLite store in a temporary folder (one store per module:
creating the schema costs a few seconds)."""

from __future__ import annotations

import multiprocessing as mp
import os
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

import nbnet
from nbnet import MLPClassifier, MLPRegressor
from nbnet.experiment import tracking
from nbnet.experiment.tracking import pyfunc
from nbnet.errors import NbnetError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh store, set as MLFLOW_TRACKING_URI (as a user would) for the whole module."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.ensure_experiment("warmup")  # creates the schema once
        yield uri


@pytest.fixture(scope="module")
def iris_clf():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    clf = MLPClassifier((8,), epochs=5, seed=0, learning_rate=0.01).fit(X, y)
    return clf, X


@pytest.fixture(scope="module")
def logged(store, iris_clf):
    """A run holding a logged classifier model."""
    clf, X = iris_clf
    exp = tracking.ensure_experiment("models")
    run_id = tracking.start_run(exp, run_name="with-model", params={"model": {"hidden": [8]}})
    uri = tracking.log_model(run_id, clf, X[:10])
    tracking.end_run(run_id, "FINISHED")
    return run_id, uri


def test_default_uri_is_mlflows_own_default_store(tmp_path, monkeypatch):
    """No URI set: MLflow's own default (sqlite:///<project>/mlflow.db, what mlflow ui/models/runs
    open), artifacts under mlruns/; an explicit URI beats MLFLOW_TRACKING_URI, which beats it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking.resolve_tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db" == tracking.default_tracking_uri(tmp_path)
    from mlflow.tracking._tracking_service.utils import get_tracking_uri  # what MLflow's own tools resolve

    assert get_tracking_uri() == uri
    assert (tmp_path / "mlruns").is_dir() and tracking.project_store_file(tmp_path) is None
    assert tracking.artifact_root(uri) == str(tmp_path.resolve() / "mlruns" / "artifacts")
    assert tracking.resolve_tracking_uri("sqlite:///elsewhere.db") == "sqlite:///elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.resolve_tracking_uri() == "http://127.0.0.1:5999"
    assert tracking.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert tracking.artifact_root("http://127.0.0.1:5999") is None
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.set_tracking_uri("sqlite:///other.db") == os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///other.db"
    assert tracking.resolve_tracking_uri() == "sqlite:///other.db"
    with pytest.raises(NbnetError, match="non-empty"):
        tracking.set_tracking_uri(" ")


def test_an_earlier_nbnets_store_keeps_working_with_a_one_line_notice(tmp_path, monkeypatch, capfd, empty_store_db):
    import shutil
    import subprocess
    import sys

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("NBNET_STORE_NOTICE_SHOWN", raising=False)
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(empty_store_db, tmp_path / "mlruns" / "mlflow.db")
    legacy = f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    code = "from nbnet.experiment import tracking; print(tracking.resolve_tracking_uri()); print(tracking.resolve_tracking_uri())"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [legacy, legacy]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("nbnet:")]  # once, one line
    assert "mv mlruns/mlflow.db mlflow.db" in line
    assert tracking.project_store_file(tmp_path) == tmp_path.resolve() / "mlruns" / "mlflow.db"
    assert tracking.artifact_root(legacy) == str(tmp_path.resolve() / "mlruns" / "artifacts")  # as before
    # the move the notice suggests: the runs and their artifacts are found at MLflow's default place
    monkeypatch.chdir(tmp_path)
    exp = tracking.ensure_experiment("moved", legacy)
    run_id = tracking.start_run(exp, run_name="r", uri=legacy)
    tracking.log_dict(run_id, {"a": 1}, "config.json", uri=legacy)
    tracking.end_run(run_id, uri=legacy)
    (tmp_path / "mlruns" / "mlflow.db").rename(tmp_path / "mlflow.db")
    uri = tracking.resolve_tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.json", tracking_uri=uri,
                                                dst_path=str(tmp_path / "dl"))
    assert Path(local).read_text().strip().startswith("{")


def test_experiment_artifacts_live_beside_the_database(store):
    exp = tracking.ensure_experiment("my exp/1")
    assert tracking.ensure_experiment("my exp/1") == exp  # idempotent
    loc = tracking.client().get_experiment(exp).artifact_location
    db_dir = Path(store[len("sqlite:///"):]).parent
    assert loc == (db_dir / "artifacts" / "my_exp_1").as_uri()


def test_nested_runs_params_tags_and_status(store):
    exp = tracking.ensure_experiment("nesting")
    parent = tracking.start_run(exp, run_name="sweep", params={"search": {"n_trials": 3}},
                                tags=tracking.standard_tags(study="s1", seed=7, data_hash="abc"))
    child = tracking.start_run(exp, run_name="trial-0", parent_run_id=parent,
                               params={"model": {"hidden_layer_sizes": (64, 32), "activation": "relu"},
                                       "train": {"lr": 1e-3, "long": "x" * 7000}},
                               tags={"optuna.trial": 0})
    tracking.end_run(child, "KILLED")
    tracking.end_run(parent, "FINISHED")
    c = tracking.client()
    cr, pr = c.get_run(child), c.get_run(parent)
    assert cr.data.tags["mlflow.parentRunId"] == parent
    assert cr.info.status == "KILLED" and pr.info.status == "FINISHED"
    assert cr.data.params["model.hidden_layer_sizes"] == "[64, 32]"
    assert cr.data.params["model.activation"] == "relu"
    assert float(cr.data.params["train.lr"]) == 1e-3
    assert len(cr.data.params["train.long"]) == 6000  # truncated to MLflow's limit, not rejected
    t = pr.data.tags
    assert t["nbnet.version"] == nbnet.__version__ and t["numpy.version"] == np.__version__
    assert t["optuna.study"] == "s1" and t["nbnet.seed"] == "7" and t["nbnet.data_hash"] == "abc"
    assert "numba.version" in t
    assert pr.info.run_name == "sweep"
    with pytest.raises(NbnetError, match="FINISHED, FAILED, KILLED"):
        tracking.end_run(child, "DONE")


def test_run_context_closes_with_the_right_status(store):
    exp = tracking.ensure_experiment("ctx")
    with tracking.run(exp, run_name="ok") as ok:
        pass
    with pytest.raises(RuntimeError):
        with tracking.run(exp, run_name="boom") as bad:
            raise RuntimeError("boom")
    c = tracking.client()
    assert c.get_run(ok).info.status == "FINISHED"
    assert c.get_run(bad).info.status == "FAILED"


def test_metric_logger_batches_per_flush(store):
    exp = tracking.ensure_experiment("metrics")
    run_id = tracking.start_run(exp, run_name="m")
    log = tracking.MetricLogger(run_id, flush_every=4)
    calls = []
    real = tracking.client().log_batch

    def counting(*a, **k):  # count the real store calls, still sending them
        calls.append(len(k.get("metrics", ())))
        return real(*a, **k)

    tracking.client().log_batch = counting
    try:
        for epoch in range(10):
            log(epoch, {"loss": 1.0 / (epoch + 1), "val_accuracy": 0.1 * epoch, "note": "text",
                        "stopped": False, "grad_norm_0": np.float32(0.5)})
        assert calls == [12, 12]  # two flushes of 4 epochs x 3 numeric values
        log.flush()
        log.flush()  # nothing buffered: no call
    finally:
        del tracking.client().log_batch
    assert calls == [12, 12, 6]
    assert log.seconds > 0
    tracking.end_run(run_id)
    hist = tracking.client().get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(10))
    assert tracking.client().get_run(run_id).data.metrics["val_accuracy"] == pytest.approx(0.9)
    assert "note" not in tracking.client().get_run(run_id).data.metrics


def test_metric_logger_flushes_by_time_and_sends_tags_with_metrics(store):
    """Without flush_every, a logger sends when flush_seconds have passed since its last send:
    never during a short fit with the default 10 s, every epoch with 0; tags go in the same
    batch as the metrics."""
    exp = tracking.ensure_experiment("metrics")
    c = tracking.client()
    calls = []
    real = c.log_batch

    def counting(*a, **k):
        calls.append((len(k.get("metrics", ())), len(k.get("tags", ()))))
        return real(*a, **k)

    c.log_batch = counting
    try:
        slow, fast = (tracking.start_run(exp, run_name=n) for n in ("slow", "fast"))
        log = tracking.MetricLogger(slow)  # default: every 10 s
        for epoch in range(5):
            log(epoch, {"loss": 1.0 / (epoch + 1)})
        assert calls == []
        log.tag("optuna.state", "RUNNING")
        log.tag("optuna.state", "COMPLETE")  # the later value wins
        log.flush()
        assert calls == [(5, 1)]
        log.flush()
        assert calls == [(5, 1)]  # nothing buffered: no call
        every = tracking.MetricLogger(fast, flush_seconds=0)
        for epoch in range(3):
            every(epoch, {"loss": 0.5})
        assert calls[1:] == [(1, 0)] * 3
    finally:
        del c.log_batch
    assert c.get_run(slow).data.tags["optuna.state"] == "COMPLETE"
    assert [m.step for m in c.get_metric_history(slow, "loss")] == list(range(5))
    for r in (slow, fast):
        tracking.end_run(r)


def test_models_from_one_template_keep_their_own_ids_and_weights(store, iris_clf):
    """log_model writes the pyfunc folder with mlflow.pyfunc.save_model once per input schema and
    copies it for later models: each copy names its own run and model ids, counts its own size,
    and loads its own weights."""
    from mlflow.models import Model
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    exp = tracking.ensure_experiment("templates")
    uris, models = [], []
    for width in (3, 9):
        clf = MLPClassifier((width,), epochs=3, seed=width).fit(X, y)
        run_id = tracking.start_run(exp, run_name=f"w{width}")
        uris.append((run_id, tracking.log_model(run_id, clf, X[:5])))
        models.append(clf)
        tracking.end_run(run_id)
    assert len(pyfunc.TEMPLATES) == 1  # the second model reused the first one's template
    raw = pd.DataFrame(X, columns=["x0", "x1", "x2", "x3"])
    infos = []
    for (run_id, uri), clf in zip(uris, models):
        info = mlflow.models.get_model_info(uri)
        infos.append(info)
        assert info.run_id == run_id and info.model_uuid == info.model_id
        assert info.model_id == tracking.client().get_run(run_id).data.tags["nbnet.model_id"]
        py = mlflow.pyfunc.load_model(uri)
        np.testing.assert_allclose(py.predict(raw, params={"proba": True}).to_numpy(), clf.predict_proba(X))
        local = Path(mlflow.artifacts.download_artifacts(uri))
        assert "NBNETX" not in (local / "MLmodel").read_text()  # no placeholder left
    assert infos[0].model_id != infos[1].model_id
    # the model file of the wider net is larger by exactly the difference of the two nbnet files
    sizes = [Path(mlflow.artifacts.download_artifacts(u + "/artifacts/model.nbnet")).stat().st_size for _, u in uris]
    declared = [Model.load(u).model_size_bytes for _, u in uris]
    assert declared[1] - declared[0] == sizes[1] - sizes[0] != 0
    # another input schema gets its own template
    run_id = tracking.start_run(exp, run_name="named")
    tracking.log_model(run_id, models[0], pd.DataFrame(X[:5], columns=list("abcd")))
    tracking.end_run(run_id)
    assert mlflow.models.get_model_info(f"runs:/{run_id}/model").signature.inputs.input_names() == list("abcd")


def test_the_template_is_reused_across_processes_and_a_tampered_one_replaced(store, iris_clf, monkeypatch):
    """A later process (here: the cleared in-process cache) finds the template on disk and writes
    no model with save_model; a template whose code file is not nbnet's is rebuilt."""
    clf, X = iris_clf
    exp = tracking.ensure_experiment("templates-disk")
    saves = []
    real = mlflow.pyfunc.save_model
    monkeypatch.setattr(mlflow.pyfunc, "save_model", lambda *a, **k: saves.append(1) or real(*a, **k))

    def log():
        pyfunc.TEMPLATES.clear()
        run_id = tracking.start_run(exp, run_name="t")
        uri = tracking.log_model(run_id, clf, pd.DataFrame(X[:5], columns=["x0", "x1", "x2", "x3"]))
        tracking.end_run(run_id)
        return uri

    log()
    ((local, *_),) = pyfunc.TEMPLATES.values()
    folder = local.parent
    assert folder.parent == tracking.template_cache_dir()
    assert oct(tracking.template_cache_dir().stat().st_mode & 0o777) == "0o700"
    n = len(saves)
    log()
    assert len(saves) == n  # found on disk: no save_model
    code = folder / "model" / tracking.PYFUNC_CODE.name
    code.write_text("import os  # not nbnet's\n")
    uri = log()
    assert len(saves) == n + 1 and code.read_text() == tracking.PYFUNC_CODE.read_text()
    local = Path(mlflow.artifacts.download_artifacts(uri))
    assert (local / tracking.PYFUNC_CODE.name).read_text() == code.read_text()  # the logged model has nbnet's code
    assert not [p for p in tracking.template_cache_dir().iterdir() if p.name.startswith(".")]  # no leftovers


def test_metric_logger_as_training_callback(store, blobs):
    X, y = blobs
    exp = tracking.ensure_experiment("callback")
    run_id = tracking.start_run(exp, run_name="fit")
    with tracking.MetricLogger(run_id) as log:
        clf = MLPClassifier((8,), epochs=3, seed=0).fit(X, y, validation_data=(X, y), callbacks=[log])
    tracking.end_run(run_id)
    metrics = tracking.client().get_run(run_id).data.metrics
    assert metrics["loss"] == pytest.approx(clf.history_["loss"][-1])
    assert len(tracking.client().get_metric_history(run_id, "loss")) == 3


def _stale_child(uri, exp, parent, q):  # runs in a child process that then dies
    os.environ["MLFLOW_TRACKING_URI"] = uri
    q.put(tracking.start_run(exp, run_name="orphan", parent_run_id=parent))


def test_repair_stale_runs_kills_only_dead_owners(store):
    exp = tracking.ensure_experiment("stale")
    parent = tracking.start_run(exp, run_name="sweep")
    live = tracking.start_run(exp, run_name="live", parent_run_id=parent)  # owned by this process
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_stale_child, args=(store, exp, parent, q))
    p.start()
    orphan = q.get(timeout=120)
    p.join(timeout=120)
    assert p.exitcode == 0
    assert tracking.repair_stale_runs(exp, parent_run_id=parent) == 1
    c = tracking.client()
    assert c.get_run(orphan).info.status == "KILLED"
    assert "dead process" in c.get_run(orphan).data.tags["nbnet.repaired"]
    assert c.get_run(live).info.status == "RUNNING"
    assert c.get_run(parent).info.status == "RUNNING"  # not a child of itself
    for r in (live, parent):
        tracking.end_run(r)


def test_log_model_is_models_from_code_without_pickles(store, logged, iris_clf):
    run_id, uri = logged
    assert uri == f"runs:/{run_id}/model"
    local = Path(mlflow.artifacts.download_artifacts(uri))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert "artifacts/model.nbnet" in files and "MLmodel" in files and "input_example.json" in files
    assert not any(f.endswith((".pkl", ".pickle", ".cloudpickle")) for f in files), files
    # nbnet travels with the model: its wheel, named by requirements.txt; the rest pinned; no nbnet==
    reqs = (local / "requirements.txt").read_text().split()
    assert f"wheels/nbnet-{nbnet.__version__}-py3-none-any.whl" in reqs and f"wheels/nbnet-{nbnet.__version__}-py3-none-any.whl" in files
    assert not any(r.startswith("nbnet==") for r in reqs)
    assert f"mlflow=={mlflow.__version__}" in reqs and f"numpy=={np.__version__}" in reqs
    with zipfile.ZipFile(local / "wheels" / f"nbnet-{nbnet.__version__}-py3-none-any.whl") as z:
        names = set(z.namelist())
        assert "nbnet/experiment/tracking/_pyfunc_model.py" in names and "nbnet/cli/__init__.py" in names
        meta = z.read(f"nbnet-{nbnet.__version__}.dist-info/METADATA").decode()
    assert "Requires-Dist: mlflow" in meta and "extra ==" not in meta
    code = [f for f in files if f.endswith(".py")]
    assert len(code) == 1
    assert (local / code[0]).read_text() == tracking.PYFUNC_CODE.read_text()
    with zipfile.ZipFile(local / "artifacts" / "model.nbnet") as z:  # the safe npz + JSON format
        assert "meta.json" in z.namelist()
    info = mlflow.models.get_model_info(uri)
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["x0", "x1", "x2", "x3"]
    assert info.signature.params is not None  # proba
    assert "serving_input_example.json" in files  # what the scoring server's docs page shows
    # the model is the run's output and a READY LoggedModel in the run's experiment (MLflow 3's UI)
    from mlflow.entities import LoggedModelStatus

    c = mlflow.MlflowClient()
    run = c.get_run(run_id)
    (out,) = run.outputs.model_outputs
    lm = c.get_logged_model(out.model_id)
    assert lm.status == LoggedModelStatus.READY and lm.experiment_id == run.info.experiment_id
    assert info.model_id == out.model_id == run.data.tags["nbnet.model_id"]


def test_a_model_whose_code_file_names_nbnet_tracking_still_loads(store, logged, iris_clf, tmp_path):
    """Stored models whose code file imports ``nbnet.tracking.NbnetPyfuncModel`` load through
    mlflow.pyfunc as they did, and predict the same."""
    _, uri = logged
    clf, X = iris_clf
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path)))
    code = local / tracking.PYFUNC_CODE.name
    text = code.read_text()
    assert "from nbnet.experiment.tracking.pyfunc import NbnetPyfuncModel" in text
    code.write_text(text.replace("from nbnet.experiment.tracking.pyfunc import", "from nbnet.tracking import"))
    py = mlflow.pyfunc.load_model(str(local))
    raw = pd.DataFrame(X, columns=["x0", "x1", "x2", "x3"])
    np.testing.assert_array_equal(py.predict(raw), clf.predict(X))


@pytest.mark.parametrize("kind", ["runs", "local"])
def test_load_equals_pyfunc_predict(store, logged, iris_clf, kind, tmp_path):
    run_id, uri = logged
    clf, X = iris_clf
    raw = pd.DataFrame(X, columns=["x0", "x1", "x2", "x3"])
    py = mlflow.pyfunc.load_model(uri)
    if kind == "local":
        est = nbnet.load(tracking.download_model_file(uri))
    else:
        est = nbnet.load(uri)
    expected = py.predict(raw)
    np.testing.assert_array_equal(est.predict(raw), expected)
    np.testing.assert_array_equal(expected, clf.predict(X))
    proba = py.predict(raw, params={"proba": True})
    np.testing.assert_allclose(proba.to_numpy(), est.predict_proba(X))
    assert list(proba.columns) == [str(c) for c in clf.classes_]


def test_pyfunc_regressor_and_string_labels(store, regression):
    X, y = regression
    exp = tracking.ensure_experiment("kinds")
    reg = MLPRegressor((6,), epochs=3, seed=0).fit(X, y)
    labels = np.array(["cat", "dog"])[(X[:, 0] > 0).astype(int)]
    clf = MLPClassifier((6,), epochs=3, seed=0).fit(X, labels)
    uris = {}
    for est in (reg, clf):
        run_id = tracking.start_run(exp, run_name=type(est).__name__)
        uris[est] = uri = tracking.log_model(run_id, est, pd.DataFrame(X[:3], columns=list("abcd")))
        tracking.end_run(run_id)
        raw = pd.DataFrame(X[:20], columns=list("abcd"))
        py = mlflow.pyfunc.load_model(uri)
        np.testing.assert_array_equal(py.predict(raw), nbnet.load(uri).predict(raw))
        # columns are matched by name, not position
        np.testing.assert_array_equal(py.predict(raw[["d", "c", "b", "a"]]), est.predict(X[:20]))
    assert set(mlflow.pyfunc.load_model(uris[clf]).predict(raw)) <= {"cat", "dog"}
    # only a classifier declares the proba param
    assert mlflow.models.get_model_info(uris[reg]).signature.params is None
    assert mlflow.models.get_model_info(uris[clf]).signature.params is not None


def test_register_champion_moves_alias_only_when_better(store, iris_clf):
    clf, X = iris_clf
    exp = tracking.ensure_experiment("registry")
    c = tracking.client()

    def trained(acc):
        run_id = tracking.start_run(exp, run_name=f"acc={acc}")
        tracking.log_model(run_id, clf, X[:5])
        tracking.log_metrics(run_id, {"val_accuracy": acc})
        tracking.end_run(run_id)
        return run_id

    r1, r2, r3, r4 = trained(0.80), trained(0.90), trained(0.85), trained(0.90)
    assert tracking.register_champion("reg", r1, "val_accuracy", "maximize") == (1, True)
    assert tracking.register_champion("reg", r2, "val_accuracy", "maximize") == (2, True)
    assert tracking.register_champion("reg", r3, "val_accuracy", "maximize") == (3, False)  # worse
    assert tracking.register_champion("reg", r4, "val_accuracy", "maximize") == (4, False)  # a tie
    champ = c.get_model_version_by_alias("reg", "champion")
    assert str(champ.version) == "2" and champ.run_id == r2
    v1, v3 = c.get_model_version("reg", "1"), c.get_model_version("reg", "3")
    assert v1.tags["champion.replaced_by"] == "2" and "champion.until" in v1.tags
    assert champ.tags["champion.replaced"] == "1" and "champion.since" in champ.tags
    assert v3.tags["nbnet.promoted"] == "false" and "0.85" in v3.tags["nbnet.promotion_reason"]
    # the champion loads through the registry, equal to MLflow's own pyfunc
    raw = pd.DataFrame(X, columns=["x0", "x1", "x2", "x3"])
    np.testing.assert_array_equal(nbnet.load("models:/reg@champion").predict(raw),
                                  mlflow.pyfunc.load_model("models:/reg@champion").predict(raw))
    np.testing.assert_array_equal(nbnet.load("models:/reg/3").predict(X), clf.predict(X))
    # minimize: a lower loss wins
    tracking.log_metrics(r3, {"val_loss": 0.5})
    tracking.log_metrics(r1, {"val_loss": 0.4})
    assert tracking.register_champion("loss", r3, "val_loss", "minimize") == (1, True)
    assert tracking.register_champion("loss", r1, "val_loss", "minimize") == (2, True)
    assert tracking.register_champion("loss", r3, "val_loss", "minimize") == (3, False)
    with pytest.raises(NbnetError, match="no finite metric 'nope'"):
        tracking.register_champion("loss", r3, "nope", "minimize")
    with pytest.raises(NbnetError, match="maximize"):
        tracking.register_champion("loss", r3, "val_loss", "up")


def test_bad_model_uri_is_one_line_error(store):
    with pytest.raises(NbnetError, match="could not fetch model") as e:
        nbnet.load("models:/no-such-model@champion")
    assert "\n" not in str(e.value)


def test_artifacts_and_figures(store, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = tracking.ensure_experiment("artifacts")
    run_id = tracking.start_run(exp, run_name="a")
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    tracking.log_figure(run_id, fig, "plots/curve.png")
    plt.close(fig)
    f = tmp_path / "trials.csv"
    f.write_text("number,value\n0,0.5\n")
    tracking.log_artifact(run_id, f)
    tracking.log_figure(run_id, f, "tables/renamed.csv")
    tracking.log_dict(run_id, {"a": 1}, "config.json")
    tracking.end_run(run_id)
    names = {a.path for a in tracking.client().list_artifacts(run_id)}
    assert {"plots", "trials.csv", "tables", "config.json"} <= names
    sub = {a.path for a in tracking.client().list_artifacts(run_id, "tables")}
    assert sub == {"tables/renamed.csv"}
    with pytest.raises(NbnetError, match="not found"):
        tracking.log_artifact(run_id, tmp_path / "missing.txt")


def test_categorical_raw_input_roundtrip(store, tmp_path):
    """A model trained on a CSV with a categorical column takes the raw table (strings) through
    pyfunc, nbnet.load and nbnet predict alike."""
    from nbnet.cli import main
    from nbnet.data.load import load_dataset, read_features

    rng = np.random.default_rng(1)
    raw = pd.DataFrame({"a": rng.normal(size=80), "color": rng.choice(["red", "blue", "green"], 80),
                        "b": rng.normal(size=80)})
    raw["label"] = np.where((raw["color"] == "red") | (raw["a"] > 1), "yes", "no")
    src = tmp_path / "train.csv"
    raw.to_csv(src, index=False)
    ds = load_dataset(f"csv:{src}", target="label", categorical=["color"])
    clf = MLPClassifier((6,), epochs=3, seed=0).fit(ds.X, ds.y)
    exp = tracking.ensure_experiment("categorical")
    run_id = tracking.start_run(exp, run_name="cat")
    uri = tracking.log_model(run_id, clf, ds.X[:5], feature_names=ds.feature_names, categories=ds.categories,
                             column_types=ds.column_types)
    tracking.end_run(run_id)
    info = mlflow.models.get_model_info(uri)
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["a", "color", "b"]
    assert [c["type"] for c in info.signature.inputs.to_dict()] == ["double", "string", "double"]
    # logged again from the loaded model (as nbnet update does), the signature keeps its types
    est, (names, cats) = tracking.load_model(uri)
    again = tracking.start_run(exp, run_name="again")
    uri2 = tracking.log_model(again, est, ds.X[:5], feature_names=names, categories=cats)
    tracking.end_run(again)
    assert mlflow.models.get_model_info(uri2).signature.inputs.to_dict() == info.signature.inputs.to_dict()
    table = raw.drop(columns="label")
    table.loc[3, "color"] = "purple"  # unseen category: all-zeros group, as in nbnet.data
    X, _ = read_features(_write(table, tmp_path / "score.csv"), feature_names=ds.feature_names,
                         categories=ds.categories)
    expected = clf.predict(X)
    np.testing.assert_array_equal(mlflow.pyfunc.load_model(uri).predict(table), expected)
    out = tmp_path / "pred.csv"
    assert main(["predict", uri, str(tmp_path / "score.csv"), "-o", str(out)]) == 0
    np.testing.assert_array_equal(pd.read_csv(out)["prediction"].to_numpy(), expected)


def _write(df, path):
    df.to_csv(path, index=False)
    return path


def test_ui_command_and_its_user_errors(store, capsys, monkeypatch):
    import socket
    import sys

    from nbnet.cli import main
    from nbnet.ops.serve import ui_command

    cmd, env = ui_command("127.0.0.1", 5123, store)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == store and cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)  # uvicorn is found
    with socket.socket() as s:  # a taken port is a one-line user error, not a server traceback
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["ui", "--port", str(s.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "pick another with --port" in err and err.count("\n") == 1
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert main(["ui"]) == 0
    assert "http://tracking.example:5000" in capsys.readouterr().out


def test_transient_store_errors_are_retried_others_not():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise mlflow.exceptions.MlflowException("(psycopg2.errors.DeadlockDetected) deadlock detected")
        return "ok"

    assert tracking.retrying(flaky) == "ok" and len(calls) == 3
    calls.clear()

    def broken():
        calls.append(1)
        raise mlflow.exceptions.MlflowException("Run with id=503abc not found")

    with pytest.raises(mlflow.exceptions.MlflowException, match="not found"):
        tracking.retrying(broken)
    assert len(calls) == 1


def test_runs_adding_the_same_new_data_set_at_once_all_record_it(store):
    """MLflow looks for a data set, then inserts it: runs that add the same new one at the same
    moment (trials of sweeps that start together) race, and nbnet logs it again for the losers."""
    import threading

    from nbnet.experiment.tracking import datasets

    exp = tracking.ensure_experiment("same-data-at-once", store)
    rng = np.random.default_rng(7)
    entry = [(datasets.dataset(rng.normal(size=(50, 3)), rng.integers(0, 2, 50), "race-train"), "training", "")]
    runs = [tracking.start_run(exp, run_name=f"r{i}", uri=store) for i in range(6)]
    barrier, errors = threading.Barrier(len(runs)), []

    def add(run_id):
        barrier.wait()  # every thread starts its log_inputs at once
        try:
            datasets.log_inputs(run_id, entry, uri=store)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=add, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    c = tracking.client(store)
    named = {c.get_run(r).inputs.dataset_inputs[0].dataset.digest for r in runs}
    assert len(named) == 1 and all(len(c.get_run(r).inputs.dataset_inputs) == 1 for r in runs)


def test_an_error_named_in_retry_on_is_retried():
    calls = []

    def racing():
        calls.append(1)
        if len(calls) < 2:
            raise mlflow.exceptions.MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.name")
        return "ok"

    assert tracking.retrying(racing, retry_on=("unique constraint failed",)) == "ok" and len(calls) == 2
    calls.clear()
    with pytest.raises(mlflow.exceptions.MlflowException, match="UNIQUE"):
        tracking.retrying(racing)
    assert len(calls) == 1
