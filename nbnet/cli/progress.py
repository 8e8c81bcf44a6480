"""Live progress of ``nbnet sweep``, ``train`` and ``update``.

On a terminal: a tqdm bar (a sweep's trials done of N with complete / pruned / failed counts, the
best value so far, elapsed time, ETA and each running trial's epoch; a training run's epochs with
its loss and validation metric), finished trials' lines scrolling above it. Anywhere else (a pipe,
a file, CI): plain lines, one per trial or epoch. The stream is ``sys.stdout`` at the time the
display is made, which ``--json`` points at stderr (:func:`nbnet.cli.common.json_stdout`).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from nbnet.kernels import backend
from nbnet.kernels.compile import cache_is_cold

#: What a cold compile costs, measured in docs/performance.md ("Compile cache and cold start").
COLD_COMPILE = "about 10 s"


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def compile_notice(device: str = "cpu", stream=None) -> bool:
    """Print one line when the CPU kernels will be compiled rather than loaded from numba's cache
    (the first run on a machine); returns whether it did."""
    if device == "cuda" or not cache_is_cold(backend("cpu")):
        return False
    print(f"compiling nbnet's kernels for this machine: {COLD_COMPILE}, once (later runs load them from numba's cache)",
          file=stream or sys.stdout, flush=True)
    return True


def _bar(total: int, initial: int, desc: str, unit: str, stream) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=True,
                mininterval=0.2, smoothing=0.1)


class EpochProgress:
    """Training callback: each epoch's loss and validation values, as a bar on a terminal or one
    line per epoch elsewhere. ``relative``: number the epochs from the first one seen (``nbnet
    update`` continues a model's count); else the estimator's own numbers (a resumed ``nbnet
    train`` starts past 1). ``keys``: the values shown, those present in the epoch's logs."""

    def __init__(self, total: int, *, label: str, keys=("loss", "val_loss"), relative: bool = False, stream=None):
        self.total, self.label, self.keys, self.relative = total, label, tuple(keys), relative
        self.stream = stream or sys.stdout
        self.offset = None
        self.bar = None

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.offset is None:
            self.offset = epoch - 1 if self.relative else 0
        n = epoch - self.offset
        shown = [k for k in self.keys if k in logs]
        if not any(k.startswith("val_") and k != "val_loss" for k in shown):  # the task's own score
            shown += [k for k in ("val_accuracy", "val_r2") if k in logs][:1]
        values = "  ".join(f"{k} {logs[k]:.4f}" for k in shown)
        if not is_terminal(self.stream):
            secs = f"  {logs['epoch_time']:.2f}s" if "epoch_time" in logs else ""
            print(f"epoch {n:>3}/{self.total}  {values}{secs}", file=self.stream, flush=True)
            return
        if self.bar is None:
            self.bar = _bar(self.total, n - 1, self.label, "epoch", self.stream)
        self.bar.set_postfix_str(values, refresh=False)
        self.bar.update(n - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class SweepProgress:
    """The sweep's display, fed :func:`nbnet.experiment.sweep.run_sweep`'s progress events (from
    every worker process, in the sweep's process): ``start``, ``epoch``, ``trial`` and ``end``."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stdout
        self.tty = is_terminal(self.stream)
        self.bar = None
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.best = None
        self.metric, self.maximize = "value", True
        self.running: dict[int, tuple] = {}  # worker -> (trial, epoch, epochs)
        self.shown = 0.0

    def __call__(self, event: dict) -> None:
        getattr(self, "on_" + event["kind"], lambda e: None)(event)

    def on_start(self, e: dict) -> None:
        self.counts.update(COMPLETE=e["complete"], PRUNED=e["pruned"], FAIL=e["failed"])
        self.best, self.metric, self.maximize = e["best"], e["metric"], e["direction"] == "maximize"
        if self.tty:
            self.bar = _bar(e["total"], min(e["done"], e["total"]), self.label, "trial", self.stream)
            self._postfix(force=True)

    def on_epoch(self, e: dict) -> None:
        self.running[e["worker"]] = (e["trial"], e["epoch"], e["epochs"])
        self._postfix()

    def on_trial(self, e: dict) -> None:
        self.running.pop(e["worker"], None)
        state = e["state"]
        self.counts[state] = self.counts.get(state, 0) + 1
        v = e.get("value")
        if state == "COMPLETE" and v is not None and (self.best is None or (v > self.best) == self.maximize):
            self.best = v
        if self.bar is None:
            print(e["line"], file=self.stream, flush=True)
            return
        self.bar.write(e["line"], file=self.stream)
        self._postfix(force=True)
        self.bar.update(1)

    def on_end(self, e: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _postfix(self, force: bool = False) -> None:
        if self.bar is None or (not force and time.monotonic() - self.shown < 0.2):
            return
        self.shown = time.monotonic()
        c = self.counts
        parts = [f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed"]
        if self.best is not None:
            parts.append(f"best {self.metric} {self.best:.4f}")
        parts += [f"trial {t}: epoch {ep}/{n}" for _, (t, ep, n) in sorted(self.running.items())]
        self.bar.set_postfix_str(" | ".join(parts), refresh=True)
