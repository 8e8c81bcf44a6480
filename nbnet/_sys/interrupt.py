"""A clean stop on Ctrl-C (SIGINT) or SIGTERM for long jobs: sweeps and their workers.

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the program happens to be, for
instance half-way through an SQLite write of MLflow or an append to Optuna's journal; the trial
is then left RUNNING in both and the sweep's bookkeeping is wrong. Instead, while
:func:`graceful` is active, the first SIGINT or SIGTERM only *requests* a stop:

* the training loop sees it at the next epoch boundary through the :func:`check` callback,
  which raises :class:`Interrupted` (a ``KeyboardInterrupt``), so the trial's run is closed
  KILLED and the trial marked, from a safe point;
* the sweep loop takes no new trial, closes its parent run and exits with status 130;
* a second signal raises ``KeyboardInterrupt`` at once (abort now).

The request travels to spawned worker processes through a shared ``multiprocessing`` event, so a
SIGTERM sent to the parent alone (``kill PID``, a batch scheduler) stops the workers too, and a
Ctrl-C that reaches the whole process group is handled once per process.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

_event = None  # threading.Event or multiprocessing Event: "a stop was requested"
_signals = 0


class Interrupted(KeyboardInterrupt):
    """Raised at an epoch boundary after a stop was requested."""

    def __init__(self, msg: str = "interrupted"):
        super().__init__(msg)


def requested() -> bool:
    """True once a stop was requested in this process (or by the parent, through the event)."""
    return _event is not None and _event.is_set()


def check(epoch: int | None = None, logs: dict | None = None) -> None:
    """Training callback: raise :class:`Interrupted` when a stop was requested."""
    if requested():
        raise Interrupted(f"interrupted at epoch {epoch}" if epoch is not None else "interrupted")


def request() -> None:
    """Ask for a stop, as the first signal does."""
    if _event is not None:
        _event.set()


def _handler(announce: bool):
    def handle(signum, frame):
        global _signals
        _signals += 1
        if _signals > 1:
            raise KeyboardInterrupt
        _event.set()
        if announce:
            name = signal.Signals(signum).name
            print(f"nbnet: {name}: stopping after the current epoch (press Ctrl-C again to abort now)",
                  file=sys.stderr, flush=True)

    return handle


@contextlib.contextmanager
def graceful(event=None, *, announce: bool = True):
    """Within this block SIGINT/SIGTERM request a stop instead of raising (see the module
    docstring). ``event``: a shared ``multiprocessing`` event (workers pass the parent's); by
    default a fresh one. Off the main thread signals cannot be caught: the block then only
    provides the event. Yields the event."""
    global _event, _signals
    saved_event, saved_count = _event, _signals
    _event = event if event is not None else (_event if _event is not None else threading.Event())
    _signals = 0
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, _handler(announce))
    try:
        yield _event
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        _event, _signals = saved_event, saved_count
