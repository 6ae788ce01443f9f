"""Tensor factories with PyTorch's names (`dreidel.zeros`, `dreidel.randn`, `dreidel.cat`, ...).

Shapes are given as `zeros(2, 3)` or `zeros((2, 3))`. Random factories draw from the global
generator (`dreidel.manual_seed` makes them repeatable) unless given `rng`.
"""
import numpy as np

from dreidel.tensor import DEFAULT_DTYPE, Tensor
from dreidel import functional, random

__all__ = ["zeros", "ones", "randn", "zeros_like", "ones_like", "full", "rand", "arange", "cat", "stack"]


def _shape(shape):
    return shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


def zeros(*shape, dtype=DEFAULT_DTYPE, requires_grad=False):
    """A tensor of zeros."""
    return Tensor(np.zeros(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=DEFAULT_DTYPE, requires_grad=False):
    """A tensor of ones."""
    return Tensor(np.ones(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def randn(*shape, dtype=DEFAULT_DTYPE, requires_grad=False, rng=None):
    """Standard normal samples."""
    rng = random.generator(rng)  # the global generator: dreidel.random.manual_seed makes it repeatable
    return Tensor(rng.standard_normal(_shape(shape)).astype(dtype), requires_grad=requires_grad)


def zeros_like(x, dtype=None, requires_grad=False):
    """Zeros of x's shape (and dtype unless given)."""
    x = x.data if isinstance(x, Tensor) else np.asarray(x)
    return Tensor(np.zeros_like(x, dtype=dtype), requires_grad=requires_grad)


def ones_like(x, dtype=None, requires_grad=False):
    """Ones of x's shape (and dtype unless given)."""
    x = x.data if isinstance(x, Tensor) else np.asarray(x)
    return Tensor(np.ones_like(x, dtype=dtype), requires_grad=requires_grad)


def full(shape, fill_value, dtype=DEFAULT_DTYPE, requires_grad=False):
    """A tensor of `shape` filled with `fill_value`."""
    return Tensor(np.full(shape, fill_value, dtype=dtype), requires_grad=requires_grad)


def rand(*shape, dtype=DEFAULT_DTYPE, requires_grad=False, rng=None):
    """Uniform samples in [0, 1)."""
    return Tensor(random.generator(rng).random(_shape(shape)).astype(dtype), requires_grad=requires_grad)


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
    """Stack along a new axis `dim`."""
    return functional.stack(list(tensors), axis=dim)
