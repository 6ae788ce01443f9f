/* C of the spectral stack (_kernels_spectral.pxi): gather-scale, dot accumulation, add */
#ifndef DREIDEL_KERNELS_SPECTRAL_H
#define DREIDEL_KERNELS_SPECTRAL_H

#include "_kernels_common.h"

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

#endif  /* DREIDEL_KERNELS_SPECTRAL_H */
