"""Atomic files: a reader sees the old file or the whole new one, never a part.

A write that fails because the disk is full, failing or read-only raises
:class:`~nbnet.errors.StoreError` with one line naming the file and how to resume
(:func:`disk_error_message`); the temporary file is removed and the old file stays as it was."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from nbnet.errors import NbnetError, StoreError

#: errno → what the user is told; the errors a retry cannot fix but freeing space or fixing the disk can.
DISK_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "I/O error",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file size limit exceeded",
}
RESUME = "free space (or fix the disk) and run the same command again to resume"


def disk_error_message(e: BaseException, what: str) -> str | None:
    """``"no space left on device while writing WHAT; free space … to resume"`` for an OSError of
    :data:`DISK_ERRORS`, else None."""
    reason = DISK_ERRORS.get(getattr(e, "errno", None)) if isinstance(e, OSError) else None
    if reason is None:
        return None
    return f"{reason} while writing {what}; {RESUME}"


def atomic_write(path: str | os.PathLike, write, *, mode: int | None = None) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it into place
    (with permissions ``mode`` if given: the temporary file is created 0600)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise NbnetError(f"folder {str(path.parent)!r} does not exist; create it first")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        msg = disk_error_message(e, str(path))
        if msg is not None:
            raise StoreError(msg) from e
        raise
