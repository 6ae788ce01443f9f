"""Converters for convolutions and pooling, over `dreidel.convolution` (PyTorch layouts).

ONNX `pads` are (begin..., end...) per spatial axis, which `dreidel.convolution` accepts as is;
`auto_pad` SAME_UPPER/SAME_LOWER is resolved per call from the input's spatial size.
"""
import math

import numpy as np

from dreidel import convolution as C
from dreidel import ops
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import is_tensor, lift, register


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


def conv_geometry(node, spatial):
    """(kernel-independent) stride, dilation, static pads or None when auto_pad decides per call."""
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
            small = total // 2
            begin.append(total - small if auto_pad == "SAME_UPPER" else small)
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
    stride = tuple(node.attr("strides", [1] * spatial))
    dilation = tuple(node.attr("dilations", [1] * spatial))
    ceil_mode = bool(node.attr("ceil_mode", 0))
    if len(node.outputs) > 1 and node.outputs[1]:
        raise OnnxImportError(f"{node}: MaxPool's Indices output is not supported")

    def run(x):
        x_t = _as_tensor(x)
        pads = _pool_pads(node, x_t.shape, kernel, stride, dilation)
        if pads[:spatial] != pads[spatial:]:  # asymmetric: pad with -inf explicitly
            widths = [(0, 0), (0, 0)] + list(zip(pads[:spatial], pads[spatial:]))
            x_t, pads = ops.pad(x_t, widths, value=-np.inf), (0,) * spatial
        out = C.max_pool(x_t, kernel, stride, tuple(pads[:spatial]), dilation, ceil_mode)
        return out if is_tensor(x) else out.data
    return run


@register("AveragePool", since=7)
def average_pool(node):
    kernel = tuple(node.attr("kernel_shape"))
    spatial = len(kernel)
    stride = tuple(node.attr("strides", [1] * spatial))
    ceil_mode = bool(node.attr("ceil_mode", 0))
    count_include_pad = bool(node.attr("count_include_pad", 0))

    def run(x):
        x_t = _as_tensor(x)
        pads = _pool_pads(node, x_t.shape, kernel, stride, (1,) * spatial)
        if pads[:spatial] != pads[spatial:]:
            raise OnnxImportError(f"{node}: asymmetric AveragePool pads {pads} are not supported")
        out = C.avg_pool(x_t, kernel, stride, tuple(pads[:spatial]), ceil_mode, count_include_pad)
        return out if is_tensor(x) else out.data
    return run


@register("GlobalAveragePool", since=1)
def global_average_pool(node):
    def run(x):
        x_t = _as_tensor(x)
        out = ops.mean(x_t, axis=tuple(range(2, x_t.ndim)), keepdims=True)
        return out if is_tensor(x) else out.data
    return run


@register("GlobalMaxPool", since=1)
def global_max_pool(node):
    def run(x):
        x_t = _as_tensor(x)
        out = ops.max(x_t, axis=tuple(range(2, x_t.ndim)), keepdims=True)
        return out if is_tensor(x) else out.data
    return run

