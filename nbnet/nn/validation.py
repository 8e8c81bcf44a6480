"""Input checks at the estimators' public boundary: the data (``check_X``, ``check_y``), the
column names of data frames (``feature_names``, ``match_columns``) and the hyperparameters
(``resolve_hyperparameters``). Each failure is an :class:`NbnetError` with one line saying what is
wrong and how to fix it; the kernels behind the estimators trust their arrays.

Where scikit-learn's tools test an error by its words (``sklearn.utils.estimator_checks``), the
line holds those words too: "X has 1 features, but MLPClassifier is expecting 4 features as
input", "Complex data not supported", "0 feature(s) (shape=(12, 0)) while a minimum of 1 is
required", "Reshape your data", "requires y to be passed, but the target y is None".
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from nbnet import errors, optim
from nbnet.errors import DataTypeError, NbnetError
from nbnet.kernels.tables import ACTIVATIONS

#: The estimators' ``dtype`` names.
DTYPES = {"float32": np.float32, "float64": np.float64}


def check_X(X, *, n_features: int | None = None, allow_nan: bool = False, name: str = "X",
            owner: str = "the model") -> np.ndarray:
    """X as a 2-D float64 (or, left as it is, float32) array, or an NbnetError saying what is wrong
    (``owner``, the estimator's class name, is named when X has the wrong number of features).

    A float32 X is neither copied nor widened: fit trains on the caller's array (memory budget)."""
    arr = _numeric_2d(X, name)
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
        raise NbnetError(f"{name} has {arr.shape[1]} features, but {owner} is expecting {n_features} features as "
                         "input; pass the columns it was fitted on")
    return arr


def _numeric_2d(X, name: str) -> np.ndarray:
    """X as a non-empty 2-D numeric array (any numeric dtype), or an NbnetError."""
    if hasattr(X, "toarray") and hasattr(X, "nnz"):  # scipy.sparse: np.asarray would make a 0-D object
        raise NbnetError(f"{name} is a sparse matrix; nbnet needs dense input: pass {name}.toarray()")
    try:
        arr = np.asarray(X)
    except Exception as e:  # ragged lists and such
        raise NbnetError(f"{name} could not be read as an array ({type(e).__name__}); pass a 2-D numeric array") from None
    if arr.dtype.kind == "O" and not any(isinstance(v, (str, bytes)) for v in arr.flat):
        try:  # numbers in an object array (a DataFrame with mixed column types)
            arr = arr.astype(np.float64)
        except TypeError as e:  # a dict, a list, an object: no number at all
            raise DataTypeError(f"{name} must be numeric: {e}; drop or encode that column") from None
        except ValueError:
            pass
    if arr.dtype.kind == "c":
        raise NbnetError(f"Complex data not supported: {name} has dtype {arr.dtype}; pass real numbers "
                         f"(e.g. abs({name}) or {name}.real)")
    if arr.dtype.kind not in "biuf":
        raise NbnetError(f"{name} must be numeric, got dtype {arr.dtype}; encode text columns first")
    if arr.ndim != 2:
        hint = (f". Reshape your data: {name}.reshape(1, -1) for one sample, {name}.reshape(-1, 1) for one feature"
                if arr.ndim == 1 else "")
        raise NbnetError(f"{name} must be 2-D (n_samples, n_features), got {arr.ndim}-D{hint}")
    for axis, what, fix in ((0, "sample(s)", "one row"), (1, "feature(s)", "one column")):
        if arr.shape[axis] == 0:
            raise NbnetError(f"{name} has 0 {what} (shape={arr.shape}) while a minimum of 1 is required; "
                             f"pass at least {fix}")
    return arr


# --- column names -------------------------------------------------------------------------------
def feature_names(X) -> np.ndarray | None:
    """The column names of a data frame ``X`` (pandas, polars) as an object array, as scikit-learn
    keeps them in ``feature_names_in_``; None for arrays and for frames whose columns are not
    named by strings (a CSV read without a header: 0, 1, ...)."""
    cols = getattr(X, "columns", None)
    if cols is None or isinstance(X, np.ndarray):
        return None
    names = np.asarray(list(cols), dtype=object)
    is_str = [isinstance(c, str) for c in names]
    if not any(is_str):
        return None
    if not all(is_str):
        kinds = sorted({type(c).__name__ for c in names})
        raise DataTypeError(f"Feature names are only supported if all input features have string names, but X has "
                            f"{kinds} as column name types; convert them with X.columns = X.columns.astype(str)")
    return names


def match_columns(X, fitted, owner: str):
    """X with its columns in the order ``fitted`` (the model's ``feature_names_in_``, or None)
    names them: a frame with the same columns in another order is reordered by name; one with
    missing or unknown columns is an NbnetError. Input without names is taken by position, with
    scikit-learn's warning when the model knows its column names (and the converse one)."""
    names = feature_names(X)
    if names is None or fitted is None:
        if fitted is not None:
            warnings.warn(f"X does not have valid feature names, but {owner} was fitted with feature names",
                          UserWarning, stacklevel=4)
        elif names is not None:
            warnings.warn(f"X has feature names, but {owner} was fitted without feature names",
                          UserWarning, stacklevel=4)
        return X
    if len(names) == len(fitted) and all(a == b for a, b in zip(names, fitted)):
        return X
    have, want = set(names), set(fitted)
    missing = [c for c in fitted if c not in have]
    unknown = [c for c in names if c not in want]
    if missing or unknown:
        parts = [f"X lacks {_few(missing)}"] if missing else []
        parts += [f"has unknown {_few(unknown)}"] if unknown else []
        raise NbnetError(f"The feature names should match those that were passed during fit: {' and '.join(parts)}; "
                         f"pass the columns {_few(list(fitted))} (in any order)")
    return X[list(fitted)]


def _few(names: list, k: int = 8) -> str:
    """A list of column names for an error line, cut after ``k``."""
    shown = [str(n) for n in names[:k]]
    return str(shown)[:-1] + (f", ... ({len(names)} in all)]" if len(names) > k else "]")


def check_y(y, n: int, *, owner: str = "this estimator", warn_column: bool = False) -> np.ndarray:
    """y as a 1-D (n,) or 2-D (n, n_outputs) array (a (n, 1) column becomes 1-D, with
    scikit-learn's DataConversionWarning when ``warn_column``), or an NbnetError."""
    if y is None:
        raise NbnetError(f"{owner} requires y to be passed, but the target y is None; pass the targets "
                         "(one label or value per sample)")
    try:
        y = np.asarray(y)
    except Exception as e:
        raise NbnetError(f"y could not be read as an array ({type(e).__name__})") from None
    if y.ndim == 2 and y.shape[1] == 1:
        if warn_column:
            warnings.warn("A column-vector y was passed when a 1d array was expected. Please change the shape of y "
                          "to (n_samples,), for example using ravel().", errors.DataConversionWarning, stacklevel=4)
        y = y[:, 0]
    if y.ndim not in (1, 2):
        raise NbnetError(f"y must be 1-D (n_samples,) or 2-D (n_samples, n_outputs), got {y.ndim}-D")
    if y.shape[0] != n:
        raise NbnetError(f"X has {n} samples but y has {y.shape[0]}; they must match")
    return y


def numeric_targets(y: np.ndarray) -> np.ndarray:
    """Regression targets as numbers: an object array of numbers becomes float64 (as scikit-learn
    reads it); anything else that is not numeric is an NbnetError."""
    if y.dtype.kind == "O":
        try:
            y = y.astype(np.float64)
        except (TypeError, ValueError):
            pass
    if y.dtype.kind not in "biuf":
        raise NbnetError(f"regression targets must be numeric, got dtype {y.dtype}; encode them as numbers")
    return y


# --- hyperparameters ----------------------------------------------------------------------------
def is_number(v) -> bool:
    """A real, finite number (bools excluded)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) and bool(np.isfinite(v))


def is_int(v) -> bool:
    """An int (bools excluded)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def positive(name: str, v, *, allow_zero: bool = False) -> float:
    """``v`` as a float when it is a positive (or, with ``allow_zero``, non-negative) number."""
    ok = isinstance(v, (int, float, np.number)) and np.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise NbnetError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {v!r}")
    return float(v)


def hidden_sizes(value) -> tuple[int, ...]:
    """``hidden_layer_sizes`` (an int or a sequence of ints) as a tuple of positive ints."""
    hidden = (int(value),) if isinstance(value, (int, np.integer)) else value
    try:
        hidden = tuple(int(h) for h in hidden)
    except (TypeError, ValueError):
        raise NbnetError(f"hidden_layer_sizes must be a tuple of positive ints, got {value!r}") from None
    if any(h < 1 for h in hidden):
        raise NbnetError(f"hidden_layer_sizes must be positive, got {hidden}")
    return hidden


def betas(value) -> tuple[float, float]:
    """Adam's ``betas``: two numbers in [0, 1)."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else ()
    if not (len(pair) == 2 and all(is_number(b) and 0.0 <= b < 1.0 for b in pair)):
        raise NbnetError(f"betas must be two numbers in [0, 1) like (0.9, 0.999), got {value!r}")
    return pair[0], pair[1]


def image_shape(value) -> tuple[int, int]:
    """``image_shape`` as (height, width); (0, 0) for None (no shift augmentation)."""
    if value is None:
        return (0, 0)
    try:
        img = tuple(int(s) for s in value)
    except (TypeError, ValueError):
        img = ()
    if len(img) != 2 or min(img) <= 0:
        raise NbnetError(f"image_shape must be (height, width), got {value!r}")
    return img


class Hyperparameters(NamedTuple):
    """What training needs from an estimator's hyperparameters, checked and resolved."""

    hidden: tuple[int, ...]  # widths of the hidden layers
    optimizer: int  # the optimizer code (nbnet.kernels.tables.OPT_*)
    nesterov: bool
    hp: np.ndarray  # float64 (N_HP,) vector of the epoch kernel (nbnet.optim.hyper_vector)
    image_shape: tuple[int, int]  # (0, 0): no shift augmentation
    dtype: type  # np.float32 or np.float64


def resolve_hyperparameters(params: dict) -> Hyperparameters:
    """Check an estimator's hyperparameters (``get_params()``) and resolve them for training."""
    hidden = hidden_sizes(params["hidden_layer_sizes"])
    _check_names(params)
    kind, nesterov, momentum = optim.resolve(params["optimizer"], params["momentum"], params["nesterov"])
    _check_numbers(params)
    hp = optim.hyper_vector(
        lr=params["learning_rate"], betas=betas(params["betas"]), eps=params["eps"],
        weight_decay=params["weight_decay"], l2=params["l2"], momentum=momentum, clip_norm=params["clip_norm"],
        dropout=params["dropout"], noise=params["noise_std"], mixup=params["mixup_alpha"],
    )
    return Hyperparameters(hidden, kind, nesterov, hp, image_shape(params["image_shape"]), DTYPES[params["dtype"]])


def _check_names(p: dict) -> None:
    """The hyperparameters that are names from a table (and the momentum beside them)."""
    if not isinstance(p["activation"], str) or p["activation"] not in ACTIVATIONS:
        raise NbnetError(f"unknown activation {p['activation']!r}; choose one of {', '.join(ACTIVATIONS)}")
    if not isinstance(p["dtype"], str) or p["dtype"] not in DTYPES:
        raise NbnetError(f"dtype must be 'float32' or 'float64', got {p['dtype']!r}")
    if not isinstance(p["optimizer"], str):
        raise NbnetError(f"optimizer must be a name like 'adam', got {p['optimizer']!r}")
    if p["momentum"] is not None and not is_number(p["momentum"]):
        raise NbnetError(f"momentum must be a number in [0, 1) or None, got {p['momentum']!r}")


def _check_numbers(p: dict) -> None:
    """The numeric hyperparameters and their ranges."""
    positive("learning_rate", p["learning_rate"])
    positive("eps", p["eps"])
    for name in ("l2", "weight_decay", "min_delta", "noise_std", "mixup_alpha"):
        positive(name, p[name], allow_zero=True)
    if p["clip_norm"] is not None:
        positive("clip_norm", p["clip_norm"])
    if not (is_number(p["dropout"]) and 0.0 <= p["dropout"] < 1.0):
        raise NbnetError(f"dropout must be a number in [0, 1), got {p['dropout']!r}")
    if not (isinstance(p["epochs"], (int, np.integer)) and p["epochs"] >= 1):
        raise NbnetError(f"epochs must be a positive int, got {p['epochs']!r}")
    batch = p["batch_size"]
    if batch is not None and not (isinstance(batch, (int, np.integer)) and batch >= 1):
        raise NbnetError(f"batch_size must be a positive int or None (full batch), got {batch!r}")
    betas(p["betas"])
    if not (is_number(p["validation_fraction"]) and 0.0 < p["validation_fraction"] < 1.0):
        raise NbnetError(f"validation_fraction must be a number in (0, 1), got {p['validation_fraction']!r}")
    if not (is_int(p["patience"]) and p["patience"] >= 1):
        raise NbnetError(f"patience must be a positive int (epochs without improvement), got {p['patience']!r}")
    if not (is_int(p["seed"]) and 0 <= p["seed"] < 2**63):
        raise NbnetError(f"seed must be a non-negative int, got {p['seed']!r}")
