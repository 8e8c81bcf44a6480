"""The codes the kernels see, by the names users type, and the layouts of the kernels' vectors.

Both backends (:mod:`nbnet.kernels.cpu`, :mod:`nbnet.kernels.cuda`) re-export every name here, so
callers write ``backend.ACT_RELU`` whichever backend they hold.

* ``ACTIVATIONS`` and ``LOSSES``: name → code (the CLI, the TOML file and the search space speak
  the names; the kernels branch on the codes).
* ``OPT_*``: the optimizer codes (``nbnet.optim.OPTIMIZERS`` maps the names).
* ``HP_*``: indices into the float64 hyperparameter vector ``hp`` of ``train_epoch`` (``N_HP`` long).
* ``SETTING_*``: indices into the int64 settings vector ``settings`` of ``train_epoch``
  (``N_SETTINGS`` long); ``SETTING_STEP``, the optimizer's step count, is advanced by the kernel.
"""

from __future__ import annotations

ACT_IDENTITY, ACT_RELU, ACT_LEAKY_RELU, ACT_TANH, ACT_SIGMOID, ACT_ELU, ACT_SOFTPLUS = range(7)
ACTIVATIONS = {
    "identity": ACT_IDENTITY,
    "relu": ACT_RELU,
    "leaky_relu": ACT_LEAKY_RELU,
    "tanh": ACT_TANH,
    "sigmoid": ACT_SIGMOID,
    "elu": ACT_ELU,
    "softplus": ACT_SOFTPLUS,
}
LEAKY_SLOPE = 0.01  # the negative-side slope of leaky_relu

LOSS_MSE, LOSS_SOFTMAX_CE, LOSS_SIGMOID_BCE = range(3)
LOSSES = {"mse": LOSS_MSE, "cross_entropy": LOSS_SOFTMAX_CE, "binary_cross_entropy": LOSS_SIGMOID_BCE}

OPT_SGD, OPT_ADAM, OPT_ADAMW = range(3)

# Indices into the float hyperparameter vector ``hp`` (float64) of ``train_epoch``.
HP_LR, HP_BETA1, HP_BETA2, HP_EPS, HP_WD, HP_L2, HP_MOMENTUM, HP_CLIP, HP_DROPOUT = range(9)
HP_NOISE, HP_MIXUP = 9, 10
N_HP = 11

# Indices into the int64 settings vector ``settings`` of ``train_epoch``: the optimizer code
# (``OPT_*``), Nesterov on/off, the batch size, the optimizer's step count, the image height and
# width of the shift augmentation (0: off), and shuffling on/off.
(SETTING_OPTIMIZER, SETTING_NESTEROV, SETTING_BATCH, SETTING_STEP, SETTING_IMG_H, SETTING_IMG_W,
 SETTING_SHUFFLE) = range(7)
N_SETTINGS = 7

#: numba options of every CPU kernel: cached on disk, GIL released, NumPy's error model (a
#: division by zero gives inf, not an exception), and the fast-math flags that let float loops
#: vectorise without changing results beyond reassociation.
CPU_JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "reassoc", "nsz", "arcp"})
