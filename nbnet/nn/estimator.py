"""scikit-learn-style estimators: :class:`MLPClassifier` and :class:`MLPRegressor`, and reading
them back from model files (:func:`load`, :func:`from_bundle`).

``__init__`` stores hyperparameters; ``fit`` learns, and learned state ends in ``_``. The shared
machinery is :class:`nbnet.nn.base.BaseMLP`; the epoch loop is :class:`nbnet.nn.trainer.Trainer`,
which calls one compiled kernel per epoch and reports to callbacks (:mod:`nbnet.nn.callbacks`)
and knows nothing of Optuna or MLflow. Everything training continues from is public through
``training_state()`` and ``set_training_state()`` (checkpoints, ``nbnet update``).

Example
-------
>>> from sklearn.datasets import load_digits
>>> X, y = load_digits(return_X_y=True)
>>> clf = MLPClassifier((64,), epochs=5, seed=0).fit(X / 16, y)
>>> clf.score(X / 16, y) > 0.9
True
"""

from __future__ import annotations

import numpy as np

from nbnet import optim
from nbnet.data.prep import Preprocessor
from nbnet.errors import NbnetError
from nbnet.io import json_value, read_bundle
from nbnet.model import Layout
from nbnet.nn import weights
from nbnet.nn.base import BaseMLP
from nbnet.nn.schedules import Schedule
from nbnet.nn.trainer import TrainingState
from nbnet.nn.validation import DTYPES, check_y, numeric_targets, resolve_hyperparameters


def _none_to_nan(v):
    if isinstance(v, list):
        return [_none_to_nan(x) for x in v]
    return float("nan") if v is None else v


def from_bundle(meta: dict, arrays: dict[str, np.ndarray]):
    """Rebuild an estimator from :func:`nbnet.io.read_bundle` output."""
    name = meta.get("estimator")
    cls = {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}.get(name if isinstance(name, str) else None)
    if cls is None:
        raise NbnetError(f"unknown estimator {name!r} in model file")
    _check_meta_types(meta, cls)
    try:
        est = _unfitted(cls, meta)
        est.layout_ = Layout.build(_network_inputs(est, meta), tuple(meta["hidden"]), est.n_outputs_, est.activation)
        est.set_training_state(_training_state(est, meta, arrays))
        est.history_ = {k: _none_to_nan(v) for k, v in meta["history"].items()}
        est.compile_seconds_ = est.compile_wait_seconds_ = 0.0
        est.kernels_compiled_ = 0
        est.preprocessor_ = None
        est.training_stats_ = meta.get("training_stats")
        est.config_ = meta.get("config")
        est.schedule_start_ = int(meta.get("schedule_start", 0))
        est.class_weight_ = np.array(meta["class_weights"], np.float64) if meta.get("class_weights") else None
        if meta.get("preprocessor") is not None:
            parrays = {k[5:]: v for k, v in arrays.items() if k.startswith("prep.")}
            est.preprocessor_ = Preprocessor.from_state(meta["preprocessor"], parrays)
    except NbnetError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
        raise NbnetError(f"model file is missing or has a malformed field ({type(e).__name__}: {e}); it is damaged or foreign") from None
    return est


def _unfitted(cls, meta: dict):
    """An estimator of ``cls`` with the file's hyperparameters (validated as fit would) and targets."""
    params = dict(meta["params"])
    for key in ("hidden_layer_sizes", "betas", "image_shape"):
        if isinstance(params.get(key), list):
            params[key] = tuple(params[key])
    if "class_weight" in params:
        params["class_weight"] = weights.class_weight_from_json(params["class_weight"])
    est = cls().set_params(**params)
    resolve_hyperparameters(est.get_params())
    Schedule.from_params(est.get_params())
    weights.check_class_weight(est.class_weight)
    est.n_features_in_ = int(meta["n_features_in"])
    est.n_outputs_ = int(meta["n_outputs"])
    est.loss_ = meta["loss"]
    if "classes" in meta:
        est.classes_ = np.array(meta["classes"])
    if meta.get("feature_names_in") is not None:  # files of models fitted on arrays have none
        est.feature_names_in_ = np.array(meta["feature_names_in"], dtype=object)
    return est


def _network_inputs(est, meta: dict) -> int:
    """The network's input width: the preprocessed columns when there is a preprocessor."""
    if isinstance(meta.get("preprocessor"), dict):
        return int(meta["preprocessor"]["n_features_out"])
    return est.n_features_in_


def _training_state(est, meta: dict, arrays: dict[str, np.ndarray]) -> TrainingState:
    """The file's training state, its arrays checked against the estimator's layout and dtype."""
    params, m, v, rng = arrays["params"], arrays["opt_m"], arrays["opt_v"], arrays["rng"]
    if params.shape != (est.layout_.n_params,) or params.dtype != DTYPES[est.dtype]:
        raise NbnetError("model file's parameter buffer does not match its layout; the file is damaged")
    if m.shape != params.shape or v.shape != params.shape or m.dtype != params.dtype or v.dtype != params.dtype \
            or rng.shape != (1,):
        raise NbnetError("model file's optimizer or generator state does not match its layout; the file is damaged")
    return TrainingState(params, optim.OptState(int(meta["opt_step"]), m, v), rng.astype(np.uint64), None,
                         int(meta["n_epochs"]))


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
    names = meta.get("feature_names_in")
    if names is not None and not (isinstance(names, list) and len(names) == meta["n_features_in"]
                                  and all(isinstance(c, str) for c in names)):
        bad("feature_names_in", "a list of n_features_in column names")
    if not count(meta.get("schedule_start", 0), 0):
        bad("schedule_start", "an integer >= 0")
    cw = meta.get("class_weights")
    if cw is not None and not (isinstance(cw, list) and all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                                            and 0 <= w < float("inf") for w in cw)):
        bad("class_weights", "a list of numbers >= 0")
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
    if cw is not None and len(cw) != n_classes:
        bad("class_weights", f"a list of {n_classes} weights, one per class")


def load(path):
    """The estimator saved in the model file ``path`` (see :mod:`nbnet.io`)."""
    return from_bundle(*read_bundle(path))


class MLPClassifier(BaseMLP):
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
        dt = DTYPES[self.dtype]
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
        y = check_y(y, len(X))
        return float(np.mean(self.predict(X) == y))


class MLPRegressor(BaseMLP):
    """Multi-layer perceptron regressor: identity output, mean squared error. ``score`` is R²."""

    _loss_name = "mse"
    _score_name = "r2"
    _estimator_type = "regressor"

    def _init_targets(self, y, classes=None) -> None:
        y = numeric_targets(y)
        if not np.all(np.isfinite(y)):
            raise NbnetError("y contains NaN or inf; drop those rows")
        self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        self.loss_ = "mse"
        self.classes_ = None

    def _encode(self, y) -> np.ndarray:
        y = numeric_targets(np.asarray(y))
        if not np.all(np.isfinite(y)):
            raise NbnetError("regression targets must be finite numbers")
        return np.ascontiguousarray(y.reshape(len(y), -1), dtype=DTYPES[self.dtype])

    def _score_outputs(self, P: np.ndarray, Y: np.ndarray) -> float:
        return _r2(Y.astype(np.float64), P.astype(np.float64))

    def predict(self, X) -> np.ndarray:
        P = self._forward(self._prepare_X(X, fit=False)).astype(np.float64)
        return P[:, 0] if self.n_outputs_ == 1 else P

    def score(self, X, y) -> float:
        y = check_y(y, len(X))
        return _r2(np.asarray(y, np.float64).reshape(len(y), -1), self.predict(X).reshape(len(y), -1))


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    """R² averaged uniformly over outputs (scikit-learn's default)."""
    ss_res = ((y - p) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())
