"""Experiments: configuration, MLflow tracking, trials, sweeps and single runs."""
