/* C shared by the kernel parts of dreidel/_kernels.pyx: headers, OpenMP and AVX2 probes,
   restrict, prefetch, vector types */
#ifndef DREIDEL_KERNELS_COMMON_H
#define DREIDEL_KERNELS_COMMON_H

#include <Python.h>   /* Py_ssize_t; a no-op after Cython's own include */
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
/* GCC/Clang vector extensions: 32-byte vectors of 8 floats / 4 doubles */
typedef float dr_v8f __attribute__((vector_size(32)));
typedef double dr_v4d __attribute__((vector_size(32)));

#endif  /* DREIDEL_KERNELS_COMMON_H */
