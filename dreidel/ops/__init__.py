"""Every differentiable op of the engine, each once, with its backward beside its forward.

Each op computes with numpy (or the Cython kernels) and hands `dreidel.tensor.record` the output
and a backward closure. Families, one module each:

    math        elementwise arithmetic and functions, activations, softmax, dropout, casts
    reduce      sum, mean, max, min, argmax, argmin, var, logsumexp, prod, cumsum
    shape       reshape, transpose, expand, squeeze, concat, stack, split, pad, tile, clone
    index       getitem, take, gather_elements, scatter_nd, embedding
    linalg      matmul, linear, batched_matmul, einsum
    norm        layer, RMS, batch, group and instance norm
    convolution conv, conv_transpose (named so the module does not hide the `conv` op here)
    pool        max, average and adaptive average pooling
    resample    interpolate, resize
    attention   scaled_dot_product_attention, causal_mask, softmax_attention
    spectral    fwht, permute, spectral_block and the spectral layers' kernels
    sparse      sparse_linear (the ALSH layer's op)

This package re-exports the public ops (`from dreidel import ops; ops.add(a, b)`) and, on import,
installs Tensor's operators and methods (the core in `dreidel.tensor` imports no op).
"""
import operator

import numpy as np

from dreidel.runtime import tune_allocator
from dreidel.ops.math import (abs, add, cast, clip, cos, div, dropout, erf, exp, gelu, log, log_softmax,
                              maximum, minimum, mul, neg, pow, prelu, relu, sigmoid, silu, sin, softmax,
                              softplus, sqrt, sub, tanh, where)
from dreidel.ops.reduce import argmax, argmin, cumsum, logsumexp, max, mean, min, prod, sum, var
from dreidel.ops.shape import (clone, concat, expand, flatten, pad, reshape, split, squeeze, stack, swapaxes, tile,
                               transpose, unsqueeze)
from dreidel.ops.index import embedding, gather_elements, getitem, scatter_nd, take
from dreidel.ops.linalg import batched_matmul, einsum, linear, matmul
from dreidel.ops.norm import batch_norm, group_norm, instance_norm, layer_norm, rms_norm
from dreidel.ops.convolution import (conv, conv1d, conv2d, conv3d, conv_transpose, conv_transpose1d,
                                     conv_transpose2d, conv_transpose3d, output_rows, patch_rows)
from dreidel.ops.pool import (adaptive_avg_pool, avg_pool, avg_pool1d, avg_pool2d, avg_pool3d, max_pool,
                              max_pool1d, max_pool2d, max_pool3d)
from dreidel.ops.resample import interpolate, resize
from dreidel.ops.attention import causal_mask, scaled_dot_product_attention, softmax_attention
from dreidel.ops.spectral import fwht, spectral_block
from dreidel.ops.sparse import sparse_linear
from dreidel.ops._common import _index_array
from dreidel.tensor import Tensor

tune_allocator()  # the engine's first import: its large temporaries stay in the heap (see dreidel/runtime.py)

__all__ = [
    "abs", "add", "cast", "clip", "cos", "div", "dropout", "erf", "exp", "gelu", "log", "log_softmax", "maximum",
    "minimum", "mul", "neg", "pow", "prelu", "relu", "sigmoid", "silu", "sin", "softmax", "softplus", "sqrt", "sub",
    "tanh", "where",
    "argmax", "argmin", "cumsum", "logsumexp", "max", "mean", "min", "prod", "sum", "var",
    "clone", "concat", "expand", "flatten", "pad", "reshape", "split", "squeeze", "stack", "swapaxes", "tile", "transpose",
    "unsqueeze",
    "embedding", "gather_elements", "getitem", "scatter_nd", "take",
    "batched_matmul", "einsum", "linear", "matmul",
    "batch_norm", "group_norm", "instance_norm", "layer_norm", "rms_norm",
    "conv", "conv1d", "conv2d", "conv3d", "conv_transpose", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "output_rows", "patch_rows",
    "adaptive_avg_pool", "avg_pool", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool", "max_pool1d",
    "max_pool2d", "max_pool3d",
    "interpolate", "resize",
    "causal_mask", "scaled_dot_product_attention", "softmax_attention",
    "fwht", "spectral_block",
    "sparse_linear",
]


# -- Tensor methods --------------------------------------------------------------------------------
def _reflected(op):
    return lambda self, other: op(other, self)


def _compare(op):
    return lambda self, other: Tensor(op(self.data, _index_array(other)))


def _transpose_method(self, *dims):
    """PyTorch's `t.transpose(d0, d1)` swaps two dimensions; a whole permutation (several ints or one
    tuple, as numpy's `transpose` takes) or no argument (reverse) permutes, as `permute` does."""
    if len(dims) == 2 and all(isinstance(d, (int, np.integer)) for d in dims):
        return swapaxes(self, dims[0], dims[1])
    return transpose(self, *dims)


def _with_indices(reduce):
    """`t.max(d)` / `t.min(d)` as in PyTorch: one int dimension (positional or `dim=`) gives
    (values, indices); no dimension or a tuple of them gives the values only."""
    def method(self, dim=None, keepdim=False, *, axis=None, keepdims=False):
        if isinstance(dim, (int, np.integer)):
            return reduce(self, dim=dim, keepdim=keepdim)
        return reduce(self, dim if axis is None else axis, keepdims=keepdim or keepdims)
    method.__name__, method.__doc__ = reduce.__name__, _with_indices.__doc__
    return method


def _single(t, what):
    if t.size != 1:
        raise ValueError(f"only a one-element tensor converts to a Python {what}, got shape {t.shape}")
    return t.data


def _install_methods(cls):
    """Give Tensor its operators and PyTorch-style methods."""
    cls.__add__, cls.__radd__ = add, _reflected(add)
    cls.__sub__, cls.__rsub__ = sub, _reflected(sub)
    cls.__mul__, cls.__rmul__ = mul, _reflected(mul)
    cls.__truediv__, cls.__rtruediv__ = div, _reflected(div)
    cls.__pow__, cls.__rpow__ = pow, _reflected(pow)
    cls.__matmul__, cls.__rmatmul__ = matmul, _reflected(matmul)
    cls.__neg__ = neg
    cls.__abs__ = abs
    cls.__getitem__ = getitem
    namespace = globals()
    for name in ("exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu", "silu", "softplus", "gelu", "sin", "cos",
                 "sum", "mean", "var", "logsumexp", "reshape", "transpose", "expand",
                 "squeeze", "unsqueeze", "flatten", "clip", "softmax", "log_softmax", "matmul",
                 "maximum", "minimum", "swapaxes", "erf", "argmax", "argmin", "prod", "cumsum", "clone"):
        setattr(cls, name, namespace[name])
    cls.transpose = _transpose_method
    cls.permute = transpose
    cls.max, cls.min = _with_indices(max), _with_indices(min)
    cls.pow = pow
    cls.__float__ = lambda self: float(_single(self, "float").item())
    cls.__int__ = lambda self: int(_single(self, "int").item())
    cls.view = reshape
    cls.T = property(lambda self: transpose(self))
    cls.__eq__ = _compare(operator.eq)
    cls.__ne__ = _compare(operator.ne)
    cls.__lt__ = _compare(operator.lt)
    cls.__le__ = _compare(operator.le)
    cls.__gt__ = _compare(operator.gt)
    cls.__ge__ = _compare(operator.ge)
    cls.astype = lambda self, dtype: cast(self, dtype) if self.requires_grad else Tensor(self.data.astype(dtype))
    cls.float = lambda self: self.astype(np.float32)
    cls.double = lambda self: self.astype(np.float64)


_install_methods(Tensor)
