"""Experiment files, overrides and search spaces (nbnet/experiment/config.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbnet.experiment import config as C
from nbnet.errors import NbnetError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["digits", "breast_cancer", "wine", "diabetes", "synthetic"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiments_load_and_roundtrip(name):
    cfg = C.load_experiment(name)
    assert cfg.name == name
    assert cfg.search.space, "every shipped experiment searches something"
    assert cfg.direction() in ("maximize", "minimize")
    # to_dict is JSON-able and from_dict inverts it exactly
    d = json.loads(json.dumps(C.to_dict(cfg)))
    assert C.from_dict(d, name) == cfg
    flat = C.to_flat_dict(cfg)
    assert flat["train.learning_rate"] == cfg.train.learning_rate
    assert flat["model.hidden_layer_sizes"] == cfg.model.hidden()
    assert all("." in k or k == "name" for k in flat)


def test_diabetes_is_regression_and_synthetic_is_large():
    assert C.load_experiment("diabetes").search.metric == "val_r2"
    src = C.load_experiment("synthetic").data.source
    assert src.startswith("synthetic:") and "n=60000" in src and "d=784" in src


def test_defaults_are_commented_dataclasses():
    text = (ROOT / "nbnet" / "experiment" / "config.py").read_text()
    for cls in (C.DataConfig, C.ModelConfig, C.TrainConfig, C.SearchConfig):
        for f in C.fields(cls):
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{f.name}:"))
            assert "#" in line or f.name in ("learning_rate", "shuffle", "patience", "min_delta"), f"{cls.__name__}.{f.name} has no comment"
    with pytest.raises(AttributeError):
        C.TrainConfig().epochs = 3  # frozen


def test_overrides_parse_literals_and_type_check():
    cfg = C.load_experiment("digits", [
        "train.epochs=5", "model.activation=tanh", "train.batch_size=None", "train.learning_rate=1e-2",
        "model.hidden_layer_sizes=[64, 32]", "model.n_layers=none", "model.width=None",
        "data.preprocessing.scale=minmax", "train.early_stopping=true", "train.l2=0",
    ])
    assert cfg.train.epochs == 5 and isinstance(cfg.train.epochs, int)
    assert cfg.model.activation == "tanh"  # a bare word is a string
    assert cfg.train.batch_size is None
    assert cfg.train.learning_rate == 0.01
    assert cfg.model.hidden() == (64, 32)
    assert cfg.data.preprocessing["scale"] == "minmax"
    assert cfg.train.early_stopping is True
    assert cfg.train.l2 == 0.0 and isinstance(cfg.train.l2, float)  # ints are accepted as floats


def test_depth_and_width_build_hidden_sizes():
    cfg = C.load_experiment("digits", ["model.n_layers=3", "model.width=128", "model.width_ratio=0.5"])
    assert cfg.model.hidden() == (128, 64, 32)
    assert cfg.estimator_kwargs()["hidden_layer_sizes"] == (128, 64, 32)
    with pytest.raises(NbnetError, match="go together"):
        C.load_experiment("digits", ["model.width=None"])


@pytest.mark.parametrize("override, match", [
    ("train.epoch=5", r"unknown config key 'train.epoch' \(did you mean 'train.epochs'\?\); valid keys: .*train.batch_size"),
    ("trian.epochs=5", "unknown config key 'trian.epochs'"),
    ("train.epochs=five", "train.epochs must be an integer, got 'five'"),
    ("train.epochs=2.5", "train.epochs must be an integer"),
    ("train.learning_rate=fast", "train.learning_rate must be a number"),
    ("model.dropout=[1]", "model.dropout must be a number"),
    ("model.dropout=1.5", r"model.dropout must be in \[0, 1\)"),
    ("train.early_stopping=2", "must be true or false"),
    ("train.epochs", "must look like key=value"),
    ("model.activation=swish", "model.activation 'swish' is unknown; choose one of"),
    ("search.sampler=bayes", "search.sampler 'bayes' is unknown"),
    ("search.metric=val_nope", "search.metric 'val_nope' is unknown"),
    ("search.metric=accuracy", "validation metric"),
    ("search.metric=val_log_loss", "search.direction 'maximize' contradicts search.metric 'val_log_loss' \\(lower is better\\)"),
    ("data.val_fraction=1.2", "data.val_fraction must be in"),
    ("search.space.train.nope={'type': 'float', 'low': 0, 'high': 1}", "unknown config key 'train.nope'"),
    ("search.space.\"train.epochs\"={'type': 'float', 'low': 1, 'high': 9}", "must be an integer"),
    ("search.space.\"train.learning_rate\"={'type': 'float', 'low': 0, 'high': 1, 'log': True}", "log = true, which needs low > 0"),
    ("search.space.\"train.l2\".low=1", "low=1 > high"),
    ("search.space.\"train.momentum\".high=1", "has no 'train.momentum'"),
    ("search.space.model.hidden_layer_sizes=[[8], [16]]", "would override it"),
])
def test_override_errors_are_one_line(override, match):
    with pytest.raises(NbnetError, match=match) as info:
        C.load_experiment("digits", [override])
    assert "\n" not in str(info.value)


def test_space_overrides_edit_add_and_remove():
    cfg = C.load_experiment("digits", [
        'search.space."train.learning_rate".high=0.05',
        "search.space.model.width.low=16",  # unquoted form: the last part is a ParamSpec field
        "search.space.train.momentum={'type': 'float', 'low': 0.5, 'high': 0.99}",
        "search.space.model.dropout=None",
    ])
    sp = cfg.search.space
    assert sp["train.learning_rate"].high == 0.05 and sp["train.learning_rate"].log
    assert sp["model.width"].low == 16
    assert sp["train.momentum"] == C.ParamSpec("float", 0.5, 0.99)
    assert "model.dropout" not in sp


def test_categorical_list_choices_and_shorthand(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text(
        '[data]\nsource = "builtin:wine"\n[search]\nmetric = "val_accuracy"\n'
        '[search.space]\n"model.hidden_layer_sizes" = [[8], [16, 8]]\n'
        '"train.batch_size" = { choices = [8, 16] }\n'
    )
    cfg = C.load_experiment(f)
    assert cfg.name == "exp"
    assert cfg.search.space["model.hidden_layer_sizes"].choices == ((8,), (16, 8))
    assert cfg.search.space["train.batch_size"].type == "categorical"
    bad = tmp_path / "bad.toml"
    bad.write_text('[search.space]\n"model.activation" = { type = "categorical", choices = [1, 2] }\n')
    with pytest.raises(NbnetError, match="must be a string"):
        C.load_experiment(bad)


def test_with_values_applies_trial_suggestions():
    cfg = C.load_experiment("digits")
    new = C.with_values(cfg, {"train.learning_rate": 0.02, "model.hidden_layer_sizes": (32, 16), "train.batch_size": 64})
    assert new.train.learning_rate == 0.02 and new.train.batch_size == 64
    assert new.model.hidden_layer_sizes == (32, 16)
    assert cfg.train.learning_rate == 1e-3  # the original is untouched (frozen)
    with pytest.raises(NbnetError):
        C.with_values(cfg, {"train.epochs": "many"})


def test_file_errors(tmp_path):
    with pytest.raises(NbnetError, match="not found.*shipped experiments: .*digits"):
        C.load_experiment("no_such_experiment")
    f = tmp_path / "broken.toml"
    f.write_text("[train\nepochs = 3\n")
    with pytest.raises(NbnetError, match="not valid TOML"):
        C.load_experiment(f)
    f.write_text("[training]\nepochs = 3\n")
    with pytest.raises(NbnetError, match="unknown config key 'training'"):
        C.load_experiment(f)
    f.write_text("[train]\nepochs = 3\nbatchsize = 4\n")
    with pytest.raises(NbnetError, match="did you mean 'train.batch_size'"):
        C.load_experiment(f)


def test_metric_direction():
    assert C.metric_direction("val_accuracy") == "maximize"
    assert C.metric_direction("val_r2") == "maximize"
    assert C.metric_direction("val_loss") == "minimize"
    assert C.metric_direction("val_rmse") == "minimize"
    assert C.load_experiment("digits", ["search.metric=val_loss", "search.direction=auto"]).direction() == "minimize"
