"""Optuna samplers and pruners by the names of ``search.sampler`` / ``search.pruner``, and the
sampler seed of each worker.

Samplers: ``tpe`` (Bergstra et al. 2011; Optuna's default), ``gp`` (Gaussian process; needs torch
and scipy), ``random``, ``grid`` (the space's choices and int/stepped ranges,
:func:`nbnet.experiment.trial.grid_space`) and ``cmaes`` (Hansen 2016; needs ``cmaes``).
Pruners: ``median``, ``hyperband`` (Li et al. 2018), ``none``.
"""

from __future__ import annotations

import importlib
import os
import socket
import zlib

import optuna

from nbnet.errors import NbnetError
from nbnet.experiment import config as C
from nbnet.experiment.trial import grid_space

#: The optional packages a sampler needs, with the hint of the error when one is missing.
_NEEDS = {
    "gp": (("torch", "the gp sampler needs torch; pip install 'nbnet[parity]' or use --sampler tpe"),
           ("scipy", "the gp sampler needs scipy; pip install 'nbnet[parity]' or use --sampler tpe")),
    "cmaes": (("cmaes", "the cmaes sampler needs the cmaes package; pip install cmaes or use --sampler tpe"),),
}


def _require(name: str) -> None:
    for module, message in _NEEDS.get(name, ()):
        try:
            importlib.import_module(module)
        except ImportError:
            raise NbnetError(message) from None


def make_sampler(name: str, space: dict, *, seed: int | None, n_startup_trials: int):
    """The Optuna sampler ``name`` for ``space``; an NbnetError for an unknown name or a missing package."""
    S = optuna.samplers
    _require(name)
    if name == "tpe":
        return S.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "random":
        return S.RandomSampler(seed=seed)
    if name == "grid":
        return S.GridSampler(grid_space(space), seed=seed)
    if name == "gp":
        return S.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "cmaes":
        return S.CmaEsSampler(seed=seed, n_startup_trials=max(1, n_startup_trials), warn_independent_sampling=False)
    raise NbnetError(f"unknown sampler {name!r}; choose one of {', '.join(C.SAMPLERS)}")


def make_pruner(name: str, *, epochs: int, n_startup_trials: int, n_warmup_steps: int, epochs_searched: bool):
    """The Optuna pruner ``name``; hyperband's budget is ``epochs`` unless the epochs are searched."""
    P = optuna.pruners
    if name == "median":
        return P.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
    if name == "hyperband":
        return P.HyperbandPruner(min_resource=1, max_resource="auto" if epochs_searched else int(epochs), reduction_factor=3)
    if name == "none":
        return P.NopPruner()
    raise NbnetError(f"unknown pruner {name!r}; choose one of {', '.join(C.PRUNERS)}")


def worker_seed(seed: int, worker: int, rdb: bool) -> int:
    """The sampler seed of ``worker``: the sweep's ``seed`` offset per worker and, for a study in a
    database (``rdb``), per process: workers started at the same moment on several machines would
    otherwise draw identical random/startup suggestions."""
    salt = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) if rdb else 0
    return (seed + 7919 * worker + salt) % 2**31
