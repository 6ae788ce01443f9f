"""Converters for constants, casts, shapes, indexing and data movement.

Shape arithmetic (Shape → Gather → Unsqueeze → Concat → Reshape...) stays in numpy: cheap at run
time and folded at import time whenever its inputs are constant.
"""
import numpy as np
import onnx

from dreidel import ops
from dreidel.tensor import Tensor, _result
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.loader import low_precision_dtype, numpy_dtype
from importers.onnx_to_dreidel.registry import (any_tensor, array, axes_in, axis_in, checked_shape, float_dtype, ints,
                                                is_tensor, lift, register)


def _round_bfloat16(v):
    """float32 → nearest bfloat16 (ties to even), kept in float32."""
    bits = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return np.where(np.isnan(v), v, rounded.view(np.float32)).astype(np.float32)


def _cast_to(x, onnx_type):
    """Cast to an ONNX type; float16/bfloat16 round to their precision but compute stays float32."""
    target = numpy_dtype(onnx_type)
    if target.kind == "f" and float_dtype() == np.float64:  # a .double() graph stays float64 throughout
        target, onnx_type = np.dtype(np.float64), onnx.TensorProto.DOUBLE
    if is_tensor(x):
        if target.kind != "f":
            return x.data.astype(target)
        out = ops.cast(x, target) if x.dtype != target else x
        if onnx_type == onnx.TensorProto.FLOAT16:
            out = ops.cast(ops.cast(out, np.float16), np.float32)
        elif onnx_type == onnx.TensorProto.BFLOAT16:  # rounding passes the gradient straight through
            out = _result(_round_bfloat16(out.data), (out,), lambda g: (g,))
        return out
    x = np.asarray(x)
    if x.dtype.kind == "f" and target.kind in "iub":
        x = np.trunc(x) if target.kind != "b" else x
    out = x.astype(target)
    if onnx_type == onnx.TensorProto.FLOAT16:
        out = out.astype(np.float16).astype(np.float32)
    elif onnx_type == onnx.TensorProto.BFLOAT16:
        out = _round_bfloat16(out)
    return out


def _cast_low_precision(x, target, saturate):
    """Cast to float8/float4/int4 (numpy-only values): saturating floats clip to the finite range."""
    v = np.asarray(x.data if is_tensor(x) else x)
    if v.dtype.kind == "V" or v.dtype.name.startswith(("float8", "float4", "int4", "uint4")):
        v = v.astype(np.float32)
    if target.name.startswith("float8") and saturate:  # ONNX's own rule (±inf and overflow → ±max)
        return onnx.numpy_helper.saturate_cast(v, target)
    return v.astype(target)  # int4/uint4 wrap, float4 rounds, as ml_dtypes (and the ONNX reference) do


@register("Cast", since=6)
def cast(node):
    to, saturate = node.attr("to"), node.attr("saturate", 1)
    low = low_precision_dtype(to)
    if low is not None:
        return lambda x: _cast_low_precision(x, low, saturate)
    return lambda x: _cast_to(x, to)


@register("CastLike", since=15)
def cast_like(node):
    saturate = node.attr("saturate", 1)

    def run(x, like):
        target = array(like).dtype
        try:
            onnx_type = onnx.helper.np_dtype_to_tensor_dtype(target)
        except (KeyError, TypeError, ValueError):
            raise OnnxImportError(f"{node}: CastLike to unsupported dtype {target}") from None
        if low_precision_dtype(onnx_type) is not None:
            return _cast_low_precision(x, target, saturate)
        return _cast_to(x, onnx_type)
    return run


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


# -- constants -------------------------------------------------------------------------------------
@register("Constant", since=1)
def constant(node):
    for key, kind in [("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                      ("value_int", np.int64), ("value_ints", np.int64)]:
        if key in node.attrs:
            value = np.array(node.attrs[key], dtype=kind) if kind is not None else np.asarray(node.attrs[key])
            return lambda: value
    raise OnnxImportError(f"{node}: Constant needs a value / value_float(s) / value_int(s) attribute, "
                          f"got {sorted(node.attrs)}")


@register("ConstantOfShape", since=9)
def constant_of_shape(node):
    value = node.attr("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)

    def run(shape):
        return np.full(checked_shape(ints(shape), "ConstantOfShape"), value[0], dtype=value.dtype)
    return run


@register("Range", since=11)
def range_(node):
    def run(start, limit, delta):
        start, limit, delta = array(start), array(limit), array(delta)
        if delta.item() == 0:
            raise ValueError("Range delta must not be 0")
        checked_shape((max(int(np.ceil((limit.item() - start.item()) / delta.item())), 0),), "Range")
        return np.arange(start.item(), limit.item(), delta.item()).astype(start.dtype)
    return run


@register("EyeLike", since=9)
def eye_like(node):
    k, dtype = node.attr("k", 0), node.attr("dtype")

    def run(x):
        v = array(x)
        return np.eye(v.shape[0], v.shape[1], k=k, dtype=numpy_dtype(dtype) if dtype is not None else v.dtype)
    return run


# -- shapes ----------------------------------------------------------------------------------------
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


def _tile_tensor(x, repeats):
    repeats = tuple(repeats)

    def backward(g):
        # tiled axis of size r·n seen as (r, n): sum over the r copies
        split = []
        for r, n in zip(repeats, x.shape):
            split += [r, n]
        return g.reshape(split).sum(axis=tuple(range(0, 2 * len(repeats), 2))),
    return _result(np.tile(x.data, repeats), (x,), backward)


@register("Tile", since=6)
def tile(node):
    def run(x, repeats):
        repeats = ints(repeats)
        if len(repeats) != np.ndim(array(x)):
            raise OnnxImportError(f"Tile: {len(repeats)} repeats for an input of rank {np.ndim(array(x))}")
        checked_shape([n * r for n, r in zip(np.shape(array(x)), repeats)], "Tile")
        return _tile_tensor(x, repeats) if is_tensor(x) else np.tile(x, repeats)
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
        clamp = np.iinfo(np.int64).max // 2  # Python slicing clamps; keep values reasonable
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


def _take_along(x, indices, axis):
    def backward(g):
        full = np.zeros(x.shape, dtype=g.dtype)
        grid = list(np.ix_(*[np.arange(n) for n in indices.shape]))
        grid[axis] = indices
        np.add.at(full, tuple(grid), g)
        return full,
    return _result(np.take_along_axis(x.data, indices, axis=axis), (x,), backward)


@register("GatherElements", since=11)
def gather_elements(node):
    axis = node.attr("axis", 0)

    def run(x, indices):
        v = array(x)
        a = axis_in(axis, v.ndim, "GatherElements")
        indices = array(indices).astype(np.int64)
        indices = np.where(indices < 0, indices + v.shape[a], indices)
        return _take_along(x, indices, a) if is_tensor(x) else np.take_along_axis(v, indices, axis=a)
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

    combine = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}
    if reduction not in combine:
        raise OnnxImportError(f"{node}: unknown ScatterND reduction {reduction!r}")

    def scatter(x, index, updates):
        out = np.array(x, copy=True)
        if combine[reduction] is None:
            out[index] = updates
        else:
            combine[reduction].at(out, index, updates)
        return out

    def run(x, indices, updates):
        index = _gather_nd_index(np.shape(array(x)), array(indices).astype(np.int64), 0)
        if not (is_tensor(x) or is_tensor(updates)):
            return scatter(np.asarray(x), index, np.asarray(updates))
        like = x if is_tensor(x) else updates
        x, updates = lift(x, like), lift(updates, like)
        out = scatter(x.data, index, updates.data)
        if reduction not in ("none", "add"):
            if x.requires_grad or updates.requires_grad:
                raise OnnxImportError(f"{node}: ScatterND reduction {reduction!r} has no gradient rule")
            return Tensor(out)

        def backward(g):  # replaced positions take no gradient from x ('none'); updates read theirs
            gx = g
            if reduction == "none":
                gx = g.copy()
                gx[index] = 0
            return gx, g[index]
        return _result(out, (x, updates), backward)
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
        if any(b < 0 or e < 0 for b, e in widths):
            raise OnnxImportError(f"{node}: negative pads {pads} are not supported")
        checked_shape([n + b + e for n, (b, e) in zip(np.shape(array(x)), widths)], "Pad")
        fill = 0 if value is None or np.size(array(value)) == 0 else array(value).reshape(-1)[0].item()
        if not is_tensor(x):
            if mode == "constant":
                return np.pad(x, widths, mode="constant", constant_values=fill)
            return np.pad(x, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])
        if mode == "constant":
            return ops.pad(x, widths, value=fill)
        # reflect/edge/wrap as a gather per axis: gradients follow the picked elements
        out = x
        for a, (before, after) in enumerate(widths):
            if before or after:
                source = np.pad(np.arange(x.shape[a]), (before, after), mode={"reflect": "reflect",
                                                                              "edge": "edge", "wrap": "wrap"}[mode])
                out = ops.take(out, source, axis=a)
        return out
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


@register("DequantizeLinear", since=10)
def dequantize_linear(node):
    axis = node.attr("axis", 1)
    block_size = node.attr("block_size", 0)
    if block_size:
        raise OnnxImportError(f"{node}: blocked DequantizeLinear (block_size) is not supported")

    def run(x, scale, zero_point=None):
        v = array(x)
        scale = array(scale).astype(np.float32)
        zero = np.zeros((), np.int64) if zero_point is None else array(zero_point)
        if scale.ndim == 1 and scale.size > 1:  # per-axis
            shape = [1] * v.ndim
            shape[axis % v.ndim] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim else zero
        # float64 in between: exact for every int8..int32 and float8/int4 value
        return ((v.astype(np.float64) - zero.astype(np.float64)) * scale).astype(scale.dtype)
    return run


@register("QuantizeLinear", since=10)
def quantize_linear(node):
    axis = node.attr("axis", 1)

    def run(x, scale, zero_point=None):
        v = array(x)
        scale = array(scale)
        zero = np.zeros((), np.uint8) if zero_point is None else array(zero_point)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * v.ndim
            shape[axis % v.ndim] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim else zero
        if zero.dtype.name.startswith("float8"):  # float8 targets saturate (ONNX's rule)
            q = v.astype(np.float32) / scale + zero.astype(np.float32)
            return onnx.numpy_helper.saturate_cast(q, zero.dtype) if node.attr("saturate", 1) else q.astype(zero.dtype)
        if zero.dtype.name in ("int4", "uint4"):
            import ml_dtypes
            info = ml_dtypes.iinfo(zero.dtype)
        else:
            info = np.iinfo(zero.dtype)
        q = np.rint(v / scale) + zero.astype(np.int64)
        return np.clip(q, info.min, info.max).astype(zero.dtype)
    return run


