"""dreidel: CPU-first deep learning with Cython kernels.

Spectral (Walsh–Hadamard) and hash-sparse layers, an autograd engine over numpy, ONNX import of
pretrained teachers, and block-wise recasting of their dense layers.
"""
import numpy as np

from dreidel.tensor import (DEFAULT_DTYPE, Function, Tensor, as_tensor, enable_grad, is_grad_enabled,
                            no_grad, tensor)
from dreidel.gradcheck import GradcheckError, gradcheck
from dreidel.serialization import CheckpointError, load, load_metadata, save
from dreidel import random
from dreidel import functional, ops
from dreidel import nn, optim

__version__ = "0.1.0"


def set_num_threads(n):
    """Set how many OpenMP threads the Cython kernels use."""
    from dreidel import _kernels
    if int(n) < 1:
        raise ValueError(f"number of threads must be at least 1, got {n}")
    _kernels.set_num_threads(int(n))


def get_num_threads():
    from dreidel import _kernels
    return _kernels.get_num_threads()


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
