"""nbnet's own wheel, so that a logged model deploys where no nbnet checkout is installed.

A model built by an environment manager (``mlflow models serve --env-manager uv``, ``mlflow
models build-docker``, a managed endpoint) installs what its ``requirements.txt`` names. No
package index has nbnet, so every logged model carries the wheel of the nbnet that logged it in
``wheels/`` (MLflow's own layout for wheels in a model, as ``mlflow.models.add_libraries_to_model``
writes it) and names it there as ``wheels/nbnet-<version>-py3-none-any.whl``; every other
requirement is pinned to the version installed here (:func:`pinned_requirements`).

The wheel is written from the running nbnet's own files (its ``.py`` modules and the requirements
of its installed metadata, else of the checkout's ``pyproject.toml``): no build backend, no
network, and byte-for-byte the same for the same sources (fixed timestamps), so
:func:`source_digest` names it. The pyfunc templates build it once each, not once per model.

Example
-------
>>> path = build_wheel(tmp_dir)          # doctest: +SKIP
>>> path.name                            # doctest: +SKIP
'nbnet-0.1.0-py3-none-any.whl'
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata as md
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from nbnet.errors import NbnetError
from nbnet.version import __version__

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # the nbnet package folder
WHEEL_DIR = "wheels"  # the folder in a model that holds the wheel (MLflow's own name)
WHEEL_NAME = f"nbnet-{__version__}-py3-none-any.whl"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip timestamps: the same sources give the same bytes


def package_files() -> list[Path]:
    """The nbnet package's modules, sorted (caches and compiled files left out)."""
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 over the package's module paths and contents (computed once per process)."""
    h = hashlib.sha256(__version__.encode())
    for p in package_files():
        h.update(p.relative_to(PACKAGE_DIR.parent).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _is_core(req: str) -> bool:
    """A runtime requirement, not one of an extra (``...; extra == "dev"``)."""
    return "extra ==" not in req.replace("extra==", "extra ==")


@functools.lru_cache(maxsize=1)
def declared_requirements() -> tuple[str, ...]:
    """nbnet's runtime requirements as declared (``numpy>=1.26``, ...): from the installed
    distribution's metadata, else from the ``pyproject.toml`` of the checkout nbnet runs from."""
    try:
        reqs = md.requires("nbnet")
    except md.PackageNotFoundError:
        reqs = None
    if reqs is None:
        pyproject = PACKAGE_DIR.parent / "pyproject.toml"
        if not pyproject.is_file():
            raise NbnetError("cannot tell nbnet's requirements (no installed metadata, no pyproject.toml); "
                             "install nbnet with pip install -e . or from its wheel")
        reqs = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return tuple(r for r in reqs if _is_core(r))


@functools.lru_cache(maxsize=1)
def pinned_requirements() -> tuple[str, ...]:
    """Each runtime requirement that applies here, pinned to the installed version
    (``numpy==2.3.4``), with its environment marker kept."""
    out = []
    for text in declared_requirements():
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            raise NbnetError(f"nbnet needs {text!r} but {req.name} is not installed; reinstall nbnet") from None
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        marker = f"; {req.marker}" if req.marker is not None else ""
        out.append(f"{req.name}{extras}=={version}{marker}")
    return tuple(out)


def _metadata() -> str:
    lines = ["Metadata-Version: 2.1", "Name: nbnet", f"Version: {__version__}",
             "Summary: Neural networks trained by Numba-compiled kernels, with tracked, reproducible "
             "hyperparameter sweeps", "Requires-Python: >=3.10"]
    lines += [f"Requires-Dist: {r}" for r in declared_requirements()]
    return "\n".join(lines) + "\n"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(folder) -> Path:
    """Write ``folder/nbnet-<version>-py3-none-any.whl`` (a pure-Python wheel of the running
    nbnet: its modules, metadata with its runtime requirements, the ``nbnet`` console script)
    and return its path. The file is written under a temporary name and renamed into place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = f"nbnet-{__version__}.dist-info"
    files = [(p.relative_to(PACKAGE_DIR.parent).as_posix(), p.read_bytes()) for p in package_files()]
    files += [(f"{info}/METADATA", _metadata().encode()),
              (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: nbnet\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
              (f"{info}/entry_points.txt", b"[console_scripts]\nnbnet = nbnet.cli:main\n")]
    record = "\n".join([_record_line(n, d) for n, d in files] + [f"{info}/RECORD,,"]) + "\n"
    files.append((f"{info}/RECORD", record.encode()))
    dst = folder / WHEEL_NAME
    tmp = folder / f".{WHEEL_NAME}.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            zi = zipfile.ZipInfo(name, _EPOCH)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            z.writestr(zi, data)
    tmp.replace(dst)
    return dst
