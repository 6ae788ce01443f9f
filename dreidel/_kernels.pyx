# cython: language_level=3
"""Hot loops of dreidel.

Numpy-free, tensor-free kernels over raw C-contiguous buffers. The numpy-facing API (validation,
dtype / contiguity handling, errors) lives in ``dreidel/kernels.py``; call that, not this.

Contents (each part a .pxi included below, its C in the .h of the same name)
--------
* ``_kernels_threads.pxi``: the OpenMP thread count and the small-work threshold (the public
  control is ``dreidel.set_num_threads`` in dreidel/runtime.py); ``_kernels_common.h``: OpenMP /
  AVX2 probes, restrict, prefetch, vector types.
* ``_kernels_fwht.pxi`` / ``.h``: fast Walsh-Hadamard transform (natural / Sylvester order) along
  the last axis, in place, for n = 2^k and n = m * 2^k (m in {12, 20, 28}; H_n = H_m kron
  H_{2^k}, H_m passed in by the caller). Structure: an AVX2 in-register kernel does the first
  log2(base) stages on 64 floats / 32 doubles (8 vectors), radix-4 lane butterflies do the rest
  inside an L1-sized block; rows longer than a block do the remaining stages on L1-sized column
  panels across blocks. Small rows are processed a tile of several rows at a time so the vector
  kernel always sees full registers.
* ``_kernels_spectral.pxi`` / ``.h``: permutation gather / scatter, the fused spectral block
  y = H(P(x) * d), the whole spectral stack, and their backwards.
* ``_kernels_activations.pxi`` / ``.h``: GELU (exact erf form and tanh form), forward / backward /
  fused bias; the softmax backward over the last axis.
* ``_kernels_softmax.pxi`` / ``.h``: the softmax forward over the last axis (float32: AVX-512F /
  AVX2 / scalar paths, dispatched at run time).
* ``_kernels_hashing.pxi``: the ALSH hashing kernels (numpy API: dreidel/hashing.py).

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

ctypedef fused floating:
    float
    double

# The parts, in dependency order (each later part uses helpers of the earlier ones).
include "_kernels_threads.pxi"
include "_kernels_fwht.pxi"
include "_kernels_spectral.pxi"
include "_kernels_activations.pxi"
include "_kernels_softmax.pxi"
include "_kernels_hashing.pxi"
include "_kernels_depthwise.pxi"
