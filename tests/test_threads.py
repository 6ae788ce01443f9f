"""One thread control: dreidel.set_num_threads / get_num_threads (dreidel/runtime.py) set the kernels'
OpenMP team and BLAS's threads; nothing else sets them."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import dreidel
from dreidel import _kernels, kernels, runtime

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_threads():
    before = dreidel.get_num_threads()
    yield
    dreidel.set_num_threads(before)


def run(code, **env):
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_there_is_one_public_control():
    assert dreidel.set_num_threads is runtime.set_num_threads
    assert dreidel.get_num_threads is runtime.get_num_threads
    assert not hasattr(kernels, "set_num_threads") and not hasattr(kernels, "get_num_threads")
    assert not hasattr(_kernels, "set_num_threads")     # the compiled setter is private to runtime


@pytest.mark.parametrize("n", [1, 2, np.int64(1)])
def test_sets_kernels_and_blas(n, restore_threads):
    dreidel.set_num_threads(n)
    expected = int(n) if _kernels.has_openmp() else 1
    assert dreidel.get_num_threads() == expected == _kernels.get_num_threads()
    blas = runtime.blas_num_threads()
    assert blas is None or blas == int(n)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError),
                                        (None, TypeError)])
def test_bad_counts_are_refused_and_change_nothing(bad, error, restore_threads):
    before = dreidel.get_num_threads()
    with pytest.raises(error, match="threads"):
        dreidel.set_num_threads(bad)
    assert dreidel.get_num_threads() == before


@pytest.mark.parametrize("omp", ["1", "3"])
def test_default_follows_omp_num_threads(omp):
    if not _kernels.has_openmp():
        pytest.skip("serial build")
    assert run("import dreidel; print(dreidel.get_num_threads())", OMP_NUM_THREADS=omp) == int(omp)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_the_kernels_run_on_the_threads_it_sets():
    # a large transform starts an OpenMP worker only when the control allows two threads
    if not _kernels.has_openmp():
        pytest.skip("serial build")
    out = run("""
import json, os, numpy as np, dreidel
from dreidel import kernels
x = np.ones((64, 1 << 14), np.float32)    # 2^20 elements: above the one-thread threshold
threads = lambda: len(os.listdir('/proc/self/task'))
dreidel.set_num_threads(1); start = threads(); kernels.fwht_(x); one = threads()
dreidel.set_num_threads(2); kernels.fwht_(x); two = threads()
print(json.dumps([one - start, two - start]))
""")
    assert out == [0, 1]
