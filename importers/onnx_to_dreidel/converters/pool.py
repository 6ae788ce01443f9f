"""Pooling converters: MaxPool (with ONNX's Indices output), AveragePool, GlobalAveragePool, GlobalMaxPool."""
import itertools

import numpy as np

from dreidel import ops
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.converters.conv import check_attribute_lengths, same_pads
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import as_tensor, is_tensor, register


def _pool_pads(node, x_shape, kernel, stride, dilation):
    auto_pad = node.attr("auto_pad", "NOTSET")
    spatial = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = same_pads(x_shape[2:], kernel, stride, dilation, auto_pad)
    elif auto_pad == "VALID":
        pads = (0,) * (2 * spatial)
    else:
        pads = tuple(node.attr("pads", [0] * 2 * spatial))
    return pads


@register("MaxPool", since=8)
def max_pool(node):
    kernel = tuple(node.attr("kernel_shape"))
    spatial = len(kernel)
    check_attribute_lengths(node, spatial)
    stride = tuple(node.attr("strides", [1] * spatial))
    dilation = tuple(node.attr("dilations", [1] * spatial))
    ceil_mode = bool(node.attr("ceil_mode", 0))
    want_indices = len(node.outputs) > 1 and bool(node.outputs[1])
    storage_order = int(node.attr("storage_order", 0))
    if storage_order not in (0, 1):
        raise OnnxImportError(f"{node}: storage_order must be 0 (row major) or 1 (column major), got {storage_order}")

    def run(x):
        x_t = as_tensor(x)
        pads = _pool_pads(node, x_t.shape, kernel, stride, dilation)
        indices = None
        if pads[:spatial] == pads[spatial:] and not ceil_mode:
            out = ops.max_pool(x_t, kernel, stride, tuple(pads[:spatial]), dilation, ceil_mode,
                             return_indices=want_indices)
            if want_indices:
                out, indices = out
        elif want_indices:
            raise OnnxImportError(f"{node}: MaxPool's Indices output is supported only with symmetric pads "
                                  f"and ceil_mode=0 (got pads {list(pads)}, ceil_mode {int(ceil_mode)})")
        else:  # per-side pads, and ONNX's ceil-mode rule, done explicitly
            out = _max_pool_general(x_t, kernel, stride, dilation, pads, ceil_mode)
        out = out if is_tensor(x) else out.data
        if not want_indices:
            return out
        indices = indices.data if is_tensor(indices) else np.asarray(indices)
        return out, _onnx_pool_indices(indices, x_t.shape, storage_order)
    return run


def _onnx_pool_indices(positions, x_shape, storage_order):
    """PyTorch-style indices (flat position inside each (n, c) spatial grid, row major) → ONNX's:
    flat positions in the whole (N, C, *spatial) tensor, the spatial part column major when
    storage_order = 1: index = (n·C + c)·∏spatial + position."""
    spatial_shape = tuple(x_shape[2:])
    plane = int(np.prod(spatial_shape, dtype=np.int64))
    if storage_order == 1:
        positions = np.ravel_multi_index(np.unravel_index(positions, spatial_shape), spatial_shape, order="F")
    n, c = x_shape[0], x_shape[1]
    offsets = (np.arange(n * c, dtype=np.int64) * plane).reshape((n, c) + (1,) * len(spatial_shape))
    return (positions.astype(np.int64, copy=False) + offsets).astype(np.int64, copy=False)


def _pool_geometry(in_shape, kernel, stride, dilation, pads, ceil_mode):
    """Output size per axis (ONNX rule: in ceil mode a last window must start inside the input or
    its begin padding) and the extra end padding the ceil-mode windows reach into."""
    spatial = len(kernel)
    out_shape, extra = [], []
    for i in range(spatial):
        padded = in_shape[i] + pads[i] + pads[i + spatial]
        span = dilation[i] * (kernel[i] - 1) + 1
        if padded < span:
            raise OnnxImportError(f"pooling window {span} is larger than the padded input {padded} on axis {i + 2}")
        n = (padded - span) // stride[i] + 1
        if ceil_mode:
            n = -(-(padded - span) // stride[i]) + 1
            if (n - 1) * stride[i] >= in_shape[i] + pads[i]:
                n -= 1
        out_shape.append(n)
        extra.append(max((n - 1) * stride[i] + span - padded, 0))
    return out_shape, extra


def _windows(xp, kernel, stride, dilation, out_shape):
    """(spatial slice tuple) for each kernel offset: the strided view of every window's element k."""
    for offset in itertools.product(*[range(k) for k in kernel]):
        yield tuple(slice(o * d, o * d + (n - 1) * s + 1, s) for o, d, n, s in zip(offset, dilation, out_shape, stride))


def _max_pool_general(x, kernel, stride, dilation, pads, ceil_mode):
    """Max pooling with per-side pads and ceil mode: −inf padding, the max over K strided slices."""
    spatial = len(kernel)
    out_shape, extra = _pool_geometry(x.shape[2:], kernel, stride, dilation, pads, ceil_mode)
    widths = [(pads[i], pads[i + spatial] + extra[i]) for i in range(spatial)]
    xp = ops.pad(x, [(0, 0), (0, 0)] + widths, value=-np.inf)
    parts = [ops.getitem(xp, (slice(None), slice(None)) + w) for w in _windows(xp, kernel, stride, dilation, out_shape)]
    return ops.max(ops.stack(parts, axis=0), axis=0)


def _avg_pool_general(x, kernel, stride, dilation, pads, ceil_mode, count_include_pad):
    """Average pooling with dilation and per-side pads: the sum of K strided slices over the padded
    input, divided by the count of real (or real + explicitly padded) elements in each window.
    Ceil mode's extra windows read zeros that count for nothing."""
    spatial = len(kernel)
    in_shape = x.shape[2:]
    out_shape, extra = _pool_geometry(in_shape, kernel, stride, dilation, pads, ceil_mode)
    widths = [(pads[i], pads[i + spatial] + extra[i]) for i in range(spatial)]
    xp = ops.pad(x, [(0, 0), (0, 0)] + widths, value=0.0)
    if count_include_pad:
        counted = np.pad(np.ones([n + pads[i] + pads[i + spatial] for i, n in enumerate(in_shape)], x.dtype),
                         [(0, e) for e in extra])
    else:
        counted = np.pad(np.ones(in_shape, x.dtype), widths)
    total, count = None, 0
    for window in _windows(xp, kernel, stride, dilation, out_shape):
        part = ops.getitem(xp, (slice(None), slice(None)) + window)
        total = part if total is None else total + part
        count = count + counted[window]
    return total / Tensor(np.maximum(count, 1).astype(x.dtype))


@register("AveragePool", since=7)
def average_pool(node):
    kernel = tuple(node.attr("kernel_shape"))
    spatial = len(kernel)
    check_attribute_lengths(node, spatial)
    stride = tuple(node.attr("strides", [1] * spatial))
    dilation = tuple(node.attr("dilations", [1] * spatial))
    ceil_mode = bool(node.attr("ceil_mode", 0))
    count_include_pad = bool(node.attr("count_include_pad", 0))

    def run(x):
        x_t = as_tensor(x)
        pads = _pool_pads(node, x_t.shape, kernel, stride, dilation)
        if pads[:spatial] == pads[spatial:] and dilation == (1,) * spatial and not ceil_mode:
            out = ops.avg_pool(x_t, kernel, stride, tuple(pads[:spatial]), ceil_mode, count_include_pad)
        else:
            out = _avg_pool_general(x_t, kernel, stride, dilation, pads, ceil_mode, count_include_pad)
        return out if is_tensor(x) else out.data
    return run


def _global_pool(reduce):
    def build(node):
        def run(x):
            x_t = as_tensor(x)
            out = reduce(x_t, axis=tuple(range(2, x_t.ndim)), keepdims=True)
            return out if is_tensor(x) else out.data
        return run
    return build


register("GlobalAveragePool", since=1)(_global_pool(ops.mean))


register("GlobalMaxPool", since=1)(_global_pool(ops.max))
