"""The fused, threaded CPU kernels (the fast path) against the reference kernels.

``train_epoch_fused``/``forward_fused`` split every mini-batch into T parts on numba's threads and
call a single-threaded GEMM (nbnet.kernels.blas); ``*_reference`` are the serial ``np.dot``
kernels that the gradient checks and the optimizer tests pin to NumPy/torch. T is a partition
count, not a core count, so T = 3 runs fine on 2 cores and exercises uneven blocks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import reference as R

from nbnet import optim
from nbnet.kernels import blas
from nbnet.kernels import cpu as K
from nbnet.kernels.rng import rng_at, rng_next
from nbnet.model import Layout

pytestmark = pytest.mark.skipif(not blas.available(), reason="no GEMM library (MKL or SciPy's OpenBLAS) loaded")


def _problem(n_in, hidden, n_out, act, loss, n, dtype, seed):
    rng = np.random.default_rng(seed)
    lay = Layout.build(n_in, hidden, n_out, act)
    params = (rng.normal(size=lay.n_params) * 0.5).astype(dtype)
    X = rng.normal(size=(n, n_in)).astype(dtype)
    if loss == "cross_entropy":
        Y = np.eye(n_out)[rng.integers(0, n_out, n)]
    elif loss == "binary_cross_entropy":
        Y = rng.integers(0, 2, (n, n_out)).astype(float)
    else:
        Y = rng.normal(size=(n, n_out))
    return lay, params, X, Y.astype(dtype)


def _hp(**kw):
    base = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l2=0.0, momentum=0.0,
                clip_norm=None, dropout=0.0, noise=0.0, mixup=0.0)
    base.update(kw)
    return optim.hyper_vector(**base)


def _opt(kind, batch, nesterov=False, step=0):
    o = np.zeros(K.N_SETTINGS, np.int64)
    o[K.SETTING_OPTIMIZER], o[K.SETTING_NESTEROV], o[K.SETTING_BATCH], o[K.SETTING_STEP], o[K.SETTING_SHUFFLE] = kind, nesterov, batch, step, 1
    return o


def _run(fn, lay, params, X, Y, loss, hp, opt, epochs=2, T=None):
    p = params.copy()
    g, m, v = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    state = K.seed_state(3)
    stats = np.zeros(1 + lay.n_layers)
    args = (X, Y, p, g, m, v, *lay.kernel_args(), K.LOSSES[loss], hp, opt, state)
    for _ in range(epochs):
        if T is None:
            fn(*args, stats, np.empty(0), np.empty(0))
        else:  # the fused kernel takes the clipping bound as an argument (None: no clipping path compiled)
            fn(*args, stats, np.empty(0), np.empty(0), np.int64(T), hp[K.HP_CLIP] if hp[K.HP_CLIP] > 0 else None)
    return p, m, v, stats, opt


CASES = [  # (hidden, activation, loss, optimizer kind, hyperparameters, batch)
    ((17, 3), "tanh", "cross_entropy", K.OPT_SGD, dict(momentum=0.9, nesterov=True, weight_decay=0.01, l2=0.02), 5),
    ((33,), "relu", "cross_entropy", K.OPT_ADAM, dict(weight_decay=0.01), 8),
    ((20, 40), "leaky_relu", "binary_cross_entropy", K.OPT_ADAMW, dict(weight_decay=0.05, l2=0.01), 7),
    ((9,), "sigmoid", "mse", K.OPT_SGD, dict(), 64),  # batch > n: full batch
    ((), "identity", "mse", K.OPT_ADAM, dict(clip_norm=0.3), 6),  # no hidden layer, clipping (unfused step)
    ((18, 17), "elu", "cross_entropy", K.OPT_SGD, dict(momentum=0.5), 1),  # batch of one row
]


@pytest.mark.parametrize("T", [1, 2, 3])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fused_epoch_matches_reference_float64(case, T):
    hidden, act, loss, kind, kw, batch = CASES[case]
    kw = dict(kw)
    nesterov = kw.pop("nesterov", False)
    lay, params, X, Y = _problem(6, hidden, 3, act, loss, 37, np.float64, case)
    hp = _hp(**kw)
    want = _run(K.train_epoch_reference, lay, params, X, Y, loss, hp, _opt(kind, batch, nesterov, step=2))
    got = _run(K.train_epoch_fused, lay, params, X, Y, loss, hp, _opt(kind, batch, nesterov, step=2), T=T)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10, atol=1e-12)  # weights
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-12)  # momentum / first moment
    np.testing.assert_allclose(got[2], want[2], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got[3], want[3], rtol=1e-10)  # loss and per-layer gradient norms
    assert got[4][K.SETTING_STEP] == want[4][K.SETTING_STEP]


def test_fused_epoch_float32_close_to_float64_reference():
    lay, params, X, Y = _problem(40, (64, 32), 5, "relu", "cross_entropy", 300, np.float64, 9)
    hp = _hp(lr=1e-3)
    want = _run(K.train_epoch_reference, lay, params, X, Y, "cross_entropy", hp, _opt(K.OPT_ADAM, 32))
    f32 = [a.astype(np.float32) for a in (params, X, Y)]
    got = _run(K.train_epoch, lay, *f32, "cross_entropy", hp, _opt(K.OPT_ADAM, 32))
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=2e-4)
    assert got[3][0] == pytest.approx(want[3][0], rel=1e-4)


def test_same_thread_count_gives_identical_weights():
    lay, params, X, Y = _problem(30, (48, 24), 4, "relu", "cross_entropy", 200, np.float32, 5)
    runs = [_run(K.train_epoch_fused, lay, params, X, Y, "cross_entropy", _hp(), _opt(K.OPT_ADAM, 16), T=2)[0]
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy", "mse", None])
def test_forward_fused_matches_reference(dtype, loss):
    # 700 rows: three 256-row blocks, the last one partial
    lay, params, X, _ = _problem(13, (31, 7), 4, "tanh", loss or "mse", 700, dtype, 2)
    code = -1 if loss is None else K.LOSSES[loss]
    want, got = np.empty((700, 4), dtype), np.empty((700, 4), dtype)
    K.forward_reference(X, params, *lay.kernel_args(), code, want)
    K.forward(X, params, *lay.kernel_args(), code, got)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _dropout_masks(lay, state, n: int, p: float) -> list[np.ndarray]:
    """The masks (0 or 1 / (1 - p)) of the fused epoch's first mini-batch of ``n`` rows, drawn as
    the kernel documents: a key from ``state``, then hidden layer l's part of its counter-based stream."""
    key = np.uint64(rng_next(state.copy()))
    masks = []
    for l, width in enumerate(lay.sizes[1:-1]):
        u = np.array([[rng_at(key, (l << 40) + i * int(width) + j) for j in range(int(width))] for i in range(n)])
        masks.append(np.where(u >= p, 1.0 / (1.0 - p), 0.0))
    return masks


@pytest.mark.parametrize("T", [1, 2, 3])
@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid"])
def test_fused_dropout_step_is_textbook_backprop_through_its_masks(act, T):
    """One full-batch plain-SGD step of lr 1 moves the weights by exactly minus the gradient: it
    equals backpropagation (tests/reference.py) through the masks the kernel says it draws."""
    n, p = 23, 0.4
    lay, params, X, Y = _problem(6, (17, 9), 3, act, "cross_entropy", n, np.float64, 4)
    opt = _opt(K.OPT_SGD, n)
    opt[K.SETTING_SHUFFLE] = 0
    masks = _dropout_masks(lay, K.seed_state(3), n, p)  # _run's seed
    after, *_ , stats, _ = _run(K.train_epoch_fused, lay, params, X, Y, "cross_entropy", _hp(lr=1.0, dropout=p), opt,
                                epochs=1, T=T)
    loss, want = R.network_gradient(X, Y, lay.views(params), act, "cross_entropy", masks=masks)
    got = lay.views(params - after)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)
    assert stats[0] == pytest.approx(loss, rel=1e-12)
    dropped = np.concatenate([m.ravel() for m in masks]) == 0
    assert 0.25 < dropped.mean() < 0.55  # p = 0.4 of 23 × 26 units


def test_fused_dropout_does_not_depend_on_the_thread_count():
    lay, params, X, Y = _problem(30, (48, 24), 4, "relu", "cross_entropy", 200, np.float64, 5)
    hp = _hp(dropout=0.3)
    runs = [_run(K.train_epoch_fused, lay, params, X, Y, "cross_entropy", hp, _opt(K.OPT_ADAM, 16), T=T)[0]
            for T in (1, 3)]
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-10, atol=1e-12)  # only float sums differ


def test_dispatch_runs_dropout_fused_and_falls_back_for_augmentation_and_odd_layouts():
    lay, params, X, Y = _problem(6, (8,), 3, "relu", "cross_entropy", 20, np.float64, 1)
    hp = _hp(dropout=0.3)
    want = _run(K.train_epoch_fused, lay, params, X, Y, "cross_entropy", hp, _opt(K.OPT_ADAM, 4), T=1)
    got = _run(K.train_epoch, lay, params, X, Y, "cross_entropy", hp, _opt(K.OPT_ADAM, 4))
    np.testing.assert_array_equal(got[0], want[0])  # dropout fused; a 4-row batch of a tiny net: one thread
    hp = _hp(noise=0.1)
    want = _run(K.train_epoch_reference, lay, params, X, Y, "cross_entropy", hp, _opt(K.OPT_ADAM, 4))
    got = _run(K.train_epoch, lay, params, X, Y, "cross_entropy", hp, _opt(K.OPT_ADAM, 4))
    np.testing.assert_array_equal(got[0], want[0])  # augmentation: the reference path, same RNG stream
    Xf = np.asfortranarray(X)  # not C-contiguous: reference path, same numbers
    a, b = np.empty((20, 3)), np.empty((20, 3))
    K.forward(Xf, params, *lay.kernel_args(), 0, a)
    K.forward_reference(X, params, *lay.kernel_args(), 0, b)
    np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("batch, serial", [(16, True), (512, False)])
def test_small_mini_batches_train_on_one_thread(batch, serial):
    """Under SERIAL_BELOW multiply-adds per mini-batch the epoch runs as one part (a thread
    count's results are reproducible, so the dispatcher's choice shows in the numbers)."""
    import numba

    from nbnet.kernels.threads import SERIAL_BELOW, numba_threads

    lay, params, X, Y = _problem(64, (128,), 10, "relu", "cross_entropy", 600, np.float64, 2)
    assert (batch * lay.n_params < SERIAL_BELOW) == serial
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    if threads < 2 and not serial:
        pytest.skip("numba has one thread here (NUMBA_NUM_THREADS=1): no split to tell apart")
    parts = 1 if serial else threads
    with numba_threads(threads):
        got = _run(K.train_epoch, lay, params, X, Y, "cross_entropy", _hp(), _opt(K.OPT_ADAM, batch), epochs=1)
    want = _run(K.train_epoch_fused, lay, params, X, Y, "cross_entropy", _hp(), _opt(K.OPT_ADAM, batch), epochs=1, T=parts)
    np.testing.assert_array_equal(got[0], want[0])


def test_predict_from_several_python_threads():
    """A server calls predict from several threads at once: the threading layer must survive it."""
    lay, params, X, _ = _problem(50, (64,), 3, "relu", "mse", 2000, np.float32, 4)
    want = np.empty((2000, 3), np.float32)
    K.forward_reference(X, params, *lay.kernel_args(), 0, want)
    outs = [np.zeros((2000, 3), np.float32) for _ in range(4)]

    def work(out):
        for _ in range(5):
            K.forward(X, params, *lay.kernel_args(), 0, out)

    threads = [threading.Thread(target=work, args=(o,)) for o in outs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in outs:
        np.testing.assert_allclose(o, want, rtol=2e-5, atol=2e-6)


def test_gemm_transposes_and_leading_dimensions():
    from numba import njit

    from nbnet.kernels.blas import gemm

    @njit
    def run(ta, tb, A, B, C, m, n, k, lda, ldb, ldc):
        gemm(ta, tb, m, n, k, 1.0, A, lda, B, ldb, 0.0, C, ldc)

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        A = rng.normal(size=(9, 20)).astype(dtype)
        B = rng.normal(size=(11, 20)).astype(dtype)
        C = np.zeros((9, 15), dtype)
        # C[:, 2:9] = A[:, 3:8] @ B[1:6, 4:11]: sub-blocks through pointers and leading dimensions
        run(False, False, A[0, 3:], B[1, 4:], C[0, 2:], 9, 7, 5, 20, 20, 15)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(C[:, 2:9], A[:, 3:8] @ B[1:6, 4:11], rtol=tol, atol=tol)
        assert not C[:, :2].any() and not C[:, 9:].any()
        D = np.zeros((20, 11), dtype)
        run(True, True, A, B, D, 20, 11, 9, 20, 20, 11)  # A.T @ B[:, :9].T
        np.testing.assert_allclose(D, A.T @ B[:, :9].T, rtol=tol, atol=tol)


@pytest.mark.slow
def test_second_process_loads_the_fused_kernels_from_cache(tmp_path):
    """cache=True holds: the GEMM is bound by symbol name, not by a pointer baked into the code."""
    code = (
        "import numpy as np, nbnet\n"
        "from nbnet.kernels import cpu as K\n"
        "X = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32); y = np.arange(64) % 2\n"
        "nbnet.MLPClassifier((8,), epochs=1, batch_size=16).fit(X, y)\n"
        "print(sum(K.train_epoch_fused.stats.cache_misses.values()), sum(K.train_epoch_fused.stats.cache_hits.values()))\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "Cannot cache" not in first.stderr, first.stderr
    assert second.stdout.split() == ["0", "1"], second.stdout


@pytest.mark.parametrize("T", [1, 2, 3])
def test_fused_kernels_write_nothing_outside_their_arrays(T):
    """The GEMM writes through raw pointers: canaries around every caller array must survive."""
    lay, params, X, Y = _problem(23, (37, 19), 5, "relu", "cross_entropy", 61, np.float32, 8)
    pad = 64

    def padded(a):
        big = np.full(a.size + 2 * pad, 7.0, a.dtype)
        big[pad:-pad] = a.ravel()
        return big, big[pad:-pad].reshape(a.shape)

    (bp, p), (bg, g), (bm, m), (bv, v) = (padded(a) for a in (params, np.zeros_like(params), np.zeros_like(params),
                                                               np.zeros_like(params)))
    for batch in (1, 7, 16, 61):
        K.train_epoch_fused(X, Y, p, g, m, v, *lay.kernel_args(), K.LOSS_SOFTMAX_CE, _hp(), _opt(K.OPT_ADAM, batch),
                            K.seed_state(0), np.zeros(1 + lay.n_layers), np.empty(0), np.empty(0), np.int64(T), None)
    bo, out = padded(np.zeros((61, 5), np.float32))
    K.forward_fused(X, p, *lay.kernel_args(), 0, out)
    for big in (bp, bg, bm, bv, bo):
        assert (big[:pad] == 7.0).all() and (big[-pad:] == 7.0).all()



@pytest.mark.slow
def test_cold_start_compiles_forward_in_a_second_process(tmp_path):
    """On an empty numba cache the first fit compiles the epoch kernel itself while a child
    process compiles the forward kernel into the cache, which the fit then loads."""
    code = """
import numpy as np
from nbnet import MLPClassifier
from nbnet.kernels import cpu as K
est = MLPClassifier((8,), epochs=1, seed=0).fit(np.random.rand(50, 4).astype(np.float32), np.arange(50) % 3)
print(sum(K.train_epoch_fused.stats.cache_misses.values()), sum(K.forward_fused.stats.cache_misses.values()),
      sum(K.forward_fused.stats.cache_hits.values()))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    epoch_compiled, forward_compiled, forward_loaded = map(int, r.stdout.split())
    assert (epoch_compiled, forward_compiled, forward_loaded) == (1, 0, 1)
    env["NBNET_PARALLEL_COMPILE"] = "0"  # the switch: this process compiles both
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache2")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and tuple(map(int, r.stdout.split())) == (1, 1, 0), r.stderr[-2000:]
