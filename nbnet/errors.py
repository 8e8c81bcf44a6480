"""nbnet's own exception types.

Every user mistake (a bad file, value, shape or name) raises :class:`NbnetError` with a single
line saying what is wrong and how to fix it. A store that cannot be read or written (MLflow, the
study's database or journal, a full disk) raises :class:`StoreError`, also one line. The CLI maps
them to the exit codes below.
"""

from __future__ import annotations

import threading

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # a check ran and failed: drift found, the promotion gate, rerun's bit-identity
EXIT_USER_ERROR = 2  # bad input: a file, value, shape or name
EXIT_STORE_ERROR = 3  # an internal or store failure: MLflow, the study storage, the disk
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM


class NbnetError(ValueError):
    """A user error: bad input, value, shape, name or file. The message is one line."""


class DivergedError(NbnetError):
    """Training produced a non-finite loss (the learning rate is usually too high)."""

    def __init__(self, epoch: int, loss: float):
        self.epoch = epoch
        self.loss = loss
        super().__init__(
            f"training diverged at epoch {epoch} (loss={loss}); lower the learning rate or set clip_norm"
        )


class StoreError(Exception):
    """A store could not be read or written: MLflow, the study storage, artifacts or the disk.

    The message is one line that names what failed and how to resume (usually: fix the store and
    run the same command again).
    """


class DataTypeError(NbnetError, TypeError):
    """Input holds a value that is not a number at all (a dict, a list, an object); a TypeError
    too, as NumPy raises for it."""


# --- the types that scikit-learn's tools test for ----------------------------------------------
# NotFittedError and DataConversionWarning subclass scikit-learn's own, so that its tools (and
# `except sklearn.exceptions.NotFittedError`) recognise nbnet's. Importing scikit-learn takes
# several times as long as nbnet's own import, so these two classes are built on first use (PEP 562):
# `from nbnet.errors import NotFittedError` and the paths that raise them pay it, nothing else.
_SKLEARN_BASED = {
    "NotFittedError": "predict (or another method that needs a fitted model) was called before fit; an "
                      "NbnetError and scikit-learn's NotFittedError (a ValueError and an AttributeError).",
    "DataConversionWarning": "fit was given a column-vector y (n_samples, 1) where a 1-D y was expected; "
                             "scikit-learn's DataConversionWarning.",
}
_sklearn_based_lock = threading.Lock()


def __getattr__(name: str):
    if name not in _SKLEARN_BASED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from sklearn import exceptions  # heavy: slower than all of nbnet; only when one of these is first needed

    with _sklearn_based_lock:  # one class per process, even when threads ask at once
        if name not in globals():
            bases = (NbnetError, exceptions.NotFittedError) if name == "NotFittedError" \
                else (exceptions.DataConversionWarning,)
            globals()[name] = type(name, bases, {"__module__": __name__, "__doc__": _SKLEARN_BASED[name]})
    return globals()[name]
