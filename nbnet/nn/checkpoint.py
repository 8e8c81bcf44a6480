"""Crash-safe training: atomic per-epoch checkpoints and exact resume.

:class:`Checkpoint` is a training callback in the manner of Keras' ``BackupAndRestore``: pass the
same one to the same ``fit`` again after a crash (or re-run the same ``nbnet train`` command) and
training continues from the last checkpoint instead of from scratch.

* Every ``every`` epochs the whole training state is written atomically (temporary file, fsync,
  rename: :func:`nbnet.io.write_bundle`): weights, the optimizer's step count and moment buffers,
  the SplitMix64 generator state, the epoch count, the history and the early-stopping state
  (best weights, best validation loss, epochs without improvement). A kill at any instant leaves
  either the previous checkpoint or the new one, never half of one.
* On ``fit``, if the file exists, its state replaces the fresh initialisation and only the
  remaining epochs run. Because the generator state is restored exactly, the resumed fit ends
  with the *same bits* as an uninterrupted one from the same seed, provided the thread count (and
  so the BLAS summation order) is the same.
* A checkpoint is also a valid model file: ``nbnet.load(path)`` returns the estimator as it was at
  that epoch.
* When the fit completes, the checkpoint is deleted (``delete_on_success=True``), so re-running a
  finished command trains afresh rather than "resuming" a finished fit.

A checkpoint records a fingerprint of the estimator's hyperparameters (all but ``epochs``,
``verbose``, ``n_threads`` and ``device``, which may change between the crash and the resume) and
the caller's optional ``fingerprint`` string (e.g. the data's hash). Resuming with a checkpoint
from a different fit raises :class:`~nbnet.errors.NbnetError` rather than silently mixing them.

Example
-------
>>> from nbnet.nn.checkpoint import Checkpoint
>>> clf = MLPClassifier((64,), epochs=50, seed=0)                    # doctest: +SKIP
>>> clf.fit(X, y, callbacks=[Checkpoint("run.ckpt", every=5)])       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from nbnet._sys import locks
from nbnet.errors import NbnetError
from nbnet.io import read_bundle, write_bundle
from nbnet.io import json_value
from nbnet.nn.callbacks import EarlyStoppingState
from nbnet.nn.estimator import from_bundle

#: Hyperparameters that may differ between the killed fit and its resume.
_FREE_PARAMS = frozenset({"epochs", "verbose", "n_threads", "device"})


def params_fingerprint(estimator, extra: str | None = None) -> str:
    """SHA-256 over the estimator's hyperparameters (those that change the result) and ``extra``."""
    params = {k: json_value(v) for k, v in estimator.get_params().items() if k not in _FREE_PARAMS}
    blob = json.dumps([type(estimator).__name__, params, extra], sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


def peek(path) -> dict | None:
    """The ``checkpoint`` record of the file at ``path`` (``epoch``, ``extra``, ...), or None when
    there is no such file. A damaged file raises NbnetError."""
    path = Path(path)
    if not path.exists():
        return None
    meta, _ = read_bundle(path)
    ck = meta.get("checkpoint")
    if not isinstance(ck, dict):
        raise NbnetError(f"{str(path)!r} is a model file, not a checkpoint; pass another checkpoint path")
    return ck


def config_checkpoint_path(name: str, config: dict, data_hash: str, root=None) -> Path:
    """Where ``nbnet train --checkpoint-every`` keeps the checkpoint of one experiment config:
    ``<root or cwd>/mlruns/checkpoints/NAME-HASH.ckpt``, the hash over the config (without the
    settings that may change on resume) and the data, so re-running the same command finds it."""
    cfg = json.loads(json.dumps(config, default=str))
    for key in ("epochs", "n_threads", "verbose", "device"):
        cfg.get("train", {}).pop(key, None)
    cfg.pop("search", None)
    digest = hashlib.sha256(json.dumps([cfg, data_hash], sort_keys=True).encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    folder = Path(root or Path.cwd()).resolve() / "mlruns" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{safe}-{digest}.ckpt"


def history_logs(estimator, upto: int) -> list[tuple[int, dict]]:
    """``(epoch, logs)`` of epochs 1..upto rebuilt from ``history_``, with the keys the training
    loop reports live (``loss``, ``grad_norm_l``, ``val_loss``, ``val_<score>``, ``epoch_time``, ``lr``,
    and ``act_*_l`` where activation statistics were recorded):
    a resumed run replays them to its tracker so its curves start at epoch 1."""
    h = estimator.history_
    score_key = estimator.val_score_key
    out = []
    for i in range(min(upto, len(h["loss"]))):
        logs = {"loss": h["loss"][i]}
        for j, g in enumerate(h["grad_norm"][i]):
            logs[f"grad_norm_{j}"] = g
        for key in ("val_loss", score_key):
            v = h[key][i]
            if v is not None and np.isfinite(v):
                logs[key] = v
        logs["epoch_time"] = h["epoch_time"][i]
        rates = h.get("lr", [])  # the learning rate (older model files have none)
        if i < len(rates) and rates[i] is not None and np.isfinite(rates[i]):
            logs["lr"] = rates[i]
        for key in ("act_mean", "act_std", "act_dead"):  # nbnet.viz.ActivationStats, when it ran
            rows = h.get(key, [])
            for j, v in enumerate(rows[i] if i < len(rows) and rows[i] is not None else ()):
                if v is not None and np.isfinite(v):
                    logs[f"{key}_{j}"] = v
        out.append((i + 1, logs))
    return out


def checkpoint_path_for(output: str | os.PathLike) -> Path:
    """The checkpoint file that belongs to a model output path: ``DIR/.NAME.ckpt``."""
    out = Path(output)
    return out.with_name(f".{out.name}.ckpt")


class Checkpoint:
    """Training callback: write an atomic checkpoint every ``every`` epochs; resume from it.

    Parameters
    ----------
    path : file to write (its folder must exist).
    every : write after each epoch whose number is a multiple of ``every`` (epochs count from 1).
    resume : on ``fit``, continue from ``path`` when it exists (default True).
    delete_on_success : remove ``path`` when the fit finishes normally (default True).
    fingerprint : optional string identifying the data/config; a checkpoint written with another
        fingerprint is refused on resume.
    extra : JSON-able facts saved with each checkpoint (e.g. the MLflow run id); :func:`peek`
        reads them back without loading the weights.

    After ``fit``, ``resumed_from_epoch`` is the epoch the fit continued from (0: from scratch) and
    ``writes`` the number of checkpoints written.
    """

    def __init__(self, path, every: int = 1, *, resume: bool = True, delete_on_success: bool = True,
                 fingerprint: str | None = None, extra: dict | None = None):
        if not (isinstance(every, (int, np.integer)) and not isinstance(every, bool) and every >= 1):
            raise NbnetError(f"checkpoint every must be a positive number of epochs, got {every!r}")
        self.path = Path(path)
        self.every = int(every)
        self.resume = resume
        self.delete_on_success = delete_on_success
        self.fingerprint = fingerprint
        self.extra = dict(extra or {})
        self.resumed_from_epoch = 0
        self.writes = 0
        self._est = None
        self._fd: int | None = None

    # --- callback protocol ----------------------------------------------------------------------
    def on_train_begin(self, estimator) -> None:
        self._est = estimator
        self.resumed_from_epoch = 0
        self._lock()
        self._remove_stale_temporaries()
        if self.resume and self.path.exists():
            self.restore(estimator)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self._est is not None and epoch % self.every == 0:
            self.save(self._est)

    def __call__(self, epoch: int, logs: dict) -> None:  # plain-callable form of the protocol
        self.on_epoch_end(epoch, logs)

    def on_train_end(self, estimator) -> None:
        self._est = None
        if self.delete_on_success:
            self.path.unlink(missing_ok=True)
        self._unlock()

    def on_exception(self, estimator, exc: BaseException) -> None:
        """The fit failed or was interrupted: keep the checkpoint for the resume, release the lock."""
        self._est = None
        self._unlock()

    def _lock(self) -> None:
        """Exclusive ``flock`` on the hidden file ``.<name>.lock`` next to the checkpoint, for the
        fit: two fits writing one checkpoint (e.g. the same ``nbnet train`` started twice) would
        overwrite each other's state. The kernel drops the lock when the process dies, so a killed
        fit never blocks its resume (its empty lock file is reused)."""
        self._unlock()  # this object's earlier fit, if it raised
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise NbnetError(f"checkpoint folder {str(folder)!r} does not exist; create it first")
        self._lock_path = folder / f".{self.path.name}.lock"
        try:
            self._fd = locks.acquire(self._lock_path, blocking=False)
        except BlockingIOError:
            raise NbnetError(f"checkpoint {str(self.path)!r} is in use by another running fit; wait for it to "
                             "finish or give this one another checkpoint path") from None

    def _unlock(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            Path(self._lock_path).unlink(missing_ok=True)  # while still holding it
            locks.release(fd)

    # --- state ------------------------------------------------------------------------------------
    def save(self, estimator) -> None:
        """Write the estimator's full training state to ``path`` atomically."""
        meta, arrays = estimator.to_bundle()
        es = estimator.training_state().early_stopping
        ck = {"epoch": int(estimator.n_epochs_), "fingerprint": params_fingerprint(estimator, self.fingerprint),
              "es": None, "extra": self.extra}
        if es is not None:
            ck["es"] = {"best_loss": None if not np.isfinite(es.best_loss) else float(es.best_loss),
                        "best_epoch": int(es.best_epoch), "wait": int(es.wait),
                        "has_params": es.best_params is not None}
            if es.best_params is not None:
                arrays = dict(arrays, **{"ckpt.es_best_params": es.best_params})
        meta = dict(meta, checkpoint=ck)
        write_bundle(self.path, meta, arrays)
        self.writes += 1

    def restore(self, estimator) -> None:
        """Replace a freshly initialised estimator's state by the checkpoint's."""
        meta, arrays = read_bundle(self.path)
        ck = meta.get("checkpoint")
        where = str(self.path)
        if not isinstance(ck, dict):
            raise NbnetError(f"{where!r} is a model file, not a checkpoint; pass another checkpoint path")
        if ck.get("fingerprint") != params_fingerprint(estimator, self.fingerprint):
            raise NbnetError(
                f"checkpoint {where!r} was written by a fit with other hyperparameters or data; "
                "delete it to start afresh or restore the original settings"
            )
        es_params = arrays.pop("ckpt.es_best_params", None)
        saved = from_bundle(meta, arrays)
        if not np.array_equal(saved.layout_.sizes, estimator.layout_.sizes):
            raise NbnetError(
                f"checkpoint {where!r} has layer sizes {saved.layout_.sizes.tolist()}, this fit "
                f"{estimator.layout_.sizes.tolist()}; delete it to start afresh"
            )
        if saved.n_epochs_ > estimator.epochs:
            raise NbnetError(
                f"checkpoint {where!r} is at epoch {saved.n_epochs_}, beyond epochs={estimator.epochs}; "
                "raise epochs or delete the checkpoint"
            )
        es = ck.get("es")
        if es:
            best_loss = np.inf if es["best_loss"] is None else float(es["best_loss"])
            es = EarlyStoppingState(best_loss, es_params, int(es["best_epoch"]), int(es["wait"]))
        estimator.set_training_state(saved.training_state()._replace(early_stopping=es or None))
        estimator.history_ = {k: list(v) for k, v in saved.history_.items()}
        self.resumed_from_epoch = saved.n_epochs_

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of an earlier process killed in the middle of a write."""
        folder = self.path.parent if str(self.path.parent) else Path(".")
        for tmp in folder.glob(f".{self.path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
