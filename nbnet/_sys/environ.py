"""Environment variables for the length of a block, restored exactly afterwards."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def environ(**values: str | None):
    """Set each variable of ``values`` (unset it, for None) while the block runs; afterwards each
    is as it was before, set or unset, whatever the block did to it meanwhile."""
    saved = {k: os.environ.get(k) for k in values}
    _apply(values)
    try:
        yield
    finally:
        _apply(saved)


def _apply(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
