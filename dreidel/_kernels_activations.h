/* C of GELU and the softmax backward (_kernels_activations.pxi) */
#ifndef DREIDEL_KERNELS_ACTIVATIONS_H
#define DREIDEL_KERNELS_ACTIVATIONS_H

#include "_kernels_common.h"
#include <float.h>

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
/* GELU's far negative side is subnormal (|y| < FLT_MIN from x < -13 or so); a subnormal input
   makes the next layer's GEMM take microcode assists on Intel cores (Whisper tiny.en's last
   encoder fc2: 1.27 M of 2.3 M inputs subnormal, 1367 ms instead of 16.5). Flush them to 0:
   an absolute change below 1.2e-38. */
static inline float dr_flush_f32(float y) { return fabsf(y) < FLT_MIN ? 0.0f : y; }
static inline double dr_flush_f64(double y) { return fabs(y) < DBL_MIN ? 0.0 : y; }
#define DR_K0 0.7978845608028654f   /* sqrt(2/pi) */
#define DR_K1 0.044715f
#define DR_INV_SQRT_2PI 0.3989422804014327f
static inline float dr_gelu1_f32(float x, int tanh_form) {
    if (tanh_form) {
        /* x * sigmoid(2u); 1/(1+e) then a multiply: x/(1+e) hit slow divider cases */
        float u = DR_K0 * (x + DR_K1 * x * x * x);
        float s = 1.0f / (1.0f + dr_expf(-2.0f * u));
        return dr_flush_f32(x * s);
    }
    float e; float c = dr_cdf2_f32(x, &e);
    return dr_flush_f32(0.5f * x * c);
}
static inline float dr_dgelu1_f32(float x, int tanh_form) {
    if (tanh_form) {
        float u = DR_K0 * (x + DR_K1 * x * x * x);
        float e = dr_expf(-2.0f * u);
        float s = 1.0f / (1.0f + e);
        float du = DR_K0 * (1.0f + 3.0f * DR_K1 * x * x);
        return dr_flush_f32(s + 2.0f * x * s * (e * s) * du);
    }
    float e; float c = dr_cdf2_f32(x, &e);
    return dr_flush_f32(0.5f * c + x * DR_INV_SQRT_2PI * e);
}
static inline double dr_gelu1_f64(double x, int tanh_form) {
    if (tanh_form) {
        double u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
        return dr_flush_f64(0.5 * x * (1.0 + tanh(u)));
    }
    return dr_flush_f64(0.5 * x * erfc(-x * 0.7071067811865476));
}
static inline double dr_dgelu1_f64(double x, int tanh_form) {
    if (tanh_form) {
        double u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
        double t = tanh(u);
        double du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
        return dr_flush_f64(0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
    }
    return dr_flush_f64(0.5 * erfc(-x * 0.7071067811865476) + x * 0.3989422804014327 * exp(-0.5 * x * x));
}
/* Loops split by form so each inner loop is branch-free and vectorisable. */
#define DR_GELU_LOOPS(T, SFX) \
static void dr_gelu_##SFX(const T* x, const T* b, T* y, Py_ssize_t n, int tf) { \
    if (tf) { if (b) for (Py_ssize_t i = 0; i < n; i++) y[i] = dr_gelu1_##SFX(x[i] + b[i], 1); \
              else   for (Py_ssize_t i = 0; i < n; i++) y[i] = dr_gelu1_##SFX(x[i], 1); } \
    else    { if (b) for (Py_ssize_t i = 0; i < n; i++) y[i] = dr_gelu1_##SFX(x[i] + b[i], 0); \
              else   for (Py_ssize_t i = 0; i < n; i++) y[i] = dr_gelu1_##SFX(x[i], 0); } \
} \
static void dr_dgelu_##SFX(const T* g, const T* x, const T* b, T* y, Py_ssize_t n, int tf) { \
    if (tf) { if (b) for (Py_ssize_t i = 0; i < n; i++) y[i] = g[i] * dr_dgelu1_##SFX(x[i] + b[i], 1); \
              else   for (Py_ssize_t i = 0; i < n; i++) y[i] = g[i] * dr_dgelu1_##SFX(x[i], 1); } \
    else    { if (b) for (Py_ssize_t i = 0; i < n; i++) y[i] = g[i] * dr_dgelu1_##SFX(x[i] + b[i], 0); \
              else   for (Py_ssize_t i = 0; i < n; i++) y[i] = g[i] * dr_dgelu1_##SFX(x[i], 0); } \
}
DR_GELU_LOOPS(float, f32)
DR_GELU_LOOPS(double, f64)
/* Softmax backward (the forward is in _kernels_softmax.h):
   out = y * (g - sum(g * y)), the dot in 8 float64 lanes. */
#define DR_SOFTMAX_BWD(T, SFX) \
static void dr_softmax_bwd_##SFX(const T* g, const T* y, T* out, Py_ssize_t n) { \
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s = 0; \
    Py_ssize_t i = 0; \
    for (; i + 8 <= n; i += 8) \
        for (int k = 0; k < 8; k++) acc[k] += (double)g[i + k] * (double)y[i + k]; \
    for (; i < n; i++) s += (double)g[i] * (double)y[i]; \
    s += ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])); \
    T d = (T)s; \
    for (i = 0; i < n; i++) out[i] = y[i] * (g[i] - d); \
}
DR_SOFTMAX_BWD(float, f32)
DR_SOFTMAX_BWD(double, f64)
#pragma GCC pop_options

#endif  /* DREIDEL_KERNELS_ACTIVATIONS_H */
