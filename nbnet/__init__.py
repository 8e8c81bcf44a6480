"""nbnet: neural networks trained by Numba-compiled kernels, with tracked hyperparameter sweeps.

The public API: the two estimators, :func:`load`, :func:`cross_validate` and the error type.
Everything else is reachable through its package (see docs/architecture.md) but not advertised.
"""

from __future__ import annotations

import os

from nbnet.data.split import cross_validate
from nbnet.errors import NbnetError
from nbnet.io import MLFLOW_URI_PREFIXES
from nbnet.nn.estimator import MLPClassifier, MLPRegressor
from nbnet.nn.estimator import load as load_file
from nbnet.version import __version__

def load(path_or_uri: str | os.PathLike):
    """Load an estimator from a local model file, or from an MLflow URI (``models:/NAME@alias``,
    ``models:/NAME/3``, ``runs:/RUN_ID/model``)."""
    s = str(path_or_uri)
    if s.startswith(MLFLOW_URI_PREFIXES):
        from nbnet.experiment.tracking import download_model_file  # heavy: imports mlflow

        s = download_model_file(s)
    return load_file(s)


__all__ = ["MLPClassifier", "MLPRegressor", "NbnetError", "cross_validate", "load", "__version__"]
