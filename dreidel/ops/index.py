"""Indexing: getitem, take, gather_elements, scatter_nd, embedding (gradients scatter-add back)."""
import numpy as np

from dreidel.ops._common import _index_array, _is_basic
from dreidel.tensor import Tensor, as_tensor, record


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


def _integer_index(index, what):
    index = np.asarray(_index_array(index))
    if index.dtype.kind not in "iu":
        raise TypeError(f"{what}: indices must be integers, got {index.dtype}")
    return index.astype(np.int64, copy=False)


def _wrapped(index, size, what):
    """Negative indices count from the end (ONNX); anything outside [-size, size) is an error."""
    if index.size and (index.min() < -size or index.max() >= size):
        raise IndexError(f"{what}: index out of range [{-size}, {size}): min {index.min()}, max {index.max()}")
    return np.where(index < 0, index + size, index)


def gather_elements(x, index, dim):
    """out[i][j][k] = x[index[i][j][k]][j][k] for dim 0 (and so on), as `torch.gather` and ONNX
    GatherElements: `index` has x's rank and the output its shape (on the other axes it may be
    shorter than x). Negative indices count from the end. Gradients scatter-add back."""
    index = _integer_index(index, "gather_elements")
    if index.ndim != x.ndim:
        raise ValueError(f"gather_elements: index rank {index.ndim} differs from input rank {x.ndim}")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"gather_elements: dim {dim} is out of range for {x.ndim} axes")
    axis = dim % x.ndim
    if any(i > n for a, (i, n) in enumerate(zip(index.shape, x.shape)) if a != axis):
        raise ValueError(f"gather_elements: index shape {index.shape} exceeds input shape {x.shape} off dim {axis}")
    grid = list(np.ix_(*[np.arange(n) for n in index.shape])) if index.ndim else []
    if grid:
        grid[axis] = _wrapped(index, x.shape[axis], "gather_elements")
    grid = tuple(grid)

    def backward(g):
        full = np.zeros(x.shape, dtype=g.dtype)
        np.add.at(full, grid, g)
        return full,
    return record(x.data[grid], (x,), backward)


_SCATTER_REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def scatter_nd(data, indices, updates, reduction="none"):
    """ONNX ScatterND: a copy of `data` with the slices data[indices[..., :]] replaced by (or, with
    `reduction` "add"/"mul"/"max"/"min", combined with) `updates`.

    indices (..., k) address the first k axes of data; updates has shape indices.shape[:-1] +
    data.shape[k:]. Gradients for "none" (a replaced slice gives data no gradient; of repeated
    indices only the update that was written gets one) and "add"; the other reductions refuse a
    gradient with a clear error."""
    if reduction not in _SCATTER_REDUCTIONS:
        raise ValueError(f"scatter_nd reduction must be one of {tuple(_SCATTER_REDUCTIONS)}, got {reduction!r}")
    like = data if isinstance(data, Tensor) else updates if isinstance(updates, Tensor) else None
    data, updates = as_tensor(data, like=like), as_tensor(updates, like=like)
    indices = _integer_index(indices, "scatter_nd")
    if indices.ndim < 1 or indices.shape[-1] > data.ndim:
        raise ValueError(f"scatter_nd: indices shape {indices.shape} needs a last axis of at most {data.ndim}")
    k = indices.shape[-1]
    expected = indices.shape[:-1] + data.shape[k:]
    if updates.shape != expected:
        raise ValueError(f"scatter_nd: updates shape {updates.shape}, expected {expected} "
                         f"(indices {indices.shape}, data {data.shape})")
    index = tuple(_wrapped(indices[..., i], data.shape[i], "scatter_nd") for i in range(k))
    out = np.array(data.data, copy=True)
    values = updates.data.astype(out.dtype, copy=False)
    if _SCATTER_REDUCTIONS[reduction] is None:
        out[index] = values
    else:
        _SCATTER_REDUCTIONS[reduction].at(out, index, values)
    if reduction not in ("none", "add") and (data.requires_grad or updates.requires_grad):
        raise ValueError(f"scatter_nd: reduction {reduction!r} has no gradient rule (only 'none' and 'add')")

    def backward(g):
        if reduction == "add":
            return g, g[index]
        gx = g.copy()
        gx[index] = 0
        gu = None
        if updates.requires_grad:  # the update written last at a repeated index is the one that counts
            ids = np.full(data.shape[:k], -1, dtype=np.int64)
            order = np.arange(int(np.prod(indices.shape[:-1], dtype=np.int64))).reshape(indices.shape[:-1])
            ids[index] = order
            written = (ids[index] == order).reshape(order.shape + (1,) * (data.ndim - k))
            gu = np.where(written, g[index], 0)
        return gx, gu
    return record(out, (data, updates), backward)
