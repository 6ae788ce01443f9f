# cython: language_level=3
"""Hot loops of dreidel (placeholder until the kernels land)."""
cimport openmp

def get_num_threads():
    return openmp.omp_get_max_threads()

def set_num_threads(int n):
    openmp.omp_set_num_threads(n)
include "_kernels_hashing.pxi"
