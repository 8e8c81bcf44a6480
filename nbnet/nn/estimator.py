"""scikit-learn-style estimators: :class:`MLPClassifier` and :class:`MLPRegressor`.

``__init__`` stores hyperparameters; ``fit`` learns, and learned state ends in ``_``. The
training loop calls one compiled kernel per epoch and reports to callbacks; it knows nothing of
Optuna or MLflow.

Example
-------
>>> from sklearn.datasets import load_digits
>>> X, y = load_digits(return_X_y=True)
>>> clf = MLPClassifier((64,), epochs=5, seed=0).fit(X / 16, y)
>>> clf.score(X / 16, y) > 0.9
True
"""

from __future__ import annotations

import inspect
import sys
import time

import numpy as np

from nbnet.version import __version__
from nbnet import optim
from nbnet.errors import DivergedError, NbnetError
from nbnet.io import read_bundle, write_bundle
from nbnet.kernels import backend, cache_misses, compile_lock
from nbnet.kernels import cpu as K
from nbnet.kernels.threads import thread_budget
from nbnet.model import Layout, check_weights, init_params

_DTYPES = {"float32": np.float32, "float64": np.float64}


# --- input validation at the public boundary ---------------------------------------------------
def check_X(X, *, n_features: int | None = None, allow_nan: bool = False, name: str = "X") -> np.ndarray:
    """X as a 2-D float64 (or, left as it is, float32) array, or an NbnetError saying what is wrong.

    A float32 X is neither copied nor widened: fit trains on the caller's array (memory budget,
    issue 9)."""
    if hasattr(X, "toarray") and hasattr(X, "nnz"):  # scipy.sparse: np.asarray would make a 0-D object
        raise NbnetError(f"{name} is a sparse matrix; nbnet needs dense input: pass {name}.toarray()")
    try:
        arr = np.asarray(X)
    except Exception as e:  # ragged lists and such
        raise NbnetError(f"{name} could not be read as an array ({type(e).__name__}); pass a 2-D numeric array") from None
    if arr.dtype.kind == "O" and not any(isinstance(v, (str, bytes)) for v in arr.flat):
        try:  # numbers in an object array (a DataFrame with mixed column types)
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            pass
    if arr.dtype.kind not in "biuf":
        raise NbnetError(f"{name} must be numeric, got dtype {arr.dtype}; encode text columns first")
    if arr.ndim != 2:
        hint = "; reshape one sample with X.reshape(1, -1)" if arr.ndim == 1 else ""
        raise NbnetError(f"{name} must be 2-D (n_samples, n_features), got {arr.ndim}-D{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise NbnetError(f"{name} is empty (shape {arr.shape}); pass at least one sample and one feature")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64, copy=False)
    # one pass without a temporary the size of X; the element-wise look only when something is off
    if not np.isfinite(arr.sum(dtype=np.float64)):
        bad = ~np.isfinite(arr)
        if allow_nan:
            bad &= ~np.isnan(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            what = "inf" if allow_nan else "NaN or inf"
            fix = "" if allow_nan else "; clean the data or set preprocessing impute"
            raise NbnetError(f"{name} contains {what} (first at row {row}){fix}")
    if n_features is not None and arr.shape[1] != n_features:
        raise NbnetError(f"{name} has {arr.shape[1]} features but the model was fitted with {n_features}")
    return arr


def _check_y(y, n: int) -> np.ndarray:
    if y is None:
        raise NbnetError("y is None; pass the targets (one label or value per sample)")
    try:
        y = np.asarray(y)
    except Exception as e:
        raise NbnetError(f"y could not be read as an array ({type(e).__name__})") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2):
        raise NbnetError(f"y must be 1-D (n_samples,) or 2-D (n_samples, n_outputs), got {y.ndim}-D")
    if y.shape[0] != n:
        raise NbnetError(f"X has {n} samples but y has {y.shape[0]}; they must match")
    return y


def _is_number(v) -> bool:
    """A real, finite number (bools excluded)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) and bool(np.isfinite(v))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _nan_to_none(v):
    if isinstance(v, (list, tuple)):
        return [_nan_to_none(x) for x in v]
    return None if isinstance(v, float) and not np.isfinite(v) else v


def _none_to_nan(v):
    if isinstance(v, list):
        return [_none_to_nan(x) for x in v]
    return float("nan") if v is None else v


def json_value(v):
    if isinstance(v, tuple):
        return [json_value(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


class _BaseMLP:
    """Shared machinery of the classifier and the regressor. See the subclasses' docstrings."""

    _loss_name: str
    _score_name: str

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        optimizer="adam",
        learning_rate=1e-3,
        batch_size=32,
        epochs=20,
        l2=0.0,
        dropout=0.0,
        momentum=None,
        nesterov=False,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        clip_norm=None,
        early_stopping=False,
        validation_fraction=0.1,
        patience=10,
        min_delta=0.0,
        shuffle=True,
        noise_std=0.0,
        mixup_alpha=0.0,
        image_shape=None,
        preprocessing=None,
        seed=0,
        dtype="float32",
        device="cpu",
        n_threads=None,
        verbose=False,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes  # widths of the hidden layers, any depth
        self.activation = activation  # hidden activation: relu, leaky_relu, tanh, sigmoid, elu, softplus, identity
        self.optimizer = optimizer  # sgd, momentum, nesterov, adam, adamw
        self.learning_rate = learning_rate
        self.batch_size = batch_size  # None: full-batch gradient descent
        self.epochs = epochs
        self.l2 = l2  # L2 penalty 0.5*l2*||W||^2 on weights (not biases), added to the loss
        self.dropout = dropout  # inverted dropout probability on hidden layers
        self.momentum = momentum  # None: 0.9 for momentum/nesterov, 0 for sgd
        self.nesterov = nesterov
        self.betas = betas  # Adam/AdamW (beta1, beta2)
        self.eps = eps
        self.weight_decay = weight_decay  # torch semantics: coupled for sgd/adam, decoupled for adamw
        self.clip_norm = clip_norm  # global gradient-norm clipping; None: off
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction  # held out when early_stopping and no validation_data
        self.patience = patience  # epochs without min_delta improvement of val_loss before stopping
        self.min_delta = min_delta
        self.shuffle = shuffle
        self.noise_std = noise_std  # augmentation: Gaussian input noise, fresh every epoch
        self.mixup_alpha = mixup_alpha  # augmentation: mixup Beta(alpha, alpha); 0: off
        self.image_shape = image_shape  # (h, w): random ±1-pixel shifts of image inputs
        self.preprocessing = preprocessing  # dict spec for nbnet.data.prep.Preprocessor, fitted on train only
        self.seed = seed
        self.dtype = dtype  # float32 or float64
        self.device = device  # cpu, cuda or auto
        self.n_threads = n_threads  # None: NBNET_NUM_THREADS, NUMBA_NUM_THREADS or all cores
        self.verbose = verbose

    # --- scikit-learn protocol -------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(_BaseMLP.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise NbnetError(f"unknown parameter {key!r} for {type(self).__name__}; valid: {', '.join(sorted(valid))}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = inspect.signature(_BaseMLP.__init__).parameters
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults[k].default != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, RegressorTags, Tags, TargetTags

        clf = self._loss_name != "mse"
        return Tags(
            estimator_type="classifier" if clf else "regressor",
            target_tags=TargetTags(required=True),
            classifier_tags=ClassifierTags() if clf else None,
            regressor_tags=None if clf else RegressorTags(),
        )

    # --- hyperparameter checks -------------------------------------------------------------
    def _resolved(self) -> dict:
        """Validate hyperparameters once; return what the training loop needs."""
        hidden = self.hidden_layer_sizes
        if isinstance(hidden, (int, np.integer)):
            hidden = (int(hidden),)
        try:
            hidden = tuple(int(h) for h in hidden)
        except (TypeError, ValueError):
            raise NbnetError(f"hidden_layer_sizes must be a tuple of positive ints, got {self.hidden_layer_sizes!r}") from None
        if any(h < 1 for h in hidden):
            raise NbnetError(f"hidden_layer_sizes must be positive, got {hidden}")
        if not isinstance(self.activation, str) or self.activation not in K.ACTIVATIONS:
            raise NbnetError(f"unknown activation {self.activation!r}; choose one of {', '.join(K.ACTIVATIONS)}")
        if not isinstance(self.dtype, str) or self.dtype not in _DTYPES:
            raise NbnetError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not isinstance(self.optimizer, str):
            raise NbnetError(f"optimizer must be a name like 'adam', got {self.optimizer!r}")
        if self.momentum is not None and not _is_number(self.momentum):
            raise NbnetError(f"momentum must be a number in [0, 1) or None, got {self.momentum!r}")
        kind, nesterov, momentum = optim.resolve(self.optimizer, self.momentum, self.nesterov)

        def positive(name, v, allow_zero=False):
            ok = isinstance(v, (int, float, np.number)) and np.isfinite(v) and (v >= 0 if allow_zero else v > 0)
            if not ok:
                raise NbnetError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {v!r}")
            return float(v)

        positive("learning_rate", self.learning_rate)
        positive("eps", self.eps)
        for name in ("l2", "weight_decay", "min_delta", "noise_std", "mixup_alpha"):
            positive(name, getattr(self, name), allow_zero=True)
        if self.clip_norm is not None:
            positive("clip_norm", self.clip_norm)
        if not (_is_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise NbnetError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.epochs, (int, np.integer)) and self.epochs >= 1):
            raise NbnetError(f"epochs must be a positive int, got {self.epochs!r}")
        if self.batch_size is not None and not (isinstance(self.batch_size, (int, np.integer)) and self.batch_size >= 1):
            raise NbnetError(f"batch_size must be a positive int or None (full batch), got {self.batch_size!r}")
        betas = tuple(self.betas) if isinstance(self.betas, (tuple, list)) else ()
        if not (len(betas) == 2 and all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)):
            raise NbnetError(f"betas must be two numbers in [0, 1) like (0.9, 0.999), got {self.betas!r}")
        b1, b2 = betas
        if not (_is_number(self.validation_fraction) and 0.0 < self.validation_fraction < 1.0):
            raise NbnetError(f"validation_fraction must be a number in (0, 1), got {self.validation_fraction!r}")
        if not (_is_int(self.patience) and self.patience >= 1):
            raise NbnetError(f"patience must be a positive int (epochs without improvement), got {self.patience!r}")
        if not (_is_int(self.seed) and 0 <= self.seed < 2**63):
            raise NbnetError(f"seed must be a non-negative int, got {self.seed!r}")
        img = (0, 0)
        if self.image_shape is not None:
            try:
                img = tuple(int(s) for s in self.image_shape)
                assert len(img) == 2 and min(img) > 0
            except (TypeError, ValueError, AssertionError):
                raise NbnetError(f"image_shape must be (height, width), got {self.image_shape!r}") from None
        hp = optim.hyper_vector(
            lr=self.learning_rate, betas=(b1, b2), eps=self.eps, weight_decay=self.weight_decay, l2=self.l2,
            momentum=momentum, clip_norm=self.clip_norm, dropout=self.dropout, noise=self.noise_std,
            mixup=self.mixup_alpha,
        )
        return dict(hidden=hidden, kind=kind, nesterov=nesterov, hp=hp, img=img, dtype=_DTYPES[self.dtype])

    def _device(self) -> str:
        if self.device == "auto":
            from nbnet.kernels import cuda_available

            return "cuda" if cuda_available(simulator=False) else "cpu"  # never the slow simulator
        return self.device

    # --- targets (subclasses) --------------------------------------------------------------
    def _init_targets(self, y, classes=None) -> None:  # sets classes_/n_outputs_/loss
        raise NotImplementedError

    def _encode(self, y) -> np.ndarray:  # (n, n_outputs) float targets
        raise NotImplementedError

    # --- training ---------------------------------------------------------------------------
    def _prepare_X(self, X, *, fit: bool, y=None) -> np.ndarray:
        """Validate raw X and apply the fitted preprocessing; returns C-contiguous model dtype."""
        pre = getattr(self, "preprocessor_", None)
        if fit:
            pre = None
            if self.preprocessing:
                from nbnet.data.prep import Preprocessor

                pre = Preprocessor.from_spec(self.preprocessing)
            X = check_X(X, allow_nan=bool(pre is not None and pre.allows_nan))
            self.n_features_in_ = X.shape[1]
            if pre is not None:
                X = X.astype(np.float64, copy=False)
                X = pre.fit(X, y, task="regression" if self._loss_name == "mse" else "classification").transform(X)
            self.preprocessor_ = pre
        else:
            if not hasattr(self, "n_features_in_"):
                self._check_fitted()
            X = check_X(X, n_features=self.n_features_in_, allow_nan=bool(pre is not None and pre.allows_nan))
            if pre is not None:
                X = pre.transform(X.astype(np.float64, copy=False))
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(X, dtype=_DTYPES[self.dtype])
        if out.dtype != X.dtype and np.isinf(out).any():  # finite in float64, beyond float32's range
            row = int(np.argwhere(np.isinf(out))[0][0])
            raise NbnetError(f"X holds values beyond the {self.dtype} range (first at row {row}); scale the data "
                             "(preprocessing scale) or use dtype='float64'")
        return out

    def _init_state(self, n_features: int, cfg: dict) -> None:
        self.layout_ = Layout.build(n_features, cfg["hidden"], self.n_outputs_, self.activation)
        rng = np.random.default_rng(self.seed)
        self._params = init_params(self.layout_, self.activation, rng, cfg["dtype"])
        self._opt = optim.OptState.zeros(self.layout_.n_params, cfg["dtype"])
        self._rng = K.seed_state(self.seed)
        self.history_ = {"loss": [], "val_loss": [], f"val_{self._score_name}": [], "grad_norm": [], "epoch_time": []}
        self.n_epochs_ = 0
        self.compile_seconds_ = 0.0
        self.compile_wait_seconds_ = 0.0  # waiting for another process to compile (kernels.compile_lock)
        self.kernels_compiled_ = 0  # kernels compiled (not loaded from numba's cache) by this fit
        self._es_state = None  # early stopping ((best val_loss, params, epoch), wait); checkpointed

    def fit(self, X, y, validation_data=None, callbacks=None):
        """Train from scratch.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        y : array of shape (n_samples,) labels (classifier) or (n_samples,) / (n_samples, n_outputs)
        validation_data : (X_val, y_val), optional. Scored every epoch; used by early stopping.
            If None and ``early_stopping`` is on, ``validation_fraction`` of X is held out
            (stratified for classifiers).
        callbacks : list of ``callable(epoch, logs) -> bool | None`` or objects with
            ``on_epoch_end(epoch, logs)``; returning True stops training. ``logs`` holds
            ``loss``, ``val_loss``, ``val_accuracy``/``val_r2``, ``epoch_time``, ``grad_norm_{l}``;
            the callbacks share one copy, so one may add values for those after it
            (:class:`nbnet.viz.ActivationStats` adds ``act_mean_{l}``... before the logger).
        """
        cfg = self._resolved()
        X = check_X(X, allow_nan=True) if self.preprocessing else check_X(X)
        y = _check_y(y, X.shape[0])
        if validation_data is None and self.early_stopping:
            X, y, validation_data = self._holdout(X, y)
        self._init_targets(y)
        Xt = self._prepare_X(X, fit=True, y=y)
        val = None
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = self._prepare_X(Xv, fit=False)
            val = (Xv, self._encode(_check_y(yv, Xv.shape[0])))
        self._init_state(Xt.shape[1], cfg)
        callbacks = list(callbacks or [])
        try:
            for cb in callbacks:  # e.g. nbnet.nn.checkpoint.Checkpoint restores a killed fit's state here
                if hasattr(cb, "on_train_begin"):
                    cb.on_train_begin(self)
            remaining = self.epochs - self.n_epochs_
            if self.early_stopping and self._es_state is not None and self._es_state[1] >= self.patience:
                remaining = 0  # resumed after early stopping had already triggered
            self._train(Xt, self._encode(y), val, remaining, cfg, callbacks, restore_best=self.early_stopping)
        except BaseException as e:
            for cb in callbacks:  # e.g. a Checkpoint releases its lock (and keeps its file)
                if hasattr(cb, "on_exception"):
                    cb.on_exception(self, e)
            raise
        for cb in callbacks:
            if hasattr(cb, "on_train_end"):
                cb.on_train_end(self)
        return self

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), keeping the weights and optimizer state of earlier calls.
        Classifiers need ``classes`` on the first call unless ``y`` holds every class."""
        cfg = self._resolved()
        if not hasattr(self, "layout_"):
            X = check_X(X, allow_nan=True) if self.preprocessing else check_X(X)
            y = _check_y(y, X.shape[0])
            self._init_targets(y, classes)
            Xt = self._prepare_X(X, fit=True, y=y)
            self._init_state(Xt.shape[1], cfg)
        else:
            Xt = self._prepare_X(X, fit=False)
            y = _check_y(y, Xt.shape[0])
        self._train(Xt, self._encode(y), None, 1, cfg, None, restore_best=False)
        return self

    def fit_preprocessing(self, X, y):
        """Fit only this estimator's ``preprocessing`` on (X, y); return ``(preprocessor, Xt)``:
        the fitted :class:`nbnet.data.prep.Preprocessor` (None without preprocessing) and X
        transformed, in the model's dtype. With :meth:`use_preprocessor` this lets many fits on
        the same data (a sweep's trials) fit the preprocessing once: ``est.set_params(
        preprocessing=None).fit(Xt, y)`` then ``est.use_preprocessor(pre, spec)`` gives the same
        model as ``fit(X, y)`` with ``preprocessing=spec``."""
        X = check_X(X, allow_nan=True) if self.preprocessing else check_X(X)
        Xt = self._prepare_X(X, fit=True, y=_check_y(y, X.shape[0]))
        return self.preprocessor_, Xt

    def use_preprocessor(self, pre, spec) -> "_BaseMLP":
        """Put a fitted preprocessor (from :meth:`fit_preprocessing`) in front of a model that
        was trained on its output, so that ``predict`` takes raw X and ``save`` keeps it;
        ``spec`` becomes the ``preprocessing`` parameter again."""
        self._check_fitted()
        if pre is not None and pre.n_features_out_ != self.n_features_in_:
            raise NbnetError(f"the preprocessor gives {pre.n_features_out_} features and the model takes "
                             f"{self.n_features_in_}; it was not trained on this preprocessor's output")
        self.preprocessing = spec
        self.preprocessor_ = pre
        if pre is not None:
            self.n_features_in_ = pre.n_features_in_
        return self

    def _holdout(self, X, y):
        from nbnet.data.split import train_val_split

        stratify = self._loss_name != "mse"
        tr, va = train_val_split(len(y), self.validation_fraction, y if stratify else None, self.seed)
        return X[tr], y[tr], (X[va], y[va])

    def _ensure_compiled(self, K_, dtype) -> float:
        """Compile (or load from the on-disk cache) the kernels for ``dtype`` on a tiny problem,
        so the first epoch's time is training only. Returns the seconds it took (0 if warm)."""
        key = (K_.__name__, np.dtype(dtype).str)
        if key in _COMPILED:
            return 0.0
        with compile_lock() as lock:  # several processes starting at once: one compiles, the rest load
            misses = cache_misses(K_)
            t0 = time.perf_counter()
            self._warm_up(K_, dtype)
            seconds = time.perf_counter() - t0
            self.kernels_compiled_ += cache_misses(K_) - misses
        _COMPILED.add(key)
        self.compile_wait_seconds_ += lock.waited
        return seconds

    @staticmethod
    def _warm_up(K_, dtype) -> None:
        helper = _compile_forward_elsewhere(K_, dtype)
        _warm_epoch(K_, dtype)
        if helper is not None:
            helper.wait()  # it wrote forward's cache entries: the calls below load them
        _warm_forward(K_, dtype)

    def _train(self, X, Y, val, n_epochs, cfg, callbacks, restore_best):
        K_ = backend(self._device())
        loss = K.LOSSES[self.loss_]
        lay = self.layout_
        n = X.shape[0]
        bs = n if self.batch_size is None else int(self.batch_size)
        opt = np.array([cfg["kind"], cfg["nesterov"], bs, self._opt.step, *cfg["img"], bool(self.shuffle)], np.int64)
        if cfg["img"] != (0, 0) and cfg["img"][0] * cfg["img"][1] != X.shape[1]:
            raise NbnetError(
                f"image_shape {cfg['img']} needs {cfg['img'][0] * cfg['img'][1]} features, the model input has {X.shape[1]}"
            )
        callbacks = list(callbacks or [])
        stats = np.zeros(1 + lay.n_layers)
        best, wait = (self._es_state if restore_best and getattr(self, "_es_state", None) else ((np.inf, None, 0), 0))
        # best = (val_loss, params snapshot, epoch)
        score_key = f"val_{self._score_name}"
        with thread_budget(self.n_threads):
            self.compile_seconds_ += self._ensure_compiled(K_, cfg["dtype"])
            dev = K_.to_device
            Xd, Yd = dev(X), dev(Y)
            P, G = dev(self._params), dev(np.zeros_like(self._params))
            M, V = dev(self._opt.m), dev(self._opt.v)
            self._live = (K_, P, M, V)  # read by _sync_host (checkpoints during the fit)
            Xvd = Yvd = None
            if val is not None:
                Xvd, Yvd = dev(val[0]), dev(val[1])
            try:
                for _ in range(n_epochs):
                    t0 = time.perf_counter()
                    K_.train_epoch(Xd, Yd, P, G, M, V, *lay.kernel_args(), loss, cfg["hp"], opt, self._rng, stats)
                    epoch = self.n_epochs_ + 1
                    train_loss = float(stats[0])
                    if not np.isfinite(train_loss):
                        raise DivergedError(epoch, train_loss)
                    if self.l2 > 0:  # report the penalised objective, as scikit-learn does
                        host = K_.to_host(P)
                        train_loss += 0.5 * self.l2 * sum(float(np.sum(w.astype(np.float64) ** 2)) for w in lay.views(host)[::2])
                    logs = {"loss": train_loss}
                    grad_norms = [float(g) for g in stats[1:]]
                    for i, g in enumerate(grad_norms):
                        logs[f"grad_norm_{i}"] = g
                    if val is not None:
                        vl = float(K_.eval_loss(Xvd, Yvd, P, *lay.kernel_args(), loss))
                        logs["val_loss"] = vl
                        logs[score_key] = self._score_encoded(K_, Xvd, P, val[1])
                    logs["epoch_time"] = time.perf_counter() - t0
                    self.n_epochs_ = epoch
                    self._opt.step = int(opt[K.OPT_STEP])
                    h = self.history_
                    h["loss"].append(train_loss)
                    h["val_loss"].append(logs.get("val_loss", float("nan")))
                    h[score_key].append(logs.get(score_key, float("nan")))
                    h["grad_norm"].append(grad_norms)
                    h["epoch_time"].append(logs["epoch_time"])
                    if self.verbose:
                        self._print_epoch(epoch, logs)
                    stop = False
                    if val is not None and restore_best:
                        vl = logs["val_loss"]
                        if vl < best[0] - self.min_delta:
                            best, wait = (vl, K_.to_host(P).copy(), epoch), 0
                        else:
                            wait += 1
                            stop = wait >= self.patience
                        self._es_state = (best, wait)
                    shared = dict(logs)  # one copy for all: a callback may add values for the later ones
                    for cb in callbacks:
                        fn = getattr(cb, "on_epoch_end", None) or (cb if callable(cb) else None)
                        if fn is not None:  # an object may implement only on_train_begin/end
                            stop = bool(fn(epoch, shared)) or stop
                    if stop:
                        break
            finally:
                self._params[:] = K_.to_host(P)
                self._opt.m[:] = K_.to_host(M)
                self._opt.v[:] = K_.to_host(V)
                self._live = None
        if restore_best and best[1] is not None:
            self._params[:] = best[1]
            self.best_epoch_ = best[2]
        if n_epochs and not np.all(np.isfinite(self._params)):  # the last step overflowed the weights
            raise DivergedError(self.n_epochs_, float("nan"))

    def _sync_host(self) -> None:
        """Copy the live device buffers of a running fit into ``_params``/``_opt`` (no-op on the
        CPU, where they are the same arrays); checkpoints call this before saving."""
        live = getattr(self, "_live", None)
        if live is None:
            return
        K_, P, M, V = live
        for dst, src in ((self._params, P), (self._opt.m, M), (self._opt.v, V)):
            if src is not dst:
                dst[:] = K_.to_host(src)

    def _print_epoch(self, epoch: int, logs: dict) -> None:
        parts = [f"epoch {epoch:>3}/{self.epochs}", f"loss {logs['loss']:.4f}"]
        for key in ("val_loss", f"val_{self._score_name}"):
            if key in logs:
                parts.append(f"{key} {logs[key]:.4f}")
        parts.append(f"{logs['epoch_time']:.2f}s")
        print("  ".join(parts), file=sys.stderr, flush=True)

    # --- inference --------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "layout_"):
            raise NbnetError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def _forward(self, Xt: np.ndarray, transform: bool = True) -> np.ndarray:
        out = np.empty((Xt.shape[0], self.n_outputs_), dtype=Xt.dtype)
        loss = K.LOSSES[self.loss_] if transform else -1
        with thread_budget(self.n_threads):
            K.forward(Xt, self._params, *self.layout_.kernel_args(), loss, out)
        return out

    def _score_encoded(self, K_, Xd, P, Yv) -> float:
        out = np.empty((Yv.shape[0], self.n_outputs_), dtype=Yv.dtype)
        outd = K_.to_device(out)
        K_.forward(Xd, P, *self.layout_.kernel_args(), K.LOSSES[self.loss_], outd)
        return self._score_outputs(K_.to_host(outd), Yv)

    def activation_stats(self, X) -> np.ndarray:
        """(n_hidden_layers, 3) array of mean, std and fraction of zero (dead) activations."""
        Xt = self._prepare_X(X, fit=False)
        stats = np.zeros((self.layout_.n_layers - 1, 3))
        with thread_budget(self.n_threads):
            K.forward_stats(Xt, self._params, *self.layout_.kernel_args(), stats)
        return stats

    # --- weights ----------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """``[W1 (n_in, n_out), b1, W2, b2, ...]`` as copies."""
        self._check_fitted()
        return [w.copy() for w in self.layout_.views(self._params)]

    def set_weights(self, weights) -> "_BaseMLP":
        """Replace the weights (shapes are checked) and reset the optimizer state."""
        self._check_fitted()
        self._params = check_weights(self.layout_, weights, self._params.dtype)
        self._opt = optim.OptState.zeros(self.layout_.n_params, self._params.dtype)
        return self

    # --- persistence ------------------------------------------------------------------------
    def to_bundle(self) -> tuple[dict, dict[str, np.ndarray]]:
        self._check_fitted()
        meta = {
            "estimator": type(self).__name__,
            "nbnet_version": __version__,
            "params": {k: json_value(v) for k, v in self.get_params().items()},
            "n_features_in": int(self.n_features_in_),
            "n_outputs": int(self.n_outputs_),
            "loss": self.loss_,
            "hidden": [int(s) for s in self.layout_.sizes[1:-1]],
            "opt_step": int(self._opt.step),
            "n_epochs": int(self.n_epochs_),
            # NaN (no validation data) is not JSON: stored as null, read back as NaN
            "history": {k: _nan_to_none(v) for k, v in self.history_.items()},
        }
        arrays = {"params": self._params, "opt_m": self._opt.m, "opt_v": self._opt.v, "rng": self._rng}
        if getattr(self, "classes_", None) is not None:
            meta["classes"] = [json_value(c) for c in self.classes_]
        if getattr(self, "preprocessor_", None) is not None:
            pmeta, parrays = self.preprocessor_.to_state()
            meta["preprocessor"] = pmeta
            arrays.update({f"prep.{k}": v for k, v in parrays.items()})
        if getattr(self, "training_stats_", None) is not None:
            meta["training_stats"] = self.training_stats_
        if getattr(self, "config_", None) is not None:  # the resolved experiment config (nbnet.experiment.config.to_dict)
            meta["config"] = self.config_
        return meta, arrays

    def save(self, path) -> None:
        """Write the model (weights, optimizer state, preprocessing, config) atomically."""
        write_bundle(path, *self.to_bundle())



# --- compiling the kernels ----------------------------------------------------------------------
_WARM_LAYOUT = (2, (2,), 2, "relu")  # a tiny problem: the kernels' types, not their sizes, matter


def _warm_epoch(K_, dtype) -> None:
    lay = Layout.build(*_WARM_LAYOUT)
    X, Y, p = np.zeros((3, 2), dtype), np.zeros((3, 2), dtype), np.zeros(lay.n_params, dtype)
    hp = optim.hyper_vector(lr=0.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, l2=0, momentum=0,
                            clip_norm=None, dropout=0, noise=0, mixup=0)
    opt = np.array([K.OPT_ADAM, 0, 2, 0, 0, 0, 1], np.int64)
    dev = K_.to_device
    K_.train_epoch(dev(X), dev(Y), dev(p), dev(p.copy()), dev(p.copy()), dev(p.copy()), *lay.kernel_args(),
                   K.LOSS_SOFTMAX_CE, hp, opt, K.seed_state(0), np.zeros(1 + lay.n_layers))


def _warm_forward(K_, dtype) -> None:
    lay = Layout.build(*_WARM_LAYOUT)
    X, Y, p = np.zeros((3, 2), dtype), np.zeros((3, 2), dtype), np.zeros(lay.n_params, dtype)
    dev = K_.to_device
    K_.forward(dev(X), dev(p), *lay.kernel_args(), K.LOSS_SOFTMAX_CE, dev(np.zeros((3, 2), dtype)))
    K_.eval_loss(dev(X), dev(Y), dev(p), *lay.kernel_args(), K.LOSS_SOFTMAX_CE)


def _compile_forward_elsewhere(K_, dtype):
    """On a cold numba cache, compile the forward kernels in a child process while this one
    compiles the epoch kernels: the two longest compiles (~9 s and ~2 s) run on two cores, and
    the cold start is the longer one. The child writes numba's on-disk cache (writes serialized
    by ``kernels._serialize_cache_writes``), which this process then loads. Returns the child
    (``Popen``), or None where it would not help: a warm cache, one core, a backend other than
    the CPU, a numba whose cache this cannot see, ``NBNET_PARALLEL_COMPILE=0``."""
    import os
    import subprocess

    if K_ is not K or (os.cpu_count() or 1) < 2 or os.environ.get("NBNET_PARALLEL_COMPILE", "1") == "0":
        return None
    try:
        index = K.forward_fused._cache._cache_file._index_path
    except AttributeError:  # another numba, or caching off
        return None
    if os.path.exists(index):
        return None
    code = ("import sys; from nbnet.nn.estimator import _warm_forward; from nbnet.kernels import cpu; "
            "_warm_forward(cpu, sys.argv[1])")
    try:
        return subprocess.Popen([sys.executable, "-c", code, np.dtype(dtype).name],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None

_COMPILED: set = set()


def from_bundle(meta: dict, arrays: dict[str, np.ndarray]):
    """Rebuild an estimator from :func:`nbnet.io.read_bundle` output."""
    name = meta.get("estimator")
    cls = {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}.get(name if isinstance(name, str) else None)
    if cls is None:
        raise NbnetError(f"unknown estimator {name!r} in model file")
    _check_meta_types(meta, cls)
    params = dict(meta["params"])
    for key in ("hidden_layer_sizes", "betas", "image_shape"):
        if isinstance(params.get(key), list):
            params[key] = tuple(params[key])
    try:
        est = cls().set_params(**params)
        est._resolved()  # hyperparameters are validated as a constructor's would be on fit
        est.n_features_in_ = int(meta["n_features_in"])
        est.n_outputs_ = int(meta["n_outputs"])
        est.loss_ = meta["loss"]
        if "classes" in meta:
            est.classes_ = np.array(meta["classes"])
        n_inputs = est.n_features_in_
        if isinstance(meta.get("preprocessor"), dict):  # the network sees the preprocessed columns
            n_inputs = int(meta["preprocessor"]["n_features_out"])
        est.layout_ = Layout.build(n_inputs, tuple(meta["hidden"]), est.n_outputs_, est.activation)
        dtype = _DTYPES[est.dtype]
        if arrays["params"].shape != (est.layout_.n_params,) or arrays["params"].dtype != dtype:
            raise NbnetError("model file's parameter buffer does not match its layout; the file is damaged")
        if arrays["opt_m"].shape != arrays["params"].shape or arrays["opt_v"].shape != arrays["params"].shape \
                or arrays["rng"].shape != (1,):
            raise NbnetError("model file's optimizer or generator state does not match its layout; the file is damaged")
        est._params = arrays["params"].copy()
        est._opt = optim.OptState(int(meta["opt_step"]), arrays["opt_m"].copy(), arrays["opt_v"].copy())
        est._rng = arrays["rng"].astype(np.uint64).copy()
        est.n_epochs_ = int(meta["n_epochs"])
        est.history_ = {k: _none_to_nan(v) for k, v in meta["history"].items()}
        est.compile_seconds_ = est.compile_wait_seconds_ = 0.0
        est.kernels_compiled_ = 0
        est.preprocessor_ = None
        est.training_stats_ = meta.get("training_stats")
        est.config_ = meta.get("config")
        if meta.get("preprocessor") is not None:
            from nbnet.data.prep import Preprocessor

            parrays = {k[5:]: v for k, v in arrays.items() if k.startswith("prep.")}
            est.preprocessor_ = Preprocessor.from_state(meta["preprocessor"], parrays)
    except NbnetError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
        raise NbnetError(f"model file is missing or has a malformed field ({type(e).__name__}: {e}); it is damaged or foreign") from None
    return est


def _check_meta_types(meta: dict, cls) -> None:
    """meta.json is not covered by the array checksum: check each field's type before use, so a
    crafted or hand-edited file fails here with one line instead of deep inside predict."""
    def bad(field, want):
        raise NbnetError(f"model file field {field!r} must be {want}, got {str(meta.get(field))[:60]!r}; the file is damaged or foreign")

    def count(v, lo):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v < 2**31

    if not isinstance(meta.get("params"), dict):
        bad("params", "an object")
    for field, lo in (("n_features_in", 1), ("n_outputs", 1), ("opt_step", 0), ("n_epochs", 0)):
        if not count(meta.get(field), lo):
            bad(field, f"an integer >= {lo}")
    hidden = meta.get("hidden")
    if not (isinstance(hidden, list) and all(count(h, 1) for h in hidden)):
        bad("hidden", "a list of positive integers")
    if not (isinstance(meta.get("history"), dict) and all(isinstance(v, list) for v in meta["history"].values())):
        bad("history", "an object of lists")
    n_out, loss = meta["n_outputs"], meta.get("loss")
    if cls is MLPRegressor:
        if loss != "mse":
            bad("loss", "'mse' for a regressor")
        return
    if loss != ("binary_cross_entropy" if n_out == 1 else "cross_entropy"):
        bad("loss", f"the cross-entropy matching {n_out} outputs")
    classes = meta.get("classes")
    n_classes = 2 if n_out == 1 else n_out
    if not (isinstance(classes, list) and len(classes) == n_classes
            and all(isinstance(c, (str, int, float)) for c in classes)
            and len({type(c) for c in classes}) == 1):
        bad("classes", f"a list of {n_classes} labels of one type")


def load(path):
    """The estimator saved in the model file ``path`` (see :mod:`nbnet.io`)."""
    return from_bundle(*read_bundle(path))


class MLPClassifier(_BaseMLP):
    """Multi-layer perceptron classifier: softmax cross-entropy (sigmoid for two classes).

    Labels may be any ints or strings; ``classes_`` holds them sorted. ``score`` is accuracy.
    """

    _loss_name = "cross_entropy"
    _score_name = "accuracy"
    _estimator_type = "classifier"

    def _init_targets(self, y, classes=None) -> None:
        if y.ndim != 1:
            raise NbnetError("classifier targets must be 1-D labels")
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            raise NbnetError("y contains NaN or inf; drop those rows")
        if y.dtype.kind == "f" and np.any(y != np.round(y)):
            v = y[np.argmax(y != np.round(y))].item()
            raise NbnetError(f"y holds continuous values (e.g. {v!r}), not class labels; use MLPRegressor, or bin y into classes")
        classes = np.unique(y) if classes is None else np.unique(np.asarray(classes))
        if len(classes) < 2:
            raise NbnetError(f"y has only one class ({json_value(classes[0])!r}); a classifier needs at least two")
        self.classes_ = classes
        self.n_outputs_ = 1 if len(classes) == 2 else len(classes)
        self.loss_ = "binary_cross_entropy" if len(classes) == 2 else "cross_entropy"

    def _encode(self, y) -> np.ndarray:
        y = np.asarray(y)
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        unknown = self.classes_[idx] != y
        if np.any(unknown):
            raise NbnetError(f"y holds label {json_value(y[np.argmax(unknown)])!r} not seen in training; known: {self.classes_[:10].tolist()}")
        dt = _DTYPES[self.dtype]
        if self.n_outputs_ == 1:
            return idx.astype(dt).reshape(-1, 1)
        Y = np.zeros((len(y), self.n_outputs_), dt)
        Y[np.arange(len(y)), idx] = 1
        return Y

    def _score_outputs(self, P: np.ndarray, Y: np.ndarray) -> float:
        if P.shape[1] == 1:
            return float(np.mean((P[:, 0] >= 0.5) == (Y[:, 0] >= 0.5)))
        return float(np.mean(P.argmax(1) == Y.argmax(1)))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        P = self._forward(self._prepare_X(X, fit=False)).astype(np.float64)
        if P.shape[1] == 1:
            P = np.hstack([1.0 - P, P])
        return P

    def predict(self, X) -> np.ndarray:
        P = self.predict_proba(X)  # first: it says "not fitted" before classes_ is looked up
        return self.classes_[P.argmax(1)]

    def score(self, X, y) -> float:
        y = _check_y(y, len(X))
        return float(np.mean(self.predict(X) == y))


class MLPRegressor(_BaseMLP):
    """Multi-layer perceptron regressor: identity output, mean squared error. ``score`` is R²."""

    _loss_name = "mse"
    _score_name = "r2"
    _estimator_type = "regressor"

    def _init_targets(self, y, classes=None) -> None:
        if y.dtype.kind not in "biuf":
            raise NbnetError(f"regression targets must be numeric, got dtype {y.dtype}")
        if not np.all(np.isfinite(y)):
            raise NbnetError("y contains NaN or inf; drop those rows")
        self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        self.loss_ = "mse"
        self.classes_ = None

    def _encode(self, y) -> np.ndarray:
        y = np.asarray(y)
        if y.dtype.kind not in "biuf" or not np.all(np.isfinite(y)):
            raise NbnetError("regression targets must be finite numbers")
        return np.ascontiguousarray(y.reshape(len(y), -1), dtype=_DTYPES[self.dtype])

    def _score_outputs(self, P: np.ndarray, Y: np.ndarray) -> float:
        return _r2(Y.astype(np.float64), P.astype(np.float64))

    def predict(self, X) -> np.ndarray:
        P = self._forward(self._prepare_X(X, fit=False)).astype(np.float64)
        return P[:, 0] if self.n_outputs_ == 1 else P

    def score(self, X, y) -> float:
        y = _check_y(y, len(X))
        return _r2(np.asarray(y, np.float64).reshape(len(y), -1), self.predict(X).reshape(len(y), -1))


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    """R² averaged uniformly over outputs (scikit-learn's default)."""
    ss_res = ((y - p) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())
