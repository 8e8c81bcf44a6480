"""Process liveness: is a process (or a process group) still running, and since when.

A killed process stays a zombie until its parent or init reaps it (seconds in some containers), so
each check treats a zombie as dead.
"""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid) -> bool:
    """Whether process ``pid`` runs (not a zombie); a malformed pid is not alive."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        import psutil  # heavy: imported on first use
    except ImportError:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def pid_started(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), or None if it is gone or a zombie: with the
    pid it names one process, even after the pid is reused."""
    try:
        import psutil  # heavy: imported on first use

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except Exception:
        return None


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a live (non-zombie) member."""
    proc = Path("/proc")
    if proc.is_dir():
        for d in proc.iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
