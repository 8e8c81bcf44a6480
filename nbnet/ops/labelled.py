"""New labelled data for a trained model: a data file read into the model's features (and labels,
when the file has them), and the model's metric on it, computed as a training run computes it.

Used by ``nbnet monitor`` (:mod:`nbnet.ops.monitor`), the promotion gate and ``nbnet update``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from nbnet import metrics
from nbnet.data.load import read_features
from nbnet.data.tables import file_columns
from nbnet.errors import NbnetError
from nbnet.experiment import tracking

_KINDS = (".csv", ".parquet", ".pq", ".npz")


def load_labelled(data, spec, target: str | None, est, *, require_target: bool = False):
    """Read ``data`` (.csv, .parquet or .npz) into the model's feature matrix; returns
    ``(X, y or None, target column or None)``. The target is ``target`` if given (it must exist),
    else the training config's ``data.target`` (NPZ: ``y``) when the file has it. ``spec`` is the
    model's ``(feature names, categories)``."""
    path = Path(str(data).split(":", 1)[1] if re.match(r"^(csv|parquet|npz):", str(data)) else str(data))
    if not path.is_file():
        raise NbnetError(f"data file {str(path)!r} not found; check the path")
    if path.suffix.lower() not in _KINDS:
        raise NbnetError(f"data file {path.name!r} must be .csv, .parquet or .npz")
    names, cats = spec
    cols = file_columns(path)
    npz = path.suffix.lower() == ".npz"
    target = _target_column(path, cols, target, est, npz)
    if target is None and require_target:
        raise NbnetError(f"{path.name} needs labels: pass --target COLUMN (the label column)")
    n_feat = est.n_features_in_
    names = tracking.input_columns(est, names, cats, None if npz else [c for c in cols if c != target], path.name)
    X, y = read_features(path, feature_names=names, categories=cats, target=target)
    if len(X) == 0:
        raise NbnetError(f"{path.name} holds no rows")
    if X.shape[1] != n_feat:
        raise NbnetError(f"{path.name} gives {X.shape[1]} features but the model takes {n_feat}")
    return X, y, target


def _target_column(path: Path, cols: list[str], target: str | None, est, npz: bool) -> str | None:
    """``target`` when the file has it (else an error), or the training target when it is there."""
    if target is not None:
        if target not in cols:
            raise NbnetError(f"{path.name} has no {'array' if npz else 'column'} {target!r}; "
                             f"it has {', '.join(cols[:12])}{' ...' if len(cols) > 12 else ''}")
        return target
    cfg_target = ((getattr(est, "config_", None) or {}).get("data") or {}).get("target")
    guess = "y" if npz else cfg_target
    return guess if guess and guess in cols else None


def task_of(est) -> str:
    """``classification`` for a classifier (it has ``predict_proba``), else ``regression``."""
    return "classification" if hasattr(est, "predict_proba") else "regression"


def score(est, X, y, key: str) -> float | None:
    """``key`` (``val_accuracy``, ``val_loss``, ...) of the fitted ``est`` on (X, y), computed
    as the validation metrics of a training run are (:func:`nbnet.metrics.evaluate_estimator`);
    None when it is undefined on this data."""
    base = key.split("_", 1)[1] if key.startswith(("val_", "test_")) else key
    out = metrics.evaluate_estimator(est, X, y, task_of(est), "val_", extra=(base,) if base != "loss" else ())
    v = out.get("val_" + base)
    return None if v is None or not math.isfinite(v) else float(v)


__all__ = ["load_labelled", "task_of", "score"]
