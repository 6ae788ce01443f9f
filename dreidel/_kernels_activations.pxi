# GELU (exact erf form and tanh form; forward, backward, fused bias) and the softmax backward over
# the last axis (included by _kernels.pyx after _kernels_spectral.pxi, whose row chunking softmax
# uses; the C is in _kernels_activations.h).
cdef extern from "_kernels_activations.h":
    void dr_gelu_f32(const float* x, const float* b, float* y, Py_ssize_t n, int tf) noexcept nogil
    void dr_gelu_f64(const double* x, const double* b, double* y, Py_ssize_t n, int tf) noexcept nogil
    void dr_dgelu_f32(const float* g, const float* x, const float* b, float* y, Py_ssize_t n,
                      int tf) noexcept nogil
    void dr_dgelu_f64(const double* g, const double* x, const double* b, double* y, Py_ssize_t n,
                      int tf) noexcept nogil
    float dr_expf(float x) noexcept nogil
    void dr_softmax_bwd_f32(const float* g, const float* y, float* out, Py_ssize_t n) noexcept nogil
    void dr_softmax_bwd_f64(const double* g, const double* y, double* out, Py_ssize_t n) noexcept nogil

cdef enum:
    EW_CHUNK = 16384        # elementwise kernels: elements per parallel work unit

# ------------------------------------------------------------------------------------------
# GELU
# ------------------------------------------------------------------------------------------

def gelu_fwd(const floating[::1] x, floating[::1] y, bint tanh_form):
    cdef Py_ssize_t n = x.shape[0], c, c0, c1
    if n == 0:
        return
    with nogil:
        for c in prange((n + EW_CHUNK - 1) // EW_CHUNK, num_threads=_threads_for(n), schedule="dynamic"):
            c0 = c * EW_CHUNK
            c1 = min(n, c0 + EW_CHUNK)
            if floating is float:
                dr_gelu_f32(&x[0] + c0, NULL, &y[0] + c0, c1 - c0, tanh_form)
            else:
                dr_gelu_f64(&x[0] + c0, NULL, &y[0] + c0, c1 - c0, tanh_form)

def gelu_bwd(const floating[::1] g, const floating[::1] x, floating[::1] out, bint tanh_form):
    cdef Py_ssize_t n = x.shape[0], c, c0, c1
    if n == 0:
        return
    with nogil:
        for c in prange((n + EW_CHUNK - 1) // EW_CHUNK, num_threads=_threads_for(n), schedule="dynamic"):
            c0 = c * EW_CHUNK
            c1 = min(n, c0 + EW_CHUNK)
            if floating is float:
                dr_dgelu_f32(&g[0] + c0, &x[0] + c0, NULL, &out[0] + c0, c1 - c0, tanh_form)
            else:
                dr_dgelu_f64(&g[0] + c0, &x[0] + c0, NULL, &out[0] + c0, c1 - c0, tanh_form)

def bias_gelu_fwd(const floating[:, ::1] x, const floating[::1] b, floating[:, ::1] y,
                  bint tanh_form):
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], T = _row_chunk(n), t, r
    if rows == 0 or n == 0:
        return
    with nogil:
        for t in prange((rows + T - 1) // T, num_threads=_threads_for(rows * n), schedule="dynamic"):
            for r in range(t * T, min(rows, t * T + T)):
                if floating is float:
                    dr_gelu_f32(&x[0, 0] + r * n, &b[0], &y[0, 0] + r * n, n, tanh_form)
                else:
                    dr_gelu_f64(&x[0, 0] + r * n, &b[0], &y[0, 0] + r * n, n, tanh_form)

def bias_gelu_bwd(const floating[:, ::1] g, const floating[:, ::1] x, const floating[::1] b,
                  floating[:, ::1] gx, double[::1] gb, bint tanh_form):
    """gx = g * gelu'(x + b); gb = sum over rows of gx (float64, fixed chunks, fixed order)."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], nch, ch, r, r0, r1, j
    cdef double* part
    cdef double* pr
    cdef floating* gr
    cdef double acc
    if n == 0:
        return
    if rows == 0:
        gb[:] = 0
        return
    nch = _nchunks(rows, n)
    part = <double*>malloc(nch * n * sizeof(double))
    if part == NULL:
        raise MemoryError()
    memset(part, 0, nch * n * sizeof(double))
    with nogil:
        for ch in prange(nch, num_threads=_threads_for(rows * n), schedule="dynamic"):
            r0 = rows * ch // nch
            r1 = rows * (ch + 1) // nch
            pr = part + ch * n
            for r in range(r0, r1):
                gr = &gx[0, 0] + r * n
                if floating is float:
                    dr_dgelu_f32(&g[0, 0] + r * n, &x[0, 0] + r * n, &b[0], gr, n, tanh_form)
                else:
                    dr_dgelu_f64(&g[0, 0] + r * n, &x[0, 0] + r * n, &b[0], gr, n, tanh_form)
                for j in range(n):
                    pr[j] += gr[j]
        for j in prange(n, num_threads=_threads_for(nch * n), schedule="dynamic"):
            acc = 0
            for ch in range(nch):
                acc = acc + part[ch * n + j]
            gb[j] = acc
    free(part)

def _expf_check(float x):
    """Test hook: the vectorisable float32 exp used by GELU."""
    return dr_expf(x)


# ------------------------------------------------------------------------------------------
# softmax backward over the last axis (the forward: _kernels_softmax.pxi; one row per task; a
# row never spans threads, so the bits do not depend on the thread count)
# ------------------------------------------------------------------------------------------
def softmax_bwd(const floating[:, ::1] g, const floating[:, ::1] y, floating[:, ::1] out):
    """out[r] = y[r] * (g[r] - <g[r], y[r]>) for every row r (the softmax vector-Jacobian product)."""
    cdef Py_ssize_t rows = y.shape[0], n = y.shape[1], T = _row_chunk(n), t, r
    if rows == 0 or n == 0:
        return
    with nogil:
        for t in prange((rows + T - 1) // T, num_threads=_threads_for(rows * n), schedule="dynamic"):
            for r in range(t * T, min(rows, t * T + T)):
                if floating is float:
                    dr_softmax_bwd_f32(&g[0, 0] + r * n, &y[0, 0] + r * n, &out[0, 0] + r * n, n)
                else:
                    dr_softmax_bwd_f64(&g[0, 0] + r * n, &y[0, 0] + r * n, &out[0, 0] + r * n, n)
