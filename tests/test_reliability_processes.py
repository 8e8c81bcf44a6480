"""Telling dead processes from live ones: a worker killed with SIGKILL stays a zombie until init
reaps it (about a second on some container inits); it must count as dead at once, or a sweep
resumed right after the kill leaves the dead worker's trial RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from nbnet.experiment.search import _pid_started
from nbnet.experiment.tracking import _pid_alive

PARENT = ("import subprocess, sys, time; "
          "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
          "print(c.pid, flush=True); time.sleep(600)")


def test_a_killed_unreaped_worker_counts_as_dead():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    worker = int(parent.stdout.readline())
    try:
        assert _pid_alive(worker) and _pid_started(worker) is not None
        os.killpg(parent.pid, signal.SIGKILL)  # the sweep and its worker, as a crash does
        parent.wait()
        try:
            zombie = psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            zombie = False  # reaped already: the check below still has to say dead
        assert not _pid_alive(worker), f"zombie={zombie}"
        assert _pid_started(worker) is None
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert _pid_alive(os.getpid()) and _pid_started(os.getpid()) is not None
