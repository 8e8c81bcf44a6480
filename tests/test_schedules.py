"""Learning-rate schedules: every schedule's rates equal torch.optim.lr_scheduler's step by step,
the epoch kernel trains with the per-step rates it is given (against a torch run), the rate of
every epoch is in history_ and the logs, and the TOML keys are checked and searchable."""

from __future__ import annotations

import numpy as np
import pytest
from stores import fresh_store

from nbnet import MLPClassifier, MLPRegressor, NbnetError
from nbnet.experiment import config as C
from nbnet.experiment import tracking
from nbnet.experiment.trial import suggest
from nbnet.model import Layout, init_params
from nbnet.nn.schedules import WARMUP_START, Plateau, Schedule

try:
    import torch
except ImportError:  # torch comes with nbnet[parity], which scripts/test.sh installs
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch (nbnet[parity]) gives the reference schedules")

EPOCHS, STEPS = 12, 5  # 12 epochs of 5 steps


def _torch_rates(make, per_step: bool, lr=0.1, metrics=None):
    """The rate torch's scheduler gives each step of EPOCHS epochs of STEPS steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make(opt)
    out = []
    for e in range(EPOCHS):
        for _ in range(STEPS):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if per_step:
                sched.step()
        if not per_step:
            sched.step(metrics[e]) if metrics is not None else sched.step()
    return np.array(out)


def _ours(sched: Schedule, metrics=None):
    rule = Plateau(sched.lr, sched.gamma, sched.patience, sched.min_lr) if sched.name == "plateau" else None
    out = []
    for e in range(EPOCHS):
        out.append(sched.rates(e, STEPS, rule.lr if rule else None))
        if rule:
            rule.step(metrics[e])
    return np.concatenate(out)


S = torch.optim.lr_scheduler if torch is not None else None


@needs_torch
@pytest.mark.parametrize("name, ours, theirs, per_step", [
    ("constant", Schedule("constant", 0.1), lambda o: S.ConstantLR(o, factor=1.0), False),
    ("step", Schedule("step", 0.1, step_size=3, gamma=0.5), lambda o: S.StepLR(o, step_size=3, gamma=0.5), False),
    ("exponential", Schedule("exponential", 0.1, gamma=0.8), lambda o: S.ExponentialLR(o, gamma=0.8), False),
    ("cosine", Schedule("cosine", 0.1, epochs=EPOCHS, min_lr=1e-3),
     lambda o: S.CosineAnnealingLR(o, T_max=EPOCHS * STEPS, eta_min=1e-3), True),
    ("cosine-warmup", Schedule("cosine", 0.1, epochs=EPOCHS, warmup_epochs=2),
     lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=WARMUP_START, total_iters=2 * STEPS),
                                  S.CosineAnnealingLR(o, T_max=(EPOCHS - 2) * STEPS)], milestones=[2 * STEPS]), True),
])
def test_rates_equal_torch_step_by_step(name, ours, theirs, per_step):
    want = _torch_rates(theirs, per_step)
    np.testing.assert_allclose(_ours(ours), want, rtol=1e-12, atol=1e-15)


@needs_torch
def test_plateau_equals_reduce_lr_on_plateau():
    # improves, stalls past patience twice, improves by less than the 1e-4 threshold, floors at min_lr
    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.79995, 0.8, 0.8, 0.7, 0.7, 0.7]
    ours = Schedule("plateau", 0.1, gamma=0.3, patience=2, min_lr=0.005)
    want = _torch_rates(lambda o: S.ReduceLROnPlateau(o, factor=0.3, patience=2, min_lr=0.005), False,
                        metrics=metrics)
    got = _ours(ours, metrics)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[-1] < got[0]  # it did reduce


@needs_torch
@pytest.mark.parametrize("schedule, kw, make", [
    ("cosine", dict(warmup_epochs=1), lambda o, spe: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=WARMUP_START, total_iters=spe), S.CosineAnnealingLR(o, T_max=3 * spe)],
        milestones=[spe])),
    ("step", dict(lr_step_size=2, lr_gamma=0.5), None),
])
def test_the_epoch_kernel_trains_with_the_scheduled_rates(schedule, kw, make):
    """nbnet (SGD, no shuffle) against torch SGD driven by torch's scheduler: same weights."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(24, 3)), rng.normal(size=24)
    est = MLPRegressor((5,), activation="tanh", optimizer="sgd", learning_rate=0.05, batch_size=5, epochs=4,
                       shuffle=False, dtype="float64", schedule=schedule, **kw)
    lay = Layout.build(3, (5,), 1, "tanh")
    Ws = [torch.tensor(v.copy(), requires_grad=True)
          for v in lay.views(init_params(lay, "tanh", np.random.default_rng(est.seed), np.float64))]
    opt = torch.optim.SGD(Ws, lr=0.05)
    spe = 5  # ceil(24 / 5)
    sched = make(opt, spe) if make else S.StepLR(opt, step_size=2, gamma=0.5)
    Xt, yt = torch.tensor(X), torch.tensor(y).reshape(-1, 1)
    for _ in range(4):
        for s in range(0, 24, 5):
            opt.zero_grad()
            out = torch.tanh(Xt[s:s + 5] @ Ws[0] + Ws[1]) @ Ws[2] + Ws[3]
            ((out - yt[s:s + 5]) ** 2).mean().backward()
            opt.step()
            if make:
                sched.step()
        if not make:
            sched.step()
    est.fit(X, y)
    np.testing.assert_allclose(est.params_, np.concatenate([w.detach().numpy().ravel() for w in Ws]), rtol=1e-9,
                               atol=1e-12)


def test_history_and_logs_hold_every_epochs_rate():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    seen = []
    est = MLPClassifier((4,), epochs=5, schedule="exponential", lr_gamma=0.5, learning_rate=0.01)
    est.fit(X, y, callbacks=[lambda e, logs: seen.append(logs["lr"])])
    assert est.history_["lr"] == seen == pytest.approx([0.01 * 0.5 ** e for e in range(5)], rel=1e-15)
    plain = MLPClassifier((4,), epochs=2, learning_rate=0.02).fit(X, y)
    assert plain.history_["lr"] == [0.02, 0.02]


def test_plateau_watches_the_validation_loss_and_survives_warm_start():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(60, 3)), rng.integers(0, 2, 60)  # noise: the validation loss soon stalls
    kw = dict(hidden_layer_sizes=(16,), learning_rate=0.05, schedule="plateau", lr_patience=1, lr_gamma=0.5,
              dtype="float64")
    est = MLPClassifier(epochs=12, **kw).fit(X[:40], y[:40], validation_data=(X[40:], y[40:]))
    rule = Plateau(0.05, 0.5, 1, 0.0)
    want = []
    for v in est.history_["val_loss"]:
        want.append(rule.lr)
        rule.step(v)
    assert est.history_["lr"] == pytest.approx(want, rel=1e-15)
    assert min(want) < 0.05
    # partial_fit continues the rule from the history (training loss now: no validation data)
    est.partial_fit(X[:40], y[:40])
    assert est.history_["lr"][-1] == pytest.approx(rule.lr, rel=1e-15)


def test_partial_fit_continues_the_schedule():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 2, 30)
    kw = dict(hidden_layer_sizes=(4,), epochs=4, schedule="cosine", batch_size=8, dtype="float64")
    a = MLPClassifier(**kw)
    for _ in range(4):
        a.partial_fit(X, y)
    b = MLPClassifier(**kw).partial_fit(X, y, epochs=4)
    np.testing.assert_array_equal(a.params_, b.params_)
    assert a.history_["lr"] == b.history_["lr"] and a.history_["lr"][-1] < 1e-4


@pytest.mark.parametrize("kw, message", [
    (dict(schedule="linear"), "unknown schedule"),
    (dict(schedule="step", lr_gamma=1.5), "lr_gamma"),
    (dict(schedule="step", lr_step_size=0), "lr_step_size"),
    (dict(schedule="cosine", warmup_epochs=5, epochs=5), "warmup_epochs"),
    (dict(schedule="cosine", lr_min=1.0), "lr_min"),
    (dict(schedule="plateau", lr_patience=-1), "lr_patience"),
])
def test_bad_schedule_options_are_one_line_errors(kw, message):
    X, y = np.random.default_rng(0).normal(size=(10, 2)), np.arange(10) % 2
    with pytest.raises(NbnetError, match=message) as e:
        MLPClassifier((3,), **kw).fit(X, y)
    assert "\n" not in str(e.value)


def test_toml_keys_overrides_and_search_space():
    cfg = C.load_experiment("breast_cancer", ["train.schedule=cosine", "train.warmup_epochs=2",
                                              "train.class_weight=balanced", "train.lr_min=1e-5"])
    kw = cfg.estimator_kwargs()
    assert (kw["schedule"], kw["warmup_epochs"], kw["class_weight"], kw["lr_min"]) == ("cosine", 2, "balanced", 1e-5)
    MLPClassifier(**{k: v for k, v in kw.items() if k != "preprocessing"})._resolved()  # the estimator takes them
    assert C.apply_overrides(cfg, ["train.class_weight=none"]).train.class_weight is None
    cfg = C.apply_overrides(cfg, ["train.class_weight={'0': 2.0}"])
    assert cfg.train.class_weight == {"0": 2.0}
    for bad, message in [("train.schedule=linear", "train.schedule"), ("train.class_weight=heavy", "train.class_weight"),
                         ("train.warmup_epochs=50", "train.warmup_epochs"), ("train.lr_gamma=0", "train.lr_gamma"),
                         ("train.lr_step_size=0", "train.lr_step_size")]:
        with pytest.raises(NbnetError, match=message) as e:
            C.apply_overrides(cfg, ["train.schedule=step" if "gamma" in bad or "step_size" in bad else "name=x", bad])
        assert "\n" not in str(e.value)
    space = {"train.schedule": {"type": "categorical", "choices": ["constant", "plateau", "cosine"]},
             "train.class_weight": {"type": "categorical", "choices": ["none", "balanced"]},
             "train.warmup_epochs": {"type": "int", "low": 0, "high": 3}}
    cfg = C.apply_overrides(C.load_experiment("breast_cancer"), [f"search.space.{k}={v}" for k, v in space.items()])

    class FixedTrial:  # always the last choice, the high end of an int range
        def suggest_categorical(self, name, choices):
            return choices[-1]

        def suggest_int(self, name, low, high, step=1, log=False):
            return high

        def suggest_float(self, name, low, high, step=None, log=False):
            return low

    values = suggest(FixedTrial(), cfg.search.space)
    new = C.with_values(cfg, values)
    assert (new.train.schedule, new.train.class_weight, new.train.warmup_epochs) == ("cosine", "balanced", 3)
    with pytest.raises(NbnetError, match="train.schedule"):
        C.apply_overrides(cfg, ["search.space.train.schedule=['constant', 'linear']"])
    with pytest.raises(NbnetError, match="train.class_weight"):
        C.apply_overrides(cfg, ["search.space.train.class_weight=['none', 'heavy']"])
    # warmup_epochs is ignored by the schedules other than cosine, so a search may pair them freely
    assert C.with_values(cfg, {"train.schedule": "step", "train.warmup_epochs": 3}).train.warmup_epochs == 3


def test_every_epochs_rate_is_a_run_metric(tmp_path, monkeypatch, empty_store_db):
    """The learning rate reaches the MLflow run through the epoch logs (a real store)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_store(tmp_path, empty_store_db))
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    run_id = tracking.start_run(tracking.ensure_experiment("schedules"), run_name="fit")
    with tracking.MetricLogger(run_id) as log:
        est = MLPClassifier((4,), epochs=4, schedule="step", lr_step_size=2, lr_gamma=0.5).fit(X, y, callbacks=[log])
    tracking.end_run(run_id)
    history = tracking.client().get_metric_history(run_id, "lr")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
        list(zip(range(1, 5), est.history_["lr"])) == [(1, 1e-3), (2, 1e-3), (3, 5e-4), (4, 5e-4)]
