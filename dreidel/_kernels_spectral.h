/* C of the spectral stack (_kernels_spectral.pxi): gather-scale, dot accumulation, add */
#ifndef DREIDEL_KERNELS_SPECTRAL_H
#define DREIDEL_KERNELS_SPECTRAL_H

#include "_kernels_common.h"
#include "_kernels_fwht.h"   /* dr_use_avx512, DR_T512 */

/* ---------------- spectral stack helpers ---------------- */
/* restrict + unrolling: without them the random-order gather ran ~1.7x slower (the
   compiler must assume out may alias src and serialises the loads behind the stores) */
#define DR_STACK(T, SFX) \
static void dr_gather_scale_##SFX(const T* DR_R src, const int* DR_R idx, const T* DR_R d, \
                                  T* DR_R out, Py_ssize_t n) { \
    _Pragma("GCC unroll 8") \
    for (Py_ssize_t j = 0; j < n; j++) out[j] = src[idx[j]] * d[j]; \
} \
/* the same over nr consecutive rows (row stride n), four rows per index: the index and d[j] \
   are loaded once per four rows, which more than halved the gather time at N = 1024 (the \
   scalar gather is load-bound: idx, src, d per element otherwise) */ \
static void dr_gather_scale_rows_scalar_##SFX(const T* DR_R src, const int* DR_R idx, const T* DR_R d, \
                                             T* DR_R out, Py_ssize_t n, Py_ssize_t nr) { \
    Py_ssize_t r = 0; \
    for (; r + 4 <= nr; r += 4) { \
        const T* DR_R s0 = src + r * n; const T* DR_R s1 = s0 + n; const T* DR_R s2 = s1 + n; const T* DR_R s3 = s2 + n; \
        T* DR_R o0 = out + r * n; T* DR_R o1 = o0 + n; T* DR_R o2 = o1 + n; T* DR_R o3 = o2 + n; \
        _Pragma("GCC unroll 4") \
        for (Py_ssize_t j = 0; j < n; j++) { \
            int i = idx[j]; T dj = d[j]; \
            o0[j] = s0[i] * dj; o1[j] = s1[i] * dj; o2[j] = s2[i] * dj; o3[j] = s3[i] * dj; \
        } \
    } \
    for (; r < nr; r++) dr_gather_scale_##SFX(src + r * n, idx, d, out + r * n, n); \
} \
/* out[r][j] = src[r][idx[j]] over nr rows (stride n), four rows per index load: the pure gather \
   of the stack, whose diagonal is applied by the FWHT's first pass (_fwht_tile_pre) */ \
static void dr_gather_pure_rows_scalar_##SFX(const T* DR_R src, const int* DR_R idx, T* DR_R out, \
                                      Py_ssize_t n, Py_ssize_t nr) { \
    Py_ssize_t r = 0; \
    /* rows over 8 KiB: two rows per index load, so the rows read in random order (32 KiB at \
       4096 float32) stay in L1; four such rows did not (1.3 vs 0.8 ticks per element) */ \
    if (n * (Py_ssize_t)sizeof(T) > 8192) { \
        for (; r + 2 <= nr; r += 2) { \
            const T* DR_R s0 = src + r * n; const T* DR_R s1 = s0 + n; \
            T* DR_R o0 = out + r * n; T* DR_R o1 = o0 + n; \
            _Pragma("GCC unroll 8") \
            for (Py_ssize_t j = 0; j < n; j++) { int i = idx[j]; o0[j] = s0[i]; o1[j] = s1[i]; } \
        } \
    } \
    for (; r + 4 <= nr; r += 4) { \
        const T* DR_R s0 = src + r * n; const T* DR_R s1 = s0 + n; const T* DR_R s2 = s1 + n; const T* DR_R s3 = s2 + n; \
        T* DR_R o0 = out + r * n; T* DR_R o1 = o0 + n; T* DR_R o2 = o1 + n; T* DR_R o3 = o2 + n; \
        _Pragma("GCC unroll 4") \
        for (Py_ssize_t j = 0; j < n; j++) { int i = idx[j]; o0[j] = s0[i]; o1[j] = s1[i]; o2[j] = s2[i]; o3[j] = s3[i]; } \
    } \
    for (; r < nr; r++) { \
        const T* DR_R s0 = src + r * n; T* DR_R o0 = out + r * n; \
        _Pragma("GCC unroll 8") \
        for (Py_ssize_t j = 0; j < n; j++) o0[j] = s0[idx[j]]; \
    } \
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

/* AVX-512 pure gather (float32, n % 16 == 0): 16 indices per load, one vgatherdps and one vector
   store per row and 16 columns. The scalar gather is bound by its one store per element; this
   does a sixteenth of the stores. A copy, so bitwise the same as the scalar path. dr_gather512
   (kernels._stack_tuning(gather512=...)) switches it off for A/B. Measured later on the 2-core
   Ice Lake VM (its microcode makes vgatherdps slow: ~1.6-2 rdtsc ticks per element against
   ~0.8 for the scalar gather, two or four rows per index load), the stack kernels gather with the
   scalar loops into a buffer and run the transform's first pass on it (dr_load_base256_run_f32,
   dr_load_dot_rows512_f32; STACK_SCALAR_GATHER, _stack_tuning(scalar_gather=...)). */
static int dr_gather512 = 1;
#if DR_AVX512_BUILD
DR_T512 static void dr_gather_pure_rows512_f32(const float* DR_R src, const int* DR_R idx,
                                               float* DR_R out, Py_ssize_t n, Py_ssize_t nr) {
    Py_ssize_t r = 0;
    for (; r + 4 <= nr; r += 4) {
        const float* s0 = src + r * n; const float* s1 = s0 + n; const float* s2 = s1 + n; const float* s3 = s2 + n;
        float* o0 = out + r * n; float* o1 = o0 + n; float* o2 = o1 + n; float* o3 = o2 + n;
        for (Py_ssize_t j = 0; j < n; j += 16) {
            __m512i i = _mm512_loadu_si512((const void*)(idx + j));
            _mm512_storeu_ps(o0 + j, _mm512_i32gather_ps(i, s0, 4));
            _mm512_storeu_ps(o1 + j, _mm512_i32gather_ps(i, s1, 4));
            _mm512_storeu_ps(o2 + j, _mm512_i32gather_ps(i, s2, 4));
            _mm512_storeu_ps(o3 + j, _mm512_i32gather_ps(i, s3, 4));
        }
    }
    for (; r < nr; r++) {
        const float* s0 = src + r * n; float* o0 = out + r * n;
        for (Py_ssize_t j = 0; j < n; j += 16)
            _mm512_storeu_ps(o0 + j, _mm512_i32gather_ps(_mm512_loadu_si512((const void*)(idx + j)), s0, 4));
    }
}
/* out[r][j] = src[r][idx[j]] * d[j]: one rounding, as the scalar path */
DR_T512 static void dr_gather_scale_rows512_f32(const float* DR_R src, const int* DR_R idx,
                                                const float* DR_R d, float* DR_R out, Py_ssize_t n,
                                                Py_ssize_t nr) {
    for (Py_ssize_t r = 0; r < nr; r++) {
        const float* s0 = src + r * n; float* o0 = out + r * n;
        for (Py_ssize_t j = 0; j < n; j += 16)
            _mm512_storeu_ps(o0 + j, _mm512_mul_ps(_mm512_i32gather_ps(
                _mm512_loadu_si512((const void*)(idx + j)), s0, 4), _mm512_loadu_ps(d + j)));
    }
}
#endif
static void dr_gather_pure_rows_f32(const float* DR_R src, const int* DR_R idx, float* DR_R out,
                                    Py_ssize_t n, Py_ssize_t nr) {
#if DR_AVX512_BUILD
    if (dr_gather512 && n % 16 == 0 && dr_use_avx512()) { dr_gather_pure_rows512_f32(src, idx, out, n, nr); return; }
#endif
    dr_gather_pure_rows_scalar_f32(src, idx, out, n, nr);
}
static void dr_gather_pure_rows_scalar_only_f32(const float* DR_R src, const int* DR_R idx, float* DR_R out,
                                                Py_ssize_t n, Py_ssize_t nr) {
    dr_gather_pure_rows_scalar_f32(src, idx, out, n, nr);
}
static void dr_gather_pure_rows_scalar_only_f64(const double* DR_R src, const int* DR_R idx, double* DR_R out,
                                                Py_ssize_t n, Py_ssize_t nr) {
    dr_gather_pure_rows_scalar_f64(src, idx, out, n, nr);
}
static void dr_gather_pure_rows_f64(const double* DR_R src, const int* DR_R idx, double* DR_R out,
                                    Py_ssize_t n, Py_ssize_t nr) {
    dr_gather_pure_rows_scalar_f64(src, idx, out, n, nr);
}
static void dr_gather_scale_rows_f32(const float* DR_R src, const int* DR_R idx, const float* DR_R d,
                                     float* DR_R out, Py_ssize_t n, Py_ssize_t nr) {
#if DR_AVX512_BUILD
    if (dr_gather512 && n % 16 == 0 && dr_use_avx512()) { dr_gather_scale_rows512_f32(src, idx, d, out, n, nr); return; }
#endif
    dr_gather_scale_rows_scalar_f32(src, idx, d, out, n, nr);
}
static void dr_gather_scale_rows_f64(const double* DR_R src, const int* DR_R idx, const double* DR_R d,
                                     double* DR_R out, Py_ssize_t n, Py_ssize_t nr) {
    dr_gather_scale_rows_scalar_f64(src, idx, d, out, n, nr);
}
/* ---------------- backward gather fused with the diagonal gradient ---------------- */
/* out[r][j] = src[r][idx[j]] (* d[j] if d), and acc[j] += sum_r src[r][idx[j]] * z[r][j] for
   j < nz, z row r at z + r * zs. The stack saves the block inputs z before their permutation, so
   with idx the inverse permutation src[idx[j]] * z[j] is exactly the product g_i * u_i of the
   unfused dD (i = idx[j]): the reduction runs on the gathered values while they are in registers
   and the saved inputs are read as a contiguous stream, in the gathered order (the caller permutes
   acc back once). Four rows: their products summed in T in row order
   (fma(v3,z3, fma(v2,z2, fma(v1,z1, v0*z0)))), that added to the float64 acc; a single row: acc = fma(v, z, acc) in float64. Explicit fmas,
   so the scalar and AVX-512 paths round alike (no reliance on -ffp-contract). out may be NULL. */
#define DR_GDOT(T, SFX, FMA) \
static void dr_gather_dot_rows_scalar_##SFX(const T* DR_R src, const int* DR_R idx, const T* DR_R d, \
                                            T* DR_R out, const T* DR_R z, Py_ssize_t zs, Py_ssize_t nz, \
                                            double* DR_R acc, Py_ssize_t n, Py_ssize_t nr) { \
    Py_ssize_t r = 0; \
    for (; r + 4 <= nr; r += 4) { \
        const T* DR_R s0 = src + r * n; const T* DR_R s1 = s0 + n; const T* DR_R s2 = s1 + n; const T* DR_R s3 = s2 + n; \
        const T* DR_R z0 = z + r * zs; const T* DR_R z1 = z0 + zs; const T* DR_R z2 = z1 + zs; const T* DR_R z3 = z2 + zs; \
        T* DR_R o0 = out != NULL ? out + r * n : NULL; \
        for (Py_ssize_t j = 0; j < n; j++) { \
            int i = idx[j]; T v0 = s0[i], v1 = s1[i], v2 = s2[i], v3 = s3[i]; \
            if (j < nz) acc[j] += (double)FMA(v3, z3[j], FMA(v2, z2[j], FMA(v1, z1[j], v0 * z0[j]))); \
            if (o0 != NULL) { \
                T dj = d != NULL ? d[j] : (T)1; \
                if (d != NULL) { v0 *= dj; v1 *= dj; v2 *= dj; v3 *= dj; } \
                o0[j] = v0; o0[n + j] = v1; o0[2 * n + j] = v2; o0[3 * n + j] = v3; \
            } \
        } \
    } \
    for (; r < nr; r++) { \
        const T* DR_R s0 = src + r * n; const T* DR_R z0 = z + r * zs; \
        T* DR_R o0 = out != NULL ? out + r * n : NULL; \
        for (Py_ssize_t j = 0; j < n; j++) { \
            T v = s0[idx[j]]; \
            if (j < nz) acc[j] = __builtin_fma((double)v, (double)z0[j], acc[j]); \
            if (o0 != NULL) o0[j] = d != NULL ? v * d[j] : v; \
        } \
    } \
}
DR_GDOT(float, f32, __builtin_fmaf)
DR_GDOT(double, f64, __builtin_fma)

#if DR_AVX512_BUILD
/* the same for float32, n % 16 == 0: one vgatherdps per row and 16 columns, the dot on the
   gathered vectors; z beyond nz reads as zero (masked loads) and acc there is left alone */
/* idx NULL: src is already gathered (read contiguously; dr_load_dot_rows512_f32) */
#define DR_G512(iv, s, j) (idx != NULL ? _mm512_i32gather_ps(iv, s, 4) : _mm512_loadu_ps((s) + (j)))
DR_T512 static inline __attribute__((always_inline)) void dr_gather_dot_rows512_impl_f32(
        const float* DR_R src, const int* DR_R idx, const float* DR_R d, float* DR_R out,
        const float* DR_R z, Py_ssize_t zs, Py_ssize_t nz, double* DR_R acc, Py_ssize_t n,
        Py_ssize_t nr) {
    Py_ssize_t r = 0;
    for (; r + 4 <= nr; r += 4) {
        const float* s0 = src + r * n; const float* s1 = s0 + n; const float* s2 = s1 + n; const float* s3 = s2 + n;
        const float* z0 = z + r * zs; const float* z1 = z0 + zs; const float* z2 = z1 + zs; const float* z3 = z2 + zs;
        float* o0 = out != NULL ? out + r * n : NULL;
        for (Py_ssize_t j = 0; j < n; j += 16) {
            __m512i i = idx != NULL ? _mm512_loadu_si512((const void*)(idx + j)) : _mm512_setzero_si512();
            __m512 g0 = DR_G512(i, s0, j), g1 = DR_G512(i, s1, j);
            __m512 g2 = DR_G512(i, s2, j), g3 = DR_G512(i, s3, j);
            if (j < nz) {
                __mmask16 m = j + 16 <= nz ? (__mmask16)0xFFFF : (__mmask16)((1u << (nz - j)) - 1);
                __m512 p = _mm512_mul_ps(g0, _mm512_maskz_loadu_ps(m, z0 + j));
                p = _mm512_fmadd_ps(g1, _mm512_maskz_loadu_ps(m, z1 + j), p);
                p = _mm512_fmadd_ps(g2, _mm512_maskz_loadu_ps(m, z2 + j), p);
                p = _mm512_fmadd_ps(g3, _mm512_maskz_loadu_ps(m, z3 + j), p);
                __m512d lo = _mm512_loadu_pd(acc + j), hi = _mm512_loadu_pd(acc + j + 8);
                lo = _mm512_mask_add_pd(lo, (__mmask8)m, lo, _mm512_cvtps_pd(_mm512_castps512_ps256(p)));
                hi = _mm512_mask_add_pd(hi, (__mmask8)(m >> 8), hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(p, 1)));
                _mm512_storeu_pd(acc + j, lo);
                _mm512_storeu_pd(acc + j + 8, hi);
            }
            if (o0 != NULL) {
                if (d != NULL) {
                    __m512 dv = _mm512_loadu_ps(d + j);
                    g0 = _mm512_mul_ps(g0, dv); g1 = _mm512_mul_ps(g1, dv);
                    g2 = _mm512_mul_ps(g2, dv); g3 = _mm512_mul_ps(g3, dv);
                }
                _mm512_storeu_ps(o0 + j, g0); _mm512_storeu_ps(o0 + n + j, g1);
                _mm512_storeu_ps(o0 + 2 * n + j, g2); _mm512_storeu_ps(o0 + 3 * n + j, g3);
            }
        }
    }
    for (; r < nr; r++) {
        const float* s0 = src + r * n; const float* z0 = z + r * zs;
        float* o0 = out != NULL ? out + r * n : NULL;
        for (Py_ssize_t j = 0; j < n; j += 16) {
            __m512 g = DR_G512(idx != NULL ? _mm512_loadu_si512((const void*)(idx + j)) : _mm512_setzero_si512(), s0, j);
            if (j < nz) {
                __mmask16 m = j + 16 <= nz ? (__mmask16)0xFFFF : (__mmask16)((1u << (nz - j)) - 1);
                __m512 zv = _mm512_maskz_loadu_ps(m, z0 + j);
                __m512d lo = _mm512_loadu_pd(acc + j), hi = _mm512_loadu_pd(acc + j + 8);
                lo = _mm512_mask3_fmadd_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(g)),
                                           _mm512_cvtps_pd(_mm512_castps512_ps256(zv)), lo, (__mmask8)m);
                hi = _mm512_mask3_fmadd_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(g, 1)),
                                           _mm512_cvtps_pd(_mm512_extractf32x8_ps(zv, 1)), hi, (__mmask8)(m >> 8));
                _mm512_storeu_pd(acc + j, lo);
                _mm512_storeu_pd(acc + j + 8, hi);
            }
            if (o0 != NULL)
                _mm512_storeu_ps(o0 + j, d != NULL ? _mm512_mul_ps(g, _mm512_loadu_ps(d + j)) : g);
        }
    }
}
DR_T512 static void dr_gather_dot_rows512_f32(const float* DR_R src, const int* DR_R idx,
                                              const float* DR_R d, float* DR_R out,
                                              const float* DR_R z, Py_ssize_t zs, Py_ssize_t nz,
                                              double* DR_R acc, Py_ssize_t n, Py_ssize_t nr) {
    dr_gather_dot_rows512_impl_f32(src, idx, d, out, z, zs, nz, acc, n, nr);
}
/* dr_gather_dot_rows512_f32 of rows already gathered (src[r][j] instead of src[r][idx[j]]): the
   same products in the same order, so the same bits; src must not be out */
DR_T512 static void dr_load_dot_rows512_f32(const float* DR_R src, const float* DR_R d,
                                            float* DR_R out, const float* DR_R z, Py_ssize_t zs,
                                            Py_ssize_t nz, double* DR_R acc, Py_ssize_t n,
                                            Py_ssize_t nr) {
    dr_gather_dot_rows512_impl_f32(src, NULL, d, out, z, zs, nz, acc, n, nr);
}
#endif
#if DR_AVX512_BUILD
/* the stack's gather fused into the transform's first pass (float32, n a multiple of 256 that
   fits an L1 block): per 256-column chunk the 16 vectors are gathered straight into registers
   (src[r][idx[j]]), optionally summed against z into acc exactly as dr_gather_dot_rows does
   (same products, same order: four rows through a float partial, single rows in float64),
   multiplied by pre and taken through the 8 in-register stages (dr_base256_pre_run_f32's
   arithmetic) before one store: the gathered tile is never stored and reloaded. */
DR_T512 static inline __attribute__((always_inline)) void dr_gather_base256_impl_f32(
        const float* DR_R src, const int* DR_R idx, const float* DR_R pre, float* DR_R dst,
        Py_ssize_t n, Py_ssize_t nrows, const float* DR_R z, Py_ssize_t zs, Py_ssize_t nz,
        double* DR_R acc) {
    const __m512 s1 = _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    const __m512 s2 = _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1);
    const __m512 s4 = _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1);
    const __m512 s8 = _mm512_setr_ps(1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1);
    float part[256] __attribute__((aligned(64)));   /* the four-row float partial of one chunk */
    Py_ssize_t r = 0;
    while (r < nrows) {
        int grp = (z != NULL && r + 4 <= nrows) ? 4 : 1;
        for (Py_ssize_t c = 0; c < n; c += 256) {
            for (int rr = 0; rr < grp; rr++) {
                const float* sr = src + (r + rr) * n;
                float* q = dst + (r + rr) * n + c;
                __m512 v[16];
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++)
                    v[i] = idx != NULL ? _mm512_i32gather_ps(_mm512_loadu_si512((const void*)(idx + c + 16 * i)), sr, 4)
                                       : _mm512_loadu_ps(sr + c + 16 * i);
                if (z != NULL && c < nz) {
                    const float* zr = z + (r + rr) * zs;
                    _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) {   /* unrolled: v stays in registers */
                        Py_ssize_t j = c + 16 * i;
                        if (j >= nz) continue;
                        __mmask16 m = j + 16 <= nz ? (__mmask16)0xFFFF : (__mmask16)((1u << (nz - j)) - 1);
                        __m512 zv = _mm512_maskz_loadu_ps(m, zr + j);
                        if (grp == 4) {
                            __m512 t = rr == 0 ? _mm512_mul_ps(v[i], zv)
                                               : _mm512_fmadd_ps(v[i], zv, _mm512_load_ps(part + 16 * i));
                            if (rr < 3) _mm512_store_ps(part + 16 * i, t);
                            else {
                            __m512d lo = _mm512_loadu_pd(acc + j), hi = _mm512_loadu_pd(acc + j + 8);
                            lo = _mm512_mask_add_pd(lo, (__mmask8)m, lo, _mm512_cvtps_pd(_mm512_castps512_ps256(t)));
                            hi = _mm512_mask_add_pd(hi, (__mmask8)(m >> 8), hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(t, 1)));
                            _mm512_storeu_pd(acc + j, lo);
                            _mm512_storeu_pd(acc + j + 8, hi);
                            }
                        } else {
                            __m512d lo = _mm512_loadu_pd(acc + j), hi = _mm512_loadu_pd(acc + j + 8);
                            lo = _mm512_mask3_fmadd_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v[i])),
                                                       _mm512_cvtps_pd(_mm512_castps512_ps256(zv)), lo, (__mmask8)m);
                            hi = _mm512_mask3_fmadd_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(v[i], 1)),
                                                       _mm512_cvtps_pd(_mm512_extractf32x8_ps(zv, 1)), hi, (__mmask8)(m >> 8));
                            _mm512_storeu_pd(acc + j, lo);
                            _mm512_storeu_pd(acc + j + 8, hi);
                        }
                    }
                }
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] = _mm512_mul_ps(v[i], _mm512_loadu_ps(pre + c + 16 * i));
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] = _mm512_fmadd_ps(v[i], s1, _mm512_permute_ps(v[i], 0xB1));
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] = _mm512_fmadd_ps(v[i], s2, _mm512_permute_ps(v[i], 0x4E));
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] = _mm512_fmadd_ps(v[i], s4, _mm512_shuffle_f32x4(v[i], v[i], 0xB1));
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] = _mm512_fmadd_ps(v[i], s8, _mm512_shuffle_f32x4(v[i], v[i], 0x4E));
                #define DR_BF(a, b) { __m512 t0 = v[a], t1 = v[b]; v[a] = _mm512_add_ps(t0, t1); v[b] = _mm512_sub_ps(t0, t1); }
                DR_BF16
                #undef DR_BF
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) _mm512_storeu_ps(q + 16 * i, v[i]);
            }
        }
        r += grp;
    }
}
/* two instances: without the dot (forward) the compiler sees a plain gather-transform loop */
DR_T512 static void dr_gather_base256_run_f32(const float* DR_R src, const int* DR_R idx,
                                              const float* DR_R pre, float* DR_R dst, Py_ssize_t n,
                                              Py_ssize_t nrows, const float* DR_R z, Py_ssize_t zs,
                                              Py_ssize_t nz, double* DR_R acc) {
    if (z == NULL) dr_gather_base256_impl_f32(src, idx, pre, dst, n, nrows, NULL, 0, 0, NULL);
    else dr_gather_base256_impl_f32(src, idx, pre, dst, n, nrows, z, zs, nz, acc);
}
/* the same with src already gathered (idx the identity, read contiguously; src must not be dst):
   the scalar four-row gather into a buffer plus this beat the vgatherdps path here */
DR_T512 static void dr_load_base256_run_f32(const float* DR_R src, const float* DR_R pre,
                                            float* DR_R dst, Py_ssize_t n, Py_ssize_t nrows,
                                            const float* DR_R z, Py_ssize_t zs, Py_ssize_t nz,
                                            double* DR_R acc) {
    if (z == NULL) dr_gather_base256_impl_f32(src, NULL, pre, dst, n, nrows, NULL, 0, 0, NULL);
    else dr_gather_base256_impl_f32(src, NULL, pre, dst, n, nrows, z, zs, nz, acc);
}
#else
static void dr_gather_base256_run_f32(const float* src, const int* idx, const float* pre, float* dst,
                                      Py_ssize_t n, Py_ssize_t nrows, const float* z, Py_ssize_t zs,
                                      Py_ssize_t nz, double* acc) {
    (void)src; (void)idx; (void)pre; (void)dst; (void)n; (void)nrows; (void)z; (void)zs; (void)nz; (void)acc;
}
static void dr_load_base256_run_f32(const float* src, const float* pre, float* dst, Py_ssize_t n,
                                    Py_ssize_t nrows, const float* z, Py_ssize_t zs, Py_ssize_t nz,
                                    double* acc) {
    (void)src; (void)pre; (void)dst; (void)n; (void)nrows; (void)z; (void)zs; (void)nz; (void)acc;
}
static void dr_load_dot_rows512_f32(const float* src, const float* d, float* out, const float* z,
                                    Py_ssize_t zs, Py_ssize_t nz, double* acc, Py_ssize_t n, Py_ssize_t nr) {
    (void)src; (void)d; (void)out; (void)z; (void)zs; (void)nz; (void)acc; (void)n; (void)nr;
}
#endif
static void dr_gather_dot_rows_f32(const float* DR_R src, const int* DR_R idx, const float* DR_R d,
                                   float* DR_R out, const float* DR_R z, Py_ssize_t zs, Py_ssize_t nz,
                                   double* DR_R acc, Py_ssize_t n, Py_ssize_t nr) {
#if DR_AVX512_BUILD
    if (dr_gather512 && n % 16 == 0 && dr_use_avx512()) {
        dr_gather_dot_rows512_f32(src, idx, d, out, z, zs, nz, acc, n, nr); return;
    }
#endif
    dr_gather_dot_rows_scalar_f32(src, idx, d, out, z, zs, nz, acc, n, nr);
}
static void dr_gather_dot_rows_f64(const double* DR_R src, const int* DR_R idx, const double* DR_R d,
                                   double* DR_R out, const double* DR_R z, Py_ssize_t zs, Py_ssize_t nz,
                                   double* DR_R acc, Py_ssize_t n, Py_ssize_t nr) {
    dr_gather_dot_rows_scalar_f64(src, idx, d, out, z, zs, nz, acc, n, nr);
}
static void dr_set_gather512(int on) { dr_gather512 = on; }
static int dr_get_gather512(void) { return dr_gather512; }

/* ---------------- phase profiler of the stack kernels (bench/profile_spectral.py) --------- */
/* Off by default (one predictable branch per phase per tile). When on, the stack kernels add
   the cycles (rdtsc) of each phase to dr_prof[phase]; meaningful with one thread only. */
#define DR_PROF_N 16
static double dr_prof[DR_PROF_N];
static int dr_prof_on = 0;
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t dr_ticks(void) { return dr_prof_on ? __rdtsc() : 0; }
#else
static inline uint64_t dr_ticks(void) { return 0; }
#endif
/* add the ticks since *t to phase i and restart the clock */
static inline void dr_prof_mark(int i, uint64_t* t) {
    if (dr_prof_on) { uint64_t n = dr_ticks(); dr_prof[i] += (double)(n - *t); *t = n; }
}
static void dr_prof_set(int on) { dr_prof_on = on; }
static double dr_prof_get(int i) { return dr_prof[i]; }
static void dr_prof_reset(void) { for (int i = 0; i < DR_PROF_N; i++) dr_prof[i] = 0; }

#endif  /* DREIDEL_KERNELS_SPECTRAL_H */
