"""Converters for convolutions and pooling, over `dreidel.convolution` (PyTorch layouts).

ONNX `pads` are (begin..., end...) per spatial axis, which `dreidel.convolution` accepts as is;
`auto_pad` SAME_UPPER/SAME_LOWER is resolved per call from the input's spatial size.
"""
import itertools
import math

import numpy as np

from dreidel import convolution as C
from dreidel import ops
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import checked_shape, is_tensor, lift, register


def _as_tensor(x):
    return x if is_tensor(x) else Tensor(np.asarray(x))


def _same_pads(in_shape, kernel, stride, dilation, auto_pad):
    """ONNX SAME_*: output = ceil(input / stride); the odd padding element goes at the end (UPPER)."""
    begin, end = [], []
    for n, k, s, d in zip(in_shape, kernel, stride, dilation):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small = total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return tuple(begin) + tuple(end)


def check_kernel(node, weight_shape):
    """kernel_shape, when given, must be the weight's spatial shape (onnxruntime refuses otherwise)."""
    kernel = node.attr("kernel_shape")
    if kernel is not None and tuple(kernel) != tuple(weight_shape[2:]):
        raise OnnxImportError(f"{node.op_type} {node.name!r}: kernel_shape {list(kernel)} does not match the "
                              f"weight's spatial shape {tuple(weight_shape[2:])}")


def check_attribute_lengths(node, spatial):
    """ONNX wants one stride/dilation/kernel size/output padding per spatial axis and 2·spatial pads
    (begin..., end...); onnxruntime refuses anything else, so must we rather than guess."""
    wanted = {"strides": spatial, "dilations": spatial, "kernel_shape": spatial, "output_padding": spatial,
              "pads": 2 * spatial}
    for name, count in wanted.items():
        value = node.attr(name)
        if value is not None and len(value) != count:
            raise OnnxImportError(f"{node.op_type} {node.name!r}: attribute {name} has {len(value)} values "
                                  f"{list(value)}, expected {count} for {spatial} spatial axes")


def conv_geometry(node, spatial):
    """(kernel-independent) stride, dilation, static pads or None when auto_pad decides per call."""
    check_attribute_lengths(node, spatial)
    stride = tuple(node.attr("strides", [1] * spatial))
    dilation = tuple(node.attr("dilations", [1] * spatial))
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = tuple(node.attr("pads", [0] * 2 * spatial))
    elif auto_pad == "VALID":
        pads = (0,) * (2 * spatial)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = None
    else:
        raise OnnxImportError(f"{node}: unknown auto_pad {auto_pad!r}")
    return stride, dilation, pads, auto_pad


@register("Conv", since=1)
def conv(node):
    groups = node.attr("group", 1)

    def run(x, weight, bias=None):
        x_t = _as_tensor(x)
        w = lift(weight, x_t)
        check_kernel(node, w.shape)
        spatial = w.ndim - 2
        stride, dilation, pads, auto_pad = conv_geometry(node, spatial)
        if pads is None:
            pads = _same_pads(x_t.shape[2:], w.shape[2:], stride, dilation, auto_pad)
        out = C.conv(x_t, w, None if bias is None else lift(bias, x_t), stride, pads, dilation, groups)
        return out if is_tensor(x) else out.data
    return run


def conv_transpose_geometry(node, in_shape, kernel):
    """stride, dilation, pads (begin..., end...), output_padding for ConvTranspose."""
    spatial = len(kernel)
    check_attribute_lengths(node, spatial)
    stride = tuple(node.attr("strides", [1] * spatial))
    dilation = tuple(node.attr("dilations", [1] * spatial))
    output_padding = list(node.attr("output_padding", [0] * spatial))
    output_shape = node.attr("output_shape")
    auto_pad = node.attr("auto_pad", "NOTSET")
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is None:
            output_shape = [n * s for n, s in zip(in_shape, stride)]
        output_shape = list(output_shape)[-spatial:]
        begin, end = [], []
        for i in range(spatial):
            total = stride[i] * (in_shape[i] - 1) + output_padding[i] + ((kernel[i] - 1) * dilation[i] + 1) \
                - output_shape[i]
            if total < 0:  # the asked output is larger: the excess comes from output padding
                output_padding[i] -= total
                total = 0
            small = total // 2  # ONNX: SAME_UPPER puts the smaller half first
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        pads = tuple(begin) + tuple(end)
    elif auto_pad == "VALID":
        pads = (0,) * (2 * spatial)
    else:
        pads = tuple(node.attr("pads", [0] * 2 * spatial))
    return stride, dilation, pads, tuple(output_padding)


@register("ConvTranspose", since=1)
def conv_transpose(node):
    groups = node.attr("group", 1)

    def run(x, weight, bias=None):
        x_t = _as_tensor(x)
        w = lift(weight, x_t)
        check_kernel(node, w.shape)
        stride, dilation, pads, output_padding = conv_transpose_geometry(node, x_t.shape[2:], w.shape[2:])
        out = C.conv_transpose(x_t, w, None if bias is None else lift(bias, x_t), stride, pads, output_padding,
                               dilation, groups)
        return out if is_tensor(x) else out.data
    return run


def _pool_pads(node, x_shape, kernel, stride, dilation):
    auto_pad = node.attr("auto_pad", "NOTSET")
    spatial = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(x_shape[2:], kernel, stride, dilation, auto_pad)
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
        x_t = _as_tensor(x)
        pads = _pool_pads(node, x_t.shape, kernel, stride, dilation)
        indices = None
        if pads[:spatial] == pads[spatial:] and not ceil_mode:
            out = C.max_pool(x_t, kernel, stride, tuple(pads[:spatial]), dilation, ceil_mode,
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
        x_t = _as_tensor(x)
        pads = _pool_pads(node, x_t.shape, kernel, stride, dilation)
        if pads[:spatial] == pads[spatial:] and dilation == (1,) * spatial and not ceil_mode:
            out = C.avg_pool(x_t, kernel, stride, tuple(pads[:spatial]), ceil_mode, count_include_pad)
        else:
            out = _avg_pool_general(x_t, kernel, stride, dilation, pads, ceil_mode, count_include_pad)
        return out if is_tensor(x) else out.data
    return run


def _global_pool(reduce):
    def build(node):
        def run(x):
            x_t = _as_tensor(x)
            out = reduce(x_t, axis=tuple(range(2, x_t.ndim)), keepdims=True)
            return out if is_tensor(x) else out.data
        return run
    return build


register("GlobalAveragePool", since=1)(_global_pool(ops.mean))
register("GlobalMaxPool", since=1)(_global_pool(ops.max))



# -- Resize ------------------------------------------------------------------------------------------
def _source_coordinates(n_in, n_out, scale, mode):
    """Where each output position samples the input along one axis (ONNX coordinate transforms)."""
    x = np.arange(n_out, dtype=np.float64)
    if mode == "asymmetric":
        return x / scale
    if mode == "align_corners":  # the resized length is n_in · scale, possibly fractional
        length = n_in * scale
        return np.zeros(n_out) if length == 1 else x * (n_in - 1) / (length - 1)
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out)
    if mode == "half_pixel_symmetric":
        adjustment = n_out / (scale * n_in)
        return n_in / 2 * (1 - adjustment) + (x + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    raise OnnxImportError(f"Resize coordinate_transformation_mode {mode!r} is not supported")


_NEAREST = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
            "floor": np.floor, "ceil": np.ceil}


@register("Resize", since=11)
def resize(node):
    """Nearest and (n-)linear resizing, separable: per axis a gather (nearest) or two gathers and a
    blend (linear), so gradients flow back to the input through `take`."""
    mode = node.attr("mode", "nearest")
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    nearest = node.attr("nearest_mode", "round_prefer_floor")
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    cubic_a, exclude_outside = node.attr("cubic_coeff_a", -0.75), bool(node.attr("exclude_outside", 0))
    if mode not in ("nearest", "linear", "cubic") or nearest not in _NEAREST or node.attr("antialias", 0) \
            or policy not in ("stretch", "not_larger", "not_smaller") or transform == "tf_crop_and_resize":
        raise OnnxImportError(f"{node}: Resize with mode={mode!r}, coordinate_transformation_mode={transform!r}, "
                              f"nearest_mode={nearest!r} (antialias / aspect-ratio policies) is not supported")
    attr_axes = node.attr("axes")

    def run(x, roi=None, scales=None, sizes=None):
        x_t = x if is_tensor(x) else Tensor(np.asarray(x))
        ndim = x_t.ndim
        axes = list(range(ndim)) if attr_axes is None else [a % ndim for a in attr_axes]
        scales = None if scales is None or np.size(np.asarray(array_of(scales))) == 0 else \
            np.asarray(array_of(scales), dtype=np.float64).reshape(-1)
        if sizes is not None and np.size(array_of(sizes)):
            out_sizes = [int(v) for v in np.asarray(array_of(sizes)).reshape(-1)]
            scales = [o / x_t.shape[a] for o, a in zip(out_sizes, axes)]
            if policy != "stretch":  # one scale for all axes, the one that fits (or covers) the sizes
                scale = min(scales) if policy == "not_larger" else max(scales)
                scales = [scale] * len(axes)
                out_sizes = [int(np.floor(x_t.shape[a] * scale + 0.5)) for a in axes]
        elif scales is not None:
            out_sizes = [int(np.floor(x_t.shape[a] * s)) for a, s in zip(axes, scales)]
        else:
            raise OnnxImportError(f"{node}: Resize needs scales or sizes")
        final = list(x_t.shape)
        for a, n in zip(axes, out_sizes):
            final[a] = n
        checked_shape(final, "Resize")
        out = x_t
        for axis, n_out, scale in zip(axes, out_sizes, scales):
            n_in = x_t.shape[axis]
            if n_out == n_in and scale == 1.0:
                continue
            source = _source_coordinates(n_in, n_out, scale, transform)
            if mode == "nearest":
                index = np.clip(_NEAREST[nearest](source), 0, n_in - 1).astype(np.int64)
                out = ops.take(out, index, axis=axis)
                continue
            if mode == "cubic":
                out = _cubic_axis(out, axis, source, n_in, cubic_a, exclude_outside)
                continue
            source = np.clip(source, 0, n_in - 1)
            low = np.floor(source).astype(np.int64)
            high = np.minimum(low + 1, n_in - 1)
            shape = [1] * ndim
            shape[axis] = n_out
            weight = (source - low).reshape(shape).astype(out.dtype)
            out = ops.take(out, low, axis=axis) * Tensor(1 - weight) + ops.take(out, high, axis=axis) * Tensor(weight)
        return out if is_tensor(x) else out.data
    return run


def _cubic_axis(x, axis, source, n_in, a, exclude_outside):
    """Keys' cubic convolution (coefficient a) along one axis: 4 taps around each source point,
    edge-replicated, or dropped and renormalised outside the input with exclude_outside."""
    base = np.floor(source)
    t = source - base
    distances = [t + 1, t, 1 - t, 2 - t]
    weights = []
    for d in distances:  # |d| ≤ 1: (a+2)|d|³ − (a+3)|d|² + 1; 1 < |d| < 2: a|d|³ − 5a|d|² + 8a|d| − 4a
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        weights.append(np.where(d <= 1, near, far))
    taps = [base.astype(np.int64) + k for k in (-1, 0, 1, 2)]
    if exclude_outside:
        weights = [np.where((tap >= 0) & (tap < n_in), w, 0.0) for tap, w in zip(taps, weights)]
        total = sum(weights)
        weights = [w / total for w in weights]
    shape = [1] * x.ndim
    shape[axis] = len(source)
    out = None
    for tap, w in zip(taps, weights):
        part = ops.take(x, np.clip(tap, 0, n_in - 1), axis=axis) * Tensor(w.reshape(shape).astype(x.dtype))
        out = part if out is None else out + part
    return out


def array_of(value):
    return value.data if is_tensor(value) else value


@register("GroupNormalization", since=21)
def group_normalization(node):
    """y = (x − mean_g) / sqrt(var_g + eps) · scale[c] + bias[c], statistics over each group of channels.
    (Opset 18's per-group scale is deprecated and refused by onnx.checker, so only 21 is registered.)"""
    groups, eps = node.attr("num_groups"), node.attr("epsilon", 1e-5)
    if not groups or groups < 1:
        raise OnnxImportError(f"{node}: GroupNormalization needs num_groups ≥ 1")

    def run(x, scale, bias):
        x_t = _as_tensor(x)
        out = C.group_norm(x_t, groups, lift(scale, x_t), lift(bias, x_t), eps)
        return out if is_tensor(x) else out.data
    return run
