"""The Optuna journal lock: exclusive between processes, and gone the moment its holder is killed
(Optuna's default lock file would stall everyone else for its 30 s grace period)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from nbnet.experiment.sweep import open_storage
from nbnet.experiment.sweep.storage import FlockJournalLock

fcntl = pytest.importorskip("fcntl", reason="flock needs a POSIX system")

HOLDER = textwrap.dedent(
    """
    import sys, time
    from nbnet.experiment.sweep.storage import FlockJournalLock
    lock = FlockJournalLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    sys.stdin.readline()  # hold it until killed
    """
)


def hold_in_child(journal: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, journal], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def in_thread(fn):
    done = threading.Event()
    threading.Thread(target=lambda: (fn(), done.set()), daemon=True).start()
    return done


@pytest.mark.parametrize("through", ["the lock", "an nbnet study"])
def test_a_killed_holder_releases_the_journal_at_once(tmp_path, through):
    journal = str(tmp_path / "study.log")
    if through == "the lock":
        lock = FlockJournalLock(journal)
        work = lambda: (lock.acquire(), lock.release())  # noqa: E731
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(journal)
        work = lambda: optuna.create_study(study_name="s", storage=storage)  # noqa: E731  (a journal write)
    child = hold_in_child(journal)
    try:
        done = in_thread(work)
        assert not done.wait(0.5), "the write went through while another process held the lock"
        t0 = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert done.wait(10), "the lock of the killed process was not released"
        assert time.monotonic() - t0 < 5  # not Optuna's 30 s grace period
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_release_without_acquire_is_an_error(tmp_path):
    lock = FlockJournalLock(str(tmp_path / "x.log"))
    with pytest.raises(RuntimeError):
        lock.release()
    assert lock.acquire() is True
    lock.release()
