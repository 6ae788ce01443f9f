"""Differentiable operations: each computes with numpy and defines its backward beside it.

A backward closure receives the output gradient and returns one gradient per parent (None where a
parent needs none); it may return broadcast-shaped gradients, `Tensor.backward` sums them down.
"""
import builtins
import math

import numpy as np

from dreidel import kernels as _kernels
from dreidel.random import generator
from dreidel.tensor import Tensor, _result, as_tensor
from dreidel.runtime import tune_allocator

tune_allocator()  # the engine's first import: its large temporaries stay in the heap (see dreidel/runtime.py)


def _pair(a, b):
    if isinstance(a, Tensor):
        return a, as_tensor(b, like=a)
    b = as_tensor(b)
    return as_tensor(a, like=b), b


def _normalize_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(sorted(a % ndim if ndim else 0 for a in axes))


def _expand_reduced(grad, shape, axis, keepdims):
    """Broadcast a reduction's gradient back over the reduced axes."""
    if not keepdims and shape:
        grad = np.expand_dims(grad, _normalize_axis(axis, len(shape)))
    return np.broadcast_to(grad, shape)


# -- elementwise arithmetic ------------------------------------------------------------------------
def add(a, b):
    a, b = _pair(a, b)
    return _result(a.data + b.data, (a, b), lambda g: (g, g))


def sub(a, b):
    a, b = _pair(a, b)
    return _result(a.data - b.data, (a, b), lambda g: (g, -g))


def mul(a, b):
    a, b = _pair(a, b)
    return _result(a.data * b.data, (a, b),
                   lambda g: (g * b.data if a.requires_grad else None,
                              g * a.data if b.requires_grad else None))


def div(a, b):
    a, b = _pair(a, b)
    out = a.data / b.data
    return _result(out, (a, b),
                   lambda g: (g / b.data if a.requires_grad else None,
                              -g * out / b.data if b.requires_grad else None))


def pow(a, b):
    a, b = _pair(a, b)
    out = a.data ** b.data

    def backward(g):
        ga = g * b.data * a.data ** (b.data - 1) if a.requires_grad else None
        gb = None
        if b.requires_grad:
            safe = np.where(a.data > 0, a.data, 1)
            gb = g * out * np.log(safe)
        return ga, gb
    return _result(out, (a, b), backward)


def neg(x):
    return _result(-x.data, (x,), lambda g: (-g,))


def maximum(a, b):
    a, b = _pair(a, b)
    pick_a = a.data >= b.data  # ties send the gradient to a, like numpy's choice of value
    return _result(np.maximum(a.data, b.data), (a, b), lambda g: (g * pick_a, g * ~pick_a))


def minimum(a, b):
    a, b = _pair(a, b)
    pick_a = a.data <= b.data
    return _result(np.minimum(a.data, b.data), (a, b), lambda g: (g * pick_a, g * ~pick_a))


def where(condition, a, b):
    condition = condition.data if isinstance(condition, Tensor) else np.asarray(condition)
    a, b = _pair(a, b)
    return _result(np.where(condition, a.data, b.data), (a, b),
                   lambda g: (np.where(condition, g, 0), np.where(condition, 0, g)))


def clip(x, min=None, max=None):
    inside = np.ones(x.shape, dtype=bool)
    if min is not None:
        inside &= x.data >= min
    if max is not None:
        inside &= x.data <= max
    return _result(np.clip(x.data, min, max), (x,), lambda g: (g * inside,))


# -- elementwise functions -------------------------------------------------------------------------
def exp(x):
    out = np.exp(x.data)
    return _result(out, (x,), lambda g: (g * out,))


def log(x):
    return _result(np.log(x.data), (x,), lambda g: (g / x.data,))


def sqrt(x):
    out = np.sqrt(x.data)
    return _result(out, (x,), lambda g: (g / (2 * out),))


def abs(x):
    return _result(np.abs(x.data), (x,), lambda g: (g * np.sign(x.data),))


def sin(x):
    return _result(np.sin(x.data), (x,), lambda g: (g * np.cos(x.data),))


def cos(x):
    return _result(np.cos(x.data), (x,), lambda g: (-g * np.sin(x.data),))


def tanh(x):
    out = np.tanh(x.data)
    return _result(out, (x,), lambda g: (g * (1 - out * out),))


def _sigmoid(v):
    """σ(v) = ½·(1 + tanh(v/2)): no overflow for any v, one transcendental, no branches."""
    out = np.array(v, dtype=v.dtype if v.dtype.kind == "f" else np.float64)  # a copy, also for 0-d
    out *= 0.5
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def sigmoid(x):
    out = _sigmoid(x.data)
    return _result(out, (x,), lambda g: (g * out * (1 - out),))


def softplus(x):
    """log(1 + eˣ) = max(x, 0) + log1p(e^−|x|) (no overflow); its derivative is sigmoid(x)."""
    out = np.maximum(x.data, 0) + np.log1p(np.exp(-np.abs(x.data)))
    return _result(out, (x,), lambda g: (g * _sigmoid(x.data),))


def relu(x):
    return _result(np.maximum(x.data, 0), (x,), lambda g: (g * (x.data > 0),))


def silu(x):
    s = _sigmoid(x.data)
    return _result(x.data * s, (x,), lambda g: (g * s * (1 + x.data * (1 - s)),))


_erf_float64 = np.frompyfunc(math.erf, 1, 1)


def _erf_array(v):
    if v.dtype == np.float64:
        return np.asarray(_erf_float64(v), dtype=np.float64)  # a 0-d input gives back a Python float
    # Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, at float32's resolution
    a = np.abs(v)
    t = 1 / (1 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (np.sign(v) * (1 - poly * np.exp(-a * a))).astype(v.dtype)


def erf(x):
    two_over_root_pi = 2 / math.sqrt(math.pi)
    return _result(_erf_array(x.data), (x,),
                   lambda g: (g * two_over_root_pi * np.exp(-x.data * x.data),))


def gelu(x, approximate="none"):
    """GELU, exact (erf) or tanh form, on the fused Cython kernels."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    # reshape: the kernels hand a 0-d input back as shape (1,)
    out = _kernels.gelu(x.data, approximate=approximate).reshape(x.shape)
    return _result(out, (x,), lambda g: (
        _kernels.gelu_backward(g, x.data, approximate=approximate).reshape(x.shape),))


# -- reductions ------------------------------------------------------------------------------------
def sum(x, axis=None, keepdims=False):
    return _result(np.sum(x.data, axis=_axis_arg(axis), keepdims=keepdims), (x,),
                   lambda g: (_expand_reduced(g, x.shape, axis, keepdims),))


def mean(x, axis=None, keepdims=False):
    axes = _normalize_axis(axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    return _result(np.mean(x.data, axis=axes, keepdims=keepdims), (x,),
                   lambda g: (_expand_reduced(g, x.shape, axis, keepdims) / count,))


def _extremum(x, axis, keepdims, pick):
    out = pick(x.data, axis=_axis_arg(axis), keepdims=True)

    def backward(g):
        hit = (x.data == out).astype(g.dtype)  # ties share the gradient evenly
        share = hit / hit.sum(axis=_axis_arg(axis), keepdims=True)
        return _expand_reduced(g, x.shape, axis, keepdims) * share,
    return _result(out if keepdims else _squeeze_axes(out, axis, x.ndim), (x,), backward)


def max(x, axis=None, keepdims=False):
    return _extremum(x, axis, keepdims, np.max)


def min(x, axis=None, keepdims=False):
    return _extremum(x, axis, keepdims, np.min)


def var(x, axis=None, keepdims=False, correction=1):
    """Variance over axes; `correction=1` is the unbiased estimate (PyTorch's default)."""
    axes = _normalize_axis(axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    centred = x.data - x.data.mean(axis=axes, keepdims=True)
    denominator = builtins.max(count - correction, 0)
    out = (centred * centred).sum(axis=axes, keepdims=keepdims) / denominator
    return _result(out, (x,),
                   lambda g: (_expand_reduced(g, x.shape, axis, keepdims) * 2 * centred / denominator,))


def logsumexp(x, axis=-1, keepdims=False):
    axis = _axis_arg(axis)
    peak = np.max(x.data, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)
    total = np.log(np.sum(np.exp(x.data - peak), axis=axis, keepdims=True)) + peak

    def backward(g):
        return _expand_reduced(g, x.shape, axis, keepdims) * np.exp(x.data - total),
    return _result(total if keepdims else np.squeeze(total, axis=axis), (x,), backward)


def _axis_arg(axis):
    return tuple(axis) if isinstance(axis, list) else axis


def _squeeze_axes(array, axis, ndim):
    return np.squeeze(array, axis=_normalize_axis(axis, ndim)) if ndim else array


# -- linear algebra --------------------------------------------------------------------------------
def _product(A, B):
    """A @ B, as one GEMM when a stack of matrices meets a single matrix (numpy would loop)."""
    if A.ndim > 2 and B.ndim == 2:
        return (A.reshape(-1, A.shape[-1]) @ B).reshape(A.shape[:-1] + (B.shape[1],))
    return A @ B


def matmul(a, b):
    """Batched, broadcasting matrix product with numpy's 1-D rules."""
    a, b = _pair(a, b)
    A, B = a.data, b.data
    out = _product(A, B)

    def backward(g):
        if A.ndim == 1 and B.ndim == 1:
            return g * B, g * A
        ga = gb = None
        if A.ndim == 1:  # (k) @ (..., k, m)
            ga = (g[..., None, :] @ np.swapaxes(B, -1, -2))[..., 0, :] if a.requires_grad else None
            gb = A[:, None] * g[..., None, :] if b.requires_grad else None
        elif B.ndim == 1:  # (..., n, k) @ (k)
            ga = g[..., :, None] * B if a.requires_grad else None
            gb = (np.swapaxes(A, -1, -2) @ g[..., None])[..., 0] if b.requires_grad else None
        else:
            if a.requires_grad:
                ga = _product(g, np.swapaxes(B, -1, -2))
            if b.requires_grad:
                if B.ndim == 2:  # shared weight: one large product instead of a batch of small ones
                    gb = A.reshape(-1, A.shape[-1]).T @ g.reshape(-1, g.shape[-1])
                else:
                    gb = np.swapaxes(A, -1, -2) @ g
        return ga, gb
    return _result(out, (a, b), backward)


def linear(x, weight, bias=None):
    """y = x Wᵀ + b with W of shape (out_features, in_features), as in PyTorch."""
    X, W = x.data, weight.data
    if W.ndim != 2 or X.ndim < 1 or X.shape[-1] != W.shape[1]:
        raise ValueError(f"linear: input {X.shape} does not fit weight {W.shape} (out_features, in_features)")
    if bias is not None and bias.shape != (W.shape[0],):
        raise ValueError(f"linear: bias {bias.shape} does not fit weight {W.shape}")
    # one 2-D product: numpy's N-D matmul loops over small products, far slower than a single GEMM
    X2 = X.reshape(-1, X.shape[-1])
    out = X2 @ W.T
    if bias is not None:
        out += bias.data
    out = out.reshape(X.shape[:-1] + (W.shape[0],))

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])
        gx = (g2 @ W).reshape(X.shape) if x.requires_grad else None
        gw = g2.T @ X2 if weight.requires_grad else None
        gb = g2.sum(0) if bias is not None and bias.requires_grad else None
        return gx, gw, gb
    parents = (x, weight) if bias is None else (x, weight, bias)
    return _result(out, parents, backward)


# -- shape and indexing ----------------------------------------------------------------------------
def reshape(x, *shape):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return _result(x.data.reshape(shape), (x,), lambda g: (g.reshape(x.shape),))


def transpose(x, *axes):
    """Permute axes (no arguments: reverse them, like numpy)."""
    axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    axes = tuple(a % x.ndim for a in axes) if axes else tuple(reversed(range(x.ndim)))
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"transpose axes {axes} are not a permutation of the {x.ndim} axes of {x.shape}")
    inverse = tuple(np.argsort(axes))  # needs non-negative axes: -1 would sort first
    return _result(np.transpose(x.data, axes), (x,), lambda g: (np.transpose(g, inverse),))


def swapaxes(x, axis1, axis2):
    axes = list(range(x.ndim))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(x, axes)


def expand(x, *shape):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    new = len(shape) - x.ndim
    if new < 0 or any(n == -1 for n in shape[:new]):
        raise ValueError(f"cannot expand shape {x.shape} to {tuple(shape)} (-1 only keeps an existing axis)")
    shape = tuple(x.shape[i - new] if n == -1 else n for i, n in enumerate(shape))
    return _result(np.broadcast_to(x.data, shape), (x,), lambda g: (g,))


def squeeze(x, axis=None):
    return reshape(x, np.squeeze(x.data, axis=axis).shape)


def unsqueeze(x, axis):
    return reshape(x, np.expand_dims(x.data, axis).shape)


def flatten(x, start_axis=0, end_axis=-1):
    start, end = start_axis % builtins.max(x.ndim, 1), end_axis % builtins.max(x.ndim, 1)
    shape = x.shape[:start] + (-1,) + x.shape[end + 1:]
    return reshape(x, shape)


def _index_array(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(_index_array(i) for i in index)
    if isinstance(index, list):
        return np.asarray(index)
    return index


def _is_basic(index):
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, np.integer, slice)) for p in parts)


def getitem(x, index):
    index = _index_array(index)
    out = x.data[index]
    basic = _is_basic(index)

    def backward(g):
        full = np.zeros(x.shape, dtype=g.dtype)
        if basic:
            full[index] = g
        else:
            np.add.at(full, index, g)
        return full,
    return _result(out, (x,), backward)


def take(x, indices, axis=0):
    """Gather along one axis (numpy's take); gradients scatter-add back."""
    indices = _index_array(indices)
    axis = axis % x.ndim  # the backward's moveaxis ranges need a non-negative axis
    out = np.take(x.data, indices, axis=axis)

    def backward(g):
        full = np.zeros(x.shape, dtype=g.dtype)
        moved = np.moveaxis(full, axis, 0)
        np.add.at(moved, indices, np.moveaxis(g, list(range(axis, axis + np.ndim(indices))),
                                              list(range(np.ndim(indices)))))
        return full,
    return _result(out, (x,), backward)


def concat(tensors, axis=0):
    tensors = [as_tensor(t) for t in tensors]
    sizes = np.cumsum([t.shape[axis] for t in tensors])[:-1]
    return _result(np.concatenate([t.data for t in tensors], axis=axis), tensors,
                   lambda g: tuple(np.split(g, sizes, axis=axis)))


def stack(tensors, axis=0):
    tensors = [as_tensor(t) for t in tensors]
    out = np.stack([t.data for t in tensors], axis=axis)
    return _result(out, tensors,
                   lambda g: tuple(np.take(g, i, axis=axis) for i in range(len(tensors))))


def split(x, split_size_or_sections, axis=0):
    """Split into pieces of a given size (int) or of the listed sizes, like torch.split."""
    length = x.shape[axis]
    if isinstance(split_size_or_sections, (int, np.integer)):
        sizes = [split_size_or_sections] * (length // split_size_or_sections)
        if length % split_size_or_sections:
            sizes.append(length % split_size_or_sections)
    else:
        sizes = list(split_size_or_sections)
    if np.sum(sizes) != length:
        raise ValueError(f"split sizes {sizes} do not add up to axis length {length}")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return tuple(getitem(x, (slice(None),) * (axis % x.ndim) + (slice(int(s), int(e)),))
                 for s, e in zip(starts[:-1], starts[1:]))


def pad(x, pad_width, value=0.0):
    """Constant padding; `pad_width` as numpy's ((before, after), ...) per axis."""
    pad_width = [tuple(p) for p in pad_width]
    inner = tuple(slice(b, b + n) for (b, _), n in zip(pad_width, x.shape))
    return _result(np.pad(x.data, pad_width, constant_values=value), (x,), lambda g: (g[inner],))


# -- normalisation and probabilities ---------------------------------------------------------------
def _softmax_kernel_ok(a, axis):
    """The fused kernel covers float32/float64, one int axis of nonzero length (numpy raises
    for the rest, and keeps doing so)."""
    return (a.dtype in (np.float32, np.float64) and isinstance(axis, (int, np.integer)) and -a.ndim <= axis < a.ndim and a.shape[axis] > 0)


def softmax(x, axis=-1):
    """y = exp(x − max x) / Σ exp(x − max x) along axis; backward y ⊙ (g − Σ g ⊙ y).
    Runs on the fused Cython kernels for float arrays (same values, same NaN/-inf behaviour)."""
    if _softmax_kernel_ok(x.data, axis):
        out = _kernels.softmax(x.data, axis=axis)

        def backward(g):
            if g.shape == out.shape and g.dtype == out.dtype:
                return (_kernels.softmax_backward(g, out, axis=axis),)
            return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)
        return _result(out, (x,), backward)
    shifted = x.data - np.max(x.data, axis=axis, keepdims=True)
    out = np.exp(shifted)
    out /= out.sum(axis=axis, keepdims=True)
    return _result(out, (x,), lambda g: (out * (g - (g * out).sum(axis=axis, keepdims=True)),))


def log_softmax(x, axis=-1):
    shifted = x.data - np.max(x.data, axis=axis, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return _result(out, (x,), lambda g: (g - np.exp(out) * g.sum(axis=axis, keepdims=True),))


def _normalized_axes(x, normalized_shape):
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[x.ndim - len(normalized_shape):] != normalized_shape:
        raise ValueError(f"input shape {x.shape} does not end with normalized_shape {normalized_shape}")
    return tuple(range(x.ndim - len(normalized_shape), x.ndim))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """(x − mean) / sqrt(var + eps) · weight + bias over the trailing `normalized_shape` axes."""
    axes = _normalized_axes(x, normalized_shape)
    centred = x.data - x.data.mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + eps)
    normed = centred * inv_std
    out = normed * weight.data if weight is not None else normed
    if bias is not None:  # in place unless out is still `normed`, which the backward needs
        out = out + bias.data if out is normed else np.add(out, bias.data, out=out)
    lead = tuple(range(x.ndim - len(axes)))

    def backward(g):
        gn = g * weight.data if weight is not None else g
        gx = None
        if x.requires_grad:
            gx = inv_std * (gn - gn.mean(axis=axes, keepdims=True)
                            - normed * (gn * normed).mean(axis=axes, keepdims=True))
        gw = (g * normed).sum(axis=lead) if weight is not None and weight.requires_grad else None
        gb = g.sum(axis=lead) if bias is not None and bias.requires_grad else None
        return gx, gw, gb
    parents = (x,) + tuple(p for p in (weight, bias) if p is not None)
    return _result(out, parents, lambda g: tuple(r for r, p in zip(backward(g), (x, weight, bias))
                                                 if p is not None))


def rms_norm(x, normalized_shape, weight=None, eps=1e-6):
    """x / sqrt(mean(x²) + eps) · weight over the trailing `normalized_shape` axes."""
    axes = _normalized_axes(x, normalized_shape)
    inv_rms = 1 / np.sqrt((x.data * x.data).mean(axis=axes, keepdims=True) + eps)
    normed = x.data * inv_rms
    out = normed * weight.data if weight is not None else normed
    lead = tuple(range(x.ndim - len(axes)))

    def backward(g):
        gn = g * weight.data if weight is not None else g
        gx = inv_rms * (gn - normed * (gn * normed).mean(axis=axes, keepdims=True)) if x.requires_grad else None
        gw = (g * normed).sum(axis=lead) if weight is not None and weight.requires_grad else None
        return (gx, gw) if weight is not None else (gx,)
    return _result(out, (x,) if weight is None else (x, weight), backward)


def embedding(indices, weight, padding_idx=None):
    """Rows of `weight` picked by integer `indices`; gradients scatter-add into the rows used.

    The row `padding_idx` (if given) gets no gradient, as in PyTorch: padding stays what it is."""
    idx = indices.data if isinstance(indices, Tensor) else np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding indices must be integers, got {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= weight.shape[0]):
        raise IndexError(f"embedding index out of range [0, {weight.shape[0]}): "
                         f"min {idx.min()}, max {idx.max()}")

    def backward(g):
        full = np.zeros(weight.shape, dtype=g.dtype)
        np.add.at(full, idx.reshape(-1), g.reshape(-1, weight.shape[-1]))
        if padding_idx is not None:
            full[padding_idx] = 0
        return full,
    return _result(weight.data[idx], (weight,), backward)


def dropout(x, p=0.5, training=True, rng=None):
    """Zero each element with probability p and scale the rest by 1/(1-p) (identity when not training).

    `rng` defaults to dreidel's global generator, so `dreidel.random.manual_seed` makes masks repeatable."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    keep = generator(rng).random(x.shape, dtype=np.float64 if x.dtype == np.float64 else np.float32) >= p
    mask = keep.astype(x.dtype) / (1 - p)
    return _result(x.data * mask, (x,), lambda g: (g * mask,))


# -- Tensor methods --------------------------------------------------------------------------------
def _reflected(op):
    return lambda self, other: op(other, self)


def install_methods(cls):
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
    for name in ("exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu", "silu", "softplus", "gelu", "sin", "cos",
                 "sum", "mean", "max", "min", "var", "logsumexp", "reshape", "transpose", "expand",
                 "squeeze", "unsqueeze", "flatten", "clip", "softmax", "log_softmax", "matmul",
                 "maximum", "minimum", "swapaxes", "erf"):
        setattr(cls, name, globals()[name])
    cls.permute = transpose
    cls.view = reshape
    cls.T = property(lambda self: transpose(self))
    cls.__eq__ = lambda self, other: Tensor(self.data == _index_array(other))
    cls.__ne__ = lambda self, other: Tensor(self.data != _index_array(other))
    cls.__lt__ = lambda self, other: Tensor(self.data < _index_array(other))
    cls.__le__ = lambda self, other: Tensor(self.data <= _index_array(other))
    cls.__gt__ = lambda self, other: Tensor(self.data > _index_array(other))
    cls.__ge__ = lambda self, other: Tensor(self.data >= _index_array(other))
    cls.argmax = lambda self, axis=None, keepdims=False: Tensor(np.argmax(self.data, axis=axis, keepdims=keepdims))
    cls.astype = lambda self, dtype: Tensor(self.data.astype(dtype)) if not (
        self.requires_grad and np.dtype(dtype).kind == "f") else _cast(self, dtype)
    cls.float = lambda self: self.astype(np.float32)
    cls.double = lambda self: self.astype(np.float64)


def _cast(x, dtype):
    return _result(x.data.astype(dtype), (x,), lambda g: (g.astype(x.dtype),))


def cast(x, dtype):
    """Change dtype; differentiable between floating dtypes."""
    return _cast(x, dtype) if np.dtype(dtype).kind == "f" and x.dtype.kind == "f" else Tensor(x.data.astype(dtype))


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("math", "np", "Tensor", "builtins", "generator",
                                                                    "install_methods", "is_grad_enabled")]

install_methods(Tensor)  # here, not in dreidel.tensor: ops may be imported first
