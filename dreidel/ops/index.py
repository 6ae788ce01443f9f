"""Indexing: getitem, take, embedding (gradients scatter-add back)."""
import numpy as np

from dreidel.ops._common import _index_array, _is_basic
from dreidel.tensor import Tensor, record


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
    return record(out, (x,), backward)


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
    return record(out, (x,), backward)


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
    return record(weight.data[idx], (weight,), backward)
