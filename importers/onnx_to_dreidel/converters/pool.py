"""Pooling converters: MaxPool (with ONNX's Indices output), AveragePool, GlobalAveragePool, GlobalMaxPool,
over the engine's `ops.max_pool` / `ops.avg_pool` (per-side pads, dilation and ONNX's ceil-mode rule)."""
import numpy as np

from dreidel import ops
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


def _window_attributes(node):
    """(kernel, strides, dilations, ceil_mode) of a pooling node, checked against its spatial rank."""
    kernel = tuple(node.attr("kernel_shape"))
    spatial = len(kernel)
    check_attribute_lengths(node, spatial)
    return (kernel, tuple(node.attr("strides", [1] * spatial)), tuple(node.attr("dilations", [1] * spatial)),
            bool(node.attr("ceil_mode", 0)))


@register("MaxPool", since=8)
def max_pool(node):
    kernel, stride, dilation, ceil_mode = _window_attributes(node)
    want_indices = len(node.outputs) > 1 and bool(node.outputs[1])
    storage_order = int(node.attr("storage_order", 0))
    if storage_order not in (0, 1):
        raise OnnxImportError(f"{node}: storage_order must be 0 (row major) or 1 (column major), got {storage_order}")

    def run(x):
        x_t = as_tensor(x)
        pads = _pool_pads(node, x_t.shape, kernel, stride, dilation)
        out = ops.max_pool(x_t, kernel, stride, pads, dilation, ceil_mode, return_indices=want_indices)
        if not want_indices:
            return out if is_tensor(x) else out.data
        out, indices = out
        return out if is_tensor(x) else out.data, _onnx_pool_indices(indices.data, x_t.shape, storage_order)
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


@register("AveragePool", since=7)
def average_pool(node):
    kernel, stride, dilation, ceil_mode = _window_attributes(node)
    count_include_pad = bool(node.attr("count_include_pad", 0))

    def run(x):
        x_t = as_tensor(x)
        pads = _pool_pads(node, x_t.shape, kernel, stride, dilation)
        out = ops.avg_pool(x_t, kernel, stride, pads, ceil_mode, count_include_pad, dilation=dilation)
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
