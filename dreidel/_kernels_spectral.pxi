# Permutations, the fused spectral block y = H(P(x) * d) and the whole spectral stack, forward and
# backward (included by _kernels.pyx after _kernels_fwht.pxi, whose tile transform it uses; the
# C helpers are in _kernels_spectral.h).
cdef extern from "_kernels_spectral.h":
    void dr_gather_scale_f32(const float* src, const int* idx, const float* d, float* out,
                             Py_ssize_t n) noexcept nogil
    void dr_gather_scale_f64(const double* src, const int* idx, const double* d, double* out,
                             Py_ssize_t n) noexcept nogil
    void dr_gather_scale_rows_f32(const float* src, const int* idx, const float* d, float* out,
                                  Py_ssize_t n, Py_ssize_t nr) noexcept nogil
    void dr_gather_scale_rows_f64(const double* src, const int* idx, const double* d, double* out,
                                  Py_ssize_t n, Py_ssize_t nr) noexcept nogil
    void dr_gather_pure_rows_f32(const float* src, const int* idx, float* out, Py_ssize_t n,
                                 Py_ssize_t nr) noexcept nogil
    void dr_gather_pure_rows_f64(const double* src, const int* idx, double* out, Py_ssize_t n,
                                 Py_ssize_t nr) noexcept nogil
    void dr_gather_pure_rows_scalar_only_f32(const float* src, const int* idx, float* out,
                                             Py_ssize_t n, Py_ssize_t nr) noexcept nogil
    void dr_gather_pure_rows_scalar_only_f64(const double* src, const int* idx, double* out,
                                             Py_ssize_t n, Py_ssize_t nr) noexcept nogil
    void dr_dot_acc_f32(const float* a, const float* u, Py_ssize_t nr, double* acc,
                        Py_ssize_t n) noexcept nogil
    void dr_dot_acc_f64(const double* a, const double* u, Py_ssize_t nr, double* acc,
                        Py_ssize_t n) noexcept nogil
    void dr_gather_dot_rows_f32(const float* src, const int* idx, const float* d, float* out,
                                const float* z, Py_ssize_t zs, Py_ssize_t nz, double* acc,
                                Py_ssize_t n, Py_ssize_t nr) noexcept nogil
    void dr_gather_dot_rows_f64(const double* src, const int* idx, const double* d, double* out,
                                const double* z, Py_ssize_t zs, Py_ssize_t nz, double* acc,
                                Py_ssize_t n, Py_ssize_t nr) noexcept nogil
    void dr_gather_base256_run_f32(const float* src, const int* idx, const float* pre, float* dst,
                                   Py_ssize_t n, Py_ssize_t nrows, const float* z, Py_ssize_t zs,
                                   Py_ssize_t nz, double* acc) noexcept nogil
    void dr_load_base256_run_f32(const float* src, const float* pre, float* dst, Py_ssize_t n,
                                 Py_ssize_t nrows, const float* z, Py_ssize_t zs, Py_ssize_t nz,
                                 double* acc) noexcept nogil
    void dr_load_dot_rows512_f32(const float* src, const float* d, float* out, const float* z,
                                 Py_ssize_t zs, Py_ssize_t nz, double* acc, Py_ssize_t n,
                                 Py_ssize_t nr) noexcept nogil
    void dr_add_f32(const float* a, const float* b, float* out, Py_ssize_t n) noexcept nogil
    void dr_add_f64(const double* a, const double* b, double* out, Py_ssize_t n) noexcept nogil
    void dr_set_gather512(int on) noexcept nogil
    int dr_get_gather512() noexcept nogil
    ctypedef unsigned long long uint64_t
    uint64_t dr_ticks() noexcept nogil
    void dr_prof_mark(int i, uint64_t* t) noexcept nogil
    void dr_prof_set(int on) noexcept nogil
    double dr_prof_get(int i) noexcept nogil
    void dr_prof_reset() noexcept nogil

# ------------------------------------------------------------------------------------------
# permutations
# ------------------------------------------------------------------------------------------
def is_permutation(const long long[::1] perm):
    """True iff perm is a permutation of range(len(perm))."""
    cdef Py_ssize_t n = perm.shape[0], i
    cdef long long v
    cdef unsigned char* seen
    cdef bint ok = True
    if n == 0:
        return True
    seen = <unsigned char*>malloc(n)
    if seen == NULL:
        raise MemoryError()
    memset(seen, 0, n)
    with nogil:
        for i in range(n):
            v = perm[i]
            if v < 0 or v >= n or seen[v]:
                ok = False
                break
            seen[v] = 1
    free(seen)
    return ok

cdef inline Py_ssize_t _pf_rows(Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    """How many rows ahead to prefetch for the random-order row accesses (>= 8 KiB ahead)."""
    cdef Py_ssize_t b = n * itemsize
    return (8192 + b - 1) // b if b > 0 else 1

cdef inline void _pf_row(const void* base, Py_ssize_t r, Py_ssize_t rows, Py_ssize_t n,
                         Py_ssize_t itemsize, Py_ssize_t ahead, int write) noexcept nogil:
    """Prefetch row r + ahead of a rows x n matrix (if it exists)."""
    if r + ahead < rows:
        dr_prefetch_range(<const char*>base + (r + ahead) * n * itemsize, n * itemsize, write)

cdef Py_ssize_t _row_chunk(Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t t = 65536 // (n if n > 0 else 1)
    return t if t >= 1 else 1

def permute_rows(const floating[:, ::1] x, const long long[::1] perm, floating[:, ::1] out,
                 bint inverse):
    """out[r, j] = x[r, perm[j]] (gather), or out[r, perm[j]] = x[r, j] when inverse (scatter)."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], T = _row_chunk(n)
    cdef Py_ssize_t t, r, j, r1, ahead = _pf_rows(n, sizeof(floating))
    cdef const long long* pp
    cdef const floating* xr
    cdef floating* yr
    if rows == 0 or n == 0:
        return
    pp = &perm[0]
    with nogil:
        for t in prange((rows + T - 1) // T, num_threads=_threads_for(rows * n), schedule="dynamic"):
            r1 = min(rows, t * T + T)
            for r in range(t * T, r1):
                xr = &x[0, 0] + r * n
                yr = &out[0, 0] + r * n
                if inverse:
                    _pf_row(&out[0, 0], r, rows, n, sizeof(floating), ahead, 1)
                else:
                    _pf_row(&x[0, 0], r, rows, n, sizeof(floating), ahead, 0)
                if inverse:
                    for j in range(n):
                        yr[pp[j]] = xr[j]
                else:
                    for j in range(n):
                        yr[j] = xr[pp[j]]

# ------------------------------------------------------------------------------------------
# fused spectral block  y = H(P(x) * d)
# ------------------------------------------------------------------------------------------
cdef inline Py_ssize_t _nchunks(Py_ssize_t rows, Py_ssize_t n) noexcept nogil:
    """Fixed (thread-count independent) number of row chunks for deterministic reductions."""
    cdef Py_ssize_t c = 64, cap = (1 << 22) // (n if n > 0 else 1)
    if c > cap:
        c = cap
    if c > rows:
        c = rows
    return c if c >= 1 else 1

def spectral_block_fwd(const floating[:, ::1] x, const long long[::1] perm,
                       const floating[::1] d, floating[:, ::1] y, int m, Py_ssize_t K,
                       const floating[:, ::1] H, bint normalized):
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1]
    cdef Py_ssize_t T = _tile_rows(n, sizeof(floating)), t, r, r0, r1, j
    cdef Py_ssize_t ahead = _pf_rows(n, sizeof(floating))
    cdef floating scale = <floating>(1.0 / sqrt(<double>n)) if normalized else <floating>1
    cdef const long long* pp
    cdef const floating* xr
    cdef const floating* dp
    cdef floating* yr
    if rows == 0:
        return
    pp = &perm[0]
    dp = &d[0]
    with nogil:
        for t in prange((rows + T - 1) // T, num_threads=_threads_for(rows * n), schedule="dynamic"):
            r0 = t * T
            r1 = min(rows, r0 + T)
            for r in range(r0, r1):
                xr = &x[0, 0] + r * n
                yr = &y[0, 0] + r * n
                _pf_row(&x[0, 0], r, rows, n, sizeof(floating), ahead, 0)
                for j in range(n):
                    yr[j] = xr[pp[j]] * dp[j]
            _fwht_tile(&y[0, 0] + r0 * n, r1 - r0, n, m, K, &H[0, 0], scale)

def spectral_block_bwd(const floating[:, ::1] g, const floating[:, ::1] x,
                       const long long[::1] perm, const floating[::1] d,
                       floating[:, ::1] gx, double[::1] gd, int m, Py_ssize_t K,
                       const floating[:, ::1] H, bint normalized):
    """gz = H g (H symmetric); gx[perm[j]] = gz[j] d[j]; gd[j] = sum_rows gz[j] x[perm[j]].
    gd is accumulated in float64 per fixed row chunk, chunks summed in order."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1]
    cdef Py_ssize_t T = _tile_rows(n, sizeof(floating)), nch = _nchunks(rows, n)
    cdef Py_ssize_t ch, r, r0, r1, j, rr, t0, t1, ahead = _pf_rows(n, sizeof(floating))
    cdef floating scale = <floating>(1.0 / sqrt(<double>n)) if normalized else <floating>1
    cdef const long long* pp
    cdef const floating* dp
    cdef const floating* xr
    cdef floating* gxr
    cdef floating* buf
    cdef floating* sr
    cdef double* part
    cdef double* pr
    cdef double acc
    cdef int failed[1]
    failed[0] = 0
    if rows == 0:
        gd[:] = 0
        return
    pp = &perm[0]
    dp = &d[0]
    part = <double*>malloc(nch * n * sizeof(double))
    if part == NULL:
        raise MemoryError()
    memset(part, 0, nch * n * sizeof(double))
    buf = NULL
    with nogil, parallel(num_threads=_threads_for(rows * n)):
        buf = <floating*>malloc(T * n * sizeof(floating))
        for ch in prange(nch, schedule="dynamic"):
            if buf == NULL:
                failed[0] = 1
                continue
            r0 = rows * ch // nch
            r1 = rows * (ch + 1) // nch
            pr = part + ch * n
            t0 = r0
            while t0 < r1:
                t1 = min(r1, t0 + T)
                memcpy(buf, &g[0, 0] + t0 * n, (t1 - t0) * n * sizeof(floating))
                _fwht_tile(buf, t1 - t0, n, m, K, &H[0, 0], scale)
                for rr in range(t1 - t0):
                    sr = buf + rr * n
                    xr = &x[0, 0] + (t0 + rr) * n
                    gxr = &gx[0, 0] + (t0 + rr) * n
                    _pf_row(&x[0, 0], t0 + rr, rows, n, sizeof(floating), ahead, 0)
                    _pf_row(&gx[0, 0], t0 + rr, rows, n, sizeof(floating), ahead, 1)
                    for j in range(n):
                        gxr[pp[j]] = sr[j] * dp[j]
                    for j in range(n):
                        pr[j] += <double>sr[j] * <double>xr[pp[j]]
                t0 = t1
        free(buf)
    if failed[0]:
        free(part)
        raise MemoryError("spectral_block_backward: out of memory for the per-thread buffer")
    with nogil:
        for j in prange(n, num_threads=_threads_for(nch * n), schedule="dynamic"):
            acc = 0
            for ch in range(nch):
                acc = acc + part[ch * n + j]
            gd[j] = acc
    free(part)

# ------------------------------------------------------------------------------------------
# whole spectral stack  z_k = H(P_k z_{k-1} * d_k), k = 1..K, a tile of rows at a time
# ------------------------------------------------------------------------------------------
# A tile of rows goes through all K blocks while it sits in L1 (two ping-pong buffers of
# STACK_TILE_BYTES each), so the stack costs one read of x and one write of y (plus the saved
# block inputs) instead of ~3 memory passes per block. Permutations are int32 (the scalar
# int32 gather measured ~1.5x faster than int64 here, and faster than AVX2 vgatherdps).
cdef enum:
    STACK_MAX_CHUNKS = 8     # row chunks of the deterministic dD reduction (count depends on shapes only)

cdef Py_ssize_t STACK_TILE_BYTES = 16384                # one of the two ping-pong tile buffers
cdef Py_ssize_t STACK_PARALLEL_MIN_ELEMENTS = 1 << 19   # K * rows * N below this: one thread
cdef int STACK_SAVE_MODE = 0        # forward: 0 transform straight into saved (measured ~4% faster), 1 into the tile then copy
cdef int STACK_FUSE_GATHER = 1      # gathers fused into the transform's first pass where possible
# float32 with AVX-512: gather the permutations with scalar four-row loads into a buffer and run the
# transform's first pass (and the backward's dD sums) on it, instead of vgatherdps inside that pass:
# 2-9% faster per layer step here (vgatherdps is slow on this CPU/microcode), same bits. 0: vgatherdps
cdef int STACK_SCALAR_GATHER = 1

def _stack_tuning(tile_bytes=None, parallel_min_elements=None, gather512=None, save_mode=None,
                  fuse_gather=None, scalar_gather=None):
    """Benchmark / test hook: set / read the stack kernels' tile size, parallel threshold and
    whether the float32 permutation gathers may use AVX-512 (same bits either way); save_mode
    (0: block outputs transformed straight into saved, 1: in the tile, then copied) and
    fuse_gather (AVX-512 gathers inside the transform's first pass or not) are set-only A/B
    switches, same bits either way. Returns (tile_bytes, parallel_min_elements, gather512)."""
    global STACK_TILE_BYTES, STACK_PARALLEL_MIN_ELEMENTS, STACK_SAVE_MODE, STACK_FUSE_GATHER
    global STACK_SCALAR_GATHER
    if scalar_gather is not None:
        STACK_SCALAR_GATHER = 1 if scalar_gather else 0
    if fuse_gather is not None:
        STACK_FUSE_GATHER = 1 if fuse_gather else 0
    if save_mode is not None:
        STACK_SAVE_MODE = int(save_mode)
    if gather512 is not None:
        dr_set_gather512(1 if gather512 else 0)
    if tile_bytes is not None:
        STACK_TILE_BYTES = max(1, int(tile_bytes))
    if parallel_min_elements is not None:
        STACK_PARALLEL_MIN_ELEMENTS = max(0, int(parallel_min_elements))
    return STACK_TILE_BYTES, STACK_PARALLEL_MIN_ELEMENTS, bool(dr_get_gather512())

# phases of the profiler (dr_prof_mark), in the order _stack_profile reports them
cdef enum:
    PF_SETUP = 0        # allocations, inverse permutations, clearing the partials
    PF_COPY_IN = 1      # pad / copy x or g into the tile
    PF_GATHER = 2       # forward: copies of block outputs into saved (save_mode 1 only)
    PF_FWHT = 3         # the transforms with their gathers (and, backward, the fused dD sums)
    PF_OUT = 4          # bias add / copy out of y or gx
    PF_RECOMPUTE = 5    # backward without saved inputs: the forward again (gathers + FWHTs)
    PF_DOT = 6          # unused since the dD sums moved into the backward gathers
    PF_GATHER_BWD = 7   # backward: the last gather g <- P_1^T (d_1 * g) into gx, with dD_1
    PF_REDUCE = 8       # backward: the partials summed into gD
STACK_PROFILE_PHASES = ("setup", "copy_in", "gather_scale", "fwht", "out", "recompute", "dD_dot",
                        "gather_bwd", "dD_reduce")

def _stack_profile(on=None, reset=False):
    """Benchmark hook (bench/profile_spectral.py): switch the stack kernels' phase profiler on/off,
    reset it, and return {phase: cycles (rdtsc)} so far. One thread only (no atomics)."""
    if reset:
        dr_prof_reset()
    if on is not None:
        dr_prof_set(1 if on else 0)
    return {name: dr_prof_get(i) for i, name in enumerate(STACK_PROFILE_PHASES)}

cdef inline Py_ssize_t _stack_tile_rows(Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    cdef Py_ssize_t t = STACK_TILE_BYTES // (n * itemsize)
    # rows up to 16 KiB: at least 4 per tile, so the backward's dD sums group four rows before
    # their float64 accumulation (2048 and 4096 float32: 3-8% faster per step, L2-resident tiles)
    if t < 4 and n * itemsize <= 16384:
        t = 4
    return t if t >= 1 else 1

cdef inline int _stack_threads(Py_ssize_t work) noexcept nogil:
    return _nthreads if work >= STACK_PARALLEL_MIN_ELEMENTS else 1

cdef inline void _gather_rows(const floating* src, const int* idx, const floating* d,
                              floating* out, Py_ssize_t n, Py_ssize_t nr) noexcept nogil:
    """out[r][j] = src[r][idx[j]] * d[j] over nr consecutive rows (stride n)."""
    if floating is float:
        dr_gather_scale_rows_f32(src, idx, d, out, n, nr)
    else:
        dr_gather_scale_rows_f64(src, idx, d, out, n, nr)

cdef inline void _gather_pure(const floating* src, const int* idx, floating* out, Py_ssize_t n,
                              Py_ssize_t nr) noexcept nogil:
    if floating is float:
        dr_gather_pure_rows_f32(src, idx, out, n, nr)
    else:
        dr_gather_pure_rows_f64(src, idx, out, n, nr)

cdef inline void _gather_dot(const floating* src, const int* idx, const floating* d, floating* out,
                             const floating* z, Py_ssize_t zs, Py_ssize_t nz, double* acc,
                             Py_ssize_t n, Py_ssize_t nr) noexcept nogil:
    """out[r][j] = src[r][idx[j]] (* d[j] unless d is NULL; no store if out is NULL) and
    acc[j] += sum_r src[r][idx[j]] * z[r][j] for j < nz (z row stride zs): dr_gather_dot_rows."""
    if floating is float:
        dr_gather_dot_rows_f32(src, idx, d, out, z, zs, nz, acc, n, nr)
    else:
        dr_gather_dot_rows_f64(src, idx, d, out, z, zs, nz, acc, n, nr)

cdef inline void _gather_fwht(floating* dst, const floating* src, const int* idx, const floating* pre,
                              Py_ssize_t nr, Py_ssize_t N, int m, Py_ssize_t Kp, const floating* H,
                              floating scale, const floating* z, Py_ssize_t zs, Py_ssize_t nz,
                              double* acc, floating* tmp) noexcept nogil:
    """dst = H(pre * src[:, idx]) per row (src must not be dst), and if z is not NULL
    acc[j] += sum_r src[r][idx[j]] * z[r][j] for j < nz. float32 powers of two 256 .. one L1 block
    with the AVX-512 gather gather straight into the transform's first pass
    (dr_gather_base256_run_f32); otherwise gather (and dot) into tmp (may be dst), then transform.
    Same bits either way."""
    cdef Py_ssize_t c
    if floating is float:
        if (STACK_SCALAR_GATHER and dr_get_gather512() and dr_use_avx512()
                and (z == NULL or (tmp != dst and m == 1 and 256 <= N <= _blk(dst)))):
            dr_gather_pure_rows_scalar_only_f32(src, idx, tmp, N, nr)
            if z == NULL:
                _fwht_tile_pre(dst, tmp, nr, N, m, Kp, H, scale, pre)
                return
            dr_load_base256_run_f32(tmp, pre, dst, N, nr, z, zs, nz, acc)
            if N > 256:
                c = 0
                while c < nr * N:
                    _stages(dst + c, N // 256, 256, 256, scale)
                    c += N
            elif scale != 1:
                dr_scale_f32(dst, nr * N, scale)
            return
        if (STACK_FUSE_GATHER and m == 1 and 256 <= N <= _blk(dst) and dr_get_gather512()
                and dr_use_avx512()):
            dr_gather_base256_run_f32(src, idx, pre, dst, N, nr, z, zs, nz, acc)
            if N > 256:
                c = 0
                while c < nr * N:
                    _stages(dst + c, N // 256, 256, 256, scale)
                    c += N
            elif scale != 1:
                dr_scale_f32(dst, nr * N, scale)
            return
    if z != NULL:
        _gather_dot(src, idx, NULL, tmp, z, zs, nz, acc, N, nr)
    else:
        _gather_pure(src, idx, tmp, N, nr)
    _fwht_tile_pre(dst, tmp, nr, N, m, Kp, H, scale, pre)

cdef inline bint _fwht_from(floating* dst, const floating* src, Py_ssize_t nr, Py_ssize_t N,
                            Py_ssize_t n_src, int m, floating scale) noexcept nogil:
    """dst = _fwht_tile of nr rows of src (row stride N; no padding) out of place, the copy done by
    the transform's first pass (float32 powers of two 256 .. one L1 block, AVX-512: the stages of
    _pow2_multi, same bits). Returns False (nothing done) in the other cases."""
    cdef Py_ssize_t c
    if floating is float:
        if (STACK_FUSE_GATHER and n_src == N and m == 1 and 256 <= N <= _blk(dst)
                and dr_use_avx512()):
            dr_base256_copy_run_f32(src, dst, N, nr)
            if N > 256:
                c = 0
                while c < nr * N:
                    _stages(dst + c, N // 256, 256, 256, scale)
                    c += N
            elif scale != 1:
                dr_scale_f32(dst, nr * N, scale)
            return True
    return False

def _gather_rows_scalar(const float[:, ::1] src, const int[::1] idx, float[:, ::1] out):
    """Test hook of the stack's scalar gather (dr_gather_pure_rows_scalar_f32): out = src[:, idx].
    Checks shapes and indices (the stack kernels call the C directly)."""
    cdef Py_ssize_t nr = src.shape[0], n = src.shape[1], j
    if idx.shape[0] != n or out.shape[0] != nr or out.shape[1] != n:
        raise ValueError("_gather_rows_scalar: inconsistent shapes")
    for j in range(n):
        if not 0 <= idx[j] < n:
            raise ValueError("_gather_rows_scalar: index out of range")
    if nr == 0 or n == 0:
        return
    with nogil:
        dr_gather_pure_rows_scalar_only_f32(&src[0, 0], &idx[0], &out[0, 0], n, nr)

def _gather_dot_rows(const floating[:, ::1] src, const int[::1] idx, d, floating[:, ::1] out,
                     const floating[:, ::1] z, Py_ssize_t nz, double[::1] acc):
    """Test hook of the fused backward gather (dr_gather_dot_rows): out = src[:, idx] (* d),
    acc[:nz] += sum over rows of src[:, idx][:, :nz] * z[:, :nz]. out may have 0 rows (no store);
    Checks shapes and indices (the stack kernels call the C directly, unchecked)."""
    cdef Py_ssize_t nr = src.shape[0], n = src.shape[1], j
    cdef const floating[::1] dv
    cdef const floating* dp = NULL
    if (idx.shape[0] != n or out.shape[1] != n or out.shape[0] not in (0, nr) or z.shape[0] != nr
            or not 0 <= nz <= z.shape[1] or nz > n or acc.shape[0] < n
            or (d is not None and len(d) != n)):
        raise ValueError("_gather_dot_rows: inconsistent shapes")
    for j in range(n):
        if not 0 <= idx[j] < n:
            raise ValueError("_gather_dot_rows: index out of range")
    if nr == 0:
        return
    if d is not None:
        dv = d
        dp = &dv[0]
    with nogil:
        _gather_dot(&src[0, 0], &idx[0], dp, &out[0, 0] if out.shape[0] else NULL, &z[0, 0],
                    z.shape[1], nz, &acc[0], n, nr)

def stack_fwd(const floating[:, ::1] x, const int[:, ::1] perms, const floating[:, ::1] D,
              const floating[::1] bias, bint has_bias, floating[:, ::1] y, floating[::1] saved,
              bint save, int m, Py_ssize_t Kp, const floating[:, ::1] H, bint normalized,
              bint save0=True):
    """y = trunc(z_K) (+ bias) with z_0 = pad(x) and z_k = H(P_k z_{k-1} * d_k); x (rows, n_in),
    y (rows, n_out), n_in, n_out <= N = perms.shape[1]. If save, saved (flat K * rows * N) gets
    the block inputs z_0 .. z_{K-1} before their permutation (what the backward's fused gather
    reads as a stream; u_k = P_k z_{k-1} = saved[k][:, perm_k]); without save0 it gets only
    z_1 .. z_{K-1} ((K - 1) * rows * N; the backward then reads z_0 from x)."""
    cdef Py_ssize_t rows = x.shape[0], n_in = x.shape[1], n_out = y.shape[1]
    cdef Py_ssize_t nb = perms.shape[0], N = perms.shape[1]
    cdef Py_ssize_t T = _stack_tile_rows(N, sizeof(floating)), ntiles, t, r, r0, nr, k
    cdef floating scale = <floating>(1.0 / sqrt(<double>N)) if normalized else <floating>1
    cdef floating* buf
    cdef const floating* src
    cdef floating* dst
    cdef floating* tmp
    cdef floating* yr
    cdef const floating* bp = &bias[0] if has_bias else NULL
    cdef floating* sp = &saved[0] if save and (save0 or nb > 1) else NULL
    cdef floating* sp0
    cdef Py_ssize_t s0 = 0 if save0 else 1     # saved slot of z_k is k - s0
    cdef bint direct_in = n_in == N, direct_out = n_out == N
    cdef int failed[1]
    cdef uint64_t tk
    failed[0] = 0
    if rows == 0:
        return
    sp0 = sp if save0 else NULL
    ntiles = (rows + T - 1) // T
    buf = NULL
    with nogil, parallel(num_threads=_stack_threads(nb * rows * N)):
        # two tile buffers, the second offset by 64 floats so the pair does not 4K-alias
        buf = <floating*>malloc((2 * T * N + 64) * sizeof(floating))
        for t in prange(ntiles, schedule="dynamic"):
            if buf == NULL:
                failed[0] = 1
                continue
            tk = dr_ticks()
            r0 = t * T
            nr = min(rows, r0 + T) - r0
            if direct_in:           # block 1 gathers straight from x
                src = &x[0, 0] + r0 * N
                if sp0 != NULL:
                    memcpy(sp0 + r0 * N, src, nr * N * sizeof(floating))
            else:                   # pad into the saved z_0 (or a tile buffer) and gather from there
                dst = sp0 + r0 * N if sp0 != NULL else buf + T * N + 64
                for r in range(nr):
                    memcpy(dst + r * N, &x[0, 0] + (r0 + r) * n_in, n_in * sizeof(floating))
                    memset(dst + r * N + n_in, 0, (N - n_in) * sizeof(floating))
                src = dst
            dr_prof_mark(PF_COPY_IN, &tk)
            for k in range(nb):
                # z = H(P_k z * d_k) (the gather and the diagonal in the transform's first pass,
                # or the gather into tmp first) into the saved z_k, into y for the last block,
                # else into tmp
                tmp = buf if src != buf else buf + T * N + 64
                if k == nb - 1 and direct_out:
                    dst = &y[0, 0] + r0 * N
                elif k < nb - 1 and sp != NULL and STACK_SAVE_MODE == 0:
                    dst = sp + ((k + 1 - s0) * rows + r0) * N
                else:
                    dst = tmp
                _gather_fwht(dst, src, &perms[0, 0] + k * N, &D[0, 0] + k * N, nr, N, m, Kp, &H[0, 0],
                             scale, NULL, 0, 0, NULL, tmp)
                dr_prof_mark(PF_FWHT, &tk)
                if k < nb - 1 and sp != NULL and STACK_SAVE_MODE != 0:
                    memcpy(sp + ((k + 1 - s0) * rows + r0) * N, dst, nr * N * sizeof(floating))
                    dr_prof_mark(PF_GATHER, &tk)
                src = dst
            for r in range(nr):
                yr = &y[0, 0] + (r0 + r) * n_out
                if bp != NULL:
                    if floating is float:
                        dr_add_f32(src + r * N, bp, yr, n_out)
                    else:
                        dr_add_f64(src + r * N, bp, yr, n_out)
                elif not direct_out:
                    memcpy(yr, src + r * N, n_out * sizeof(floating))
            dr_prof_mark(PF_OUT, &tk)
        free(buf)
    if failed[0]:
        raise MemoryError("spectral_stack: out of memory for the per-thread buffer")

def stack_bwd(const floating[:, ::1] g, const floating[::1] saved, const floating[:, ::1] x,
              bint recompute, const int[:, ::1] perms, const floating[:, ::1] D,
              floating[:, ::1] gx, bint need_x, double[:, ::1] gD,
              int m, Py_ssize_t Kp, const floating[:, ::1] H, bint normalized,
              bint z0_from_x=False):
    """Backward of stack_fwd from g = dL/dy (rows, n_out). Per block, from the last:
    g <- H g (H symmetric); dD_k = sum_rows g * u_k; g <- P_k^T (d_k * g), done as a gather with
    the inverse permutation. gx (rows, n_in) = the first n_in columns of the final g (if need_x).
    The dD_k reduction is fused into that gather (_gather_dot): with the block inputs z_{k-1}
    saved before their permutation, g[inv[j]] * u_k[inv[j]] = (P_k^T g)[j] * z_{k-1}[j], so it
    sums the gathered values against a contiguous stream of z, in the gathered order, and the
    final reduction permutes back. The z come from saved (flat K * rows * N), or, if recompute,
    are recomputed tile by tile from x (rows, n_in) into an L2-resident buffer (K - 1 FWHTs per
    tile instead of a write and a read of K * rows * N from memory: cheaper once that exceeds the
    caches). With z0_from_x, saved holds z_1 .. z_{K-1} only (stack_fwd without save0) and z_0
    is read from x (rows, n_in: the padding columns add nothing to dD). Tiles run last to first: the forward's latest saved rows are still in cache.
    dD: the products of 4 rows at a time are summed in the input precision, those sums
    accumulated in float64 per fixed row chunk (a count that depends on the shapes only), chunks
    summed in order: bitwise independent of the thread count."""
    cdef Py_ssize_t rows = g.shape[0], n_out = g.shape[1], n_in = x.shape[1]
    cdef Py_ssize_t nb = perms.shape[0], N = perms.shape[1]
    cdef Py_ssize_t T = _stack_tile_rows(N, sizeof(floating)), ntiles, nch, ch, chi, t, t0, t1
    cdef Py_ssize_t r, r0, nr, k, j, c, kk
    cdef floating scale = <floating>(1.0 / sqrt(<double>N)) if normalized else <floating>1
    cdef floating* buf
    cdef floating* a
    cdef floating* b
    cdef floating* tmp
    cdef floating* out
    cdef double* pr
    cdef double* part
    cdef double acc
    cdef int* inv
    cdef floating* dinv
    cdef floating* ub
    cdef floating* e
    cdef const floating* zs
    cdef Py_ssize_t nz, zstride
    cdef const floating* src
    cdef bint direct_out = n_in == N
    cdef int failed[1]
    cdef uint64_t tk = dr_ticks()
    failed[0] = 0
    if rows == 0:
        gD[:, :] = 0
        return
    ntiles = (rows + T - 1) // T
    # fewer chunks for small problems (each costs a K x N float64 partial to clear and to sum);
    # one per 2^18 element-blocks, as many as can usefully run in parallel
    nch = min(ntiles, <Py_ssize_t>STACK_MAX_CHUNKS, max(<Py_ssize_t>1, (nb * rows * N) >> 18))
    part = <double*>malloc(nch * nb * N * sizeof(double))
    inv = <int*>malloc(nb * N * sizeof(int))
    dinv = <floating*>malloc(nb * N * sizeof(floating))
    if part == NULL or inv == NULL or dinv == NULL:
        free(part)
        free(inv)
        free(dinv)
        raise MemoryError()
    with nogil:
        for k in range(nb):          # inverse permutations, and d in their order
            for j in range(N):
                inv[k * N + perms[k, j]] = <int>j
            for j in range(N):
                dinv[k * N + j] = D[k, inv[k * N + j]]
    buf = NULL
    with nogil, parallel(num_threads=_stack_threads(nb * rows * N)):
        # a, b (ping-pong), e (the scalar gathers' buffer), then ub (recompute)
        buf = <floating*>malloc((3 * T * N + 128 + (nb * T * N if recompute else 0)) * sizeof(floating))
        for chi in prange(nch, schedule="dynamic"):
            ch = nch - 1 - chi
            if buf == NULL:
                failed[0] = 1
                continue
            memset(part + ch * nb * N, 0, nb * N * sizeof(double))
            dr_prof_mark(PF_SETUP, &tk)
            t0 = ntiles * ch // nch
            t1 = ntiles * (ch + 1) // nch
            t = t1
            while t > t0:
                t = t - 1
                r0 = t * T
                nr = min(rows, r0 + T) - r0
                a = buf
                b = buf + T * N + 64
                e = b + T * N + 64
                ub = e + T * N
                if recompute:       # the forward again, keeping z_0 .. z_{K-1} of this tile in ub
                    if direct_out:
                        src = &x[0, 0] + r0 * N
                    else:
                        for r in range(nr):
                            memcpy(ub + r * N, &x[0, 0] + (r0 + r) * n_in, n_in * sizeof(floating))
                            memset(ub + r * N + n_in, 0, (N - n_in) * sizeof(floating))
                        src = ub
                    for k in range(nb - 1):     # z_K itself is not needed
                        _gather_fwht(ub + (k + 1) * T * N, src, &perms[0, 0] + k * N, &D[0, 0] + k * N,
                                     nr, N, m, Kp, &H[0, 0], scale, NULL, 0, 0, NULL, a)
                        src = ub + (k + 1) * T * N
                    dr_prof_mark(PF_RECOMPUTE, &tk)
                if _fwht_from(a, &g[0, 0] + r0 * n_out, nr, N, n_out, m, scale):
                    dr_prof_mark(PF_FWHT, &tk)      # g read by the transform's first pass
                else:
                    for r in range(nr):
                        memcpy(a + r * N, &g[0, 0] + (r0 + r) * n_out, n_out * sizeof(floating))
                        if n_out < N:
                            memset(a + r * N + n_out, 0, (N - n_out) * sizeof(floating))
                    dr_prof_mark(PF_COPY_IN, &tk)
                    _fwht_tile(a, nr, N, m, Kp, &H[0, 0], scale)
                    dr_prof_mark(PF_FWHT, &tk)
                k = nb - 1
                while k >= 0:
                    # a = H g of block k + 1's output side; g <- P_k^T a with dD_k fused
                    pr = part + (ch * nb + k) * N
                    nz = N
                    if recompute:
                        zs = (&x[0, 0] + r0 * N) if (k == 0 and direct_out) else ub + k * T * N
                    elif z0_from_x:
                        zs = (&x[0, 0] + r0 * n_in) if k == 0 else &saved[0] + ((k - 1) * rows + r0) * N
                        if k == 0:
                            nz = n_in
                    else:
                        zs = &saved[0] + (k * rows + r0) * N
                    zstride = n_in if (k == 0 and z0_from_x and not recompute) else N
                    if k > 0:       # the gather fused with the next transform, d_k its first factor
                        _gather_fwht(b, a, inv + k * N, dinv + k * N, nr, N, m, Kp, &H[0, 0], scale,
                                     zs, zstride, nz, pr, e)
                        tmp = a
                        a = b
                        b = tmp
                        dr_prof_mark(PF_FWHT, &tk)
                    else:           # the last gather writes straight into gx (times d_1)
                        out = b
                        if not need_x:
                            out = NULL
                        elif direct_out:
                            out = &gx[0, 0] + r0 * N
                        if (floating is float and STACK_SCALAR_GATHER and N % 16 == 0
                                and dr_get_gather512() and dr_use_avx512()):
                            if floating is float:   # scalar gather, then the dot and d on the stream
                                dr_gather_pure_rows_scalar_only_f32(a, inv, e, N, nr)
                                dr_load_dot_rows512_f32(e, dinv, out, zs, zstride, nz, pr, N, nr)
                        else:
                            _gather_dot(a, inv, dinv, out, zs, zstride, nz, pr, N, nr)
                        if out != NULL:
                            a = out
                        dr_prof_mark(PF_GATHER_BWD, &tk)
                    k = k - 1
                if need_x and not direct_out:
                    for r in range(nr):
                        memcpy(&gx[0, 0] + (r0 + r) * n_in, a + r * N, n_in * sizeof(floating))
                dr_prof_mark(PF_OUT, &tk)
        free(buf)
    if not failed[0]:
        # the partials are in the gathered order: entry i of dD_k is at perm_k[i]. The chunks are
        # summed in order as contiguous streams (into chunk 0's slot, read before it is written),
        # then permuted once: random reads of one array instead of one per chunk
        with nogil:
            for c in prange(nb * N, num_threads=_stack_threads(nch * nb * N), schedule="static"):
                acc = 0
                for ch in range(nch):
                    acc = acc + part[ch * nb * N + c]
                part[c] = acc
            for c in prange(nb * N, num_threads=_stack_threads(nb * N), schedule="static"):
                kk = c // N
                gD[kk, c % N] = part[kk * N + perms[kk, c % N]]
        dr_prof_mark(PF_REDUCE, &tk)
    free(part)
    free(inv)
    free(dinv)
    if failed[0]:
        raise MemoryError("spectral_stack_backward: out of memory for the per-thread buffer")
