"""scikit-learn's own estimator checks (``sklearn.utils.estimator_checks``) on MLPClassifier and
MLPRegressor: the API (clone, get/set_params, not fitted, n_features_in_), input validation with
the words its tools match, and training to a fair score on its small data sets. Small settings keep
the suite to seconds once the kernels are compiled.

A check that cannot pass is listed in ``EXPECTED_FAILED`` with the reason."""

from __future__ import annotations

import warnings

import pytest

from nbnet import MLPClassifier, MLPRegressor

sklearn_checks = pytest.importorskip("sklearn.utils.estimator_checks")

# One hidden layer of 16 and 20 epochs reach 0.94 accuracy on the checks' blobs (they ask for
# more than 0.83) and R² 0.85 on their regression set (more than 0.5), for seeds 0 to 2.
SMALL = dict(hidden_layer_sizes=(16,), epochs=20, batch_size=32, learning_rate=0.02, n_threads=1)

#: check name -> why nbnet cannot pass it (shown as the xfail reason)
EXPECTED_FAILED: dict[str, str] = {
    "check_sample_weight_equivalence_on_dense_data":
        "shuffled mini-batches: a row of weight 2 takes other steps than the same row twice "
        "(full-batch equivalence is tested in tests/test_weights.py)",
}

with warnings.catch_warnings():
    # "does not inherit from BaseEstimator": deliberate; `import nbnet` would import scikit-learn,
    # several times slower than nbnet itself, and the estimators speak its protocol without it
    warnings.filterwarnings("ignore", "Estimator .* does not inherit", UserWarning)
    CHECKS = sklearn_checks.parametrize_with_checks(
        [MLPClassifier(**SMALL), MLPRegressor(**SMALL)],
        expected_failed_checks=lambda est: EXPECTED_FAILED,
    )


@CHECKS
def test_sklearn_estimator_check(estimator, check):
    check(estimator)
