"""The safe model format: one zip file holding ``meta.json`` and ``.npy`` arrays.

* Written atomically: a temporary file in the same folder, fsync, then ``os.replace``.
* Read with ``allow_pickle=False``; no code is ever executed when loading.
* ``meta.json`` carries the format name and version, nbnet's version and a SHA-256 checksum
  over every array's name, dtype, shape and bytes; a truncated, corrupt, foreign or newer
  file raises :class:`~nbnet.errors.NbnetError` with one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from nbnet._sys.atomic import atomic_write
from nbnet.errors import NbnetError

FORMAT = "nbnet-model"
FORMAT_VERSION = 1
META = "meta.json"
#: Model references that name an MLflow model instead of a file (``nbnet.load``, ``nbnet predict``,
#: ``nbnet serve`` resolve them through the tracking store).
MLFLOW_URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")
#: Array member names: no folders, no "..", nothing but what write_bundle produces.
_MEMBER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*\.npy")


def checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_bundle(path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``meta`` (JSON-able) and ``arrays`` (numeric NumPy arrays) atomically to ``path``."""
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise NbnetError(f"array {name!r} has dtype object; only numeric arrays can be saved")
    meta = dict(meta, format=FORMAT, format_version=FORMAT_VERSION, checksum=checksum(arrays))

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(META, json.dumps(meta, indent=1, sort_keys=True))
            for name, a in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
                z.writestr(f"{name}.npy", buf.getvalue())

    atomic_write(path, write)


def read_bundle(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a file written by :func:`write_bundle`."""
    path = Path(path)
    if not path.is_file():
        raise NbnetError(f"model file {str(path)!r} not found; check the path")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if META not in names:
                raise NbnetError(f"{str(path)!r} is not an nbnet model file (no {META})")
            _check_members(path, z)
            meta = json.loads(z.read(META))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise NbnetError(f"{str(path)!r} is not an nbnet model file (format is not {FORMAT!r})")
            version = meta.get("format_version")
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise NbnetError(
                    f"{str(path)!r} has model format version {version!r}; this nbnet reads up to "
                    f"{FORMAT_VERSION}: upgrade nbnet"
                )
            arrays = {}
            for name in names:
                if name == META:
                    continue
                if not name.endswith(".npy"):
                    raise NbnetError(f"{str(path)!r} holds an unexpected member {name!r}; it is not a clean nbnet model")
                _check_npy_size(path, z, name)
                with z.open(name) as f:
                    arrays[name[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
    except NbnetError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, KeyError, NotImplementedError) as e:
        raise NbnetError(f"{str(path)!r} is corrupt or truncated ({type(e).__name__}); re-save or re-download it") from None
    except RecursionError:  # absurdly nested meta.json
        raise NbnetError(f"{str(path)!r} is not a safe nbnet model file: {META} is nested too deeply") from None
    except ValueError as e:  # pickled object arrays, bad npy headers, bad JSON
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NbnetError(f"{str(path)!r} is not a safe nbnet model file: {msg}") from None
    if checksum(arrays) != meta.get("checksum"):
        raise NbnetError(f"{str(path)!r} failed its checksum (the file was modified or damaged); re-save it")
    return meta, arrays


def _check_members(path: Path, z: zipfile.ZipFile) -> None:
    """Refuse what write_bundle never writes: odd names (folders, ".."), a name twice, and
    compressed members (a small file that inflates to gigabytes)."""
    seen = set()
    for info in z.infolist():
        name = info.filename
        if name != META and not _MEMBER.fullmatch(name):
            raise NbnetError(f"{str(path)!r} holds an unexpected member {name!r}; it is not a clean nbnet model")
        if name in seen:
            raise NbnetError(f"{str(path)!r} holds member {name!r} twice; it is not a clean nbnet model")
        seen.add(name)
        if info.compress_type != zipfile.ZIP_STORED:
            raise NbnetError(f"{str(path)!r} holds a compressed member {name!r}; nbnet writes uncompressed files, re-save it")


def _check_npy_size(path: Path, z: zipfile.ZipFile, name: str) -> None:
    """The shape and dtype an .npy header claims must match the bytes stored, so a crafted header
    cannot make the reader allocate more memory than the file holds."""
    info = z.getinfo(name)
    with z.open(name) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version} in {name}")
        data_bytes = info.file_size - f.tell()
    if dtype.hasobject:
        raise ValueError(f"{name} holds Python objects (pickle), which nbnet never loads")
    if int(np.prod(shape, dtype=object)) * dtype.itemsize != data_bytes:
        raise NbnetError(f"{str(path)!r} member {name!r} claims shape {shape} but holds {data_bytes} bytes; the file is damaged")


def nan_to_none(v):
    """NaN (and inf) as None, inside lists too: JSON has no NaN."""
    if isinstance(v, (list, tuple)):
        return [nan_to_none(x) for x in v]
    return None if isinstance(v, float) and not np.isfinite(v) else v


def json_value(v):
    """A hyperparameter value as JSON holds it: tuples as lists, NumPy scalars as Python numbers."""
    if isinstance(v, tuple):
        return [json_value(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v
