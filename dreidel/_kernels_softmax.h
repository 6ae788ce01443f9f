/* C of the row softmax forward (_kernels_softmax.pxi).

   float32: three passes over a row (the row is L1-sized for attention, so the extra passes are
   cheap): max, then e = exp(x - max) stored to y with the sum in the same pass, then y *= 1/sum.
   Three paths picked at run time (dr_sm_isa; the build stays x86-64-v3, AVX-512 code is compiled
   with target attributes): AVX-512F, AVX2+FMA intrinsics, and portable C ("scalar": plain loops
   the compiler may vectorise, e.g. NEON). They compute every exp with the same operations
   (bitwise equal); only the order of the sum differs.

   exp(t), t = x - max <= 0: Cody-Waite reduction t = n ln2 + r, |r| <= ln2/2, the cephes degree-6
   polynomial (~1 ulp), 2^n built in the exponent bits. t < ln(FLT_MIN) gives 0: the true value
   is subnormal (< 1.2e-38, far below the 1-ulp error of the row's largest entry) and subnormal
   arithmetic is slow; -inf (masked) entries give exactly 0.

   Special rows follow the numpy expression exp(x - max) / sum: a NaN or +inf anywhere, or a row
   of only -inf, gives a NaN row (NaN propagates through the exp into the sum).

   float64 keeps the plain loop with libm exp (dr_softmax_rows_f64).
   x and y may be the same buffer (in place): no restrict. */
#ifndef DREIDEL_KERNELS_SOFTMAX_H
#define DREIDEL_KERNELS_SOFTMAX_H

#include "_kernels_common.h"

#define DR_SM_LOG2E 1.44269504088896341f
#define DR_SM_MAGIC 12582912.0f            /* 1.5 * 2^23: adding it rounds to an integer */
#define DR_SM_LN2HI 0.693359375f
#define DR_SM_LN2LO -2.12194440e-4f
#define DR_SM_TMIN -87.3365447504f          /* ln(FLT_MIN) */
#define DR_SM_P0 1.9875691500e-4f
#define DR_SM_P1 1.3981999507e-3f
#define DR_SM_P2 8.3334519073e-3f
#define DR_SM_P3 4.1665795894e-2f
#define DR_SM_P4 1.6666665459e-1f
#define DR_SM_P5 5.0000001201e-1f

/* ---------------- portable C (every CPU; the reference the vector paths match) ---------------- */
/* no-trapping-math lets GCC if-convert the selects, so on a non-x86 CPU (NEON) the loops below
   vectorise like the old kernel's; it does not change any computed value */
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
/* explicit fmaf, so the vector paths (same fma sequence) give the same bits */
static inline float dr_sm_exp1(float t) {
    float tc = t < DR_SM_TMIN ? DR_SM_TMIN : t;     /* NaN stays NaN */
    float z = fmaf(tc, DR_SM_LOG2E, DR_SM_MAGIC);
    float fn = z - DR_SM_MAGIC;
    float r = fmaf(fn, -DR_SM_LN2HI, tc);
    r = fmaf(fn, -DR_SM_LN2LO, r);
    float q = fmaf(DR_SM_P0, r, DR_SM_P1);
    q = fmaf(q, r, DR_SM_P2);
    q = fmaf(q, r, DR_SM_P3);
    q = fmaf(q, r, DR_SM_P4);
    q = fmaf(q, r, DR_SM_P5);
    q = fmaf(q, r * r, r) + 1.0f;
    /* z's low mantissa bits hold n: (bits(z) + 127) << 23 is 2^n (n >= -126 here) */
    uint32_t zb; memcpy(&zb, &z, 4);
    uint32_t sb = (zb + 127u) << 23;
    float s; memcpy(&s, &sb, 4);
    return t < DR_SM_TMIN ? 0.0f : q * s;
}
typedef int32_t dr_sm_v8i __attribute__((vector_size(32)));
static void dr_softmax_row_scalar_f32(const float* x, float* y, Py_ssize_t n) {
    /* max in 8 lanes of a generic vector (GCC does not vectorise the scalar select reduction) */
    dr_v8f mm;
    for (int k = 0; k < 8; k++) mm[k] = x[0];
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        dr_v8f v; memcpy(&v, x + i, sizeof v);
        dr_sm_v8i gt = v > mm;
        mm = (dr_v8f)(((dr_sm_v8i)v & gt) | ((dr_sm_v8i)mm & ~gt));
    }
    float m = mm[0];
    for (int k = 1; k < 8; k++) m = mm[k] > m ? mm[k] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    if (m == -INFINITY) m = NAN;    /* -inf - -inf is NaN in numpy too */
    /* exp and sum: 8 float lanes, flushed to a double every 64 elements */
    double s = 0;
    for (i = 0; i + 64 <= n; i += 64) {
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int j = 0; j < 64; j += 8)
            for (int k = 0; k < 8; k++) { float e = dr_sm_exp1(x[i + j + k] - m); y[i + j + k] = e; acc[k] += e; }
        s += (double)(((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])));
    }
    for (; i < n; i++) { float e = dr_sm_exp1(x[i] - m); y[i] = e; s += e; }
    float inv = (float)(1.0 / s);
    for (i = 0; i < n; i++) y[i] *= inv;
}
#pragma GCC pop_options

/* ---------------- AVX2+FMA and AVX-512F ---------------- */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define DR_SM_X86 1
#include <immintrin.h>
#define DR_SM_T2 __attribute__((target("avx2,fma")))
#define DR_SM_T512 __attribute__((target("avx512f,avx2,fma")))
#define DR_SM_BLOCK 512     /* float lanes are flushed to double every this many elements */

/* AVX2 */
DR_SM_T2 static inline __m256 dr_sm_exp8(__m256 t) {
    const __m256 tmin = _mm256_set1_ps(DR_SM_TMIN);
    __m256 tc = _mm256_max_ps(tmin, t);         /* max(a, NaN) returns the NaN (2nd operand) */
    __m256 z = _mm256_fmadd_ps(tc, _mm256_set1_ps(DR_SM_LOG2E), _mm256_set1_ps(DR_SM_MAGIC));
    __m256 fn = _mm256_sub_ps(z, _mm256_set1_ps(DR_SM_MAGIC));
    __m256 r = _mm256_fmadd_ps(fn, _mm256_set1_ps(-DR_SM_LN2HI), tc);
    r = _mm256_fmadd_ps(fn, _mm256_set1_ps(-DR_SM_LN2LO), r);
    __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(DR_SM_P0), r, _mm256_set1_ps(DR_SM_P1));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(DR_SM_P2));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(DR_SM_P3));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(DR_SM_P4));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(DR_SM_P5));
    q = _mm256_add_ps(_mm256_fmadd_ps(q, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i sb = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(z), _mm256_set1_epi32(127)), 23);
    __m256 e = _mm256_mul_ps(q, _mm256_castsi256_ps(sb));
    return _mm256_andnot_ps(_mm256_cmp_ps(t, tmin, _CMP_LT_OQ), e);   /* t < tmin (incl. -inf): 0 */
}
DR_SM_T2 static inline float dr_sm_hmax8(__m256 v) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}
DR_SM_T2 static void dr_softmax_row_avx2_f32(const float* x, float* y, Py_ssize_t n) {
    static const int32_t tbl[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const Py_ssize_t rem = n & 7, nv = n - rem;
    const __m256i tm = _mm256_loadu_si256((const __m256i*)(tbl + 8 - rem));  /* first rem lanes */
    Py_ssize_t i = 0;
    /* max; the tail's missing lanes read as -inf */
    __m256 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
    for (; i + 32 <= nv; i += 32) {
        m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
        m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
        m2 = _mm256_max_ps(m2, _mm256_loadu_ps(x + i + 16));
        m3 = _mm256_max_ps(m3, _mm256_loadu_ps(x + i + 24));
    }
    for (; i < nv; i += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    if (rem) m1 = _mm256_max_ps(m1, _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + i, tm), _mm256_castsi256_ps(tm)));
    float m = dr_sm_hmax8(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
    if (m == -INFINITY) m = NAN;    /* -inf - -inf is NaN in numpy too */
    /* exp and sum: float lanes, flushed to double lanes every DR_SM_BLOCK elements */
    const __m256 vm = _mm256_set1_ps(m);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    i = 0;
    while (i < nv) {
        const Py_ssize_t end = nv - i > DR_SM_BLOCK ? i + DR_SM_BLOCK : nv;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (; i + 16 <= end; i += 16) {
            __m256 e0 = dr_sm_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
            __m256 e1 = dr_sm_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm));
            _mm256_storeu_ps(y + i, e0);
            _mm256_storeu_ps(y + i + 8, e1);
            a0 = _mm256_add_ps(a0, e0);
            a1 = _mm256_add_ps(a1, e1);
        }
        if (i < end) {
            __m256 e0 = dr_sm_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
            _mm256_storeu_ps(y + i, e0);
            a0 = _mm256_add_ps(a0, e0);
            i += 8;
        }
        a0 = _mm256_add_ps(a0, a1);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(a0)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(a0, 1)));
    }
    if (rem) {
        __m256 v = _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + i, tm), _mm256_castsi256_ps(tm));
        __m256 e0 = dr_sm_exp8(_mm256_sub_ps(v, vm));
        _mm256_maskstore_ps(y + i, tm, e0);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e0)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e0, 1)));
    }
    s0 = _mm256_add_pd(s0, s1);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s0), _mm256_extractf128_pd(s0, 1));
    double s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    /* scale */
    const __m256 vinv = _mm256_set1_ps((float)(1.0 / s));
    for (i = 0; i < nv; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), vinv));
    if (rem) _mm256_maskstore_ps(y + i, tm, _mm256_mul_ps(_mm256_maskload_ps(y + i, tm), vinv));
}

/* AVX-512F: the same, 16 lanes, the tail with mask registers */
DR_SM_T512 static inline __m512 dr_sm_exp16(__m512 t) {
    const __m512 tmin = _mm512_set1_ps(DR_SM_TMIN);
    __m512 tc = _mm512_max_ps(tmin, t);         /* max(a, NaN) returns the NaN (2nd operand) */
    __m512 z = _mm512_fmadd_ps(tc, _mm512_set1_ps(DR_SM_LOG2E), _mm512_set1_ps(DR_SM_MAGIC));
    __m512 fn = _mm512_sub_ps(z, _mm512_set1_ps(DR_SM_MAGIC));
    __m512 r = _mm512_fmadd_ps(fn, _mm512_set1_ps(-DR_SM_LN2HI), tc);
    r = _mm512_fmadd_ps(fn, _mm512_set1_ps(-DR_SM_LN2LO), r);
    __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(DR_SM_P0), r, _mm512_set1_ps(DR_SM_P1));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(DR_SM_P2));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(DR_SM_P3));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(DR_SM_P4));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(DR_SM_P5));
    q = _mm512_add_ps(_mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    __m512i sb = _mm512_slli_epi32(_mm512_add_epi32(_mm512_castps_si512(z), _mm512_set1_epi32(127)), 23);
    __m512 e = _mm512_mul_ps(q, _mm512_castsi512_ps(sb));
    /* keep e where t >= tmin or t is NaN; 0 where t < tmin (incl. -inf) */
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(t, tmin, _CMP_NLT_UQ), e);
}
DR_SM_T512 static inline __m512d dr_sm_widen_add(__m512d s, __m512 a) {
    s = _mm512_add_pd(s, _mm512_cvtps_pd(_mm512_castps512_ps256(a)));
    return _mm512_add_pd(s, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1))));
}
DR_SM_T512 static void dr_softmax_row_avx512_f32(const float* x, float* y, Py_ssize_t n) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const Py_ssize_t rem = n & 15, nv = n - rem;
    const __mmask16 k = (__mmask16)((1u << rem) - 1);
    Py_ssize_t i = 0;
    __m512 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
    for (; i + 64 <= nv; i += 64) {
        m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
        m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + i + 16));
        m2 = _mm512_max_ps(m2, _mm512_loadu_ps(x + i + 32));
        m3 = _mm512_max_ps(m3, _mm512_loadu_ps(x + i + 48));
    }
    for (; i < nv; i += 16) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
    if (rem) m1 = _mm512_max_ps(m1, _mm512_mask_loadu_ps(ninf, k, x + i));
    float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
    if (m == -INFINITY) m = NAN;    /* -inf - -inf is NaN in numpy too */
    const __m512 vm = _mm512_set1_ps(m);
    __m512d s0 = _mm512_setzero_pd();
    i = 0;
    while (i < nv) {
        const Py_ssize_t end = nv - i > DR_SM_BLOCK ? i + DR_SM_BLOCK : nv;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (; i + 32 <= end; i += 32) {
            __m512 e0 = dr_sm_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
            __m512 e1 = dr_sm_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vm));
            _mm512_storeu_ps(y + i, e0);
            _mm512_storeu_ps(y + i + 16, e1);
            a0 = _mm512_add_ps(a0, e0);
            a1 = _mm512_add_ps(a1, e1);
        }
        if (i < end) {
            __m512 e0 = dr_sm_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
            _mm512_storeu_ps(y + i, e0);
            a0 = _mm512_add_ps(a0, e0);
            i += 16;
        }
        s0 = dr_sm_widen_add(s0, _mm512_add_ps(a0, a1));
    }
    if (rem) {
        __m512 e0 = dr_sm_exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, k, x + i), vm));
        _mm512_mask_storeu_ps(y + i, k, e0);
        s0 = dr_sm_widen_add(s0, e0);
    }
    double s = _mm512_reduce_add_pd(s0);
    const __m512 vinv = _mm512_set1_ps((float)(1.0 / s));
    for (i = 0; i < nv; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), vinv));
    if (rem) _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, y + i), vinv));
}
#else
#define DR_SM_X86 0
#endif

/* ---------------- dispatch ---------------- */
/* 0 scalar, 1 AVX2+FMA, 2 AVX-512F: the CPU's best at import; the test hook may lower it */
static int dr_sm_cpu_isa(void) {
#if DR_SM_X86
    __builtin_cpu_init();
    int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (v3 && __builtin_cpu_supports("avx512f")) return 2;
    return v3 ? 1 : 0;
#else
    return 0;
#endif
}
static int dr_sm_isa = -1;
static int dr_softmax_get_isa(void) {
    if (dr_sm_isa < 0) dr_sm_isa = dr_sm_cpu_isa();
    return dr_sm_isa;
}
/* the path to use: isa, or the CPU's best if that is lower */
static int dr_softmax_set_isa(int isa) {
    int best = dr_sm_cpu_isa();
    dr_sm_isa = isa < best ? isa : best;
    return dr_sm_isa;
}
static void dr_softmax_rows_f32(const float* x, float* y, Py_ssize_t rows, Py_ssize_t n, int isa) {
    for (Py_ssize_t r = 0; r < rows; r++) {
#if DR_SM_X86
        if (isa == 2) { dr_softmax_row_avx512_f32(x + r * n, y + r * n, n); continue; }
        if (isa == 1) { dr_softmax_row_avx2_f32(x + r * n, y + r * n, n); continue; }
#endif
        dr_softmax_row_scalar_f32(x + r * n, y + r * n, n);
    }
}

/* ---------------- float64 (unchanged: max, exp and sum, scale; libm exp) ---------------- */
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")    /* lets GCC if-convert the max select; same values */
typedef int64_t dr_sm_v4l __attribute__((vector_size(32)));
static inline double dr_sm_rowmax_f64(const double* x, Py_ssize_t n) {
    dr_v4d mm;
    for (int k = 0; k < 4; k++) mm[k] = x[0];
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        dr_v4d v; memcpy(&v, x + i, sizeof v);
        dr_sm_v4l gt = v > mm;
        mm = (dr_v4d)(((dr_sm_v4l)v & gt) | ((dr_sm_v4l)mm & ~gt));
    }
    double m = mm[0];
    for (int k = 1; k < 4; k++) m = mm[k] > m ? mm[k] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}
static void dr_softmax_rows_f64(const double* x, double* y, Py_ssize_t rows, Py_ssize_t n) {
    for (Py_ssize_t r = 0; r < rows; r++, x += n, y += n) {
        double m = dr_sm_rowmax_f64(x, n);
        Py_ssize_t i;
        if (m == -INFINITY) m = NAN;
        double s = 0;
        for (i = 0; i + 64 <= n; i += 64) {
            double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int j = 0; j < 64; j += 8)
                for (int k = 0; k < 8; k++) { double e = exp(x[i + j + k] - m); y[i + j + k] = e; acc[k] += e; }
            s += ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        }
        for (; i < n; i++) { double e = exp(x[i] - m); y[i] = e; s += e; }
        double inv = 1.0 / s;
        for (i = 0; i < n; i++) y[i] *= inv;
    }
}
#pragma GCC pop_options

#endif  /* DREIDEL_KERNELS_SOFTMAX_H */
