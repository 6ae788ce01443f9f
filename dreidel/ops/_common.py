"""Helpers shared by the op families: lifting operands, axis bookkeeping, index arrays."""
import numpy as np

from dreidel.tensor import Tensor, as_tensor


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


def _axis_arg(axis):
    return tuple(axis) if isinstance(axis, list) else axis


def _squeeze_axes(array, axis, ndim):
    return np.squeeze(array, axis=_normalize_axis(axis, ndim)) if ndim else array


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


def _channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)
