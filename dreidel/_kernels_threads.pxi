# Thread count of the kernels' OpenMP loops (included by _kernels.pyx). The one control is
# dreidel.set_num_threads (dreidel/runtime.py), which also sets BLAS's threads; the setter here is
# private to it.
cdef extern from "_kernels_common.h":
    int dr_omp_max_threads() nogil
    int dr_has_openmp() nogil
    int DR_AVX2
    void dr_prefetch_range(const void* p, Py_ssize_t bytes, int write) noexcept nogil

# ------------------------------------------------------------------------------------------
# threads
# ------------------------------------------------------------------------------------------
cdef int _nthreads = max(1, dr_omp_max_threads())

# Below this many elements one thread is faster: waking a second OpenMP worker costs ~50-100 us
# (measured here with passive waiting), more than the whole transform of a small batch.
cdef Py_ssize_t PARALLEL_MIN_ELEMENTS = 1 << 18

cdef inline int _threads_for(Py_ssize_t elements) noexcept nogil:
    return _nthreads if elements >= PARALLEL_MIN_ELEMENTS else 1

def get_num_threads():
    """Threads the kernels use (default: OpenMP's max, i.e. OMP_NUM_THREADS or the core count)."""
    return _nthreads

def _set_num_threads(int n):
    """Set the kernels' thread count (>= 1); 1 without OpenMP. Private: dreidel.set_num_threads
    calls it and sets BLAS's threads too. Results do not depend on it."""
    global _nthreads
    if n < 1:
        raise ValueError(f"set_num_threads: need n >= 1, got {n}")
    _nthreads = n if dr_has_openmp() else 1

def has_openmp():
    return bool(dr_has_openmp())

def has_avx2():
    return bool(DR_AVX2)
