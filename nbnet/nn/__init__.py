"""The network and its training: estimators, the epoch loop, callbacks, checkpoints."""
