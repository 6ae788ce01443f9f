"""Convolution converters: Conv and ConvTranspose over `dreidel.ops` (PyTorch layouts),
lifted to `nn.ConvNd` / `nn.ConvTransposeNd` when the weight is a constant.

ONNX `pads` are (begin..., end...) per spatial axis, which `dreidel.ops` accepts as is;
`auto_pad` SAME_UPPER/SAME_LOWER is resolved per call from the input's spatial size.
"""
import math

from dreidel import ops
from dreidel.nn import conv as nn_conv
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import (NO_DRAW, Lifted, as_tensor, is_float, is_tensor, lift, lifts,
                                                register)


def same_pads(in_shape, kernel, stride, dilation, auto_pad):
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
        x_t = as_tensor(x)
        w = lift(weight, x_t)
        check_kernel(node, w.shape)
        spatial = w.ndim - 2
        stride, dilation, pads, auto_pad = conv_geometry(node, spatial)
        if pads is None:
            pads = same_pads(x_t.shape[2:], w.shape[2:], stride, dilation, auto_pad)
        out = ops.conv(x_t, w, None if bias is None else lift(bias, x_t), stride, pads, dilation, groups)
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
        x_t = as_tensor(x)
        w = lift(weight, x_t)
        check_kernel(node, w.shape)
        stride, dilation, pads, output_padding = conv_transpose_geometry(node, x_t.shape[2:], w.shape[2:])
        out = ops.conv_transpose(x_t, w, None if bias is None else lift(bias, x_t), stride, pads, output_padding,
                               dilation, groups)
        return out if is_tensor(x) else out.data
    return run


# -- lifting to nn.ConvNd ----------------------------------------------------------------------------
_CONV_CLASSES = {(1, False): "Conv1d", (2, False): "Conv2d", (3, False): "Conv3d",
                 (1, True): "ConvTranspose1d", (2, True): "ConvTranspose2d", (3, True): "ConvTranspose3d"}


def _conv_module(node, weight, bias):
    check_kernel(node, weight.shape)
    spatial = weight.ndim - 2
    transposed = node.op_type == "ConvTranspose"
    name = _CONV_CLASSES.get((spatial, transposed))
    if name is None or not hasattr(nn_conv, name):
        return None
    cls = getattr(nn_conv, name)
    groups = int(node.attr("group", 1))
    if transposed:
        check_attribute_lengths(node, spatial)
        if node.attr("output_shape") is not None or node.attr("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID"):
            return None  # output size decided per call
        pads = tuple(node.attr("pads", [0] * 2 * spatial)) if node.attr("auto_pad", "NOTSET") != "VALID" \
            else (0,) * (2 * spatial)
        return cls.from_weights(weight, bias, stride=tuple(node.attr("strides", [1] * spatial)), padding=pads,
                                output_padding=tuple(node.attr("output_padding", [0] * spatial)), groups=groups,
                                dilation=tuple(node.attr("dilations", [1] * spatial)), rng=NO_DRAW)
    stride, dilation, pads, _ = conv_geometry(node, spatial)
    if pads is None:
        return None
    return cls.from_weights(weight, bias, stride=stride, padding=pads, dilation=dilation, groups=groups,
                            rng=NO_DRAW)


@lifts("Conv")
@lifts("ConvTranspose")
def lift_conv(node, graph):
    """A (transposed) convolution with a constant weight (and bias) and static padding → ConvNd."""
    weight = graph.const(node.inputs[1])
    bias = graph.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if graph.const(node.inputs[0]) is not None or not is_float(weight) \
            or (len(node.inputs) > 2 and node.inputs[2] and not is_float(bias)):
        return None
    module = _conv_module(node, weight, bias)
    if module is None:
        return None
    return Lifted(module, node.inputs[1], [node.inputs[0]], list(node.outputs))
