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
from dreidel.serialization import (CheckpointError, load, load_metadata, load_training_state, save,
                                   save_training_state)
from dreidel import random
from dreidel import functional, kernels, ops
from dreidel import nn, optim
from dreidel import data
from dreidel.random import manual_seed
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


def zeros_like(x, dtype=None, requires_grad=False):
    x = x.data if isinstance(x, Tensor) else np.asarray(x)
    return Tensor(np.zeros_like(x, dtype=dtype), requires_grad=requires_grad)


def ones_like(x, dtype=None, requires_grad=False):
    x = x.data if isinstance(x, Tensor) else np.asarray(x)
    return Tensor(np.ones_like(x, dtype=dtype), requires_grad=requires_grad)


def full(shape, fill_value, dtype=DEFAULT_DTYPE, requires_grad=False):
    return Tensor(np.full(shape, fill_value, dtype=dtype), requires_grad=requires_grad)


def rand(*shape, dtype=DEFAULT_DTYPE, requires_grad=False, rng=None):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(random.generator(rng).random(shape).astype(dtype), requires_grad=requires_grad)


def arange(start, end=None, step=1, dtype=None, requires_grad=False):
    """`arange(5)`, `arange(2, 5)`, `arange(0, 1, 0.25)`: int64 for integer arguments, else float32."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        dtype = np.int64 if all(float(v).is_integer() for v in (start, end, step)) else DEFAULT_DTYPE
    return Tensor(np.arange(start, end, step, dtype=dtype), requires_grad=requires_grad)


def cat(tensors, dim=0):
    """Concatenate along `dim` (PyTorch's name for `functional.concat`)."""
    return functional.concat(list(tensors), axis=dim)


def stack(tensors, dim=0):
    return functional.stack(list(tensors), axis=dim)
