"""Single-threaded GEMM callable from compiled kernels.

The fused CPU kernels split each mini-batch over numba's threads and call a *single-threaded*
GEMM inside every chunk (one thread pool, see docs/performance.md). The GEMM is the CBLAS
``?gemm`` of a library found at import time:

* ``openblas``: the OpenBLAS that SciPy bundles (``scipy_cblas_?gemm``, LP64), which numba's own
  ``np.dot`` already uses: always there, deterministic. On a CPU with AVX-512 nbnet makes sure
  it runs the AVX-512 (SkylakeX) kernels, loading a private copy when the shared one was set
  to others (``NBNET_BLAS_CORETYPE``, see ``_load_openblas``);
* ``mkl``: Intel MKL from PyPI (``pip install mkl``, ``libmkl_rt``), put in its sequential
  threading layer. Measured here ~10% faster per epoch at batch 32, equal at 128 and 512; opt in
  with ``NBNET_BLAS=mkl`` (also the fallback when SciPy's OpenBLAS is absent).

``NBNET_BLAS=openblas|mkl|none`` forces one (``none``: the np.dot reference kernels); the
default takes the first that loads of :data:`PREFERENCE`. The chosen function's address is registered with LLVM under a fixed name
(``nbnet_cblas_sgemm``/``nbnet_cblas_dgemm``) and the kernels call it as a numba
``ExternalFunction`` by that name: the compiled code holds no process-specific pointer, so
``cache=True`` works and a cached kernel binds to whichever library this process registered.
``available()`` is False when no library loaded; the kernels then use ``np.dot``.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shutil
import sys
import tempfile
import threading

import llvmlite.binding as llvm
import numpy as np
from numba import types
from numba.core import typing
from numba.extending import overload

from nbnet.errors import NbnetError

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
PREFERENCE = ("openblas", "mkl")
_MKL_THREADING_SEQUENTIAL = 1

_i32, _ip = types.int32, types.intp


def _sig(ft):
    # cblas_?gemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc); pointers as intp
    return typing.signature(types.void, _i32, _i32, _i32, _i32, _i32, _i32, ft, _ip, _i32, _ip, _i32, ft, _ip, _i32)


_sgemm = types.ExternalFunction("nbnet_cblas_sgemm", _sig(types.float32))
_dgemm = types.ExternalFunction("nbnet_cblas_dgemm", _sig(types.float64))

#: name of the library in use ("mkl", "openblas") or None
LIBRARY: str | None = None
_HANDLE = None
_PRIVATE = False  # our own copy of OpenBLAS, always single-threaded


def _candidates_mkl():
    for d in (os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")):
        yield from sorted(glob.glob(os.path.join(d, "libmkl_rt.so*")))


def _load_mkl():
    for path in _candidates_mkl():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        # sequential: MKL must never start threads of its own inside numba's chunks
        lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
        lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
        return lib, "cblas_sgemm", "cblas_dgemm"
    return None


_AVX512 = ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd")  # what OpenBLAS's SkylakeX kernels use


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return all(x in flags for x in _AVX512)
    except OSError:
        pass
    return False


def _corename(lib) -> bytes:
    fn = lib.scipy_openblas_get_corename
    fn.restype = ctypes.c_char_p
    return fn() or b""


def _open_with_coretype(path, coretype):
    """dlopen ``path`` with OPENBLAS_CORETYPE set while its constructor picks the kernels."""
    old = os.environ.get("OPENBLAS_CORETYPE")
    if coretype:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    try:
        return ctypes.CDLL(path)
    finally:
        if coretype:
            if old is None:
                del os.environ["OPENBLAS_CORETYPE"]
            else:
                os.environ["OPENBLAS_CORETYPE"] = old


def _private_copy(path):
    """A copy of the library under another inode, so dlopen loads it afresh (with our core type)
    even though SciPy already loaded the original; kept in the temp dir, keyed by size and mtime."""
    st = os.stat(path)
    d = os.path.join(tempfile.gettempdir(), f"nbnet-blas-{os.getuid()}")
    os.makedirs(d, exist_ok=True)
    dst = os.path.join(d, f"{st.st_size}-{int(st.st_mtime)}-{os.path.basename(path)}")
    if not os.path.exists(dst):
        tmp = f"{dst}.{os.getpid()}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, dst)
    return dst


def _wanted_coretype() -> str | None:
    """``NBNET_BLAS_CORETYPE``: ``auto`` (default: SkylakeX kernels on a CPU with AVX-512),
    ``default`` (whatever OpenBLAS picks, which honours ``OPENBLAS_CORETYPE``) or a core name."""
    want = os.environ.get("NBNET_BLAS_CORETYPE", "auto").strip() or "auto"
    if want.lower() == "default":
        return None
    if want.lower() == "auto":
        return "SkylakeX" if _has_avx512() else None
    return want


def _load_openblas():
    """SciPy's OpenBLAS, with kernels for this CPU. OpenBLAS picks its kernels once, when loaded
    (``OPENBLAS_CORETYPE`` or its CPU detection, which takes CPUs it does not know, such as AMD
    Zen 5, for Haswell/AVX2). On a CPU with AVX-512 the SkylakeX kernels were measured 1.85×
    faster single-threaded (sgemm 1024³: 128 → 240 GFLOP/s on Zen 5). When the shared library
    runs other kernels than wanted, nbnet loads a private copy of it (another inode, so dlopen
    really loads it again) with the wanted kernels, single-threaded for good; NumPy and SciPy
    keep theirs as configured."""
    global _PRIVATE
    try:
        import scipy  # heavy: only to find the OpenBLAS that SciPy bundles
    except ImportError:
        return None
    libdir = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    want = _wanted_coretype()
    for path in sorted(glob.glob(os.path.join(libdir, "libscipy_openblas-*.so*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if not hasattr(lib, "scipy_cblas_sgemm"):
            continue
        if want and _corename(lib).decode().lower() != want.lower():
            try:
                priv = _open_with_coretype(_private_copy(path), want)
                if _corename(priv).decode().lower() == want.lower():
                    priv.scipy_openblas_set_num_threads(1)
                    lib, _PRIVATE = priv, True
            except OSError:
                pass
        return lib, "scipy_cblas_sgemm", "scipy_cblas_dgemm"
    return None


_LOADERS = {"mkl": _load_mkl, "openblas": _load_openblas}


def _register() -> None:
    global LIBRARY, _HANDLE
    want = os.environ.get("NBNET_BLAS", "auto").strip().lower() or "auto"
    if want not in ("auto", *PREFERENCE, "none"):
        raise NbnetError(f"NBNET_BLAS={want!r} is not one of auto, {', '.join(PREFERENCE)}, none")
    order = PREFERENCE if want == "auto" else (() if want == "none" else (want,))
    for name in order:
        found = _LOADERS[name]()
        if found is None:
            continue
        lib, s, d = found
        llvm.add_symbol("nbnet_cblas_sgemm", ctypes.cast(getattr(lib, s), ctypes.c_void_p).value)
        llvm.add_symbol("nbnet_cblas_dgemm", ctypes.cast(getattr(lib, d), ctypes.c_void_p).value)
        LIBRARY, _HANDLE = name, lib
        return
    # Nothing found: keep the names resolvable (a cached kernel that mentions them still links);
    # the kernels check available() and never call them.
    addr = ctypes.cast(ctypes.pythonapi.Py_IsInitialized, ctypes.c_void_p).value
    llvm.add_symbol("nbnet_cblas_sgemm", addr)
    llvm.add_symbol("nbnet_cblas_dgemm", addr)


def available() -> bool:
    return LIBRARY is not None


def describe() -> str:
    """e.g. ``openblas (SkylakeX)`` or ``mkl``: what the fused kernels' GEMM runs on."""
    if LIBRARY == "openblas":
        return f"openblas ({_corename(_HANDLE).decode()}{', private copy' if _PRIVATE else ''})"
    return str(LIBRARY)


_ST_LOCK = threading.Lock()
_ST_USERS = [0, 1]  # [callers inside single_threaded, OpenBLAS thread count to restore]


@contextlib.contextmanager
def single_threaded():
    """The GEMM library single-threaded for the duration (the kernels' blocks call it from
    numba's threads). MKL is sequential already; OpenBLAS's pool is set to 1 by the first caller
    in and restored by the last one out (several Python threads may predict at once)."""
    if LIBRARY != "openblas" or _PRIVATE:
        yield
        return
    with _ST_LOCK:
        if _ST_USERS[0] == 0:
            _ST_USERS[1] = _HANDLE.scipy_openblas_get_num_threads()
            if _ST_USERS[1] != 1:
                _HANDLE.scipy_openblas_set_num_threads(1)
        _ST_USERS[0] += 1
    try:
        yield
    finally:
        with _ST_LOCK:
            _ST_USERS[0] -= 1
            if _ST_USERS[0] == 0 and _ST_USERS[1] != 1:
                _HANDLE.scipy_openblas_set_num_threads(_ST_USERS[1])


_register()


# --- the jitted entry point --------------------------------------------------------------------
def gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """``C = alpha * op(A) @ op(B) + beta * C`` (row-major), ``op`` = transpose when ``ta``/``tb``.

    ``a``, ``b``, ``c`` are arrays whose *first element* is where the matrix starts (views are
    fine); ``lda``/``ldb``/``ldc`` are their row strides in elements. Only callable from njit code.
    """
    raise NotImplementedError("nbnet.kernels.blas.gemm is only callable from compiled kernels")


@overload(gemm, jit_options={"cache": True})
def _gemm_ol(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    if c.dtype == types.float32:
        fn, ft = _sgemm, np.float32
    elif c.dtype == types.float64:
        fn, ft = _dgemm, np.float64
    else:
        return None

    def impl(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        fn(np.int32(ROW_MAJOR), np.int32(TRANS if ta else NO_TRANS), np.int32(TRANS if tb else NO_TRANS),
           np.int32(m), np.int32(n), np.int32(k), ft(alpha), a.ctypes.data, np.int32(lda),
           b.ctypes.data, np.int32(ldb), ft(beta), c.ctypes.data, np.int32(ldc))

    return impl
