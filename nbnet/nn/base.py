"""The machinery :class:`~nbnet.nn.estimator.MLPClassifier` and :class:`~nbnet.nn.estimator.MLPRegressor`
share: hyperparameters (``__init__`` stores, ``fit`` learns), fitting through
:class:`nbnet.nn.trainer.Trainer`, the public training state, inference and the model-file bundle.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import numpy as np

from nbnet import errors, kernels, optim
from nbnet.data.prep import Preprocessor
from nbnet.data.split import train_val_split
from nbnet.errors import DivergedError, NbnetError
from nbnet.io import write_bundle
from nbnet.kernels import cpu, cuda_available
from nbnet.kernels.compile import ensure_compiled
from nbnet.kernels.rng import seed_state
from nbnet.kernels.tables import LOSSES
from nbnet.kernels.threads import thread_budget
from nbnet.model import Layout, check_weights, init_params
from nbnet.nn import weights
from nbnet.nn.callbacks import CallbackList, ConsolePrinter, EarlyStopping, EarlyStoppingState, with_fit_hooks
from nbnet.nn.schedules import Schedule
from nbnet.nn.trainer import EpochPlan, Trainer, TrainingState, Validation
from nbnet.nn.validation import (DTYPES, Hyperparameters, check_X, check_y, feature_names, is_int, match_columns,
                                 resolve_hyperparameters)
from nbnet.io import json_value, nan_to_none
from nbnet.version import __version__


class _LiveFit(NamedTuple):
    """A running fit's trainer (its device buffers) and early stopping, for reads during it."""

    trainer: Trainer
    early_stopping: EarlyStopping | None


class BaseMLP:
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
        schedule="constant", warmup_epochs=0, lr_step_size=10, lr_gamma=0.1, lr_min=0.0, lr_patience=10,
        class_weight=None, warm_start=False,
        shuffle=True,
        noise_std=0.0, mixup_alpha=0.0, image_shape=None,
        preprocessing=None,
        seed=0, dtype="float32", device="cpu", n_threads=None, verbose=False,
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
        self.schedule, self.warmup_epochs, self.lr_step_size = schedule, warmup_epochs, lr_step_size  # nn.schedules
        self.lr_gamma, self.lr_min, self.lr_patience = lr_gamma, lr_min, lr_patience  # (the schedule's options)
        self.class_weight = class_weight  # None, "balanced" or {label: weight}; times sample_weight (nn.weights)
        self.warm_start = warm_start  # fit continues from the fitted weights and optimizer state
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
        sig = inspect.signature(BaseMLP.__init__)
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
        defaults = inspect.signature(BaseMLP.__init__).parameters
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults[k].default != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, RegressorTags, Tags, TargetTags  # heavy: only scikit-learn asks

        clf = self._loss_name != "mse"
        return Tags(
            estimator_type="classifier" if clf else "regressor",
            target_tags=TargetTags(required=True, multi_output=not clf),  # the regressor fits (n, n_outputs) y
            classifier_tags=ClassifierTags() if clf else None,
            regressor_tags=None if clf else RegressorTags(),
        )

    # --- hyperparameter checks -------------------------------------------------------------
    def _resolved(self) -> Hyperparameters:
        """Validate hyperparameters once; return what training needs."""
        params = self.get_params()
        hyper = resolve_hyperparameters(params)
        Schedule.from_params(params)
        weights.check_class_weight(self.class_weight)
        if self.class_weight is not None and self._loss_name == "mse":
            raise NbnetError("class_weight is for classifiers; weigh a regressor's rows with fit(..., sample_weight=...)")
        return hyper

    def resolved_device(self) -> str:
        """The backend a fit runs on: ``device``, with ``auto`` resolved (a GPU if one is usable)."""
        if self.device == "auto":
            return "cuda" if cuda_available(simulator=False) else "cpu"  # never the slow simulator
        return self.device

    # --- targets (subclasses) --------------------------------------------------------------
    def _init_targets(self, y, classes=None) -> None:  # sets classes_/n_outputs_/loss
        raise NotImplementedError

    def _encode(self, y) -> np.ndarray:  # (n, n_outputs) float targets
        raise NotImplementedError

    # --- training ---------------------------------------------------------------------------
    def _prepare_X(self, X, *, fit: bool, y=None, by_name: bool = True) -> np.ndarray:
        """Validate raw X and apply the fitted preprocessing; returns C-contiguous model dtype.
        ``by_name``: match a data frame's columns to ``feature_names_in_`` (not for rows of the
        training X itself)."""
        if fit:
            X = self._fit_preprocessor(X, y)
        else:
            if not hasattr(self, "n_features_in_"):
                self._check_fitted()
            pre = getattr(self, "preprocessor_", None)
            if by_name:
                X = match_columns(X, getattr(self, "feature_names_in_", None), type(self).__name__)
            X = check_X(X, n_features=self.n_features_in_, allow_nan=bool(pre is not None and pre.allows_nan),
                        owner=type(self).__name__)
            if pre is not None:
                X = pre.transform(X.astype(np.float64, copy=False))
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(X, dtype=DTYPES[self.dtype])
        if out.dtype != X.dtype and np.isinf(out).any():  # finite in float64, beyond float32's range
            row = int(np.argwhere(np.isinf(out))[0][0])
            raise NbnetError(f"X holds values beyond the {self.dtype} range (first at row {row}); scale the data "
                             "(preprocessing scale) or use dtype='float64'")
        return out

    def _check_fit_X(self, X) -> np.ndarray:
        """The training X checked, and its column names learned: ``feature_names_in_`` when X is a
        data frame with string column names (as scikit-learn's estimators do), none otherwise."""
        names = feature_names(X)
        X = check_X(X, allow_nan=True) if self.preprocessing else check_X(X)
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return X

    def _check_fit_y(self, y, n: int) -> np.ndarray:
        """The training targets checked; a classifier warns (as scikit-learn's do) on a column y."""
        return check_y(y, n, owner=type(self).__name__, warn_column=self._loss_name != "mse")

    def _fit_preprocessor(self, X, y) -> np.ndarray:
        """Check X, fit ``preprocessing`` (if any) on it and return X transformed."""
        pre = Preprocessor.from_spec(self.preprocessing) if self.preprocessing else None
        X = check_X(X, allow_nan=bool(pre is not None and pre.allows_nan))
        self.n_features_in_ = X.shape[1]
        if pre is not None:
            X = X.astype(np.float64, copy=False)
            X = pre.fit(X, y, task="regression" if self._loss_name == "mse" else "classification").transform(X)
        self.preprocessor_ = pre
        return X

    def _init_state(self, n_features: int, hyper: Hyperparameters) -> None:
        self.layout_ = Layout.build(n_features, hyper.hidden, self.n_outputs_, self.activation)
        rng = np.random.default_rng(self.seed)
        self._params = init_params(self.layout_, self.activation, rng, hyper.dtype)
        self._optimizer_state = optim.OptState.zeros(self.layout_.n_params, hyper.dtype)
        self._rng = seed_state(self.seed)
        self.history_ = {"loss": [], "val_loss": [], f"val_{self._score_name}": [], "grad_norm": [], "lr": [],
                         "epoch_time": []}
        self.n_epochs_ = 0
        self.schedule_start_ = 0  # the epoch count where the learning-rate schedule started (nn.schedules)
        self.class_weight_ = None  # (n_classes,) weight of each class, or None
        self.compile_seconds_ = 0.0
        self.compile_wait_seconds_ = 0.0  # waiting for another process to compile (kernels.compile.compile_lock)
        self.kernels_compiled_ = 0  # kernels compiled (not loaded from numba's cache) by this fit
        self._es_state: EarlyStoppingState | None = None  # early stopping, between fits; checkpointed
        self._live: _LiveFit | None = None

    def fit(self, X, y, validation_data=None, callbacks=None, sample_weight=None):
        """Train from scratch (or, with ``warm_start=True`` and a fitted model, ``epochs`` more
        epochs from the current weights and optimizer state, as scikit-learn's warm start).

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        y : array of shape (n_samples,) labels (classifier) or (n_samples,) / (n_samples, n_outputs)
        validation_data : (X_val, y_val), optional. Scored every epoch; used by early stopping.
            If None and ``early_stopping`` is on, ``validation_fraction`` of X is held out
            (stratified for classifiers).
        callbacks : list of ``callable(epoch, logs) -> bool | None`` or objects with
            ``on_epoch_end(epoch, logs)`` (and optionally ``on_train_begin``, ``on_train_end``,
            ``on_exception``; see :mod:`nbnet.nn.callbacks`); returning True stops training.
            ``logs`` holds ``loss``, ``val_loss``, ``val_accuracy``/``val_r2``, ``lr``,
            ``epoch_time``, ``grad_norm_{l}``; the callbacks share one copy, so one may add
            values for those after it (:class:`nbnet.viz.ActivationStats` adds ``act_mean_{l}``...
            before the logger).
        sample_weight : array of shape (n_samples,), optional. Each batch's loss is the weighted
            mean ``sum w_i l_i / sum w_i`` (times ``class_weight``); see :mod:`nbnet.nn.weights`.
        """
        hyper = self._resolved()
        callbacks = with_fit_hooks(self, "fit", X, y, callbacks)  # e.g. nbnet.mlflow.autolog's tracker
        X = self._check_fit_X(X)
        y = self._check_fit_y(y, X.shape[0])
        sw = weights.check_sample_weight(sample_weight, X.shape[0])
        held_out = validation_data is None and self.early_stopping
        if held_out:
            X, y, sw, validation_data = self._holdout(X, y, sw)
        warm = bool(self.warm_start) and hasattr(self, "layout_")
        if warm:
            self._check_warm_start(hyper)
        else:
            self._init_targets(y)
        Xt = self._prepare_X(X, fit=not warm, y=y)
        val = None
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = self._prepare_X(Xv, fit=False, by_name=not held_out)  # rows of X: its columns already
            val = (Xv, self._encode(check_y(yv, Xv.shape[0])))
        if not warm:
            self._init_state(Xt.shape[1], hyper)
        self._es_state, self.schedule_start_ = None, self.n_epochs_  # each fit starts the schedule afresh
        self._train_with(callbacks, Xt, self._encode(y), val, hyper, restore_best=self.early_stopping,
                         n_epochs=self.epochs if warm else None, sw=self._row_weights(y, sw))
        return self

    def partial_fit(self, X, y, classes=None, *, epochs: int = 1, callbacks=None, sample_weight=None):
        """``epochs`` more epochs (default one) over (X, y), keeping the weights, optimizer and
        generator state of earlier calls (and the learning-rate schedule's clock): ``k`` calls of
        one epoch and one call of ``k`` epochs give the same weights. Classifiers need ``classes``
        on the first call unless ``y`` holds every class. ``callbacks`` as for :meth:`fit` (no
        validation data: no ``val_*`` logs); ``sample_weight`` as for :meth:`fit`
        (``class_weight="balanced"`` counts the classes of this call's rows)."""
        hyper = self._resolved()
        if not (is_int(epochs) and epochs >= 1):
            raise NbnetError(f"epochs must be a positive int, got {epochs!r}")
        callbacks = with_fit_hooks(self, "partial_fit", X, y, callbacks)
        if not hasattr(self, "layout_"):
            X = self._check_fit_X(X)
            y = self._check_fit_y(y, X.shape[0])
            self._init_targets(y, classes)
            Xt = self._prepare_X(X, fit=True, y=y)
            self._init_state(Xt.shape[1], hyper)
        else:
            Xt = self._prepare_X(X, fit=False)
            y = self._check_fit_y(y, Xt.shape[0])
        sw = self._row_weights(y, weights.check_sample_weight(sample_weight, Xt.shape[0]))
        self._train_with(callbacks, Xt, self._encode(y), None, hyper, n_epochs=int(epochs), sw=sw)
        return self

    def _check_warm_start(self, hyper: Hyperparameters) -> None:
        """A warm start continues the fitted network: its shape and dtype must not have changed."""
        lay = Layout.build(self.layout_.sizes[0], hyper.hidden, self.n_outputs_, self.activation)
        if not np.array_equal(lay.sizes, self.layout_.sizes) or not np.array_equal(lay.acts, self.layout_.acts) \
                or self._params.dtype != hyper.dtype:
            raise NbnetError("warm_start continues the fitted network, but hidden_layer_sizes, activation or dtype "
                             "changed; set warm_start=False to train a new one")

    def _row_weights(self, y, sw: np.ndarray | None) -> np.ndarray | None:
        """The kernel's per-row weights for labels ``y``: ``sw`` times ``class_weight``; sets
        ``class_weight_`` (the weight of each of ``classes_``, or None)."""
        classes = getattr(self, "classes_", None)
        if classes is None or self.class_weight is None:
            self.class_weight_ = None
            return sw
        idx = np.searchsorted(classes, np.asarray(y)).clip(0, len(classes) - 1)
        self.class_weight_ = weights.class_weights(self.class_weight, classes, idx)
        return weights.row_weights(sw, self.class_weight_, idx)

    def _train_with(self, callbacks, X, Y, val, hyper, *, n_epochs=None, restore_best=False, sw=None) -> None:
        """Train under the callback protocol (:mod:`nbnet.nn.callbacks`): ``n_epochs`` epochs or,
        with None, those that remain of ``epochs`` after ``on_train_begin`` (a checkpoint may have
        restored a killed fit's state there)."""
        callbacks = CallbackList(callbacks)
        try:
            callbacks.train_begin(self)  # e.g. nbnet.nn.checkpoint.Checkpoint restores a killed fit's state here
            if n_epochs is None:
                n_epochs = self.epochs - self.n_epochs_
                if self.early_stopping and self._es_state is not None and self._es_state.wait >= self.patience:
                    n_epochs = 0  # resumed after early stopping had already triggered
            self._train(X, Y, val, n_epochs, hyper, callbacks, restore_best=restore_best, sw=sw)
        except BaseException as e:
            callbacks.exception(self, e)
            raise
        callbacks.train_end(self)

    def fit_preprocessing(self, X, y):
        """Fit only this estimator's ``preprocessing`` on (X, y); return ``(preprocessor, Xt)``:
        the fitted :class:`nbnet.data.prep.Preprocessor` (None without preprocessing) and X
        transformed, in the model's dtype. With :meth:`use_preprocessor` this lets many fits on
        the same data (a sweep's trials) fit the preprocessing once: ``est.set_params(
        preprocessing=None).fit(Xt, y)`` then ``est.use_preprocessor(pre, spec)`` gives the same
        model as ``fit(X, y)`` with ``preprocessing=spec``."""
        X = self._check_fit_X(X)
        Xt = self._prepare_X(X, fit=True, y=self._check_fit_y(y, X.shape[0]))
        return self.preprocessor_, Xt

    def use_preprocessor(self, pre, spec) -> "BaseMLP":
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
            if hasattr(self, "feature_names_in_"):  # they named the preprocessor's outputs, not its inputs
                del self.feature_names_in_
        return self

    def _holdout(self, X, y, sw=None):
        stratify = self._loss_name != "mse"
        tr, va = train_val_split(len(y), self.validation_fraction, y if stratify else None, self.seed)
        return X[tr], y[tr], None if sw is None else sw[tr], (X[va], y[va])

    def _train(self, X, Y, val, n_epochs: int, hyper: Hyperparameters, callbacks: CallbackList,
               restore_best: bool, sw=None) -> None:
        """``n_epochs`` epochs on the chosen backend; X (n, n_features) and Y (n, n_outputs)
        prepared and encoded, ``val`` a prepared and encoded (X_val, Y_val) or None, ``sw`` the
        float64 (n,) row weights or None."""
        backend = kernels.backend(self.resolved_device())
        plan = self._plan(hyper, X.shape)
        validation = None if val is None else Validation(*val, self._score_outputs, self.val_score_key)
        with thread_budget(self.n_threads):
            self._note_compile(backend, hyper.dtype)
            trainer = Trainer(backend, plan, self._params, self._optimizer_state, self._rng)
            stopper = None
            if restore_best and val is not None:
                stopper = EarlyStopping(self.patience, self.min_delta, trainer.host_params, self._es_state)
            self._live = _LiveFit(trainer, stopper)
            try:
                trainer.run(X, Y, n_epochs, first_epoch=self.n_epochs_ + 1, val=validation,
                            callbacks=self._epoch_callbacks(stopper, callbacks), sample_weight=sw,
                            plateau=plan.schedule.plateau(self.history_, plan.schedule_start))
            finally:
                self._live = None
                if stopper is not None:
                    self._es_state = stopper.state
        if stopper is not None and stopper.state.best_params is not None:
            self._params[:] = stopper.state.best_params
            self.best_epoch_ = stopper.state.best_epoch
        if n_epochs and not np.all(np.isfinite(self._params)):  # the last step overflowed the weights
            raise DivergedError(self.n_epochs_, float("nan"))

    def _epoch_callbacks(self, stopper: EarlyStopping | None, callbacks: CallbackList) -> CallbackList:
        """The estimator's own watchers (history, the console line, early stopping), then the caller's."""
        own = [self._record_epoch]
        if self.verbose:
            own.append(ConsolePrinter(self.epochs, self.val_score_key))
        if stopper is not None:
            own.append(stopper)
        return CallbackList(own + callbacks.callbacks)

    @property
    def val_score_key(self) -> str:
        """The name of the validation score in the logs and ``history_``: ``val_accuracy`` or ``val_r2``."""
        return f"val_{self._score_name}"

    def _plan(self, hyper: Hyperparameters, shape: tuple[int, int]) -> EpochPlan:
        """The epoch kernel's settings for training data of ``shape`` (n, n_features)."""
        img = hyper.image_shape
        if img != (0, 0) and img[0] * img[1] != shape[1]:
            raise NbnetError(f"image_shape {img} needs {img[0] * img[1]} features, the model input has {shape[1]}")
        return EpochPlan(layout=self.layout_, loss=LOSSES[self.loss_], hp=hyper.hp, optimizer=hyper.optimizer,
                         nesterov=hyper.nesterov, image_shape=img, shuffle=bool(self.shuffle), l2=float(self.l2),
                         batch_size=shape[0] if self.batch_size is None else int(self.batch_size),
                         schedule=Schedule.from_params(self.get_params()),
                         schedule_start=getattr(self, "schedule_start_", 0))

    def _note_compile(self, backend, dtype) -> None:
        """Make the backend's kernels ready for ``dtype`` and add what it cost to this fit's counts."""
        cost = ensure_compiled(backend, dtype)
        self.compile_seconds_ += cost.seconds
        self.compile_wait_seconds_ += cost.waited
        self.kernels_compiled_ += cost.compiled

    def _record_epoch(self, epoch: int, logs: dict) -> None:
        """The first callback of every epoch: the epoch count and ``history_``."""
        self.n_epochs_ = epoch
        h = self.history_
        h["loss"].append(logs["loss"])
        h["val_loss"].append(logs.get("val_loss", float("nan")))
        h[self.val_score_key].append(logs.get(self.val_score_key, float("nan")))
        h["grad_norm"].append([logs[f"grad_norm_{i}"] for i in range(self.layout_.n_layers)])
        h.setdefault("lr", [float("nan")] * (len(h["loss"]) - 1)).append(logs.get("lr", float(self.learning_rate)))
        h["epoch_time"].append(logs["epoch_time"])

    # --- the training state --------------------------------------------------------------------
    def _sync_live(self) -> None:
        """During a fit, bring the device's weights and moments to the host arrays."""
        if getattr(self, "_live", None) is not None:
            self._live.trainer.sync()

    def training_state(self) -> TrainingState:
        """A copy of everything training continues from (:class:`nbnet.nn.trainer.TrainingState`):
        the flat weights, the optimizer's step count and moments (:class:`nbnet.optim.OptState`),
        the generator state, early stopping's state and the epoch count. Current during a fit
        too (a callback may call it)."""
        self._check_fitted()
        self._sync_live()
        live = getattr(self, "_live", None)
        es = live.early_stopping.state if live is not None and live.early_stopping is not None else self._es_state
        moments = self._optimizer_state
        return TrainingState(self._params.copy(), optim.OptState(int(moments.step), moments.m.copy(), moments.v.copy()),
                             self._rng.copy(), es, int(self.n_epochs_))

    def set_training_state(self, state: TrainingState) -> "BaseMLP":
        """Replace the training state by ``state`` (from :meth:`training_state` of an estimator
        with the same layout and dtype; the shapes are checked). Not during a fit."""
        self._check_fitted()
        if getattr(self, "_live", None) is not None:
            raise NbnetError("the training state cannot be replaced during a fit; do it before fit or after")
        n, dtype = self.layout_.n_params, np.dtype(DTYPES[self.dtype])
        arrays = {"params": state.params, "optimizer.m": state.optimizer.m, "optimizer.v": state.optimizer.v}
        es = state.early_stopping
        if es is not None and es.best_params is not None:
            arrays["early_stopping.best_params"] = es.best_params
        for name, a in arrays.items():
            if not isinstance(a, np.ndarray) or a.shape != (n,) or a.dtype != dtype:
                raise NbnetError(f"training state {name} must be a {dtype} array of shape ({n},) for this layout, "
                                 f"got {getattr(a, 'dtype', type(a).__name__)} {np.shape(a)}")
        rng = np.asarray(state.rng)
        if rng.shape != (1,) or rng.dtype != np.uint64:
            raise NbnetError(f"training state rng must be a uint64 array of shape (1,), got {rng.dtype} {rng.shape}")
        step = state.optimizer.step
        if not (is_int(state.epochs) and state.epochs >= 0 and is_int(step) and step >= 0):
            raise NbnetError("training state epochs and optimizer step must be non-negative ints")
        self._params = state.params.copy()
        self._optimizer_state = optim.OptState(int(state.optimizer.step), state.optimizer.m.copy(),
                                               state.optimizer.v.copy())
        self._rng = rng.copy()
        self._es_state = es
        self._live = None
        self.n_epochs_ = int(state.epochs)
        return self

    @property
    def params_(self) -> np.ndarray:
        """The flat weight vector (n_params,), read-only (``layout_.views`` splits it into
        ``[W1, b1, ...]``). Current during a fit too (a callback may read it)."""
        self._check_fitted()
        self._sync_live()
        view = self._params.view()
        view.flags.writeable = False
        return view

    # --- inference --------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "layout_"):  # an NbnetError and scikit-learn's NotFittedError
            raise errors.NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def __sklearn_is_fitted__(self) -> bool:  # scikit-learn's check_is_fitted asks this
        return hasattr(self, "layout_")

    def _forward(self, Xt: np.ndarray) -> np.ndarray:
        """Predictions (the loss's output transform applied) for prepared rows, on the CPU kernels."""
        self._sync_live()  # a callback predicting during a fit sees the current weights
        out = np.empty((Xt.shape[0], self.n_outputs_), dtype=Xt.dtype)
        with thread_budget(self.n_threads):
            cpu.forward(Xt, self._params, *self.layout_.kernel_args(), LOSSES[self.loss_], out)
        return out

    def network_input(self, X) -> np.ndarray:
        """X as the network sees it: checked, through the fitted preprocessing, C-contiguous in
        the model's dtype, shape (n_samples, layout_.sizes[0])."""
        return self._prepare_X(X, fit=False)

    def activation_stats(self, X) -> np.ndarray:
        """(n_hidden_layers, 3) array of mean, std and fraction of zero (dead) activations."""
        Xt = self._prepare_X(X, fit=False)
        stats = np.zeros((self.layout_.n_layers - 1, 3))
        self._sync_live()
        with thread_budget(self.n_threads):
            cpu.forward_stats(Xt, self._params, *self.layout_.kernel_args(), stats)
        return stats

    # --- weights ----------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """``[W1 (n_in, n_out), b1, W2, b2, ...]`` as copies."""
        self._check_fitted()
        return [w.copy() for w in self.layout_.views(self._params)]

    def set_weights(self, weights) -> "BaseMLP":
        """Replace the weights (shapes are checked) and reset the optimizer state."""
        self._check_fitted()
        self._params = check_weights(self.layout_, weights, self._params.dtype)
        self._optimizer_state = optim.OptState.zeros(self.layout_.n_params, self._params.dtype)
        return self

    # --- persistence ------------------------------------------------------------------------
    def to_bundle(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The model file's ``(meta, arrays)`` (:func:`nbnet.io.write_bundle`); current during a fit too."""
        self._check_fitted()
        self._sync_live()
        meta = {
            "estimator": type(self).__name__,
            "nbnet_version": __version__,
            "params": {k: json_value(v) for k, v in self.get_params().items()},
            "schedule_start": int(getattr(self, "schedule_start_", 0)),
            "n_features_in": int(self.n_features_in_),
            "n_outputs": int(self.n_outputs_),
            "loss": self.loss_,
            "hidden": [int(s) for s in self.layout_.sizes[1:-1]],
            "opt_step": int(self._optimizer_state.step),
            "n_epochs": int(self.n_epochs_),
            # NaN (no validation data) is not JSON: stored as null, read back as NaN
            "history": {k: nan_to_none(v) for k, v in self.history_.items()},
        }
        moments = self._optimizer_state
        arrays = {"params": self._params, "opt_m": moments.m, "opt_v": moments.v, "rng": self._rng}
        meta["params"]["class_weight"] = weights.class_weight_json(self.class_weight)
        if getattr(self, "classes_", None) is not None:
            meta["classes"] = [json_value(c) for c in self.classes_]
        if getattr(self, "feature_names_in_", None) is not None:  # columns a data frame X is matched by
            meta["feature_names_in"] = [str(c) for c in self.feature_names_in_]
        if getattr(self, "class_weight_", None) is not None:
            meta["class_weights"] = [float(w) for w in self.class_weight_]
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
