"""numba's on-disk cache shared by processes that compile at the same moment (sweep workers,
parallel test runs): every entry they write must load back as the code it was saved for."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

# Each process compiles one signature of the same cached kernel; all save at about the same time.
SIGNATURES = {"f32": "np.float32, 1", "f64": "np.float64, 1", "f32s": "np.float32, 2", "f64s": "np.float64, 2",
              "i64": "np.int64, 1", "i32": "np.int32, 1"}
COMPILE = """
import sys
import numpy as np
from nbnet.kernels import cpu as K
dtype, step = {sig}
a = np.arange(1, 41, dtype=dtype)[::step]
sys.stdin.readline()  # start together
print(float(K.sum_squares(a)), sum(K.sum_squares.stats.cache_misses.values()))
"""
CHECK = """
import numpy as np
from nbnet.kernels import cpu as K
out = []
for dtype, step in [{sigs}]:
    a = np.arange(1, 41, dtype=dtype)[::step]
    out.append(float(K.sum_squares(a)))
print(*out, sum(K.sum_squares.stats.cache_misses.values()), sum(K.sum_squares.stats.cache_hits.values()))
"""


def test_cache_saves_are_serialized():
    from numba.core.caching import IndexDataCacheFile

    import nbnet.kernels  # noqa: F401  (installs the locked save)

    assert getattr(IndexDataCacheFile.save, "nbnet_locked", False)


@pytest.mark.slow
def test_concurrent_compiles_of_one_kernel_all_load_back(tmp_path):
    """Six processes save six signatures of one kernel at about the same time (they were released
    together after their imports); a seventh loads every one back from the cache and runs it.
    (An unserialized numba passed this too in the runs tried here: the race needs two saves within
    the same millisecond; the test guards that every entry written this way loads back.)"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", COMPILE.format(sig=sig)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for sig in SIGNATURES.values()]
    for p in procs:  # every process is importing; release them at once
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    sigs = ", ".join(f"({s})" for s in SIGNATURES.values())
    r = subprocess.run([sys.executable, "-c", CHECK.format(sigs=sigs)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]  # a wrong entry is loaded as machine code: a crash
    *values, misses, hits = r.stdout.split()
    expected = [float(np.sum(np.arange(1, 41, dtype=np.float64)[::step] ** 2)) for step in (1, 1, 2, 2, 1, 1)]
    assert [float(v) for v in values] == expected
    assert int(misses) == 0 and int(hits) == len(SIGNATURES)  # every signature's entry survived


def test_the_clipping_bound_cannot_be_omitted():
    """numba 0.68's cache confuses an omitted argument with an explicit None: a process that had
    cached both variants of the fused epoch and then loaded the explicit-None one crashed. The
    bound therefore has no default; every caller passes None or a number."""
    import inspect

    from nbnet.kernels import cpu as K

    for name, d in vars(K).items():  # no compiled kernel has a None default (an omittable argument)
        if hasattr(d, "py_func"):
            params = inspect.signature(d.py_func).parameters.values()
            assert all(p.default is not None for p in params), name
