"""Sample and class weights: the weighted batch loss sum(w*l)/sum(w) and its gradient in the
kernels (finite differences, torch autograd), the checks of the weights, integer weights against
repeated rows, class_weight ("balanced" as scikit-learn), the model file, warm start,
partial_fit and cross_validate."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from nbnet import MLPClassifier, MLPRegressor, NbnetError, cross_validate, load
from nbnet.kernels import cpu as K
from nbnet.model import Layout, init_params

try:
    import torch
except ImportError:  # torch comes with nbnet[parity], which scripts/test.sh installs
    torch = None

LOSSES = ("cross_entropy", "binary_cross_entropy", "mse")


def _net(loss, hidden=(5, 4), act="tanh", n_in=6, seed=0):
    n_out = {"cross_entropy": 3, "binary_cross_entropy": 2, "mse": 2}[loss]
    lay = Layout.build(n_in, hidden, n_out, act)
    return lay, init_params(lay, act, np.random.default_rng(seed), np.float64)


def _data(loss, n, rng, n_in=6):
    X = rng.normal(size=(n, n_in))
    if loss == "cross_entropy":
        Y = np.eye(3)[rng.integers(0, 3, n)]
    elif loss == "binary_cross_entropy":
        Y = (rng.random((n, 2)) > 0.5).astype(np.float64)
    else:
        Y = rng.normal(size=(n, 2))
    return X, Y


@pytest.mark.parametrize("loss", LOSSES)
def test_weighted_gradient_matches_finite_differences(loss):
    rng = np.random.default_rng(1)
    lay, p = _net(loss)
    X, Y = _data(loss, 9, rng)
    w = rng.random(9) * 2
    w[3] = 0.0
    code = K.LOSSES[loss]
    g = np.zeros_like(p)
    K.batch_gradient(X, Y, p, g, *lay.kernel_args(), code, 0.0, w)
    num = np.empty_like(p)
    h = 1e-6
    for i in range(p.size):
        q = p.copy()
        q[i] += h
        up = K.batch_gradient(X, Y, q, np.zeros_like(p), *lay.kernel_args(), code, 0.0, w)
        q[i] -= 2 * h
        down = K.batch_gradient(X, Y, q, np.zeros_like(p), *lay.kernel_args(), code, 0.0, w)
        num[i] = (up - down) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def _torch_loss(loss, Z, Y, w):
    """The weighted mean loss as torch users write it: reduction='none', then sum(w*l)/sum(w)."""
    if loss == "cross_entropy":
        rows = torch.nn.functional.cross_entropy(Z, Y, reduction="none")
    elif loss == "binary_cross_entropy":
        rows = torch.nn.functional.binary_cross_entropy_with_logits(Z, Y, reduction="none").sum(1)
    else:
        rows = ((Z - Y) ** 2).mean(1)
    return (w * rows).sum() / w.sum()


@pytest.mark.skipif(torch is None, reason="torch (nbnet[parity]) gives the reference gradients")
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("seed", [2, 3])
def test_weighted_loss_and_gradient_match_torch_autograd(loss, seed):
    rng = np.random.default_rng(seed)
    hidden = tuple(int(h) for h in rng.integers(2, 7, rng.integers(1, 3)))
    act = ["relu", "tanh", "sigmoid", "elu"][seed % 4]
    lay, p = _net(loss, hidden, act, seed=seed)
    X, Y = _data(loss, 11, rng)
    w = rng.random(11) * 3
    g = np.zeros_like(p)
    value = K.batch_gradient(X, Y, p, g, *lay.kernel_args(), K.LOSSES[loss], 0.0, w)

    params = [torch.tensor(a, requires_grad=True) for a in lay.views(p)]
    A = torch.tensor(X)
    for l in range(lay.n_layers):
        A = A @ params[2 * l] + params[2 * l + 1]
        if l < lay.n_layers - 1:
            A = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "elu": torch.nn.functional.elu}[act](A)
    ref = _torch_loss(loss, A, torch.tensor(Y), torch.tensor(w))
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(g, np.concatenate([t.grad.numpy().ravel() for t in params]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_weighted_loss_kernel_equals_its_formula(loss):
    """weighted_loss_grad returns sum(w*l); weights of one give the unweighted loss_grad."""
    rng = np.random.default_rng(4)
    k = 2 if loss != "cross_entropy" else 3
    Z, Y = rng.normal(size=(7, k)), _data(loss, 7, rng)[1][:, :k]
    code = K.LOSSES[loss]
    dz1, dzw = np.zeros_like(Z), np.zeros_like(Z)
    plain = K.loss_grad(Z, Y, code, dz1)
    assert K.weighted_loss_grad(Z, Y, np.ones(7), code, dzw) == pytest.approx(plain, rel=1e-14)
    np.testing.assert_allclose(dzw, dz1, rtol=1e-14)
    w = rng.random(7)
    rows = np.array([K.loss_grad(Z[i:i + 1], Y[i:i + 1], code, np.empty((0, 1))) for i in range(7)])
    assert K.weighted_loss_grad(Z, Y, w, code, np.zeros_like(Z)) == pytest.approx(float(w @ rows), rel=1e-12)


@pytest.mark.parametrize("bad, message", [
    (np.r_[np.ones(19), np.nan], "NaN or inf"),
    (np.r_[np.ones(19), -1.0], "negative"),
    (np.ones(19), "shape"),
    (np.zeros(20), "all zero"),
    (np.ones((20, 2)), "shape"),
    (["a"] * 20, "numbers"),
])
def test_bad_sample_weights_are_one_line_errors(bad, message):
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    for est in (MLPClassifier((4,), epochs=1), MLPRegressor((4,), epochs=1)):
        with pytest.raises(NbnetError, match=message) as e:
            est.fit(X, y.astype(float) if isinstance(est, MLPRegressor) else y, sample_weight=bad)
        assert "\n" not in str(e.value)
    with pytest.raises(NbnetError, match=message):
        MLPClassifier((4,), epochs=1).partial_fit(X, y, sample_weight=bad)


@pytest.mark.parametrize("cls, optimizer", [(MLPClassifier, "adam"), (MLPRegressor, "sgd"), (MLPClassifier, "nesterov")])
def test_integer_weights_equal_repeated_rows_full_batch(cls, optimizer):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(30, 4))
    y = rng.integers(0, 3, 30) if cls is MLPClassifier else rng.normal(size=30)
    counts = rng.integers(0, 4, 30)
    counts[0] = 1
    kw = dict(hidden_layer_sizes=(7,), epochs=6, batch_size=None, optimizer=optimizer, learning_rate=0.05,
              dtype="float64", seed=3)
    weighted = cls(**kw).fit(X, y, sample_weight=counts)
    repeated = cls(**kw).fit(np.repeat(X, counts, 0), np.repeat(y, counts, 0))
    plain = cls(**kw).fit(X, y)
    np.testing.assert_allclose(weighted.params_, repeated.params_, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(weighted.history_["loss"], repeated.history_["loss"], rtol=1e-10)
    assert np.abs(weighted.params_ - plain.params_).max() > 1e-3


def test_weights_in_fused_and_reference_epochs_agree():
    """The threaded epoch and the serial reference take the same weights and per-step rates."""
    rng = np.random.default_rng(6)
    lay, p0 = _net("cross_entropy", (9, 5), "relu")
    X, Y = _data("cross_entropy", 37, rng)
    sw = rng.integers(0, 3, 37).astype(np.float64)
    hp = np.zeros(K.N_HP)
    hp[K.HP_LR], hp[K.HP_BETA1], hp[K.HP_BETA2], hp[K.HP_EPS], hp[K.HP_L2] = 0.01, 0.9, 0.999, 1e-8, 1e-3
    lrs = np.linspace(0.02, 0.001, 5)
    out = []
    for fused in (True, False):
        p, g, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), np.zeros_like(p0)
        opt = np.array([K.OPT_ADAM, 0, 8, 0, 0, 0, 1], np.int64)
        stats = np.zeros(1 + lay.n_layers)
        args = (X, Y, p, g, m, v, *lay.kernel_args(), K.LOSS_SOFTMAX_CE, hp, opt, K.seed_state(2), stats, sw, lrs)
        K.train_epoch_fused(*args, np.int64(2), None) if fused else K.train_epoch_reference(*args)
        out.append((p, stats))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-10)


def test_class_weight_balanced_is_scikit_learns_and_combines_with_sample_weight():
    from sklearn.utils.class_weight import compute_class_weight

    rng = np.random.default_rng(7)
    X = rng.normal(size=(40, 3))
    y = np.array(["a"] * 25 + ["b"] * 10 + ["c"] * 5)
    est = MLPClassifier((4,), epochs=2, class_weight="balanced", dtype="float64").fit(X, y)
    np.testing.assert_allclose(est.class_weight_, compute_class_weight("balanced", classes=np.unique(y), y=y))
    sw = rng.random(40) + 0.5
    kw = dict(hidden_layer_sizes=(4,), epochs=3, dtype="float64", seed=1)
    by_dict = MLPClassifier(class_weight={"a": 0.5, "c": 3.0}, **kw).fit(X, y, sample_weight=sw)
    by_rows = MLPClassifier(**kw).fit(X, y, sample_weight=sw * np.select([y == "a", y == "c"], [0.5, 3.0], 1.0))
    np.testing.assert_allclose(by_dict.params_, by_rows.params_, rtol=1e-12, atol=1e-14)
    assert by_dict.class_weight_.tolist() == [0.5, 1.0, 3.0]


@pytest.mark.parametrize("class_weight, message", [
    ("balance", "class_weight must be"), ({0: -1.0}, "finite number >= 0"), ({7: 1.0}, "not a class of y"),
    ([1, 2], "class_weight must be"),
])
def test_bad_class_weight_is_a_one_line_error(class_weight, message):
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    with pytest.raises(NbnetError, match=message):
        MLPClassifier((4,), epochs=1, class_weight=class_weight).fit(X, y)
    with pytest.raises(NbnetError, match="for classifiers"):
        MLPRegressor((4,), epochs=1, class_weight="balanced").fit(X, y.astype(float))
    with pytest.raises(NbnetError, match="no sample"):
        MLPClassifier((4,), epochs=1, class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2])


@pytest.mark.parametrize("class_weight", ["balanced", {0: 2.0, 1: 0.5}, {"1": 3.0}])
def test_class_weight_is_recorded_in_the_model_file(tmp_path, class_weight):
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 2, 30)
    est = MLPClassifier((4,), epochs=2, class_weight=class_weight).fit(X, y)
    est.save(tmp_path / "m.nbnet")
    back = load(tmp_path / "m.nbnet")
    assert back.class_weight == class_weight
    np.testing.assert_array_equal(back.class_weight_, est.class_weight_)
    back.partial_fit(X, y)  # training continues with the recorded weights
    assert back.n_epochs_ == 3


def test_a_model_file_without_the_new_fields_still_loads(tmp_path):
    """Files written before class weights and schedules existed: no class_weight, schedule or
    lr in params, history or meta."""
    rng = np.random.default_rng(9)
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 2, 30)
    MLPClassifier((4,), epochs=2).fit(X, y).save(tmp_path / "new.nbnet")
    with zipfile.ZipFile(tmp_path / "new.nbnet") as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["meta.json"])
    for key in ("schedule", "warmup_epochs", "lr_step_size", "lr_gamma", "lr_min", "lr_patience", "class_weight",
                "warm_start"):
        del meta["params"][key]
    del meta["history"]["lr"], meta["schedule_start"]
    members["meta.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(tmp_path / "old.nbnet", "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    old = load(tmp_path / "old.nbnet")
    assert old.schedule == "constant" and old.class_weight is None and old.class_weight_ is None
    old.partial_fit(X, y)
    assert len(old.history_["lr"]) == 3 and np.isnan(old.history_["lr"][0]) and old.history_["lr"][2] == 1e-3


def test_warm_start_continues_weights_and_optimizer_state():
    rng = np.random.default_rng(10)
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    kw = dict(hidden_layer_sizes=(6,), batch_size=8, dtype="float64", seed=2)
    once = MLPClassifier(epochs=5, **kw).fit(X, y)
    warm = MLPClassifier(epochs=3, warm_start=True, **kw).fit(X, y)
    warm.set_params(epochs=2).fit(X, y)  # 2 more epochs from the current state
    np.testing.assert_array_equal(warm.params_, once.params_)
    assert warm.training_state().optimizer.step == once.training_state().optimizer.step == 25
    assert warm.n_epochs_ == 5 and len(warm.history_["loss"]) == 5
    cold = MLPClassifier(epochs=3, **kw).fit(X, y)
    cold.set_params(epochs=2).fit(X, y)  # warm_start=False: a new fit from scratch
    np.testing.assert_array_equal(cold.params_, MLPClassifier(epochs=2, **kw).fit(X, y).params_)
    with pytest.raises(NbnetError, match="warm_start"):
        warm.set_params(hidden_layer_sizes=(7,)).fit(X, y)


def test_partial_fit_with_weights_k_calls_equal_one_call():
    rng = np.random.default_rng(11)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 2, 30)
    sw = rng.random(30)
    kw = dict(hidden_layer_sizes=(5,), batch_size=8, dtype="float64", class_weight={0: 2.0})
    a = MLPClassifier(**kw)
    for _ in range(3):
        a.partial_fit(X, y, sample_weight=sw)
    b = MLPClassifier(**kw).partial_fit(X, y, epochs=3, sample_weight=sw)
    np.testing.assert_array_equal(a.params_, b.params_)
    c = MLPClassifier(**kw).partial_fit(X, y, epochs=3)
    assert np.abs(c.params_ - b.params_).max() > 1e-4


def test_cross_validate_passes_each_fold_its_weights():
    rng = np.random.default_rng(12)
    X, y = rng.normal(size=(36, 4)), rng.integers(0, 2, 36)
    sw = rng.integers(0, 3, 36).astype(float)
    est = MLPClassifier((5,), epochs=3, dtype="float64", seed=0)
    weighted = cross_validate(est, X, y, cv=3, sample_weight=sw, metrics=["log_loss"])
    plain = cross_validate(est, X, y, cv=3, metrics=["log_loss"])
    assert weighted["folds"]["log_loss"] != plain["folds"]["log_loss"]
    # the folds are the same either way: weights of one give the unweighted result
    ones = cross_validate(est, X, y, cv=3, sample_weight=np.ones(36), metrics=["log_loss"])
    np.testing.assert_allclose(ones["folds"]["log_loss"], plain["folds"]["log_loss"], rtol=1e-12)
    with pytest.raises(NbnetError, match="sample_weight"):
        cross_validate(est, X, y, cv=3, sample_weight=np.ones(5))


def test_a_model_file_with_malformed_weight_fields_is_refused(tmp_path):
    rng = np.random.default_rng(13)
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 2, 30)
    MLPClassifier((4,), epochs=1, class_weight="balanced").fit(X, y).save(tmp_path / "m.nbnet")
    with zipfile.ZipFile(tmp_path / "m.nbnet") as z:
        members = {n: z.read(n) for n in z.namelist()}
    for field, value in [("class_weights", [1.0]), ("class_weights", ["x", 1]), ("schedule_start", -1)]:
        meta = json.loads(members["meta.json"])
        meta[field] = value
        with zipfile.ZipFile(tmp_path / "bad.nbnet", "w") as z:
            for n, b in members.items():
                z.writestr(n, json.dumps(meta).encode() if n == "meta.json" else b)
        with pytest.raises(NbnetError, match=field):
            load(tmp_path / "bad.nbnet")
