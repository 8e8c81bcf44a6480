"""Atomic files: a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nbnet.errors import NbnetError


def atomic_write(path: str | os.PathLike, write, *, mode: int | None = None) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it into place
    (with permissions ``mode`` if given: the temporary file is created 0600)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise NbnetError(f"folder {str(path.parent)!r} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
