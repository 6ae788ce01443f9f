"""dreidel: CPU-first deep learning with Cython kernels.

Spectral (Walsh–Hadamard) and hash-sparse layers, an autograd engine over numpy, ONNX import of
pretrained teachers, and block-wise recasting of their dense layers.
"""
import os

# Before libgomp loads: idle OpenMP workers sleep instead of spinning. Spinning workers fight
# OpenBLAS's threads for the cores; on 2 shared cores that made small training steps ~30x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Likewise OpenBLAS's workers, which otherwise spin ~0.1 s after every call (read when OpenBLAS loads:
# effective when dreidel is imported before numpy).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

from dreidel.tensor import (DEFAULT_DTYPE, Function,  # noqa: E402
                            Tensor, as_tensor, enable_grad, is_grad_enabled,
                            no_grad, tensor)
from dreidel.gradcheck import GradcheckError, gradcheck
from dreidel.serialization import CheckpointError, load, load_metadata, save
from dreidel import random
from dreidel import functional, kernels, ops, spectral
from dreidel import nn, optim
from dreidel.runtime import get_num_threads, set_num_threads, tune_allocator

tune_allocator()

__version__ = "0.1.0"


def zeros(*shape, dtype=DEFAULT_DTYPE, requires_grad=False):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(np.zeros(shape, dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=DEFAULT_DTYPE, requires_grad=False):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(np.ones(shape, dtype=dtype), requires_grad=requires_grad)


def randn(*shape, dtype=DEFAULT_DTYPE, requires_grad=False, rng=None):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    rng = random.generator(rng)  # the global generator: dreidel.random.manual_seed makes it repeatable
    return Tensor(rng.standard_normal(shape).astype(dtype), requires_grad=requires_grad)
