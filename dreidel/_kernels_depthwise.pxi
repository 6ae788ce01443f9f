# ------------------------------------------------------------------------------------------
# depthwise convolution (groups = channels, one input channel per group; numpy API and checks:
# dreidel/kernels.py `depthwise_conv*`). Every shape is 3-D here (1-D / 2-D callers add unit
# axes). x is the already padded input (N, C, S0, S1, S2), w (C*M, K0, K1, K2) the taps of M
# outputs per channel, y (N, C*M, P0, P1, P2):
#     y[n, c*M + m, p] = sum_k w[c*M + m, k] * x[n, c, p*s + k*d]
# Forward and input gradient: one (n, c) slab per parallel unit (no two units write the same
# element); weight gradient: one output channel per unit, summed over n and p in a fixed order.
# The inner loop runs along the last output axis (contiguous when its stride is 1).
# ------------------------------------------------------------------------------------------

def depthwise_fwd(const floating[:, :, :, :, ::1] x, const floating[:, :, :, ::1] w,
                  floating[:, :, :, :, ::1] y, int s0, int s1, int s2, int d0, int d1, int d2):
    """y = depthwise correlation of padded x with w (y is overwritten)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t M = w.shape[0] // C
    cdef Py_ssize_t K0 = w.shape[1], K1 = w.shape[2], K2 = w.shape[3]
    cdef Py_ssize_t P0 = y.shape[2], P1 = y.shape[3], P2 = y.shape[4]
    cdef Py_ssize_t unit, n, c, m, p0, p1, p2, k0, k1, k2
    cdef const floating* xs
    cdef const floating* xr
    cdef floating* yr
    cdef floating t
    cdef Py_ssize_t S1 = x.shape[3], S2 = x.shape[4]
    cdef int nt = _threads_for(y.shape[0] * y.shape[1] * P0 * P1 * P2 * K0 * K1 * K2)
    with nogil:
        for unit in prange(N * C, num_threads=nt, schedule="dynamic"):
            n = unit // C
            c = unit % C
            xs = &x[n, c, 0, 0, 0]
            for m in range(M):
                for p0 in range(P0):
                    for p1 in range(P1):
                        yr = &y[n, c * M + m, p0, p1, 0]
                        for p2 in range(P2):
                            yr[p2] = 0
                        for k0 in range(K0):
                            for k1 in range(K1):
                                xr = xs + ((p0 * s0 + k0 * d0) * S1 + p1 * s1 + k1 * d1) * S2
                                for k2 in range(K2):
                                    t = w[c * M + m, k0, k1, k2]
                                    for p2 in range(P2):
                                        yr[p2] = yr[p2] + t * xr[p2 * s2 + k2 * d2]


def depthwise_input_grad(const floating[:, :, :, :, ::1] g, const floating[:, :, :, ::1] w,
                         floating[:, :, :, :, ::1] gx, int s0, int s1, int s2, int d0, int d1, int d2):
    """gx (N, C, S0, S1, S2, the padded input's shape) = adjoint of `depthwise_fwd` applied to g
    (gx is overwritten)."""
    cdef Py_ssize_t N = gx.shape[0], C = gx.shape[1]
    cdef Py_ssize_t M = w.shape[0] // C
    cdef Py_ssize_t K0 = w.shape[1], K1 = w.shape[2], K2 = w.shape[3]
    cdef Py_ssize_t P0 = g.shape[2], P1 = g.shape[3], P2 = g.shape[4]
    cdef Py_ssize_t slab = gx.shape[2] * gx.shape[3] * gx.shape[4]
    cdef Py_ssize_t unit, n, c, m, i, p0, p1, p2, k0, k1, k2
    cdef floating* xs
    cdef floating* xr
    cdef const floating* gr
    cdef floating t
    cdef Py_ssize_t S1 = gx.shape[3], S2 = gx.shape[4]
    cdef int nt = _threads_for(g.shape[0] * g.shape[1] * P0 * P1 * P2 * K0 * K1 * K2)
    with nogil:
        for unit in prange(N * C, num_threads=nt, schedule="dynamic"):
            n = unit // C
            c = unit % C
            xs = &gx[n, c, 0, 0, 0]
            for i in range(slab):
                xs[i] = 0
            for m in range(M):
                for p0 in range(P0):
                    for p1 in range(P1):
                        gr = &g[n, c * M + m, p0, p1, 0]
                        for k0 in range(K0):
                            for k1 in range(K1):
                                xr = xs + ((p0 * s0 + k0 * d0) * S1 + p1 * s1 + k1 * d1) * S2
                                for k2 in range(K2):
                                    t = w[c * M + m, k0, k1, k2]
                                    for p2 in range(P2):
                                        xr[p2 * s2 + k2 * d2] = xr[p2 * s2 + k2 * d2] + t * gr[p2]


def depthwise_weight_grad(const floating[:, :, :, :, ::1] x, const floating[:, :, :, :, ::1] g,
                          floating[:, :, :, ::1] gw, double[:, ::1] work,
                          int s0, int s1, int s2, int d0, int d1, int d2):
    """gw (C*M, K0, K1, K2) = sum over n, p of g[n, c*M + m, p] * x[n, c, p*s + k*d] (overwritten).
    Accumulated in double for both dtypes: per (k0, k1) one row of partial sums per k2 along the
    last output axis (element-wise, so it vectorises), summed at the end in a fixed order. `work`
    (C*M, K2*P2) holds those rows."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t CM = gw.shape[0], M = gw.shape[0] // C
    cdef Py_ssize_t K0 = gw.shape[1], K1 = gw.shape[2], K2 = gw.shape[3]
    cdef Py_ssize_t P0 = g.shape[2], P1 = g.shape[3], P2 = g.shape[4]
    cdef Py_ssize_t o, n, c, p0, p1, p2, k0, k1, k2
    cdef const floating* xr
    cdef const floating* gr
    cdef double* part
    cdef double acc
    cdef int nt = _threads_for(g.shape[0] * g.shape[1] * P0 * P1 * P2 * K0 * K1 * K2)
    if work.shape[0] < CM or work.shape[1] < K2 * P2:
        raise ValueError("depthwise_weight_grad: work buffer too small")
    with nogil:
        for o in prange(CM, num_threads=nt, schedule="dynamic"):
            c = o // M
            part = &work[o, 0]
            for k0 in range(K0):
                for k1 in range(K1):
                    memset(part, 0, K2 * P2 * sizeof(double))
                    for n in range(N):
                        for p0 in range(P0):
                            for p1 in range(P1):
                                gr = &g[n, o, p0, p1, 0]
                                xr = &x[n, c, p0 * s0 + k0 * d0, p1 * s1 + k1 * d1, 0]
                                for k2 in range(K2):
                                    for p2 in range(P2):
                                        part[k2 * P2 + p2] = part[k2 * P2 + p2] + \
                                            <double>gr[p2] * <double>xr[p2 * s2 + k2 * d2]
                    for k2 in range(K2):
                        acc = 0
                        for p2 in range(P2):
                            acc = acc + part[k2 * P2 + p2]
                        gw[o, k0, k1, k2] = <floating>acc
