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

from dreidel.ops.math import (abs, add, cast, clip, cos, div, dropout, erf, exp, gelu, log, log_softmax,
                              maximum, minimum, mul, neg, pow, prelu, relu, sigmoid, silu, sin, softmax,
                              softplus, sqrt, sub, tanh, where)
from dreidel.ops.math import _erf_array  # noqa: F401  (temporary: the importer's Erf folding uses it)
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
                 "sum", "mean", "max", "min", "var", "logsumexp", "reshape", "transpose", "expand",
                 "squeeze", "unsqueeze", "flatten", "clip", "softmax", "log_softmax", "matmul",
                 "maximum", "minimum", "swapaxes", "erf", "argmax", "argmin", "prod", "cumsum", "clone"):
        setattr(cls, name, namespace[name])
    cls.permute = transpose
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
