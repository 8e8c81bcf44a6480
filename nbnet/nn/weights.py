"""Sample and class weights: the checks of ``sample_weight`` and ``class_weight`` and the per-row
weights the epoch kernel takes (``train_epoch(..., sw=...)``).

The loss of a batch is the weighted mean ``sum_i w_i * l_i / sum_i w_i``, as
``(w * torch.nn.CrossEntropyLoss(reduction="none")(z, y)).sum() / w.sum()``; a row's weight is its
``sample_weight`` times its class's weight. ``class_weight="balanced"`` is scikit-learn's
``n_samples / (n_classes * np.bincount(y))`` over the training rows (``compute_class_weight``).
"""

from __future__ import annotations

import numpy as np

from nbnet.errors import NbnetError

CLASS_WEIGHT_MODES = ("balanced",)


def check_sample_weight(sample_weight, n: int) -> np.ndarray | None:
    """``sample_weight`` as a float64 (n,) array (None stays None), or an NbnetError: the
    weights must be finite, >= 0, one per sample and not all zero."""
    if sample_weight is None:
        return None
    try:
        w = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise NbnetError("sample_weight must be numbers, one per sample") from None
    if w.ndim == 0:  # a scalar weighs every row the same (scikit-learn accepts it too)
        w = np.full(n, float(w))
    if w.ndim != 1 or w.shape[0] != n:
        raise NbnetError(f"sample_weight has shape {w.shape} but X has {n} samples; pass one weight per sample")
    if not np.all(np.isfinite(w)):
        raise NbnetError(f"sample_weight contains NaN or inf (first at row {int(np.argmax(~np.isfinite(w)))}); pass finite weights")
    if np.any(w < 0):
        raise NbnetError(f"sample_weight has a negative weight (first at row {int(np.argmax(w < 0))}); weights must be >= 0")
    if not np.any(w > 0):
        raise NbnetError("sample_weight is all zero; at least one sample needs a positive weight")
    return np.ascontiguousarray(w)


def check_class_weight(class_weight, name: str = "class_weight") -> None:
    """The ``class_weight`` hyperparameter's form: None, ``"balanced"`` or a dict label → weight
    >= 0 (the labels are matched against the classes at fit); ``name`` names it in errors."""
    if class_weight is None or (isinstance(class_weight, str) and class_weight in CLASS_WEIGHT_MODES):
        return
    if isinstance(class_weight, dict):
        for label, w in class_weight.items():
            if isinstance(w, bool) or not isinstance(w, (int, float, np.number)) or not np.isfinite(w) or w < 0:
                raise NbnetError(f"{name}[{label!r}] must be a finite number >= 0, got {w!r}")
        return
    raise NbnetError(f"{name} must be None, 'balanced' or a dict {{label: weight}}, got {class_weight!r}")


def class_weights(class_weight, classes: np.ndarray, idx: np.ndarray) -> np.ndarray | None:
    """float64 (n_classes,) weight of each of ``classes`` given the class indices ``idx`` of the
    training rows (for "balanced"), or None for ``class_weight=None``. A dict's keys are labels or
    their text (TOML keys are strings): ``{"1": 3.0}`` weighs class 1; classes it omits weigh 1."""
    if class_weight is None:
        return None
    k = len(classes)
    if isinstance(class_weight, str):  # balanced
        counts = np.bincount(idx, minlength=k).astype(np.float64)
        if np.any(counts == 0):
            missing = classes[int(np.argmax(counts == 0))]
            raise NbnetError(f"class_weight='balanced' needs every class in y; class {_label(missing)!r} has no sample")
        return len(idx) / (k * counts)
    out = np.ones(k)
    by_text = {str(_label(c)): i for i, c in enumerate(classes)}
    for label, w in class_weight.items():
        i = _class_index(label, classes, by_text)
        if i is None:
            raise NbnetError(f"class_weight names label {label!r}, not a class of y; classes: {[_label(c) for c in classes][:10]}")
        out[i] = float(w)
    return out


def row_weights(sample_weight: np.ndarray | None, per_class: np.ndarray | None, idx: np.ndarray | None):
    """The per-row weights the kernel takes (float64 (n,)), or None when every row weighs 1:
    ``sample_weight`` times the weight of the row's class (``idx``: class indices)."""
    if per_class is None:
        return sample_weight
    w = per_class[idx]
    if sample_weight is not None:
        w = w * sample_weight
    if not np.any(w > 0):
        raise NbnetError("every sample weighs 0 after class_weight; give at least one class a positive weight")
    return np.ascontiguousarray(w)


def class_weight_json(class_weight):
    """``class_weight`` as the model file holds it: None, "balanced" or ``[[label, weight], ...]``
    (JSON objects only have string keys; the pairs keep int labels ints)."""
    if isinstance(class_weight, dict):
        return [[_label(k), float(v)] for k, v in class_weight.items()]
    return class_weight


def class_weight_from_json(value):
    """The inverse of :func:`class_weight_json`."""
    if isinstance(value, list):
        return {k: v for k, v in value}  # a malformed list raises TypeError/ValueError: the caller's "damaged file"
    return value


def _class_index(label, classes: np.ndarray, by_text: dict) -> int | None:
    for i, c in enumerate(classes):
        if _label(c) == label and type(_label(c)) is type(label):
            return i
    return by_text.get(str(label))


def _label(c):
    return c.item() if isinstance(c, np.generic) else c
