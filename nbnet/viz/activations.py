"""Per-epoch activation statistics of the hidden layers.

:class:`ActivationStats` is a training callback: every epoch it pushes a fixed sample of the
validation data (128 rows by default) through the network and adds, per hidden layer ``l``,
``act_mean_{l}``, ``act_std_{l}`` and ``act_dead_{l}`` (the fraction of units that are zero on
*every* row of the sample: dead ReLUs) to the epoch's ``logs`` (and to ``history_``).
"""

from __future__ import annotations

import math
import time

import numpy as np

from nbnet.kernels import cpu
from nbnet.kernels.tables import ACT_RELU, ACT_SIGMOID, ACT_SOFTPLUS

from .series import ACT_STATS

MAX_SAMPLE_ROWS = 128  # 128 rows cost 3-4% of the training time, 256 rows 4.5-6% (docs/benchmarks.md)


def hidden_activation_stats(layout, params: np.ndarray, Xt: np.ndarray, bufs=None) -> np.ndarray:
    """(n_hidden_layers, 3) float64 array: per hidden layer, the mean and standard deviation of
    its activations over ``Xt`` (n, n_inputs; preprocessed, in the dtype of ``params``) and the
    fraction of its units that are exactly zero on every row (dead ReLUs; with tanh or sigmoid
    units this is ~0). ``estimator.activation_stats`` counts zero *values* instead.

    ``layout`` is the network's :class:`nbnet.model.Layout`, ``params`` its flat (host) buffer.
    Each layer is the one-layer network ``act(A @ W + b)`` run through the inference kernel
    (``kernels.cpu.forward``: the GEMM and activation code of prediction), so nothing new is
    compiled. ``bufs`` are optional preallocated (n, width) outputs, one per hidden layer."""
    lay = layout
    non_negative = (ACT_RELU, ACT_SIGMOID, ACT_SOFTPLUS)  # outputs >= 0
    n_hidden = lay.n_layers - 1
    out = np.zeros((n_hidden, 3))
    inp = Xt
    for l in range(n_hidden):
        width = int(lay.sizes[l + 1])
        A = bufs[l] if bufs is not None else np.empty((Xt.shape[0], width), params.dtype)
        cpu.forward(inp, params, lay.w_off[l:l + 1], lay.b_off[l:l + 1], lay.sizes[l:l + 2], lay.acts[l:l + 1], -1, A)
        flat = A.reshape(-1)
        colsum = A.sum(axis=0)  # (width,): one pass gives the mean and, for outputs >= 0, the dead units
        mean = float(colsum.sum(dtype=np.float64)) / flat.size
        ss = float(np.dot(flat, flat)) / flat.size  # one BLAS pass, no (A - mean) temporary
        out[l, 0] = mean
        out[l, 1] = math.sqrt(max(ss - mean * mean, 0.0))
        # units zero on every row: a column of non-negative outputs sums to 0 only then
        dead = colsum == 0 if int(lay.acts[l]) in non_negative else ~A.any(axis=0)
        out[l, 2] = np.count_nonzero(dead) / width
        inp = A
    return out


class ActivationStats:
    """Training callback: per-epoch activation statistics of every hidden layer on a fixed sample.

    ``X`` is raw validation data (as passed to ``fit``: the fitted preprocessing is applied once,
    at ``on_train_begin``); at most ``max_rows`` rows are kept, drawn once with ``seed``. Every
    ``every`` epochs (epochs 1, 1 + every, ...) the callback adds ``act_mean_{l}``,
    ``act_std_{l}`` and ``act_dead_{l}`` to ``logs``, so a :class:`nbnet.experiment.tracking.MetricLogger`
    placed *after* it in the callback list logs them, and appends the per-layer lists to
    ``estimator.history_["act_mean"]`` etc. (NaN for skipped epochs). It only reads the weights.

    After ``on_train_begin``, ``sample`` holds the rows the statistics are computed on, as the
    network sees them (preprocessed, model dtype), shape (min(n, max_rows), n_inputs).

    Example
    -------
    >>> from sklearn.datasets import load_iris
    >>> from nbnet import MLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = MLPClassifier((8,), epochs=3).fit(X, y, callbacks=[ActivationStats(X)])
    >>> len(clf.history_["act_dead"]), len(clf.history_["act_dead"][0])
    (3, 1)
    """

    def __init__(self, X, *, every: int = 1, max_rows: int = MAX_SAMPLE_ROWS, seed: int = 0):
        self.X = X
        self.every = max(1, int(every))
        self.max_rows = max(1, int(max_rows))
        self.seed = seed
        self.seconds = 0.0  # wall time spent computing the statistics (cost accounting)
        self._est = None

    def on_train_begin(self, estimator) -> None:
        t0 = time.perf_counter()
        X = self.X
        n = len(X)
        if n > self.max_rows:
            rows = np.sort(np.random.default_rng(self.seed).choice(n, self.max_rows, replace=False))
            X = X.iloc[rows] if hasattr(X, "iloc") else np.asarray(X)[rows]
        self._est = estimator
        self.sample = estimator.network_input(X)  # the fitted preprocessing, model dtype
        lay = estimator.layout_
        self._bufs = [np.empty((self.sample.shape[0], int(w)), self.sample.dtype) for w in lay.sizes[1:-1]]
        self.seconds += time.perf_counter() - t0

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        est = self._est
        if est is None or len(est.layout_.sizes) < 3:  # not started, or no hidden layer
            return
        t0 = time.perf_counter()
        n_hidden = len(est.layout_.sizes) - 2
        h = est.history_
        first = h.get(ACT_STATS[0])
        if first is None or len(first) != epoch - 1:  # first epoch, or resumed from an older checkpoint: align
            for key in ACT_STATS:
                seq = h.setdefault(key, [])
                seq.extend([[float("nan")] * n_hidden for _ in range(epoch - 1 - len(seq))])
                del seq[epoch - 1:]
        if (epoch - 1) % self.every:
            for key in ACT_STATS:
                h[key].append([float("nan")] * n_hidden)
        else:
            # params_ is current during a fit (the CUDA backend trains on device copies); a writable
            # copy keeps the kernel's compiled signature (numba types read-only arrays apart)
            stats = hidden_activation_stats(est.layout_, np.array(est.params_), self.sample, self._bufs)
            for j, key in enumerate(ACT_STATS):
                values = [float(v) for v in stats[:, j]]
                h[key].append(values)
                for l, v in enumerate(values):
                    logs[f"{key}_{l}"] = v
        self.seconds += time.perf_counter() - t0


