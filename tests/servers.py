"""Real server processes for end-to-end tests: a free port, and an ``nbnet`` command that runs a
server (``nbnet serve``, ``nbnet ui``) in its own process group, announcing its URL on stdout."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def cli_server(argv: list[str], pattern: str, log_path: Path, *, env: dict | None = None, timeout: float = 240):
    """``python -m nbnet ARGV`` in a new session; yields ``(url, process, server process group)``
    once a stdout line matches ``pattern`` (groups: the URL, the group id). On exit a process
    still running gets SIGTERM (nbnet stops the server's group, then exits), then SIGKILL."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "nbnet", *argv], env=env, stdout=subprocess.PIPE, stderr=log,
                            text=True, start_new_session=True)
    ready, found = threading.Event(), {}

    def drain():  # keep reading so the server never blocks on a full pipe
        for line in proc.stdout:
            m = re.search(pattern, line)
            if m and not ready.is_set():
                found["url"], found["pgid"] = m.group(1), int(m.group(2))
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert ready.wait(timeout=timeout), f"nbnet {argv[0]} did not report its URL within {timeout} s"
        assert "url" in found, f"nbnet {argv[0]} exited ({proc.poll()}): {Path(log_path).read_text()[-2000:]}"
        yield found["url"], proc, found["pgid"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for pgid in {proc.pid, found.get("pgid")} - {None}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)  # nothing is left when nbnet stopped its group itself
        proc.wait(timeout=60)
        log.close()
