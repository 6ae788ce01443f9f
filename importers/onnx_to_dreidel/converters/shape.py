"""Shape and data-movement converters: Identity, Dropout (inference), Shape, Size, Reshape, Flatten,
(Un)Squeeze, Transpose, Expand, Tile, Concat, Split, Pad.

Shape arithmetic (Shape → Gather → Unsqueeze → Concat → Reshape...) stays in numpy: cheap at run
time and folded at import time whenever its inputs are constant.
"""
import numpy as np

from dreidel import ops
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import (any_tensor, array, as_tensor, axes_in, axis_in, checked_shape, ints,
                                                is_tensor, lift, register)


@register("Identity", since=1)
def identity(node):
    return lambda x: x


@register("Dropout", since=1)
def dropout(node):
    """Inference: identity (and an all-true mask when asked for)."""
    def run(x, ratio=None, training_mode=None):
        if training_mode is not None and bool(array(training_mode)):
            raise OnnxImportError(f"{node}: Dropout in training mode is not supported")
        if len(node.outputs) > 1 and node.outputs[1]:
            return x, np.ones(np.shape(array(x)), dtype=bool)
        return x
    return run


@register("Shape", since=1)
def shape(node):
    start, end = node.attr("start", 0), node.attr("end")

    def run(x):
        dims = np.shape(array(x))
        return np.array(dims[start:end] if end is not None else dims[start:], dtype=np.int64)
    return run


@register("Size", since=1)
def size(node):
    return lambda x: np.array(np.size(array(x)), dtype=np.int64)


def _reshape_target(shape, target, allowzero):
    target = list(target)
    if any(n < -1 for n in target) or target.count(-1) > 1:
        raise OnnxImportError(f"Reshape: target shape {tuple(target)} may hold one -1 and no other negative size")
    if not allowzero:
        target = [shape[i] if n == 0 else n for i, n in enumerate(target)]
    return tuple(target)


def _reshape(x, new_shape):
    return ops.reshape(x, new_shape) if is_tensor(x) else np.reshape(x, new_shape)


@register("Reshape", since=5)
def reshape(node):
    allowzero = node.attr("allowzero", 0)

    def run(x, target):
        new_shape = _reshape_target(np.shape(array(x)), ints(target), allowzero)
        try:
            return _reshape(x, new_shape)
        except ValueError:
            raise OnnxImportError(f"{node.name or 'Reshape'}: cannot reshape {np.shape(array(x))} "
                                  f"to {new_shape}") from None
    return run


@register("Flatten", since=1)
def flatten(node):
    axis = node.attr("axis", 1)

    def run(x):
        dims = np.shape(array(x))
        if not -len(dims) <= axis <= len(dims):
            raise OnnxImportError(f"Flatten: axis {axis} is out of range for an input of rank {len(dims)}")
        a = axis + len(dims) if axis < 0 else axis
        return _reshape(x, (int(np.prod(dims[:a], dtype=np.int64)), int(np.prod(dims[a:], dtype=np.int64))))
    return run


def _unsqueeze(x, axes):
    dims = list(np.shape(array(x)))
    rank = len(dims) + len(axes)
    for a in sorted(axes_in(axes, rank, "Unsqueeze")):
        dims.insert(a, 1)
    return _reshape(x, tuple(dims))


def _squeeze(x, axes):
    dims = np.shape(array(x))
    if axes is None:
        keep = [n for n in dims if n != 1]
    else:
        drop = set(axes_in(axes, len(dims), "Squeeze"))
        bad = [a for a in drop if dims[a] != 1]
        if bad:
            raise OnnxImportError(f"Squeeze: axes {sorted(bad)} of shape {dims} are not 1")
        keep = [n for i, n in enumerate(dims) if i not in drop]
    return _reshape(x, tuple(keep))


@register("Unsqueeze", since=1)
def unsqueeze_v1(node):
    axes = node.attr("axes")
    return lambda x: _unsqueeze(x, axes)


@register("Unsqueeze", since=13)
def unsqueeze_v13(node):
    return lambda x, axes: _unsqueeze(x, ints(axes))


@register("Squeeze", since=1)
def squeeze_v1(node):
    axes = node.attr("axes")
    return lambda x: _squeeze(x, axes)


@register("Squeeze", since=13)
def squeeze_v13(node):
    return lambda x, axes=None: _squeeze(x, None if axes is None else ints(axes))


@register("Transpose", since=1)
def transpose(node):
    perm = node.attr("perm")

    def run(x):
        rank = np.ndim(array(x))
        p = perm if perm is not None else tuple(reversed(range(rank)))
        if sorted(p) != list(range(rank)):
            raise OnnxImportError(f"Transpose: perm {list(p)} is not a permutation of the {rank} axes")
        return ops.transpose(x, tuple(p)) if is_tensor(x) else np.transpose(x, p)
    return run


@register("Expand", since=8)
def expand(node):
    def run(x, shape_):
        target = checked_shape(np.broadcast_shapes(np.shape(array(x)), ints(shape_)), "Expand")
        return ops.expand(x, target) if is_tensor(x) else np.broadcast_to(x, target).copy()
    return run


@register("Tile", since=6)
def tile(node):
    def run(x, repeats):
        repeats = ints(repeats)
        if len(repeats) != np.ndim(array(x)):
            raise OnnxImportError(f"Tile: {len(repeats)} repeats for an input of rank {np.ndim(array(x))}")
        checked_shape([n * r for n, r in zip(np.shape(array(x)), repeats)], "Tile")
        return ops.tile(x, repeats) if is_tensor(x) else np.tile(x, repeats)
    return run


@register("Concat", since=4)
def concat(node):
    axis = node.attr("axis")

    def run(*xs):
        xs = [x for x in xs if x is not None]
        axis_in(axis, np.ndim(array(xs[0])), "Concat")
        if any_tensor(xs):
            like = next(x for x in xs if is_tensor(x))
            parts = [lift(x, like) for x in xs]
            return ops.concat([p for p in parts if p.size] or parts[:1], axis=axis)
        arrays = [np.asarray(x) for x in xs]
        return np.concatenate(arrays, axis=axis)
    return run


def _split_sizes(length, sizes, count):
    if sizes is not None:
        sizes = list(sizes)
        if sum(sizes) != length:
            raise OnnxImportError(f"Split sizes {sizes} do not add up to the axis length {length}")
        return sizes
    step = -(-length // count)  # ONNX: equal chunks, the last one smaller
    return [min(step, length - i * step) for i in range(count)]


def _split(x, axis, sizes):
    axis = axis_in(axis, np.ndim(array(x)), "Split")
    if is_tensor(x):
        return tuple(ops.split(x, sizes, axis=axis))
    return tuple(np.split(np.asarray(x), np.cumsum(sizes)[:-1], axis=axis))


@register("Split", since=2)
def split_v2(node):
    axis, attr_sizes = node.attr("axis", 0), node.attr("split")

    def run(x):
        length = np.shape(array(x))[axis_in(axis, np.ndim(array(x)), "Split")]
        return _split(x, axis, _split_sizes(length, attr_sizes, len(node.outputs)))
    return run


@register("Split", since=13)
def split_v13(node):
    axis, num_outputs = node.attr("axis", 0), node.attr("num_outputs")

    def run(x, sizes=None):
        length = np.shape(array(x))[axis_in(axis, np.ndim(array(x)), "Split")]
        count = num_outputs if num_outputs is not None else len(node.outputs)
        return _split(x, axis, _split_sizes(length, None if sizes is None else ints(sizes), count))
    return run


@register("Pad", since=11)
def pad(node):
    mode = node.attr("mode", "constant")

    def run(x, pads, value=None, axes=None):
        ndim = np.ndim(array(x))
        pads = ints(pads)
        axes = list(range(ndim)) if axes is None else axes_in(ints(axes), ndim, "Pad")
        if len(pads) != 2 * len(axes):
            raise OnnxImportError(f"Pad: {len(pads)} pads for {len(axes)} axes (need begin and end for each)")
        half = len(pads) // 2
        widths = [(0, 0)] * ndim
        for i, a in enumerate(axes):
            widths[a] = (pads[i], pads[i + half])
        checked_shape([n + b + e for n, (b, e) in zip(np.shape(array(x)), widths)], "Pad")  # negative: crops
        fill = 0 if value is None or np.size(array(value)) == 0 else array(value).reshape(-1)[0].item()
        out = ops.pad(as_tensor(x), widths, mode=mode, value=fill)
        return out if is_tensor(x) else out.data
    return run
