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
   (kernels._stack_tuning(gather512=...)) switches it off for A/B. */
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
