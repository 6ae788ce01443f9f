# Fast Walsh-Hadamard transform along the last axis (included by _kernels.pyx; the C is in
# _kernels_fwht.h). The numpy-facing API is dreidel/kernels.py: call that, not these.
cdef extern from "_kernels_fwht.h":
    void dr_bfly2_f32(float* q0, float* q1, Py_ssize_t L) noexcept nogil
    void dr_bfly2_f64(double* q0, double* q1, Py_ssize_t L) noexcept nogil
    void dr_bfly4_f32(float* q0, float* q1, float* q2, float* q3, Py_ssize_t L) noexcept nogil
    void dr_bfly4_f64(double* q0, double* q1, double* q2, double* q3, Py_ssize_t L) noexcept nogil
    void dr_bfly2s_f32(float* q0, float* q1, Py_ssize_t L, float s) noexcept nogil
    void dr_bfly2s_f64(double* q0, double* q1, Py_ssize_t L, double s) noexcept nogil
    void dr_bfly4s_f32(float* q0, float* q1, float* q2, float* q3, Py_ssize_t L, float s) noexcept nogil
    void dr_bfly4s_f64(double* q0, double* q1, double* q2, double* q3, Py_ssize_t L,
                       double s) noexcept nogil
    void dr_bfly8_f32(float* q0, float* q1, float* q2, float* q3, float* q4, float* q5, float* q6,
                      float* q7, Py_ssize_t L) noexcept nogil
    void dr_bfly8_f64(double* q0, double* q1, double* q2, double* q3, double* q4, double* q5,
                      double* q6, double* q7, Py_ssize_t L) noexcept nogil
    void dr_bfly8s_f32(float* q0, float* q1, float* q2, float* q3, float* q4, float* q5, float* q6,
                       float* q7, Py_ssize_t L, float s) noexcept nogil
    void dr_bfly8s_f64(double* q0, double* q1, double* q2, double* q3, double* q4, double* q5,
                       double* q6, double* q7, Py_ssize_t L, double s) noexcept nogil
    void dr_scale_f32(float* p, Py_ssize_t n, float s) noexcept nogil
    void dr_scale_f64(double* p, Py_ssize_t n, double s) noexcept nogil
    void dr_base_run_f32(float* p, Py_ssize_t nchunks, int nst) noexcept nogil
    void dr_base_run_f64(double* p, Py_ssize_t nchunks, int nst) noexcept nogil
    void dr_mix_f32(float* p, int m, Py_ssize_t K, const float* H, float scale,
                    Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    void dr_mix_f64(double* p, int m, Py_ssize_t K, const double* H, double scale,
                    Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    int dr_conference(int m, int i) noexcept nogil
    int dr_use_avx512() noexcept nogil
    int dr_cpu_has_avx512() noexcept nogil
    void dr_set_fwht_isa(int isa) noexcept nogil
    int dr_get_fwht_isa() noexcept nogil
    void dr_base256_run_f32(float* p, Py_ssize_t nchunks) noexcept nogil
    void dr_bfly16_f32(float* q, Py_ssize_t hs, Py_ssize_t L, float s) noexcept nogil
    void dr_base_pre_run_f32(const float* src, const float* pre, float* dst, Py_ssize_t n,
                             Py_ssize_t nrows) noexcept nogil
    void dr_base256_pre_run_f32(const float* src, const float* pre, float* dst, Py_ssize_t n,
                                Py_ssize_t nrows) noexcept nogil
    void dr_base256_copy_run_f32(const float* src, float* dst, Py_ssize_t n,
                                 Py_ssize_t nrows) noexcept nogil

def _fwht_isa(isa=None):
    """Private dispatch switch of the float32 FWHT: "avx512" (the default where the CPU has
    AVX-512 F/DQ/BW/VL) or "avx2" (the x86-64-v3 build's path). Returns the one in use; asking
    for "avx512" on a CPU without it keeps "avx2". Both give bitwise-equal results."""
    if isa is not None:
        if isa not in ("avx2", "avx512"):
            raise ValueError(f"_fwht_isa: expected 'avx2' or 'avx512', got {isa!r}")
        dr_set_fwht_isa(1 if isa == "avx512" else 0)
    return "avx512" if dr_get_fwht_isa() else "avx2"

def cpu_has_avx512():
    return bool(dr_cpu_has_avx512())

# ------------------------------------------------------------------------------------------
# FWHT building blocks
# ------------------------------------------------------------------------------------------
cdef enum:
    BLOCK_BYTES = 16384     # an L1-resident block: all stages below it run in L1
    PANEL_BYTES = 16384     # a column panel for the stages across blocks
    TILE_BYTES = 16384      # rows shorter than this are processed a tile of rows at a time

cdef inline int _log2(Py_ssize_t n) noexcept nogil:
    cdef int k = 0
    while ((<Py_ssize_t>1) << k) < n:
        k += 1
    return k

cdef void _pass(floating* p, Py_ssize_t R, Py_ssize_t s, Py_ssize_t L, Py_ssize_t h, int radix,
                floating scale) noexcept nogil:
    """One radix-2/4/8 pass (stages h .. radix*h/2) of a length-R WHT along stride s over L
    lanes; multiplies by scale unless scale == 1."""
    cdef Py_ssize_t i = 0, j, hs = h * s
    cdef floating* q
    cdef bint sc = scale != 1
    while i < R:
        for j in range(i, i + h):
            q = p + j * s
            if radix == 16:
                if floating is float:
                    dr_bfly16_f32(q, hs, L, scale)
            elif radix == 8:
                if floating is float:
                    if sc:
                        dr_bfly8s_f32(q, q + hs, q + 2 * hs, q + 3 * hs, q + 4 * hs, q + 5 * hs,
                                      q + 6 * hs, q + 7 * hs, L, scale)
                    else:
                        dr_bfly8_f32(q, q + hs, q + 2 * hs, q + 3 * hs, q + 4 * hs, q + 5 * hs,
                                     q + 6 * hs, q + 7 * hs, L)
                else:
                    if sc:
                        dr_bfly8s_f64(q, q + hs, q + 2 * hs, q + 3 * hs, q + 4 * hs, q + 5 * hs,
                                      q + 6 * hs, q + 7 * hs, L, scale)
                    else:
                        dr_bfly8_f64(q, q + hs, q + 2 * hs, q + 3 * hs, q + 4 * hs, q + 5 * hs,
                                     q + 6 * hs, q + 7 * hs, L)
            elif radix == 4:
                if floating is float:
                    if sc:
                        dr_bfly4s_f32(q, q + hs, q + 2 * hs, q + 3 * hs, L, scale)
                    else:
                        dr_bfly4_f32(q, q + hs, q + 2 * hs, q + 3 * hs, L)
                else:
                    if sc:
                        dr_bfly4s_f64(q, q + hs, q + 2 * hs, q + 3 * hs, L, scale)
                    else:
                        dr_bfly4_f64(q, q + hs, q + 2 * hs, q + 3 * hs, L)
            else:
                if floating is float:
                    if sc:
                        dr_bfly2s_f32(q, q + hs, L, scale)
                    else:
                        dr_bfly2_f32(q, q + hs, L)
                else:
                    if sc:
                        dr_bfly2s_f64(q, q + hs, L, scale)
                    else:
                        dr_bfly2_f64(q, q + hs, L)
        i += radix * h

cdef void _stages(floating* p, Py_ssize_t R, Py_ssize_t s, Py_ssize_t L,
                  floating scale) noexcept nogil:
    """WHT of length R (a power of two) along stride s, vectorised over L contiguous lanes
    (L <= s): radix-8 passes, then radix-4/2 for the rest (4 = 4 + 4, not 8 + 2); the last pass
    also multiplies by scale."""
    cdef Py_ssize_t h = 1
    cdef int t = _log2(R), radix
    cdef bint wide = floating is float and L % 16 == 0 and dr_use_avx512()
    if R == 1:
        if scale != 1:
            if floating is float:
                dr_scale_f32(p, L, scale)
            else:
                dr_scale_f64(p, L, scale)
        return
    while t > 0:
        if wide and t >= 4 and t != 5 and t != 6:   # 5 = 3 + 2 would be 3 passes, 6 = 3 + 3
            radix = 16
        elif t >= 3 and t != 4:
            radix = 8
        elif t >= 2:
            radix = 4
        else:
            radix = 2
        t -= 1 if radix == 2 else (2 if radix == 4 else (3 if radix == 8 else 4))
        _pass(p, R, s, L, h, radix, scale if t == 0 else <floating>1)
        h *= radix

cdef void _stages_buffered(floating* p, Py_ssize_t R, Py_ssize_t s, Py_ssize_t L,
                           floating scale, floating* buf) noexcept nogil:
    """_stages on an R x L panel with a large stride s, done on a contiguous copy (a stride that
    is a multiple of 4 KiB would map every row of the panel to the same L1 set)."""
    cdef Py_ssize_t r
    for r in range(R):
        memcpy(buf + r * L, p + r * s, L * sizeof(floating))
    _stages(buf, R, L, L, scale)
    for r in range(R):
        memcpy(p + r * s, buf + r * L, L * sizeof(floating))

cdef inline Py_ssize_t _base(floating* p) noexcept nogil:
    if floating is float:
        return 64
    else:
        return 32

cdef void _pow2_multi(floating* p, Py_ssize_t total, Py_ssize_t K, floating scale) noexcept nogil:
    """Apply H_K (K a power of two, K * itemsize <= BLOCK_BYTES) to each of the total / K
    contiguous sub-rows of p, then scale everything."""
    cdef Py_ssize_t base = _base(p)
    cdef int lk = _log2(K), lb = _log2(base)
    cdef Py_ssize_t nb, c
    cdef bint scaled = False
    if floating is float:
        if K >= 256 and dr_use_avx512():    # 8 stages in registers, the rest radix-16/8/4 passes
            dr_base256_run_f32(p, total // 256)
            if K > 256:
                c = 0
                while c < total:
                    _stages(p + c, K // 256, 256, 256, scale)
                    c += K
            elif scale != 1:
                dr_scale_f32(p, total, scale)
            return
    if K >= base:
        nb = total
    else:
        nb = total - total % base
    if floating is float:
        dr_base_run_f32(p, nb // base, lk if lk < lb else lb)
    else:
        dr_base_run_f64(p, nb // base, lk if lk < lb else lb)
    if K > base:
        c = 0
        while c < total:
            _stages(p + c, K // base, base, base, scale)
            c += K
        scaled = True
    c = nb
    while c < total:          # leftover sub-rows (only when K < base): scalar
        _stages(p + c, K, 1, 1, <floating>1)
        c += K
    if scale != 1 and not scaled:
        if floating is float:
            dr_scale_f32(p, total, scale)
        else:
            dr_scale_f64(p, total, scale)

cdef inline Py_ssize_t _blk(floating* p) noexcept nogil:
    return BLOCK_BYTES // sizeof(floating)

cdef inline Py_ssize_t _panel_lanes(floating* p, Py_ssize_t R, Py_ssize_t blk) noexcept nogil:
    cdef Py_ssize_t L = PANEL_BYTES // (R * <Py_ssize_t>sizeof(floating))
    cdef Py_ssize_t lo = 64 // <Py_ssize_t>sizeof(floating)
    if L < lo:
        L = lo
    if L > blk:
        L = blk
    return L

cdef enum:
    DIRECT_MAX_BLOCKS = 64      # rows up to 64 L1 blocks (1 MiB f32) are L2-resident
    SUPER_BLOCKS = 16           # longer rows: super-blocks of 16 L1 blocks, then panels

cdef void _pow2_any(floating* p, Py_ssize_t total, Py_ssize_t K, floating scale) noexcept nogil:
    """H_K on each K-sub-row of p (any power of two K), serial, cache-blocked:
    K <= blk: in L1 (tiles of rows); K <= 64 blk: every L1 block, then the stages across blocks
    as direct radix-8/4/2 passes over the L2-resident row (each butterfly touches <= 8 rows, so
    the power-of-two stride causes no L1 set conflicts); longer: every super-block of 16 blocks
    that way, then the stages across super-blocks on contiguous copies of column panels."""
    cdef Py_ssize_t blk = _blk(p), R, L, c, s, B
    cdef floating* buf
    if K <= blk:
        _pow2_multi(p, total, K, scale)
        return
    R = K // blk
    if R <= DIRECT_MAX_BLOCKS:
        s = 0
        while s < total:
            c = 0
            while c < K:
                _pow2_multi(p + s + c, blk, blk, <floating>1)
                c += blk
            _stages(p + s, R, blk, blk, scale)
            s += K
        return
    B = blk * SUPER_BLOCKS
    R = K // B
    L = _panel_lanes(p, R, B)
    buf = <floating*>malloc(R * L * sizeof(floating))
    s = 0
    while s < total:
        c = 0
        while c < K:
            _pow2_any(p + s + c, B, B, <floating>1)
            c += B
        c = 0
        while c < B:
            if buf != NULL:
                _stages_buffered(p + s + c, R, B, L, scale, buf)
            else:
                _stages(p + s + c, R, B, L, scale)
            c += L
        s += K
    free(buf)

cdef void _fwht_tile(floating* p, Py_ssize_t nrows, Py_ssize_t n, int m, Py_ssize_t K,
                     const floating* H, floating scale) noexcept nogil:
    """Full transform of nrows contiguous rows of length n = m * K."""
    cdef Py_ssize_t r
    if m == 1:
        _pow2_any(p, nrows * n, n, scale)
    else:
        _pow2_any(p, nrows * n, K, <floating>1)
        for r in range(nrows):
            if floating is float:
                dr_mix_f32(p + r * n, m, K, H, scale, 0, K)
            else:
                dr_mix_f64(p + r * n, m, K, H, scale, 0, K)

cdef void _fwht_tile_pre(floating* dst, const floating* src, Py_ssize_t nrows, Py_ssize_t n, int m,
                         Py_ssize_t K, const floating* H, floating scale,
                         const floating* pre) noexcept nogil:
    """dst = the transform of each of nrows rows of (src * pre) (pre: length n; src may be dst).
    float32 powers of two that fit an L1 block multiply by pre as the base kernel loads its chunk
    (no separate pass); the other cases multiply first. Same products, same stages: the result is
    bitwise that of multiplying and then calling _fwht_tile."""
    cdef Py_ssize_t r, j, c, base
    cdef const floating* sr
    cdef floating* dr
    if floating is float:
        if m == 1 and 256 <= n <= _blk(dst) and dr_use_avx512():
            base = 256
        elif m == 1 and 64 <= n <= _blk(dst):
            base = 64
        else:
            base = 0
        if base:
            if base == 256:
                dr_base256_pre_run_f32(src, pre, dst, n, nrows)
            else:
                dr_base_pre_run_f32(src, pre, dst, n, nrows)
            if n > base:
                c = 0
                while c < nrows * n:
                    _stages(dst + c, n // base, base, base, scale)
                    c += n
            elif scale != 1:
                dr_scale_f32(dst, nrows * n, scale)
            return
    for r in range(nrows):
        sr = src + r * n
        dr = dst + r * n
        for j in range(n):
            dr[j] = sr[j] * pre[j]
    _fwht_tile(dst, nrows, n, m, K, H, scale)

cdef inline Py_ssize_t _tile_rows(Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    cdef Py_ssize_t t = TILE_BYTES // (n * itemsize)
    return t if t >= 1 else 1

cdef void _fwht_rows(floating* p, const floating* src, Py_ssize_t rows, Py_ssize_t n, int m,
                     Py_ssize_t K, const floating* H, floating scale, int nt) noexcept nogil:
    """Transform rows x n at p in place, or, if src is not NULL, of src into p (each tile is
    copied into p just before it is transformed, so out of place costs no extra memory pass)."""
    cdef Py_ssize_t T = _tile_rows(n, sizeof(floating))
    cdef Py_ssize_t ntiles = (rows + T - 1) // T
    cdef Py_ssize_t t, r, r0, r1, blk = _blk(p), R, L, c, a, nch, B
    cdef floating* buf
    if rows >= 2 * nt or n <= blk or nt == 1:
        for t in prange(ntiles, num_threads=nt, schedule="dynamic"):
            r0 = t * T
            r1 = r0 + T
            if r1 > rows:
                r1 = rows
            if src != NULL:
                memcpy(p + r0 * n, src + r0 * n, (r1 - r0) * n * sizeof(floating))
            _fwht_tile(p + r0 * n, r1 - r0, n, m, K, H, scale)
        return
    # few long rows: parallelise inside each row
    if src != NULL:
        for c in prange(rows, num_threads=nt, schedule="dynamic"):
            memcpy(p + c * n, src + c * n, n * sizeof(floating))
    for r in range(rows):
        if m == 1:
            R = n // blk
            if R <= DIRECT_MAX_BLOCKS:
                for c in prange(R, num_threads=nt, schedule="dynamic"):
                    _pow2_multi(p + r * n + c * blk, blk, blk, <floating>1)
                for c in prange(blk // 256, num_threads=nt, schedule="dynamic"):
                    _stages(p + r * n + c * 256, R, blk, 256, scale)
            else:
                B = blk * SUPER_BLOCKS
                R = n // B
                L = _panel_lanes(p, R, B)
                for c in prange(R, num_threads=nt, schedule="dynamic"):
                    _pow2_any(p + r * n + c * B, B, B, <floating>1)
                buf = NULL
                with parallel(num_threads=nt):
                    buf = <floating*>malloc(R * L * sizeof(floating))
                    for c in prange(B // L, schedule="dynamic"):
                        if buf != NULL:
                            _stages_buffered(p + r * n + c * L, R, B, L, scale, buf)
                        else:
                            _stages(p + r * n + c * L, R, B, L, scale)
                    free(buf)
        else:
            for a in prange(m, num_threads=nt, schedule="dynamic"):
                _pow2_any(p + r * n + a * K, K, K, <floating>1)
            nch = (K + 255) // 256
            for c in prange(nch, num_threads=nt, schedule="dynamic"):
                if floating is float:
                    dr_mix_f32(p + r * n, m, K, H, scale, c * 256, min(K, c * 256 + 256))
                else:
                    dr_mix_f64(p + r * n, m, K, H, scale, c * 256, min(K, c * 256 + 256))

def conference_matrix(int m):
    """The compiled-in Paley conference matrix C of H_m (m in 12, 20, 28), as nested lists."""
    if m not in (12, 20, 28):
        raise ValueError(m)
    return [[dr_conference(m, i * (m // 2) + j) for j in range(m // 2)] for i in range(m // 2)]

def _check_conference(int m, H):
    if m not in (12, 20, 28) or tuple(H.shape) != (m // 2, m // 2):
        raise ValueError(f"fwht: bad base size m={m} or matrix shape {tuple(H.shape)}")
    cdef int i, j
    for i in range(m // 2):
        for j in range(m // 2):
            if H[i, j] != dr_conference(m, i * (m // 2) + j):
                raise ValueError("fwht: conference matrix differs from the compiled-in one")

def fwht_inplace(floating[:, ::1] x, int m, Py_ssize_t K, const floating[:, ::1] H,
                 bint normalized):
    """In-place WHT of each row of the C-contiguous 2-D buffer x; row length n = m * K
    (m = 1, or m in {12, 20, 28} with H the (m/2 x m/2) conference matrix C of the Paley II
    construction H_m = C kron [[1,1],[1,-1]] + I kron [[1,-1],[-1,-1]]; K a power of two)."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1]
    cdef floating scale = <floating>(1.0 / sqrt(<double>n)) if normalized else <floating>1
    if m != 1:
        _check_conference(m, H)
    if rows == 0 or n == 0:
        return
    with nogil:
        _fwht_rows(&x[0, 0], NULL, rows, n, m, K, &H[0, 0], scale, _threads_for(rows * n))

def fwht_outofplace(const floating[:, ::1] x, floating[:, ::1] out, int m, Py_ssize_t K,
                    const floating[:, ::1] H, bint normalized):
    """out = WHT of each row of x (both C-contiguous, same shape, not overlapping), fused with
    the copy: one pass over memory."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1]
    cdef floating scale = <floating>(1.0 / sqrt(<double>n)) if normalized else <floating>1
    if m != 1:
        _check_conference(m, H)
    if out.shape[0] != rows or out.shape[1] != n:
        raise ValueError("fwht_outofplace: shape mismatch")
    if rows == 0 or n == 0:
        return
    with nogil:
        _fwht_rows(&out[0, 0], &x[0, 0], rows, n, m, K, &H[0, 0], scale, _threads_for(rows * n))
