"""Optimizers: the name table, their hyperparameter vectors and their state.

State lives in the open (as optax does): ``OptState(step, m, v)`` with flat buffers the size of
the parameters, so checkpoints and tests can read and inject it.

=========  ===========================================================================
name       kernel
=========  ===========================================================================
sgd        ``torch.optim.SGD`` (``momentum`` 0 unless given; full-batch GD with batch_size=None)
momentum   SGD with heavy-ball momentum (``momentum`` default 0.9)
nesterov   SGD with Nesterov momentum (``momentum`` default 0.9)
adam       Adam, Kingma & Ba 2015, PyTorch formulation (eps after the bias-corrected root)
adamw      AdamW, Loshchilov & Hutter 2019 (decoupled weight decay, ``torch.optim.AdamW``)
=========  ===========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nbnet.errors import NbnetError
from nbnet.kernels import tables

OPTIMIZERS = {
    "sgd": (tables.OPT_SGD, False),
    "momentum": (tables.OPT_SGD, False),
    "nesterov": (tables.OPT_SGD, True),
    "adam": (tables.OPT_ADAM, False),
    "adamw": (tables.OPT_ADAMW, False),
}


@dataclass
class OptState:
    """Optimizer state: the step count and two flat moment buffers (SGD uses ``m`` as its
    momentum buffer; Adam/AdamW use ``m`` and ``v``)."""

    step: int
    m: np.ndarray
    v: np.ndarray

    @classmethod
    def zeros(cls, n_params: int, dtype) -> "OptState":
        return cls(0, np.zeros(n_params, dtype), np.zeros(n_params, dtype))


def resolve(name: str, momentum: float | None, nesterov: bool) -> tuple[int, bool, float]:
    """(kernel code, nesterov, momentum) for an optimizer name and the estimator's options."""
    if name not in OPTIMIZERS:
        raise NbnetError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    kind, nest = OPTIMIZERS[name]
    nest = nest or bool(nesterov)
    if momentum is None:
        momentum = 0.9 if name in ("momentum", "nesterov") else 0.0
    if not 0.0 <= momentum < 1.0:
        raise NbnetError(f"momentum must be in [0, 1), got {momentum}")
    if nest and momentum == 0.0 and kind == tables.OPT_SGD:
        raise NbnetError("nesterov needs momentum > 0; set momentum=0.9")
    return kind, nest, float(momentum)


def hyper_vector(*, lr, betas, eps, weight_decay, l2, momentum, clip_norm, dropout, noise, mixup) -> np.ndarray:
    """The float64 ``hp`` vector the epoch kernel reads (indices ``nbnet.kernels.tables.HP_*``)."""
    hp = np.zeros(tables.N_HP)
    hp[tables.HP_LR] = lr
    hp[tables.HP_BETA1], hp[tables.HP_BETA2] = betas
    hp[tables.HP_EPS] = eps
    hp[tables.HP_WD] = weight_decay
    hp[tables.HP_L2] = l2
    hp[tables.HP_MOMENTUM] = momentum
    hp[tables.HP_CLIP] = clip_norm or 0.0
    hp[tables.HP_DROPOUT] = dropout
    hp[tables.HP_NOISE] = noise
    hp[tables.HP_MIXUP] = mixup
    return hp
