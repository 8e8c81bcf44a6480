"""``nbnet promote`` (the gate) and ``nbnet rollback``: the champion alias, its stack and history."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from nbnet import MLPClassifier
from nbnet.experiment.tracking import registry
from nbnet.experiment import tracking
from nbnet.cli import main
from nbnet.ops import promote
from stores import module_store

COLS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    yield from module_store(tmp_path_factory, "registry-store")


@pytest.fixture(scope="module")
def iris(store):
    """A weak (1 epoch) and a good (40 epochs) iris classifier, and a labelled holdout file."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))
    tr, ho = idx[:100], idx[100:]
    kw = dict(learning_rate=0.01, seed=0, preprocessing={"scale": "standard"})
    weak = MLPClassifier((8,), epochs=1, **kw).fit(X[tr], y[tr])
    good = MLPClassifier((8,), epochs=40, **kw).fit(X[tr], y[tr])
    assert weak.score(X[ho], y[ho]) + 0.1 < good.score(X[ho], y[ho])
    holdout = store / "holdout.csv"
    pd.DataFrame(X[ho], columns=COLS).assign(species=y[ho]).to_csv(holdout, index=False)
    return {"weak": weak, "good": good, "X": X[tr], "holdout": holdout}


def log_run(clf, X, metric: float, exp="reg") -> str:
    run_id = tracking.start_run(tracking.ensure_experiment(exp), run_name="fit")
    tracking.log_model(run_id, clf, pd.DataFrame(X[:5], columns=COLS))
    tracking.log_metrics(run_id, {"val_accuracy": metric})
    tracking.end_run(run_id)
    return run_id


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def champ(name) -> str:
    mv = registry.alias_version(name)
    return None if mv is None else str(mv.version)


def test_register_promote_rollback_history(iris, capsys):
    """1 → 2 → 3 by registration, then rollbacks walk the stack back: 2, then 1, then nothing."""
    good, X = iris["good"], iris["X"]
    for i, m in enumerate((0.80, 0.85, 0.90), start=1):
        assert tracking.register_champion("hist", log_run(good, X, m), "val_accuracy", "maximize") == (i, True)
    assert registry.stack("hist") == [1, 2, 3]
    assert [(e["action"], e["from"], e["to"]) for e in registry.history("hist")] == \
        [("register", None, 1), ("register", 1, 2), ("register", 2, 3)]
    code, out, _ = run(["rollback", "hist", "--reason", "bad outputs"], capsys)
    assert code == 0 and "v3 → v2" in out and champ("hist") == "2"
    c = tracking.client()
    v2, v3 = c.get_model_version("hist", "2"), c.get_model_version("hist", "3")
    assert v3.tags["champion.rollback_reason"] == "bad outputs" and v3.tags["champion.replaced_by"] == "2"
    assert "champion.until" not in v2.tags and "champion.replaced_by" not in v2.tags  # champion again
    assert v2.tags["champion.reason"] == "rollback: bad outputs" and v2.tags["champion.replaced"] == "3"
    assert run(["rollback", "hist"], capsys)[0] == 0 and champ("hist") == "1"
    code, _, err = run(["rollback", "hist"], capsys)
    assert code == 2 and "no previous champion to roll back to" in err and err.count("\n") == 1
    assert champ("hist") == "1"
    # --to a version that was never champion since: pushed, so a later rollback returns to 1
    assert run(["rollback", "hist", "--to", "3"], capsys)[0] == 0 and champ("hist") == "3"
    assert registry.stack("hist") == [1, 3]
    assert run(["rollback", "hist"], capsys)[0] == 0 and champ("hist") == "1"
    rm_tags = c.get_registered_model("hist").tags
    assert json.loads(rm_tags["champion.stack"]) == [1]
    assert [e["action"] for e in json.loads(rm_tags["champion.history"])][-4:] == ["rollback"] * 4
    code, _, err = run(["rollback", "hist", "--to", "1"], capsys)
    assert code == 2 and "already the champion" in err


def test_gate_on_recorded_metrics(iris, capsys):
    good, X = iris["good"], iris["X"]
    name = "gate"
    r1 = log_run(good, X, 0.90)
    assert tracking.register_champion(name, r1, "val_accuracy", "maximize") == (1, True)
    # registered without becoming champion: worse, slightly worse, better
    for m in (0.80, 0.89, 0.95):
        tracking.register_champion(name, log_run(good, X, m), "val_accuracy", "maximize")
    assert champ(name) == "4"  # 0.95 beat 0.90 at registration
    assert run(["rollback", name, "--to", "1"], capsys)[0] == 0
    code, out, err = run(["promote", name, "--version", "2"], capsys)
    assert code == 1 and err == ""
    assert "FAIL: v2 is worse than champion v1 by 0.1" in out and "recorded validation metrics" in out
    assert champ(name) == "1"
    assert tracking.client().get_model_version(name, "2").tags["nbnet.gate"].startswith("fail")
    code, out, _ = run(["promote", name, "--version", "3"], capsys)  # 0.01 worse: within 0.02
    assert code == 0 and "within 0.02" in out and champ(name) == "3"
    code, out, _ = run(["promote", name, "--version", "1", "--tolerance", "0"], capsys)  # better by 0.01
    assert code == 0 and champ(name) == "1"
    code, out, _ = run(["promote", name, "--version", "3", "--tolerance", "0"], capsys)
    assert code == 1 and champ(name) == "1"
    code, out, _ = run(["promote", name, "--version", "1"], capsys)
    assert code == 0 and "already the champion" in out
    assert registry.stack(name) == [1, 3, 1]  # the rollback --to 1 popped 4
    assert run(["rollback", name], capsys)[0] == 0 and champ(name) == "3"  # "previous" = the one before


def test_gate_on_a_holdout_and_first_promotion(iris, capsys):
    weak, good, X, holdout = iris["weak"], iris["good"], iris["X"], iris["holdout"]
    name = "holdout"
    # registered versions with made-up recorded metrics that would mislead: the holdout decides
    v1 = registry.create_version(name, log_run(good, X, 0.10)).version
    v2 = registry.create_version(name, log_run(weak, X, 0.99)).version
    for v in (v1, v2):
        tracking.client().set_model_version_tag(name, str(v), "nbnet.metric_key", "val_accuracy")
    code, out, _ = run(["promote", name, "--version", "1"], capsys)  # no champion yet: directly
    assert code == 0 and "no champion yet" in out and champ(name) == "1"
    code, out, _ = run(["promote", name, "--version", "2", "--data", holdout, "--target", "species"], capsys)
    assert code == 1 and "holdout" in out and f"{holdout} (50 rows)" in out and champ(name) == "1"
    expected = good.score(pd.read_csv(holdout)[COLS].to_numpy(), pd.read_csv(holdout)["species"].to_numpy())
    assert f"champion v1 {expected:.6g}" in out
    # the recorded values alone would let it through
    code, out, _ = run(["promote", name, "--version", "2"], capsys)
    assert code == 0 and champ(name) == "2"


def test_stack_follows_an_alias_moved_elsewhere(iris):
    good, X = iris["good"], iris["X"]
    name = "outside"
    for m in (0.5, 0.6):
        tracking.register_champion(name, log_run(good, X, m), "val_accuracy", "maximize")
    c = tracking.client()
    # two more versions moved by hand in the style of the old bookkeeping (no stack update)
    for m in (0.7, 0.8):
        v = str(registry.create_version(name, log_run(good, X, m)).version)
        old = champ(name)
        c.set_model_version_tag(name, v, "champion.replaced", old)
        c.set_registered_model_alias(name, "champion", v)
    assert registry.stack(name) == [1, 2, 3, 4]
    # a model registered before the stack tag existed (and so never rolled back): rebuilt from
    # the champion.replaced chain
    c.delete_registered_model_tag(name, "champion.stack")
    assert registry.stack(name) == [1, 2, 3, 4]
    assert promote.rollback(name) == (4, 3)
    assert promote.rollback(name) == (3, 2)
    assert json.loads(c.get_registered_model(name).tags["champion.stack"]) == [1, 2]


def test_unknown_names_and_versions_exit_2(iris, capsys):
    good, X = iris["good"], iris["X"]
    tracking.register_champion("known", log_run(good, X, 0.9), "val_accuracy", "maximize")
    for argv, text in [
        (["promote", "nope", "--version", "1"], "no registered model named 'nope'"),
        (["promote", "known", "--version", "5"], "known has no version 5; versions: 1"),
        (["promote", "known", "--version", "x"], "--version must be a version number"),
        (["rollback", "nope"], "no registered model named 'nope'"),
        (["rollback", "known", "--to", "9"], "known has no version 9"),
        (["promote", "known", "--version", "1", "--tolerance", "-1"], "--tolerance must be a number >= 0"),
    ]:
        code, out, err = run(argv, capsys)
        assert code == 2 and err.startswith("nbnet: error: ") and err.count("\n") == 1 and text in err, (argv, err)
