# softmax forward over the last axis (included by _kernels.pyx after _kernels_spectral.pxi, whose
# row chunking it uses; the C is in _kernels_softmax.h).
cdef extern from "_kernels_softmax.h":
    void dr_softmax_rows_f32(const float* x, float* y, Py_ssize_t rows, Py_ssize_t n,
                             int isa) noexcept nogil
    void dr_softmax_rows_f64(const double* x, double* y, Py_ssize_t rows, Py_ssize_t n) noexcept nogil
    int dr_softmax_get_isa() noexcept nogil
    int dr_softmax_set_isa(int isa) noexcept nogil
    float dr_sm_exp1(float t) noexcept nogil

_SM_ISAS = ("scalar", "avx2", "avx512")
dr_softmax_get_isa()    # probe the CPU once, at import (not inside a parallel loop)

def _softmax_isa(isa=None):
    """Private dispatch switch of the float32 softmax, for tests and A/B: "avx512", "avx2" or
    "scalar" (portable C, what non-x86 CPUs run; default: the CPU's best). Returns the one in use; asking for more than the CPU has
    gives its best. Every path computes each exp bitwise alike; only the sum's order differs."""
    if isa is not None:
        if isa not in _SM_ISAS:
            raise ValueError(f"_softmax_isa: expected one of {_SM_ISAS}, got {isa!r}")
        dr_softmax_set_isa(_SM_ISAS.index(isa))
    return _SM_ISAS[dr_softmax_get_isa()]

def _softmax_expf_check(float t):
    """Test hook: the float32 exp of the softmax (meant for t <= 0)."""
    return dr_sm_exp1(t)

def softmax_rows(const floating[:, ::1] x, floating[:, ::1] y):
    """y[r] = exp(x[r] - max x[r]) / sum exp(x[r] - max x[r]) for every row r (y may be x)."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], T = _row_chunk(n), t, r0
    cdef int isa = dr_softmax_get_isa()
    if rows == 0 or n == 0:
        return
    with nogil:
        for t in prange((rows + T - 1) // T, num_threads=_threads_for(rows * n), schedule="dynamic"):
            r0 = t * T
            if floating is float:
                dr_softmax_rows_f32(&x[0, 0] + r0 * n, &y[0, 0] + r0 * n, min(T, rows - r0), n, isa)
            else:
                dr_softmax_rows_f64(&x[0, 0] + r0 * n, &y[0, 0] + r0 * n, min(T, rows - r0), n)
