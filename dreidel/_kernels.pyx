# cython: language_level=3
"""Hot loops of dreidel.

Numpy-free, tensor-free kernels over raw C-contiguous buffers. The numpy-facing API (validation,
dtype / contiguity handling, errors) lives in ``dreidel/kernels.py``; call that, not this.

Contents
--------
* Fast Walsh-Hadamard transform (natural / Sylvester order) along the last axis, in place, for
  n = 2^k and n = m * 2^k (m in {12, 20, 28}; H_n = H_m kron H_{2^k}, H_m passed in by the caller).
  Structure: an AVX2 in-register kernel does the first log2(base) stages on 64 floats / 32 doubles
  (8 vectors), radix-4 lane butterflies do the rest inside an L1-sized block; rows longer than a
  block do the remaining stages on L1-sized column panels across blocks. Small rows are processed
  a tile of several rows at a time so the vector kernel always sees full registers.
* Permutation gather / scatter, the fused spectral block y = H(P(x) * d) and its backward.
* GELU (exact erf form and tanh form), forward / backward / fused bias.

Every parallel loop is an OpenMP ``prange`` with the GIL released, dynamically scheduled (on a
shared, oversubscribed machine a descheduled thread must not hold back a static share of the
work). Work is split in units that depend only on the shapes (never on the thread count or on
which thread runs a unit), and reductions combine fixed chunks in a fixed order, so the results
are bitwise identical for any number of threads.
"""
cimport cython
from cython.parallel cimport prange, parallel
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.math cimport sqrt, erfc, exp, tanh

cdef extern from *:
    """
    #include <math.h>
    #include <string.h>
    #include <stdint.h>
    #ifdef _OPENMP
    #include <omp.h>
    static int dr_omp_max_threads(void) { return omp_get_max_threads(); }
    static int dr_has_openmp(void) { return 1; }
    #else
    static int dr_omp_max_threads(void) { return 1; }
    static int dr_has_openmp(void) { return 0; }
    #endif

    #if defined(__AVX2__) && defined(__FMA__)
    #include <immintrin.h>
    #define DR_AVX2 1
    #else
    #define DR_AVX2 0
    #endif
    #define DR_R __restrict__

    /* prefetch a byte range (one hint per 64-byte line): the gathers and scatters of the
       permutation kernels access a row in random order, which defeats the hardware prefetcher */
    static inline void dr_prefetch_range(const void* p, Py_ssize_t bytes, int write) {
        const char* c = (const char*)p;
        if (write) for (Py_ssize_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 1, 3);
        else       for (Py_ssize_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 3);
    }

    /* ---------------- lane butterflies (vectorised over L contiguous lanes) ---------------- */
    #define DR_BFLY(T, SFX) \\
    static inline void dr_bfly2_##SFX(T* DR_R q0, T* DR_R q1, Py_ssize_t L) { \\
        for (Py_ssize_t l = 0; l < L; l++) { T a = q0[l], b = q1[l]; q0[l] = a + b; q1[l] = a - b; } \\
    } \\
    static inline void dr_bfly4_##SFX(T* DR_R q0, T* DR_R q1, T* DR_R q2, T* DR_R q3, Py_ssize_t L) { \\
        for (Py_ssize_t l = 0; l < L; l++) { \\
            T a0 = q0[l], a1 = q1[l], a2 = q2[l], a3 = q3[l]; \\
            T b0 = a0 + a1, b1 = a0 - a1, b2 = a2 + a3, b3 = a2 - a3; \\
            q0[l] = b0 + b2; q1[l] = b1 + b3; q2[l] = b0 - b2; q3[l] = b1 - b3; \\
        } \\
    } \\
    static inline void dr_bfly2s_##SFX(T* DR_R q0, T* DR_R q1, Py_ssize_t L, T s) { \
        for (Py_ssize_t l = 0; l < L; l++) { T a = q0[l], b = q1[l]; q0[l] = (a + b) * s; q1[l] = (a - b) * s; } \
    } \
    static inline void dr_bfly4s_##SFX(T* DR_R q0, T* DR_R q1, T* DR_R q2, T* DR_R q3, Py_ssize_t L, T s) { \
        for (Py_ssize_t l = 0; l < L; l++) { \
            T a0 = q0[l], a1 = q1[l], a2 = q2[l], a3 = q3[l]; \
            T b0 = a0 + a1, b1 = a0 - a1, b2 = a2 + a3, b3 = a2 - a3; \
            q0[l] = (b0 + b2) * s; q1[l] = (b1 + b3) * s; q2[l] = (b0 - b2) * s; q3[l] = (b1 - b3) * s; \
        } \
    } \
    static inline void dr_bfly8_##SFX(T* DR_R q0, T* DR_R q1, T* DR_R q2, T* DR_R q3, \
                                      T* DR_R q4, T* DR_R q5, T* DR_R q6, T* DR_R q7, Py_ssize_t L) { \
        for (Py_ssize_t l = 0; l < L; l++) { \
            T a0 = q0[l], a1 = q1[l], a2 = q2[l], a3 = q3[l], a4 = q4[l], a5 = q5[l], a6 = q6[l], a7 = q7[l]; \
            T b0 = a0 + a1, b1 = a0 - a1, b2 = a2 + a3, b3 = a2 - a3; \
            T b4 = a4 + a5, b5 = a4 - a5, b6 = a6 + a7, b7 = a6 - a7; \
            T c0 = b0 + b2, c1 = b1 + b3, c2 = b0 - b2, c3 = b1 - b3; \
            T c4 = b4 + b6, c5 = b5 + b7, c6 = b4 - b6, c7 = b5 - b7; \
            q0[l] = c0 + c4; q1[l] = c1 + c5; q2[l] = c2 + c6; q3[l] = c3 + c7; \
            q4[l] = c0 - c4; q5[l] = c1 - c5; q6[l] = c2 - c6; q7[l] = c3 - c7; \
        } \
    } \
    static inline void dr_bfly8s_##SFX(T* DR_R q0, T* DR_R q1, T* DR_R q2, T* DR_R q3, \
                                       T* DR_R q4, T* DR_R q5, T* DR_R q6, T* DR_R q7, Py_ssize_t L, T s) { \
        for (Py_ssize_t l = 0; l < L; l++) { \
            T a0 = q0[l], a1 = q1[l], a2 = q2[l], a3 = q3[l], a4 = q4[l], a5 = q5[l], a6 = q6[l], a7 = q7[l]; \
            T b0 = a0 + a1, b1 = a0 - a1, b2 = a2 + a3, b3 = a2 - a3; \
            T b4 = a4 + a5, b5 = a4 - a5, b6 = a6 + a7, b7 = a6 - a7; \
            T c0 = b0 + b2, c1 = b1 + b3, c2 = b0 - b2, c3 = b1 - b3; \
            T c4 = b4 + b6, c5 = b5 + b7, c6 = b4 - b6, c7 = b5 - b7; \
            q0[l] = (c0 + c4) * s; q1[l] = (c1 + c5) * s; q2[l] = (c2 + c6) * s; q3[l] = (c3 + c7) * s; \
            q4[l] = (c0 - c4) * s; q5[l] = (c1 - c5) * s; q6[l] = (c2 - c6) * s; q7[l] = (c3 - c7) * s; \
        } \
    } \
    static inline void dr_scale_##SFX(T* DR_R p, Py_ssize_t n, T s) { \\
        for (Py_ssize_t i = 0; i < n; i++) p[i] *= s; \\
    } \\
    /* scalar fallback for the base kernel: first nst stages on a chunk of len elements */ \\
    static inline void dr_base_scalar_##SFX(T* p, Py_ssize_t len, int nst) { \\
        for (int st = 0; st < nst; st++) { \\
            Py_ssize_t h = (Py_ssize_t)1 << st; \\
            for (Py_ssize_t i = 0; i < len; i += 2 * h) \\
                for (Py_ssize_t j = i; j < i + h; j++) { T a = p[j], b = p[j + h]; p[j] = a + b; p[j + h] = a - b; } \\
        } \\
    }
    DR_BFLY(float, f32)
    DR_BFLY(double, f64)

    /* ---------------- in-register base kernels: first nst (<= 6 / 5) stages ---------------- */
    /* float32: a chunk of 64 = 8 vectors of 8. Sign-FMA butterflies are exact (x*(+-1) + y is
       one rounding, identical to x+y / y-x). */
    static inline __attribute__((always_inline)) void dr_base_f32(float* p, int nst) {
    #if DR_AVX2
        __m256 v[8];
        const __m256 s1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
        const __m256 s2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
        const __m256 s4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
        for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps(p + 8 * i);
        if (nst >= 1) for (int i = 0; i < 8; i++) v[i] = _mm256_fmadd_ps(v[i], s1, _mm256_permute_ps(v[i], 0xB1));
        if (nst >= 2) for (int i = 0; i < 8; i++) v[i] = _mm256_fmadd_ps(v[i], s2, _mm256_permute_ps(v[i], 0x4E));
        if (nst >= 3) for (int i = 0; i < 8; i++) v[i] = _mm256_fmadd_ps(v[i], s4, _mm256_permute2f128_ps(v[i], v[i], 0x01));
        #define DR_BF(a, b) { __m256 t0 = v[a], t1 = v[b]; v[a] = _mm256_add_ps(t0, t1); v[b] = _mm256_sub_ps(t0, t1); }
        if (nst >= 4) { DR_BF(0, 1) DR_BF(2, 3) DR_BF(4, 5) DR_BF(6, 7) }
        if (nst >= 5) { DR_BF(0, 2) DR_BF(1, 3) DR_BF(4, 6) DR_BF(5, 7) }
        if (nst >= 6) { DR_BF(0, 4) DR_BF(1, 5) DR_BF(2, 6) DR_BF(3, 7) }
        #undef DR_BF
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(p + 8 * i, v[i]);
    #else
        dr_base_scalar_f32(p, 64, nst);
    #endif
    }
    /* float64: a chunk of 32 = 8 vectors of 4. */
    static inline __attribute__((always_inline)) void dr_base_f64(double* p, int nst) {
    #if DR_AVX2
        __m256d v[8];
        const __m256d s1 = _mm256_setr_pd(1, -1, 1, -1);
        const __m256d s2 = _mm256_setr_pd(1, 1, -1, -1);
        for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_pd(p + 4 * i);
        if (nst >= 1) for (int i = 0; i < 8; i++) v[i] = _mm256_fmadd_pd(v[i], s1, _mm256_permute_pd(v[i], 0x5));
        if (nst >= 2) for (int i = 0; i < 8; i++) v[i] = _mm256_fmadd_pd(v[i], s2, _mm256_permute2f128_pd(v[i], v[i], 0x01));
        #define DR_BF(a, b) { __m256d t0 = v[a], t1 = v[b]; v[a] = _mm256_add_pd(t0, t1); v[b] = _mm256_sub_pd(t0, t1); }
        if (nst >= 3) { DR_BF(0, 1) DR_BF(2, 3) DR_BF(4, 5) DR_BF(6, 7) }
        if (nst >= 4) { DR_BF(0, 2) DR_BF(1, 3) DR_BF(4, 6) DR_BF(5, 7) }
        if (nst >= 5) { DR_BF(0, 4) DR_BF(1, 5) DR_BF(2, 6) DR_BF(3, 7) }
        #undef DR_BF
        for (int i = 0; i < 8; i++) _mm256_storeu_pd(p + 4 * i, v[i]);
    #else
        dr_base_scalar_f64(p, 32, nst);
    #endif
    }

    /* base kernel over nchunks consecutive chunks; the switch makes nst a compile-time constant
       so the stage loops unroll and the 8 vectors stay in registers. */
    #ifndef DR_PF_BYTES
    #define DR_PF_BYTES 8192   /* software prefetch distance of the first (streaming) pass */
    #endif
    #define DR_PF(q) { const char* pf_ = (const char*)(q) + DR_PF_BYTES; \
        __builtin_prefetch(pf_, 1, 3); __builtin_prefetch(pf_ + 64, 1, 3); \
        __builtin_prefetch(pf_ + 128, 1, 3); __builtin_prefetch(pf_ + 192, 1, 3); }
    #define DR_BASE_RUN(T, SFX, BASE) \
    static void dr_base_run_##SFX(T* p, Py_ssize_t nchunks, int nst) { \
        switch (nst) { \
        case 0: break; \
        case 1: for (Py_ssize_t c = 0; c < nchunks; c++) { DR_PF(p + c * BASE) dr_base_##SFX(p + c * BASE, 1); } break; \
        case 2: for (Py_ssize_t c = 0; c < nchunks; c++) { DR_PF(p + c * BASE) dr_base_##SFX(p + c * BASE, 2); } break; \
        case 3: for (Py_ssize_t c = 0; c < nchunks; c++) { DR_PF(p + c * BASE) dr_base_##SFX(p + c * BASE, 3); } break; \
        case 4: for (Py_ssize_t c = 0; c < nchunks; c++) { DR_PF(p + c * BASE) dr_base_##SFX(p + c * BASE, 4); } break; \
        case 5: for (Py_ssize_t c = 0; c < nchunks; c++) { DR_PF(p + c * BASE) dr_base_##SFX(p + c * BASE, 5); } break; \
        default: for (Py_ssize_t c = 0; c < nchunks; c++) { DR_PF(p + c * BASE) dr_base_##SFX(p + c * BASE, 6); } break; \
        } \
    }
    DR_BASE_RUN(float, f32, 64)
    DR_BASE_RUN(double, f64, 32)

    /* ---------------- H_m mixing across m strided sub-rows (vectorised over 16 lanes) ------- */
    /* GCC/Clang vector extensions: 16 lanes = 2 x v8sf or 4 x v4df; acc += (+-1) * x is exact. */
    typedef float dr_v8f __attribute__((vector_size(32)));
    typedef double dr_v4d __attribute__((vector_size(32)));
    /* H_m = C kron [[1,1],[1,-1]] + I kron [[1,-1],[-1,-1]] (Paley II, C the symmetric
       (m/2)x(m/2) conference matrix with zero diagonal, passed in as C): with u0 = x0 + x1,
       u1 = x0 - x1 per pair of sub-rows, y[2c] = sum_c' C[c,c'] u0[c'] + u1[c] and
       y[2c+1] = sum_c' C[c,c'] u1[c'] - u0[c] -- about 2.3x fewer operations than dense H_m. */
    /* The conference matrices, compiled in so the mixing unrolls into plain adds/subtracts;
       dreidel/kernels.py builds the same matrices independently and fwht_inplace checks they
       agree. */
    static const signed char DR_C12[36] = {0,1,1,1,1,1,1,0,1,-1,-1,1,1,1,0,1,-1,-1,1,-1,1,0,1,-1,1,-1,-1,1,0,1,1,1,-1,-1,1,0};
    static const signed char DR_C20[100] = {0,1,1,1,1,1,1,1,1,1,1,0,1,1,1,-1,-1,1,-1,-1,1,1,0,1,-1,1,-1,-1,1,-1,1,1,1,0,-1,-1,1,-1,-1,1,1,1,-1,-1,0,1,1,1,-1,-1,1,-1,1,-1,1,0,1,-1,1,-1,1,-1,-1,1,1,1,0,-1,-1,1,1,1,-1,-1,1,-1,-1,0,1,1,1,-1,1,-1,-1,1,-1,1,0,1,1,-1,-1,1,-1,-1,1,1,1,0};
    static const signed char DR_C28[196] = {0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,1,-1,1,1,-1,-1,-1,-1,1,1,-1,1,1,1,0,1,-1,1,1,-1,-1,-1,-1,1,1,-1,1,-1,1,0,1,-1,1,1,-1,-1,-1,-1,1,1,1,1,-1,1,0,1,-1,1,1,-1,-1,-1,-1,1,1,1,1,-1,1,0,1,-1,1,1,-1,-1,-1,-1,1,-1,1,1,-1,1,0,1,-1,1,1,-1,-1,-1,1,-1,-1,1,1,-1,1,0,1,-1,1,1,-1,-1,1,-1,-1,-1,1,1,-1,1,0,1,-1,1,1,-1,1,-1,-1,-1,-1,1,1,-1,1,0,1,-1,1,1,1,1,-1,-1,-1,-1,1,1,-1,1,0,1,-1,1,1,1,1,-1,-1,-1,-1,1,1,-1,1,0,1,-1,1,-1,1,1,-1,-1,-1,-1,1,1,-1,1,0,1,1,1,-1,1,1,-1,-1,-1,-1,1,1,-1,1,0};
    #define DR_MIX(T, SFX, VT, VL) \
    static inline __attribute__((always_inline)) void dr_mix_impl_##SFX(T* p, const int mc, const signed char* C, \
                                                                       Py_ssize_t K, T scale, Py_ssize_t c0, Py_ssize_t c1) { \
        VT u0[14], u1[14]; \
        Py_ssize_t c = c0; \
        for (; c + VL <= c1; c += VL) {       /* one vector of lanes at a time */ \
            _Pragma("GCC unroll 16") \
            for (int a = 0; a < mc; a++) { \
                VT xa, xb; \
                memcpy(&xa, p + (2 * a) * K + c, sizeof(VT)); \
                memcpy(&xb, p + (2 * a + 1) * K + c, sizeof(VT)); \
                u0[a] = xa + xb; u1[a] = xa - xb; \
            } \
            _Pragma("GCC unroll 16") \
            for (int a = 0; a < mc; a++) { \
                VT y0 = u1[a], y1 = -u0[a]; \
                _Pragma("GCC unroll 16") \
                for (int b = 0; b < mc; b++) { \
                    if (b == a) continue; \
                    if (C[a * mc + b] > 0) { y0 += u0[b]; y1 += u1[b]; } \
                    else { y0 -= u0[b]; y1 -= u1[b]; } \
                } \
                y0 *= scale; y1 *= scale; \
                memcpy(p + (2 * a) * K + c, &y0, sizeof(VT)); \
                memcpy(p + (2 * a + 1) * K + c, &y1, sizeof(VT)); \
            } \
        } \
        for (; c < c1; c++) {                 /* leftover lanes (K < VL): scalar */ \
            T s0[14], s1[14]; \
            for (int a = 0; a < mc; a++) { \
                T xa = p[(2 * a) * K + c], xb = p[(2 * a + 1) * K + c]; \
                s0[a] = xa + xb; s1[a] = xa - xb; \
            } \
            for (int a = 0; a < mc; a++) { \
                T y0 = s1[a], y1 = -s0[a]; \
                for (int b = 0; b < mc; b++) { \
                    if (b == a) continue; \
                    if (C[a * mc + b] > 0) { y0 += s0[b]; y1 += s1[b]; } \
                    else { y0 -= s0[b]; y1 -= s1[b]; } \
                } \
                p[(2 * a) * K + c] = y0 * scale; p[(2 * a + 1) * K + c] = y1 * scale; \
            } \
        } \
    } \
    static void dr_mix_##SFX(T* p, int m, Py_ssize_t K, const T* unused, T scale, Py_ssize_t c0, Py_ssize_t c1) { \
        (void)unused; \
        if (m == 12) dr_mix_impl_##SFX(p, 6, DR_C12, K, scale, c0, c1); \
        else if (m == 20) dr_mix_impl_##SFX(p, 10, DR_C20, K, scale, c0, c1); \
        else dr_mix_impl_##SFX(p, 14, DR_C28, K, scale, c0, c1); \
    }
    DR_MIX(float, f32, dr_v8f, 8)
    DR_MIX(double, f64, dr_v4d, 4)

    static int dr_conference(int m, int i) {
        return m == 12 ? DR_C12[i] : m == 20 ? DR_C20[i] : DR_C28[i];
    }

    /* ---------------- spectral stack helpers ---------------- */
    /* restrict + unrolling: without them the random-order gather ran ~1.7x slower (the
       compiler must assume out may alias src and serialises the loads behind the stores) */
    #define DR_STACK(T, SFX) \
    static void dr_gather_scale_##SFX(const T* DR_R src, const int* DR_R idx, const T* DR_R d, \
                                      T* DR_R out, Py_ssize_t n) { \
        _Pragma("GCC unroll 8") \
        for (Py_ssize_t j = 0; j < n; j++) out[j] = src[idx[j]] * d[j]; \
    } \
    static void dr_gather_save_scale_##SFX(const T* DR_R src, const int* DR_R idx, const T* DR_R d, \
                                           T* DR_R u, T* DR_R out, Py_ssize_t n) { \
        _Pragma("GCC unroll 8") \
        for (Py_ssize_t j = 0; j < n; j++) { T v = src[idx[j]]; u[j] = v; out[j] = v * d[j]; } \
    } \
    /* acc[j] += sum_r a[r][j] * u[r][j] over nr rows (row stride n): the products of four rows \
       are summed in T (a tree of 3 adds, as accurate as the inputs), that sum is accumulated in \
       float64 across the rows, so the error does not grow with the batch; four rows per sweep \
       also load and store acc once per four rows. The grouping depends on nr only. */ \
    static void dr_dot_acc_##SFX(const T* a, const T* u, Py_ssize_t nr, double* DR_R acc, Py_ssize_t n) { \
        Py_ssize_t r = 0; \
        for (; r + 4 <= nr; r += 4) { \
            const T* DR_R a0 = a + r * n; const T* DR_R a1 = a0 + n; const T* DR_R a2 = a1 + n; const T* DR_R a3 = a2 + n; \
            const T* DR_R u0 = u + r * n; const T* DR_R u1 = u0 + n; const T* DR_R u2 = u1 + n; const T* DR_R u3 = u2 + n; \
            for (Py_ssize_t j = 0; j < n; j++) \
                acc[j] += (double)((a0[j] * u0[j] + a1[j] * u1[j]) + (a2[j] * u2[j] + a3[j] * u3[j])); \
        } \
        for (; r < nr; r++) { \
            const T* DR_R a0 = a + r * n; const T* DR_R u0 = u + r * n; \
            for (Py_ssize_t j = 0; j < n; j++) acc[j] += (double)a0[j] * (double)u0[j]; \
        } \
    } \
    static void dr_add_##SFX(const T* DR_R a, const T* DR_R b, T* DR_R out, Py_ssize_t n) { \
        for (Py_ssize_t j = 0; j < n; j++) out[j] = a[j] + b[j]; \
    }
    DR_STACK(float, f32)
    DR_STACK(double, f64)

    /* ---------------- GELU ---------------- */
    /* no-trapping-math lets GCC if-convert the clamps/selects so the loops vectorise; it does
       not change any computed value. */
    #pragma GCC push_options
    #pragma GCC optimize("no-trapping-math")
    /* expf on [-87, 88] (clamped): Cody-Waite reduction + cephes degree-6 polynomial, ~1 ulp.
       Branch-free so the loops vectorise (libm expf/erff would not). */
    static inline float dr_expf(float x) {
        x = x < -87.0f ? -87.0f : x;
        x = x > 88.0f ? 88.0f : x;
        float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
        float r = x - fn * 0.693359375f;
        r = r - fn * -2.12194440e-4f;
        float q = 1.9875691500e-4f;
        q = q * r + 1.3981999507e-3f;
        q = q * r + 8.3334519073e-3f;
        q = q * r + 4.1665795894e-2f;
        q = q * r + 1.6666665459e-1f;
        q = q * r + 5.0000001201e-1f;
        q = q * r * r + r + 1.0f;
        int32_t bits = ((int32_t)fn + 127) << 23;
        float s; memcpy(&s, &bits, 4);
        return q * s;
    }
    /* 1 + erf(x / sqrt 2) = 2 Phi(x) with Abramowitz-Stegun 7.1.26 for erfc(|z|) (abs err
       <= 1.5e-7); the x < 0 side uses erfc directly (no cancellation). Also returns
       e = exp(-x^2/2) for the derivative. */
    static inline float dr_cdf2_f32(float x, float* e_out) {
        float z = fabsf(x) * 0.70710678118654752f;
        float t = 1.0f / (1.0f + 0.3275911f * z);
        float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
        float e = dr_expf(-z * z);
        float q = poly * e;
        *e_out = e;
        return x >= 0.0f ? 2.0f - q : q;
    }
    #define DR_K0 0.7978845608028654f   /* sqrt(2/pi) */
    #define DR_K1 0.044715f
    #define DR_INV_SQRT_2PI 0.3989422804014327f
    static inline float dr_gelu1_f32(float x, int tanh_form) {
        if (tanh_form) {
            /* x * sigmoid(2u); 1/(1+e) then a multiply: x/(1+e) hit slow divider cases */
            float u = DR_K0 * (x + DR_K1 * x * x * x);
            float s = 1.0f / (1.0f + dr_expf(-2.0f * u));
            return x * s;
        }
        float e; float c = dr_cdf2_f32(x, &e);
        return 0.5f * x * c;
    }
    static inline float dr_dgelu1_f32(float x, int tanh_form) {
        if (tanh_form) {
            float u = DR_K0 * (x + DR_K1 * x * x * x);
            float e = dr_expf(-2.0f * u);
            float s = 1.0f / (1.0f + e);
            float du = DR_K0 * (1.0f + 3.0f * DR_K1 * x * x);
            return s + 2.0f * x * s * (e * s) * du;
        }
        float e; float c = dr_cdf2_f32(x, &e);
        return 0.5f * c + x * DR_INV_SQRT_2PI * e;
    }
    static inline double dr_gelu1_f64(double x, int tanh_form) {
        if (tanh_form) {
            double u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
            return 0.5 * x * (1.0 + tanh(u));
        }
        return 0.5 * x * erfc(-x * 0.7071067811865476);
    }
    static inline double dr_dgelu1_f64(double x, int tanh_form) {
        if (tanh_form) {
            double u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
            double t = tanh(u);
            double du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
            return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
        }
        return 0.5 * erfc(-x * 0.7071067811865476) + x * 0.3989422804014327 * exp(-0.5 * x * x);
    }
    /* Loops split by form so each inner loop is branch-free and vectorisable. */
    #define DR_GELU_LOOPS(T, SFX) \\
    static void dr_gelu_##SFX(const T* x, const T* b, T* y, Py_ssize_t n, int tf) { \\
        if (tf) { if (b) for (Py_ssize_t i = 0; i < n; i++) y[i] = dr_gelu1_##SFX(x[i] + b[i], 1); \\
                  else   for (Py_ssize_t i = 0; i < n; i++) y[i] = dr_gelu1_##SFX(x[i], 1); } \\
        else    { if (b) for (Py_ssize_t i = 0; i < n; i++) y[i] = dr_gelu1_##SFX(x[i] + b[i], 0); \\
                  else   for (Py_ssize_t i = 0; i < n; i++) y[i] = dr_gelu1_##SFX(x[i], 0); } \\
    } \\
    static void dr_dgelu_##SFX(const T* g, const T* x, const T* b, T* y, Py_ssize_t n, int tf) { \\
        if (tf) { if (b) for (Py_ssize_t i = 0; i < n; i++) y[i] = g[i] * dr_dgelu1_##SFX(x[i] + b[i], 1); \\
                  else   for (Py_ssize_t i = 0; i < n; i++) y[i] = g[i] * dr_dgelu1_##SFX(x[i], 1); } \\
        else    { if (b) for (Py_ssize_t i = 0; i < n; i++) y[i] = g[i] * dr_dgelu1_##SFX(x[i] + b[i], 0); \\
                  else   for (Py_ssize_t i = 0; i < n; i++) y[i] = g[i] * dr_dgelu1_##SFX(x[i], 0); } \\
    }
    DR_GELU_LOOPS(float, f32)
    DR_GELU_LOOPS(double, f64)
    /* Softmax of one row: max (8 lanes), then e = exp(x - max) written to y with the sum in one
       pass (8 T lanes, flushed to a double every 64 elements: vectorises, and float32 lanes add
       at most 8 terms each), then y *= 1/sum. Semantics of the numpy expression
       exp(x - max) / sum: a NaN or +inf anywhere, or a row of only -inf, gives a NaN row.
       float32 exp(t) for t < -87 is flushed to 0 (true value < 1.7e-38), so masked (-inf)
       entries give exactly 0. */
    static inline float dr_sm_expf(float t) { return t < -87.0f ? 0.0f : dr_expf(t); }
    static inline double dr_sm_exp(double t) { return exp(t); }
    /* Row max in one 32-byte vector of lanes (GCC does not vectorise the scalar select
       reduction). A NaN never wins a '>' so it is dropped here, but exp(NaN - m) still turns
       the whole row into NaN, as np.max would. */
    typedef int32_t dr_v8i __attribute__((vector_size(32)));
    typedef int64_t dr_v4l __attribute__((vector_size(32)));
    #define DR_ROWMAX(T, SFX, VT, VI, L) \\
    static inline T dr_rowmax_##SFX(const T* x, Py_ssize_t n) { \\
        VT mm; \\
        for (int k = 0; k < L; k++) mm[k] = x[0]; \\
        Py_ssize_t i = 0; \\
        for (; i + L <= n; i += L) { \\
            VT v; memcpy(&v, x + i, sizeof v); \\
            VI gt = v > mm; \\
            mm = (VT)(((VI)v & gt) | ((VI)mm & ~gt)); \\
        } \\
        T m = mm[0]; \\
        for (int k = 1; k < L; k++) m = mm[k] > m ? mm[k] : m; \\
        for (; i < n; i++) m = x[i] > m ? x[i] : m; \\
        return m; \\
    }
    DR_ROWMAX(float, f32, dr_v8f, dr_v8i, 8)
    DR_ROWMAX(double, f64, dr_v4d, dr_v4l, 4)
    #define DR_SOFTMAX_LOOPS(T, SFX, EXP) \\
    static void dr_softmax_##SFX(const T* x, T* y, Py_ssize_t n) { \\
        T m = dr_rowmax_##SFX(x, n); \\
        Py_ssize_t i; \\
        if (m == -(T)INFINITY) m = (T)NAN;  /* -inf - -inf is NaN in numpy too */ \\
        double s = 0; \\
        for (i = 0; i + 64 <= n; i += 64) { \\
            T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}; \\
            for (int j = 0; j < 64; j += 8) \\
                for (int k = 0; k < 8; k++) { \\
                    T e = EXP(x[i + j + k] - m); y[i + j + k] = e; acc[k] += e; } \\
            s += (double)(((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))); \\
        } \\
        for (; i < n; i++) { T e = EXP(x[i] - m); y[i] = e; s += e; } \\
        T inv = (T)(1.0 / s); \\
        for (i = 0; i < n; i++) y[i] *= inv; \\
    } \\
    /* out = y * (g - sum(g * y)), the dot in 8 float64 lanes. */ \\
    static void dr_softmax_bwd_##SFX(const T* g, const T* y, T* out, Py_ssize_t n) { \\
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s = 0; \\
        Py_ssize_t i = 0; \\
        for (; i + 8 <= n; i += 8) \\
            for (int k = 0; k < 8; k++) acc[k] += (double)g[i + k] * (double)y[i + k]; \\
        for (; i < n; i++) s += (double)g[i] * (double)y[i]; \\
        s += ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])); \\
        T d = (T)s; \\
        for (i = 0; i < n; i++) out[i] = y[i] * (g[i] - d); \\
    }
    DR_SOFTMAX_LOOPS(float, f32, dr_sm_expf)
    DR_SOFTMAX_LOOPS(double, f64, dr_sm_exp)
    #pragma GCC pop_options
    """
    int dr_omp_max_threads() nogil
    void dr_prefetch_range(const void* p, Py_ssize_t bytes, int write) noexcept nogil
    int dr_has_openmp() nogil
    int DR_AVX2
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
    void dr_gelu_f32(const float* x, const float* b, float* y, Py_ssize_t n, int tf) noexcept nogil
    void dr_gelu_f64(const double* x, const double* b, double* y, Py_ssize_t n, int tf) noexcept nogil
    void dr_dgelu_f32(const float* g, const float* x, const float* b, float* y, Py_ssize_t n,
                      int tf) noexcept nogil
    void dr_dgelu_f64(const double* g, const double* x, const double* b, double* y, Py_ssize_t n,
                      int tf) noexcept nogil
    float dr_gelu1_f32(float x, int tf) noexcept nogil
    void dr_gather_scale_f32(const float* src, const int* idx, const float* d, float* out,
                             Py_ssize_t n) noexcept nogil
    void dr_gather_scale_f64(const double* src, const int* idx, const double* d, double* out,
                             Py_ssize_t n) noexcept nogil
    void dr_gather_save_scale_f32(const float* src, const int* idx, const float* d, float* u,
                                  float* out, Py_ssize_t n) noexcept nogil
    void dr_gather_save_scale_f64(const double* src, const int* idx, const double* d, double* u,
                                  double* out, Py_ssize_t n) noexcept nogil
    void dr_dot_acc_f32(const float* a, const float* u, Py_ssize_t nr, double* acc,
                        Py_ssize_t n) noexcept nogil
    void dr_dot_acc_f64(const double* a, const double* u, Py_ssize_t nr, double* acc,
                        Py_ssize_t n) noexcept nogil
    void dr_add_f32(const float* a, const float* b, float* out, Py_ssize_t n) noexcept nogil
    void dr_add_f64(const double* a, const double* b, double* out, Py_ssize_t n) noexcept nogil
    int dr_conference(int m, int i) noexcept nogil
    float dr_expf(float x) noexcept nogil
    void dr_softmax_f32(const float* x, float* y, Py_ssize_t n) noexcept nogil
    void dr_softmax_f64(const double* x, double* y, Py_ssize_t n) noexcept nogil
    void dr_softmax_bwd_f32(const float* g, const float* y, float* out, Py_ssize_t n) noexcept nogil
    void dr_softmax_bwd_f64(const double* g, const double* y, double* out, Py_ssize_t n) noexcept nogil

ctypedef fused floating:
    float
    double

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

def set_num_threads(int n):
    """Set the number of threads the kernels use (>= 1). Results do not depend on it."""
    global _nthreads
    if n < 1:
        raise ValueError(f"set_num_threads: need n >= 1, got {n}")
    _nthreads = n if dr_has_openmp() else 1

def has_openmp():
    return bool(dr_has_openmp())

def has_avx2():
    return bool(DR_AVX2)

# ------------------------------------------------------------------------------------------
# FWHT building blocks
# ------------------------------------------------------------------------------------------
cdef enum:
    BLOCK_BYTES = 16384     # an L1-resident block: all stages below it run in L1
    PANEL_BYTES = 16384     # a column panel for the stages across blocks
    TILE_BYTES = 16384      # rows shorter than this are processed a tile of rows at a time
    EW_CHUNK = 16384        # elementwise kernels: elements per parallel work unit

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
            if radix == 8:
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
    if R == 1:
        if scale != 1:
            if floating is float:
                dr_scale_f32(p, L, scale)
            else:
                dr_scale_f64(p, L, scale)
        return
    while t > 0:
        if t >= 3 and t != 4:
            radix = 8
        elif t >= 2:
            radix = 4
        else:
            radix = 2
        t -= 1 if radix == 2 else (2 if radix == 4 else 3)
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

def _stack_tuning(tile_bytes=None, parallel_min_elements=None):
    """Benchmark hook: set / read the stack kernels' tile size and parallel threshold."""
    global STACK_TILE_BYTES, STACK_PARALLEL_MIN_ELEMENTS
    if tile_bytes is not None:
        STACK_TILE_BYTES = max(1, int(tile_bytes))
    if parallel_min_elements is not None:
        STACK_PARALLEL_MIN_ELEMENTS = max(0, int(parallel_min_elements))
    return STACK_TILE_BYTES, STACK_PARALLEL_MIN_ELEMENTS

cdef inline Py_ssize_t _stack_tile_rows(Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    cdef Py_ssize_t t = STACK_TILE_BYTES // (n * itemsize)
    return t if t >= 1 else 1

cdef inline int _stack_threads(Py_ssize_t work) noexcept nogil:
    return _nthreads if work >= STACK_PARALLEL_MIN_ELEMENTS else 1

cdef inline void _gather_save_scale(const floating* src, const int* idx, const floating* d,
                                    floating* u, floating* out, Py_ssize_t n) noexcept nogil:
    """u[j] = src[idx[j]] (if u is not NULL); out[j] = src[idx[j]] * d[j]."""
    if floating is float:
        if u != NULL:
            dr_gather_save_scale_f32(src, idx, d, u, out, n)
        else:
            dr_gather_scale_f32(src, idx, d, out, n)
    else:
        if u != NULL:
            dr_gather_save_scale_f64(src, idx, d, u, out, n)
        else:
            dr_gather_scale_f64(src, idx, d, out, n)

def stack_fwd(const floating[:, ::1] x, const int[:, ::1] perms, const floating[:, ::1] D,
              const floating[::1] bias, bint has_bias, floating[:, ::1] y, floating[::1] saved,
              bint save, int m, Py_ssize_t Kp, const floating[:, ::1] H, bint normalized):
    """y = trunc(z_K) (+ bias) with z_0 = pad(x) and z_k = H(P_k z_{k-1} * d_k); x (rows, n_in),
    y (rows, n_out), n_in, n_out <= N = perms.shape[1]. If save, saved (flat K * rows * N) gets
    the permuted block inputs u_k = P_k z_{k-1}, all the backward needs."""
    cdef Py_ssize_t rows = x.shape[0], n_in = x.shape[1], n_out = y.shape[1]
    cdef Py_ssize_t nb = perms.shape[0], N = perms.shape[1]
    cdef Py_ssize_t T = _stack_tile_rows(N, sizeof(floating)), ntiles, t, r, r0, nr, k
    cdef floating scale = <floating>(1.0 / sqrt(<double>N)) if normalized else <floating>1
    cdef floating* buf
    cdef const floating* src
    cdef floating* dst
    cdef floating* yr
    cdef const floating* bp = &bias[0] if has_bias else NULL
    cdef floating* sp = &saved[0] if save else NULL
    cdef floating* up
    cdef bint direct_in = n_in == N, direct_out = n_out == N
    cdef int failed[1]
    failed[0] = 0
    if rows == 0:
        return
    ntiles = (rows + T - 1) // T
    buf = NULL
    with nogil, parallel(num_threads=_stack_threads(nb * rows * N)):
        # two tile buffers, the second offset by 64 floats so the pair does not 4K-alias
        buf = <floating*>malloc((2 * T * N + 64) * sizeof(floating))
        for t in prange(ntiles, schedule="dynamic"):
            if buf == NULL:
                failed[0] = 1
                continue
            r0 = t * T
            nr = min(rows, r0 + T) - r0
            if direct_in:           # block 1 gathers straight from x
                src = &x[0, 0] + r0 * N
            else:
                dst = buf + T * N + 64
                for r in range(nr):
                    memcpy(dst + r * N, &x[0, 0] + (r0 + r) * n_in, n_in * sizeof(floating))
                    memset(dst + r * N + n_in, 0, (N - n_in) * sizeof(floating))
                src = dst
            for k in range(nb):
                if k == nb - 1 and direct_out:      # the last block writes straight into y
                    dst = &y[0, 0] + r0 * N
                else:
                    dst = buf if (src != buf) else buf + T * N + 64
                for r in range(nr):
                    up = sp + (k * rows + r0 + r) * N if sp != NULL else NULL
                    _gather_save_scale(src + r * N, &perms[0, 0] + k * N, &D[0, 0] + k * N, up,
                                       dst + r * N, N)
                _fwht_tile(dst, nr, N, m, Kp, &H[0, 0], scale)
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
        free(buf)
    if failed[0]:
        raise MemoryError("spectral_stack: out of memory for the per-thread buffer")

def stack_bwd(const floating[:, ::1] g, const floating[::1] saved, const floating[:, ::1] x,
              bint recompute, const int[:, ::1] perms, const floating[:, ::1] D,
              floating[:, ::1] gx, bint need_x, double[:, ::1] gD,
              int m, Py_ssize_t Kp, const floating[:, ::1] H, bint normalized):
    """Backward of stack_fwd from g = dL/dy (rows, n_out). Per block, from the last:
    g <- H g (H symmetric); dD_k = sum_rows g * u_k; g <- P_k^T (d_k * g), done as a gather with
    the inverse permutation. gx (rows, n_in) = the first n_in columns of the final g (if need_x).
    The block inputs u_k come from saved (flat K * rows * N), or, if recompute, are recomputed
    tile by tile from x (rows, n_in) into an L2-resident buffer (K - 1 FWHTs per tile instead of
    a write and a read of K * rows * N from memory: cheaper once that exceeds the caches).
    dD: the products of 4 rows at a time are summed in the input precision (dr_dot_acc), those
    sums accumulated in float64 per fixed row chunk (a count that depends on the shapes only),
    chunks summed in order: bitwise independent of the thread count."""
    cdef Py_ssize_t rows = g.shape[0], n_out = g.shape[1], n_in = x.shape[1]
    cdef Py_ssize_t nb = perms.shape[0], N = perms.shape[1]
    cdef Py_ssize_t T = _stack_tile_rows(N, sizeof(floating)), ntiles, nch, ch, t, t0, t1
    cdef Py_ssize_t r, r0, nr, k, j, c
    cdef floating scale = <floating>(1.0 / sqrt(<double>N)) if normalized else <floating>1
    cdef floating* buf
    cdef floating* a
    cdef floating* b
    cdef floating* tmp
    cdef double* pr
    cdef double* part
    cdef double acc
    cdef int* inv
    cdef floating* dinv
    cdef floating* ub
    cdef const floating* us
    cdef const floating* src
    cdef floating* dst
    cdef bint direct_out = n_in == N
    cdef int failed[1]
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
        buf = <floating*>malloc((2 * T * N + 64 + (nb * T * N if recompute else 0)) * sizeof(floating))
        for ch in prange(nch, schedule="dynamic"):
            if buf == NULL:
                failed[0] = 1
                continue
            memset(part + ch * nb * N, 0, nb * N * sizeof(double))
            t0 = ntiles * ch // nch
            t1 = ntiles * (ch + 1) // nch
            for t in range(t0, t1):
                r0 = t * T
                nr = min(rows, r0 + T) - r0
                a = buf
                b = buf + T * N + 64
                ub = b + T * N
                if recompute:       # the forward again, keeping u_1 .. u_K of this tile in ub
                    if direct_out:
                        src = &x[0, 0] + r0 * N
                    else:
                        for r in range(nr):
                            memcpy(b + r * N, &x[0, 0] + (r0 + r) * n_in, n_in * sizeof(floating))
                            memset(b + r * N + n_in, 0, (N - n_in) * sizeof(floating))
                        src = b
                    for k in range(nb):
                        dst = a if src != a else b
                        for r in range(nr):
                            _gather_save_scale(src + r * N, &perms[0, 0] + k * N, &D[0, 0] + k * N,
                                               ub + (k * T + r) * N, dst + r * N, N)
                        if k < nb - 1:     # z_K itself is not needed
                            _fwht_tile(dst, nr, N, m, Kp, &H[0, 0], scale)
                        src = dst
                    a = buf
                    b = buf + T * N + 64
                for r in range(nr):
                    memcpy(a + r * N, &g[0, 0] + (r0 + r) * n_out, n_out * sizeof(floating))
                    if n_out < N:
                        memset(a + r * N + n_out, 0, (N - n_out) * sizeof(floating))
                k = nb - 1
                while k >= 0:
                    _fwht_tile(a, nr, N, m, Kp, &H[0, 0], scale)
                    pr = part + (ch * nb + k) * N
                    if recompute:
                        us = ub + k * T * N
                    else:
                        us = &saved[0] + (k * rows + r0) * N
                    if floating is float:
                        dr_dot_acc_f32(a, us, nr, pr, N)
                    else:
                        dr_dot_acc_f64(a, us, nr, pr, N)
                    if k > 0 or need_x:
                        if k == 0 and direct_out:   # the last gather writes straight into gx
                            b = &gx[0, 0] + r0 * N
                        for r in range(nr):
                            _gather_save_scale(a + r * N, inv + k * N, dinv + k * N, NULL,
                                               b + r * N, N)
                        tmp = a
                        a = b
                        b = tmp
                    k = k - 1
                if need_x and not direct_out:
                    for r in range(nr):
                        memcpy(&gx[0, 0] + (r0 + r) * n_in, a + r * N, n_in * sizeof(floating))
        free(buf)
    if not failed[0]:
        with nogil:
            for c in prange(nb * N, num_threads=_stack_threads(nch * nb * N), schedule="static"):
                acc = 0
                for ch in range(nch):
                    acc = acc + part[ch * nb * N + c]
                gD[c // N, c % N] = acc
    free(part)
    free(inv)
    free(dinv)
    if failed[0]:
        raise MemoryError("spectral_stack_backward: out of memory for the per-thread buffer")

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

include "_kernels_hashing.pxi"

# ------------------------------------------------------------------------------------------
# softmax over the last axis (one row per task; a row never spans threads, so the bits do not
# depend on the thread count)
# ------------------------------------------------------------------------------------------
def softmax_fwd(const floating[:, ::1] x, floating[:, ::1] y):
    """y[r] = exp(x[r] - max x[r]) / sum exp(x[r] - max x[r]) for every row r."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], T = _row_chunk(n), t, r
    if rows == 0 or n == 0:
        return
    with nogil:
        for t in prange((rows + T - 1) // T, num_threads=_threads_for(rows * n), schedule="dynamic"):
            for r in range(t * T, min(rows, t * T + T)):
                if floating is float:
                    dr_softmax_f32(&x[0, 0] + r * n, &y[0, 0] + r * n, n)
                else:
                    dr_softmax_f64(&x[0, 0] + r * n, &y[0, 0] + r * n, n)

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

include "_kernels_depthwise.pxi"
