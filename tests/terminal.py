"""Running a command with its stdout on a real pseudo-terminal (``pty``), as a user's shell would."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios


def run_on_terminal(argv: list[str], *, cwd, env=None, columns: int = 160, timeout: float = 600):
    """``argv`` with stdin and stdout on a pseudo-terminal of ``columns`` columns and stderr on a
    pipe; returns ``(exit status, what the terminal showed, stderr)``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    chunks = []
    try:
        while select.select([master], [], [], timeout)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal (it exited)
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=timeout)
        err = proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace"), err
