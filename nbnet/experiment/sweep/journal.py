"""The study journal file, kept readable after a crash or a full disk.

Optuna's journal is one JSON record per line, appended under a lock. A process that dies (power
loss, ``kill -9``) or runs out of space in the middle of an append leaves a *torn tail*: the start
of a record without its newline. Optuna's reader skips such a tail, but its next append would be
glued to it, and from then on every read of the study fails. :class:`RepairingJournalBackend`
therefore checks the tail under the journal's lock before each append and, if it is torn:

- moves the torn bytes to a side file ``<journal>.torn-<UTC time>-<offset>`` (kept, never deleted);
- prints one warning line on stderr;
- cuts the journal back to its last whole record and appends as usual.

A tail that already has a plain Optuna process's record glued to it (the torn start, then a whole
record and its newline) keeps that record: only the torn start goes to the side file.

A record that is complete (it has its newline and more records follow) but does not parse is not a
crash artefact and is never dropped: reading the journal raises :class:`~nbnet.errors.StoreError`
naming the file and the line. Writing it (ENOSPC, EIO, a read-only disk) raises a one-line
``StoreError`` naming the journal too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from nbnet._sys.atomic import disk_error_message
from nbnet.errors import StoreError

#: How far back from the end the tail is searched for the last whole record, at most.
_TAIL_WINDOW = 1 << 20


def _parses(record: bytes) -> bool:
    try:
        return isinstance(json.loads(record), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False


def _salvage(line: bytes) -> int | None:
    """Where a whole record starts inside a torn line that a plain Optuna append was glued to
    (``line`` ends with its newline), or None when none does."""
    start = line.find(b"{", 1)
    while start != -1:
        if _parses(line[start:]):
            return start
        start = line.find(b"{", start + 1)
    return None


def torn_tail(path: str) -> tuple[int, int, int | None] | None:
    """``(cut, end, keep)`` when the journal at ``path`` ends in a torn record: the bytes from
    ``cut`` to ``end`` are the torn tail, of which ``[keep, end)`` is a whole record to keep
    (None: nothing to keep). None when the tail is whole."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return None
        start = max(0, end - _TAIL_WINDOW)
        f.seek(start)
        tail = f.read()
    if tail.endswith(b"\n"):
        nl = tail.rfind(b"\n", 0, len(tail) - 1)
        last = tail[nl + 1:]
        if _parses(last):
            return None
        keep = _salvage(last)
        return start + nl + 1, end, None if keep is None else start + nl + 1 + keep
    nl = tail.rfind(b"\n")
    return start + nl + 1, end, None


def _side_file(path: str, cut: int) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    side = Path(f"{path}.torn-{stamp}-{cut}")
    n = 1
    while side.exists():
        side, n = Path(f"{path}.torn-{stamp}-{cut}.{n}"), n + 1
    return side


def repair_tail(path: str, *, announce: bool = True) -> Path | None:
    """Cut a torn tail off the journal at ``path`` (call it holding the journal's lock): the torn
    bytes go to a side file, whose path is returned (None: the tail was whole)."""
    found = torn_tail(path)
    if found is None:
        return None
    cut, end, keep = found
    with open(path, "rb") as f:
        f.seek(cut)
        torn = f.read(end - cut)
    kept = b"" if keep is None else torn[keep - cut:]
    if keep is not None:
        torn = torn[:keep - cut]
    side = _side_file(path, cut)
    with open(side, "xb") as s:  # first keep the bytes, then cut them
        s.write(torn)
        s.flush()
        os.fsync(s.fileno())
    with open(path, "r+b") as f:
        f.truncate(cut)
        f.seek(cut)
        f.write(kept)
        f.flush()
        os.fsync(f.fileno())
    if announce:
        what = f"{len(torn)} bytes of a record cut short by a crash or a full disk"
        more = "; the whole record after them was kept" if kept else ""
        print(f"nbnet: warning: the study journal {path} ended in {what}; moved them to {side.name}{more} and "
              "went on", file=sys.stderr, flush=True)
    return side


def corrupt_line(path: str) -> tuple[int, str] | None:
    """(line number, why) of the first complete record of the journal that does not parse, or None."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                return None  # the torn tail: skipped by readers, cut before the next append
            try:
                json.loads(line)
            except ValueError as e:
                return number, str(e).splitlines()[0][:120]
    return None


class RepairingJournalBackend(JournalFileBackend):
    """Optuna's ``JournalFileBackend`` that repairs a torn tail under the lock before appending,
    turns a corrupt record into one ``StoreError`` line, and a failed write (full disk, I/O error,
    read-only file system) into one ``StoreError`` line naming the journal."""

    def __init__(self, file_path: str, lock_obj=None):
        super().__init__(file_path, lock_obj=lock_obj)
        self.path = file_path
        self.lock = lock_obj or JournalFileSymlinkLock(file_path)  # the lock Optuna itself would take

    def read_logs(self, log_number_from: int):
        try:
            yield from super().read_logs(log_number_from)
        except ValueError as e:  # json.JSONDecodeError, or "Invalid log format." of a mid-file line without newline
            where = corrupt_line(self.path)
            line = f"line {where[0]} ({where[1]})" if where else str(e).splitlines()[0][:120]
            raise StoreError(f"the study journal {self.path} has a corrupt record at {line}; it is not a torn "
                             "tail, so nbnet keeps it: restore the file from a backup or delete that line, then "
                             "run the command again") from e

    def append_logs(self, logs: list[dict]) -> None:
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        self.lock.acquire()
        try:
            repair_tail(self.path)
            with open(self.path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            msg = disk_error_message(e, f"the study journal {self.path}")
            if msg is None:
                raise
            raise StoreError(msg) from e
        finally:
            self.lock.release()
