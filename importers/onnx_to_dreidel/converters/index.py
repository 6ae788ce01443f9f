"""Indexing converters: Slice, Gather (lifted to `nn.Embedding` when it reads rows of a constant
table), GatherElements, GatherND, ScatterND, Trilu, OneHot, NonZero."""
import numpy as np

from dreidel import nn, ops
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import (NO_DRAW, Lifted, array, as_tensor, axes_in, axis_in, checked_shape,
                                                ints, is_tensor, lifts, register)


_CLAMP = np.iinfo(np.int64).max // 2  # Python slicing clamps; keep values reasonable


def _slice_index(ndim, starts, ends, axes, steps):
    index = [slice(None)] * ndim
    axes = range(len(starts)) if axes is None else axes_in(axes, ndim, "Slice")
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise OnnxImportError(f"Slice: starts/ends/axes/steps lengths differ ({len(starts)}, {len(ends)}, "
                              f"{len(axes)}, {len(steps)})")
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise OnnxImportError("Slice step must not be 0")
        clamp = _CLAMP
        start, end = max(min(start, clamp), -clamp), max(min(end, clamp), -clamp)
        if step < 0 and end < -clamp // 2:
            end = None  # "to the beginning" in ONNX's reversed slices
        index[axis % ndim] = slice(start, end, step)
    return tuple(index)


def _getitem(x, index):
    return ops.getitem(x, index) if is_tensor(x) else np.asarray(x)[index]


@register("Slice", since=1)
def slice_v1(node):
    starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
    return lambda x: _getitem(x, _slice_index(np.ndim(array(x)), starts, ends, axes, None))


@register("Slice", since=10)
def slice_v10(node):
    def run(x, starts, ends, axes=None, steps=None):
        index = _slice_index(np.ndim(array(x)), ints(starts), ints(ends),
                             None if axes is None else ints(axes), None if steps is None else ints(steps))
        return _getitem(x, index)
    return run


@register("Gather", since=1)
def gather(node):
    axis = node.attr("axis", 0)

    def run(x, indices):
        indices = array(indices).astype(np.int64, copy=False)
        a = axis_in(axis, np.ndim(array(x)), "Gather")
        size = np.shape(array(x))[a]
        if indices.size and (indices.min() < -size or indices.max() >= size):
            raise OnnxImportError(f"Gather: indices out of range [-{size}, {size}) on axis {a}: "
                                  f"min {indices.min()}, max {indices.max()}")
        if is_tensor(x):
            return ops.take(x, indices, axis=a)
        return np.take(np.asarray(x), indices, axis=a)
    return run


@register("GatherElements", since=11)
def gather_elements(node):
    axis = node.attr("axis", 0)

    def run(x, indices):
        out = ops.gather_elements(as_tensor(x), array(indices).astype(np.int64, copy=False), axis)
        return out if is_tensor(x) else out.data
    return run


def _gather_nd_index(data_shape, indices, batch_dims):
    """A numpy advanced index tuple equivalent to ONNX GatherND."""
    k = indices.shape[-1]
    batch_shape = indices.shape[:batch_dims]
    index = []
    for b in range(batch_dims):
        shape = [1] * (indices.ndim - 1)
        shape[b] = batch_shape[b]
        index.append(np.arange(batch_shape[b]).reshape(shape))
    for i in range(k):
        position = indices[..., i]
        index.append(np.where(position < 0, position + data_shape[batch_dims + i], position))
    return tuple(index)


@register("GatherND", since=11)
def gather_nd(node):
    batch_dims = node.attr("batch_dims", 0)

    def run(x, indices):
        indices = array(indices).astype(np.int64)
        index = _gather_nd_index(np.shape(array(x)), indices, batch_dims)
        return _getitem(x, index)
    return run


@register("ScatterND", since=11)
def scatter_nd(node):
    reduction = node.attr("reduction", "none")

    if reduction not in ("none", "add", "mul", "max", "min"):
        raise OnnxImportError(f"{node}: unknown ScatterND reduction {reduction!r}")

    def run(x, indices, updates):
        out = ops.scatter_nd(x, array(indices).astype(np.int64, copy=False), updates, reduction)
        return out if is_tensor(x) or is_tensor(updates) else out.data
    return run


@register("Trilu", since=14)
def trilu(node):
    upper = node.attr("upper", 1)

    def run(x, k=None):
        k = 0 if k is None else int(array(k).reshape(-1)[0])
        rows, cols = np.shape(array(x))[-2:]
        mask = np.triu(np.ones((rows, cols), bool), k) if upper else np.tril(np.ones((rows, cols), bool), k)
        if is_tensor(x):
            return ops.where(mask, x, Tensor(np.zeros((), x.dtype)))
        return np.where(mask, x, np.zeros((), np.asarray(x).dtype))
    return run


@register("OneHot", since=11)
def one_hot(node):
    axis = node.attr("axis", -1)

    def run(indices, depth, values):
        depth = int(array(depth).reshape(-1)[0])
        idx = array(indices).astype(np.int64)
        checked_shape(idx.shape + (depth,), "OneHot")
        idx = np.where(idx < 0, idx + depth, idx)
        hot = idx[..., None] == np.arange(depth)
        off, on = array(values)
        out = np.where(hot, on, off).astype(array(values).dtype)
        return np.moveaxis(out, -1, axis % out.ndim)
    return run


@register("NonZero", since=9)
def non_zero(node):
    return lambda x: np.array(np.nonzero(array(x)), dtype=np.int64).reshape(np.ndim(array(x)), -1)


# -- lifting to nn.Embedding -----------------------------------------------------------------------
def _call_embedding(module, indices):
    indices = np.asarray(array(indices)).astype(np.int64, copy=False)
    if indices.size and indices.min() < 0:  # ONNX Gather counts negative indices from the end
        indices = np.where(indices < 0, indices + module.weight.shape[0], indices)
    return module(indices)


@lifts("Gather")
def lift_gather(node, graph):
    """Rows (axis 0) of a constant float table picked by run-time indices → Embedding."""
    table = graph.const(node.inputs[0])
    if node.attr("axis", 0) != 0 or table is None or table.dtype.kind != "f" or table.ndim != 2 \
            or graph.const(node.inputs[1]) is not None:
        return None
    module = nn.Embedding(1, table.shape[1], rng=NO_DRAW)
    module.num_embeddings = table.shape[0]
    module.weight = graph.parameter(table)
    return Lifted(module, node.inputs[0], [node.inputs[1]], list(node.outputs), _call_embedding)
