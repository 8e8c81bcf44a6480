"""Shared fixtures: small seeded datasets and random networks laid out as the kernels expect."""

from __future__ import annotations

import numpy as np
import pytest

from nbnet.model import Layout


class Net:
    """A random network: its layout, flat parameter buffer and the ``[W1, b1, ...]`` views."""

    def __init__(self, n_in, hidden, n_out, activation, seed=0, dtype=np.float64):
        self.layout = Layout.build(n_in, tuple(hidden), n_out, activation)
        self.activation = activation
        rng = np.random.default_rng(seed)
        # biases nonzero too, so their gradients and their part in forward are exercised
        self.params = (rng.normal(size=self.layout.n_params) * 0.7).astype(dtype)

    @property
    def weights(self):
        return self.layout.views(self.params)

    @property
    def args(self):
        return self.layout.kernel_args()


@pytest.fixture
def make_net():
    return Net


@pytest.fixture(scope="session")
def blobs():
    """Three separable-ish Gaussian classes in 5 dimensions, 240 samples."""
    rng = np.random.default_rng(42)
    centers = rng.normal(scale=2.0, size=(3, 5))
    y = np.repeat(np.arange(3), 80)
    X = centers[y] + rng.normal(size=(240, 5))
    perm = rng.permutation(240)
    return X[perm], y[perm]


@pytest.fixture(scope="session")
def regression():
    """y = a smooth nonlinear function of 4 features plus a little noise, 200 samples."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(200, 4))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] - 0.3 * X[:, 3] + 0.05 * rng.normal(size=200)
    return X, y


def targets(loss: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Float targets of shape (n, k) for a loss: one-hot rows, 0/1 labels or real values."""
    if loss == "cross_entropy":
        return np.eye(k)[rng.integers(0, k, n)]
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, (n, k)).astype(np.float64)
    return rng.normal(size=(n, k))


@pytest.fixture
def make_targets():
    return targets


@pytest.fixture(autouse=True, scope="session")
def _private_template_cache(tmp_path_factory):
    """pyfunc model templates (nbnet.experiment.tracking.template_cache_dir) go to a folder of this test
    session, for it and the processes it starts, not to the user's ~/.cache."""
    import os

    old = os.environ.get("NBNET_CACHE_DIR")
    os.environ["NBNET_CACHE_DIR"] = str(tmp_path_factory.mktemp("nbnet-cache"))
    yield
    if old is None:
        os.environ.pop("NBNET_CACHE_DIR", None)
    else:
        os.environ["NBNET_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def empty_store_db(tmp_path_factory):
    """An initialised MLflow SQLite database (creating the tables takes seconds); tests take a
    copy (``stores.fresh_store``), so they stay isolated without paying for the schema
    migrations every time."""
    from nbnet.experiment import tracking

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    tracking.ensure_experiment("template", f"sqlite:///{db}")
    return db
