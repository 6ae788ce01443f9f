/* C of the Walsh-Hadamard transform (_kernels_fwht.pxi): butterflies, in-register base
   kernels, H_m mixing for m in {12, 20, 28} */
#ifndef DREIDEL_KERNELS_FWHT_H
#define DREIDEL_KERNELS_FWHT_H

#include "_kernels_common.h"

/* ---------------- lane butterflies (vectorised over L contiguous lanes) ---------------- */
#define DR_BFLY(T, SFX) \
static inline void dr_bfly2_##SFX(T* DR_R q0, T* DR_R q1, Py_ssize_t L) { \
    for (Py_ssize_t l = 0; l < L; l++) { T a = q0[l], b = q1[l]; q0[l] = a + b; q1[l] = a - b; } \
} \
static inline void dr_bfly4_##SFX(T* DR_R q0, T* DR_R q1, T* DR_R q2, T* DR_R q3, Py_ssize_t L) { \
    for (Py_ssize_t l = 0; l < L; l++) { \
        T a0 = q0[l], a1 = q1[l], a2 = q2[l], a3 = q3[l]; \
        T b0 = a0 + a1, b1 = a0 - a1, b2 = a2 + a3, b3 = a2 - a3; \
        q0[l] = b0 + b2; q1[l] = b1 + b3; q2[l] = b0 - b2; q3[l] = b1 - b3; \
    } \
} \
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
static inline void dr_scale_##SFX(T* DR_R p, Py_ssize_t n, T s) { \
    for (Py_ssize_t i = 0; i < n; i++) p[i] *= s; \
} \
/* scalar fallback for the base kernel: first nst stages on a chunk of len elements */ \
static inline void dr_base_scalar_##SFX(T* p, Py_ssize_t len, int nst) { \
    for (int st = 0; st < nst; st++) { \
        Py_ssize_t h = (Py_ssize_t)1 << st; \
        for (Py_ssize_t i = 0; i < len; i += 2 * h) \
            for (Py_ssize_t j = i; j < i + h; j++) { T a = p[j], b = p[j + h]; p[j] = a + b; p[j + h] = a - b; } \
    } \
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

/* dst = the first 6 stages of (src * pre) for nrows rows of n (a multiple of 64) floats: the
   spectral stack's diagonal is applied as the base kernel loads its chunk, so the permutation
   gather before it is a pure gather (index and source loads only). src may be dst. */
static void dr_base_pre_run_f32(const float* src, const float* pre, float* dst, Py_ssize_t n,
                                Py_ssize_t nrows) {
    for (Py_ssize_t r = 0; r < nrows; r++)
        for (Py_ssize_t c = 0; c < n; c += 64) {
            float* q = dst + r * n + c;
            const float* a = src + r * n + c;
            const float* w = pre + c;
#if DR_AVX2
            __m256 v[8];
            const __m256 s1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
            const __m256 s2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
            const __m256 s4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
            for (int i = 0; i < 8; i++) v[i] = _mm256_mul_ps(_mm256_loadu_ps(a + 8 * i), _mm256_loadu_ps(w + 8 * i));
            for (int i = 0; i < 8; i++) v[i] = _mm256_fmadd_ps(v[i], s1, _mm256_permute_ps(v[i], 0xB1));
            for (int i = 0; i < 8; i++) v[i] = _mm256_fmadd_ps(v[i], s2, _mm256_permute_ps(v[i], 0x4E));
            for (int i = 0; i < 8; i++) v[i] = _mm256_fmadd_ps(v[i], s4, _mm256_permute2f128_ps(v[i], v[i], 0x01));
            #define DR_BF(a, b) { __m256 t0 = v[a], t1 = v[b]; v[a] = _mm256_add_ps(t0, t1); v[b] = _mm256_sub_ps(t0, t1); }
            DR_BF(0, 1) DR_BF(2, 3) DR_BF(4, 5) DR_BF(6, 7)
            DR_BF(0, 2) DR_BF(1, 3) DR_BF(4, 6) DR_BF(5, 7)
            DR_BF(0, 4) DR_BF(1, 5) DR_BF(2, 6) DR_BF(3, 7)
            #undef DR_BF
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(q + 8 * i, v[i]);
#else
            for (int i = 0; i < 64; i++) q[i] = a[i] * w[i];
            dr_base_scalar_f32(q, 64, 6);
#endif
        }
}

/* ---------------- H_m mixing across m strided sub-rows (vectorised over 16 lanes) ------- */
/* GCC/Clang vector extensions: 16 lanes = 2 x v8sf or 4 x v4df; acc += (+-1) * x is exact. */
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

/* ---------------- AVX-512 paths (runtime dispatch; the build stays x86-64-v3) ---------------- */
/* Compiled with a target attribute and used only when the CPU has AVX-512 F/DQ/BW/VL and the
   switch allows it (dr_fwht_isa, set at import from __builtin_cpu_supports; tests force either
   path through kernels._fwht_isa). Both paths do the same butterflies in the same stage order
   with the same final scaling, so their results are bitwise equal. The gain is the 32 registers:
   a 256-float chunk (16 zmm) takes 8 stages in registers (AVX2: 64 floats, 6 stages), and a
   radix-16 lane pass (16 rows of 16 lanes in registers) does 4 stages per memory pass, so
   N = 1024, 2048 and 4096 take 2 passes over the data instead of 3. */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define DR_AVX512_BUILD 1
#define DR_T512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#include <immintrin.h>
static int dr_fwht_isa = -1;   /* -1 not probed, 0 AVX2/scalar, 1 AVX-512 */
static int dr_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}
static inline int dr_use_avx512(void) {
    if (dr_fwht_isa < 0) dr_fwht_isa = dr_cpu_has_avx512();
    return dr_fwht_isa;
}
/* the 4 butterfly stages across v[0..15] (h = 1, 2, 4, 8), spelled out so v stays in registers */
#define DR_BF16 \
    DR_BF(0, 1) DR_BF(2, 3) DR_BF(4, 5) DR_BF(6, 7) DR_BF(8, 9) DR_BF(10, 11) DR_BF(12, 13) DR_BF(14, 15) \
    DR_BF(0, 2) DR_BF(1, 3) DR_BF(4, 6) DR_BF(5, 7) DR_BF(8, 10) DR_BF(9, 11) DR_BF(12, 14) DR_BF(13, 15) \
    DR_BF(0, 4) DR_BF(1, 5) DR_BF(2, 6) DR_BF(3, 7) DR_BF(8, 12) DR_BF(9, 13) DR_BF(10, 14) DR_BF(11, 15) \
    DR_BF(0, 8) DR_BF(1, 9) DR_BF(2, 10) DR_BF(3, 11) DR_BF(4, 12) DR_BF(5, 13) DR_BF(6, 14) DR_BF(7, 15)
/* all 8 stages of nchunks consecutive 256-float chunks, in registers */
DR_T512 static void dr_base256_run_f32(float* p, Py_ssize_t nchunks) {
    const __m512 s1 = _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    const __m512 s2 = _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1);
    const __m512 s4 = _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1);
    const __m512 s8 = _mm512_setr_ps(1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (Py_ssize_t c = 0; c < nchunks; c++) {
        float* q = p + c * 256;
        __m512 v[16];
        DR_PF(q) DR_PF(q + 64) DR_PF(q + 128) DR_PF(q + 192)
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] = _mm512_loadu_ps(q + 16 * i);
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
/* dr_base256_run_f32 of (src * pre), row by row (n a multiple of 256, pre of length n; pre
   NULL: of src itself, out of place, so a copy into the buffer costs no pass of its own) */
DR_T512 static inline __attribute__((always_inline)) void dr_base256_pre_impl_f32(
        const float* src, const float* pre, float* dst, Py_ssize_t n, Py_ssize_t nrows) {
    const __m512 s1 = _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    const __m512 s2 = _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1);
    const __m512 s4 = _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1);
    const __m512 s8 = _mm512_setr_ps(1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (Py_ssize_t r = 0; r < nrows; r++)
        for (Py_ssize_t c = 0; c < n; c += 256) {
            float* q = dst + r * n + c;
            const float* a = src + r * n + c;
            const float* w = pre + c;
            __m512 v[16];
            if (pre != NULL) {
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++)
                    v[i] = _mm512_mul_ps(_mm512_loadu_ps(a + 16 * i), _mm512_loadu_ps(w + 16 * i));
            } else {
                (void)w;
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] = _mm512_loadu_ps(a + 16 * i);
            }
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
DR_T512 static void dr_base256_pre_run_f32(const float* src, const float* pre, float* dst,
                                           Py_ssize_t n, Py_ssize_t nrows) {
    dr_base256_pre_impl_f32(src, pre, dst, n, nrows);
}
DR_T512 static void dr_base256_copy_run_f32(const float* src, float* dst, Py_ssize_t n,
                                            Py_ssize_t nrows) {
    dr_base256_pre_impl_f32(src, NULL, dst, n, nrows);
}
/* radix-16 lane pass: rows q + i * hs (i < 16), L lanes (a multiple of 16), stages in the
   order h = 1, 2, 4, 8 (as four radix-2 passes would do them); times s unless s == 1 */
DR_T512 static void dr_bfly16_f32(float* q, Py_ssize_t hs, Py_ssize_t L, float s) {
    const __m512 vs = _mm512_set1_ps(s);
    for (Py_ssize_t l = 0; l < L; l += 16) {
        __m512 v[16];
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] = _mm512_loadu_ps(q + i * hs + l);
        #define DR_BF(a, b) { __m512 t0 = v[a], t1 = v[b]; v[a] = _mm512_add_ps(t0, t1); v[b] = _mm512_sub_ps(t0, t1); }
        DR_BF16
        #undef DR_BF
        if (s != 1.0f) _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] = _mm512_mul_ps(v[i], vs);
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) _mm512_storeu_ps(q + i * hs + l, v[i]);
    }
}
#else
#define DR_AVX512_BUILD 0
static int dr_fwht_isa = 0;
static int dr_cpu_has_avx512(void) { return 0; }
static inline int dr_use_avx512(void) { return 0; }
static void dr_base256_run_f32(float* p, Py_ssize_t nchunks) { (void)p; (void)nchunks; }
static void dr_bfly16_f32(float* q, Py_ssize_t hs, Py_ssize_t L, float s) { (void)q; (void)hs; (void)L; (void)s; }
static void dr_base256_pre_run_f32(const float* src, const float* pre, float* dst, Py_ssize_t n,
                                   Py_ssize_t nrows) { (void)src; (void)pre; (void)dst; (void)n; (void)nrows; }
static void dr_base256_copy_run_f32(const float* src, float* dst, Py_ssize_t n, Py_ssize_t nrows) {
    (void)src; (void)dst; (void)n; (void)nrows; }
#endif
static void dr_set_fwht_isa(int isa) { dr_fwht_isa = (isa && dr_cpu_has_avx512()) ? 1 : 0; }
static int dr_get_fwht_isa(void) { return dr_use_avx512(); }

#endif  /* DREIDEL_KERNELS_FWHT_H */
