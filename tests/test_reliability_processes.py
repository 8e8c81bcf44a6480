"""Telling dead processes from live ones: a worker killed with SIGKILL stays a zombie until init
reaps it (about a second on some container inits); it must count as dead at once, or a sweep
resumed right after the kill leaves the dead worker's trial RUNNING."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

import psutil

from nbnet._sys.procs import pid_alive, pid_started

PARENT = ("import subprocess, sys, time; "
          "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
          "print(c.pid, flush=True); time.sleep(600)")


def test_a_killed_unreaped_worker_counts_as_dead():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    worker = int(parent.stdout.readline())
    try:
        assert pid_alive(worker) and pid_started(worker) is not None
        exited = os.pidfd_open(worker)  # readable once the worker has died (zombie or reaped)
        os.killpg(parent.pid, signal.SIGKILL)  # the sweep and its worker, as a crash does
        parent.wait()
        # SIGKILL is delivered asynchronously: wait for the kernel to end the worker, not a fixed time
        assert select.select([exited], [], [], 60)[0], "the killed worker did not die within 60 s"
        os.close(exited)
        try:
            zombie = psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            zombie = False  # reaped already: the check below still has to say dead
        assert not pid_alive(worker), f"zombie={zombie}"
        assert pid_started(worker) is None
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert pid_alive(os.getpid()) and pid_started(os.getpid()) is not None
