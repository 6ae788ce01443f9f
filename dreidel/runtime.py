"""Process-wide settings: the threads of the kernels and of BLAS, and the C allocator.

`set_num_threads(n)` (public as `dreidel.set_num_threads`) is the one thread control: it sets both
the Cython kernels' OpenMP team and the BLAS library numpy loaded (OpenBLAS, MKL or BLIS, found
among the process's loaded libraries), so one call governs every hot loop dreidel runs.
`get_num_threads()` reads the kernels' count. The default is OpenMP's (OMP_NUM_THREADS, else the
core count).

On glibc, the engine (the first import of `dreidel.ops`, which every computation and the package
face's engine names go through) raises malloc's mmap and trim thresholds: otherwise every large
temporary (activations, gradients) is a fresh mmap that page-faults on first touch and is unmapped
when freed, which made layers up to 5× slower in measurements here. A bare `import
dreidel._kernels` (a light worker) leaves the allocator alone. Set DREIDEL_MALLOC_TUNING=0 to keep
glibc's defaults.
"""
import ctypes
import operator
import os
import sys

import numpy  # noqa: F401  (loads numpy's BLAS, so _loaded_blas finds it)

from dreidel import _kernels

# (setter, getter) symbol names of the BLAS builds numpy ships with or links against
_BLAS_THREAD_FUNCTIONS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads_64_", "scipy_openblas_get_num_threads_64_"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
    ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads"),
    ("bli_thread_set_num_threads", "bli_thread_get_num_threads"),
)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_blas_functions = None


def _loaded_blas():
    """(set, get) thread functions of the BLAS libraries mapped into this process (Linux; else none)."""
    global _blas_functions
    if _blas_functions is not None:
        return _blas_functions
    _blas_functions = []
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if line.rstrip().endswith(".so") or ".so." in line}
    except OSError:
        return _blas_functions
    for path in sorted(p for p in paths if any(k in os.path.basename(p).lower() for k in ("blas", "mkl", "blis"))):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _BLAS_THREAD_FUNCTIONS:
            if hasattr(library, set_name):
                _blas_functions.append((getattr(library, set_name), getattr(library, get_name, None)))
                break
    return _blas_functions


def set_num_threads(n):
    """Use `n` threads (an integer >= 1) in the Cython kernels and in BLAS."""
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"number of threads must be an integer, got {n!r}") from None
    if n < 1:
        raise ValueError(f"number of threads must be at least 1, got {n}")
    _kernels._set_num_threads(n)
    for setter, _ in _loaded_blas():
        setter(ctypes.c_int(n))


def get_num_threads():
    """The number of threads the Cython kernels use."""
    return _kernels.get_num_threads()


def blas_num_threads():
    """Threads of the BLAS library numpy loaded (None when it cannot be asked)."""
    for _, getter in _loaded_blas():
        if getter is not None:
            return int(getter())
    return None


def tune_allocator():
    """Keep large freed blocks in glibc's heap instead of unmapping them (see the module doc)."""
    if os.environ.get("DREIDEL_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 1 << 30))
