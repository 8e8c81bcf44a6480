"""nbnet: neural networks trained by Numba-compiled kernels, with tracked hyperparameter sweeps."""

__version__ = "0.1.0"

from .errors import NbnetError  # noqa: E402
from .estimator import MLPClassifier, MLPRegressor  # noqa: E402
from .io import load  # noqa: E402


def cross_validate(*args, **kwargs):
    """K-fold / leave-one-out cross-validation; see :func:`nbnet.data.split.cross_validate`."""
    from .data.split import cross_validate as _cv

    return _cv(*args, **kwargs)


__all__ = ["MLPClassifier", "MLPRegressor", "NbnetError", "cross_validate", "load", "__version__"]
