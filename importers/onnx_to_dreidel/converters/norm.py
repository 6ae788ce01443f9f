"""Normalisation converters: LayerNormalization, InstanceNormalization, BatchNormalization and
GroupNormalization; with constant parameters the first three are lifted to `nn.LayerNorm`,
`nn.InstanceNormNd` and `nn.BatchNormNd`."""
import numpy as np

from dreidel import nn, ops
from dreidel.nn import conv as nn_conv
from dreidel.nn.module import Parameter
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import (Lifted, array, as_tensor, axis_in, is_float, is_tensor, lift, lifts,
                                                register)


@register("LayerNormalization", since=17)
def layer_normalization(node):
    axis, eps = node.attr("axis", -1), node.attr("epsilon", 1e-5)

    def run(x, scale, bias=None):
        x_t = x if is_tensor(x) else Tensor(np.asarray(x))
        a = axis_in(axis, x_t.ndim, "LayerNormalization")
        weight = lift(scale, x_t)
        weight = weight if weight.shape == x_t.shape[a:] else ops.expand(weight, x_t.shape[a:])
        b = None
        if bias is not None:
            b = lift(bias, x_t)
            b = b if b.shape == x_t.shape[a:] else ops.expand(b, x_t.shape[a:])
        out = ops.layer_norm(x_t, x_t.shape[a:], weight, b, eps)
        if len(node.outputs) > 1:  # Mean and InvStdDev outputs, rarely consumed
            v = x_t.data.astype(np.float64)
            axes = tuple(range(a, x_t.ndim))
            mu = v.mean(axis=axes, keepdims=True)
            inv_std = 1 / np.sqrt(((v - mu) ** 2).mean(axis=axes, keepdims=True) + eps)
            extra = (mu.astype(np.float32), inv_std.astype(np.float32))
            return (out if is_tensor(x) else out.data,) + extra[:len(node.outputs) - 1]
        return out if is_tensor(x) else out.data
    return run


@register("InstanceNormalization", since=6)
def instance_normalization(node):
    eps = node.attr("epsilon", 1e-5)

    def run(x, scale, bias):
        x_t = as_tensor(x)
        out = ops.instance_norm(x_t, lift(scale, x_t), lift(bias, x_t), eps)
        return out if is_tensor(x) else out.data
    return run


def _onnx_running_statistics(x, mean, var, momentum):
    """ONNX's training-mode extra outputs: r ← momentum·r + (1 − momentum)·batch statistic, with the
    biased batch variance (PyTorch's convention differs: its momentum weighs the batch, its variance
    is unbiased)."""
    axes = (0,) + tuple(range(2, x.ndim))
    running_mean = momentum * array(mean) + (1 - momentum) * x.data.mean(axis=axes)
    running_var = momentum * array(var) + (1 - momentum) * x.data.var(axis=axes)
    return running_mean.astype(x.dtype), running_var.astype(x.dtype)


@register("BatchNormalization", since=9)
def batch_normalization(node):
    eps = node.attr("epsilon", 1e-5)
    training = bool(node.attr("training_mode", 0))
    momentum = node.attr("momentum", 0.9)
    outputs = len([o for o in node.outputs if o])

    def run(x, scale, bias, mean, var):
        x_t = as_tensor(x)
        weight, shift = lift(scale, x_t), lift(bias, x_t)
        if training:  # normalised by the batch statistics; the running ones are only reported
            out = ops.batch_norm(x_t, None, None, weight, shift, training=True, eps=eps)
        else:
            out = ops.batch_norm(x_t, array(mean).astype(x_t.dtype), array(var).astype(x_t.dtype), weight, shift,
                                 training=False, eps=eps)
        out = out if is_tensor(x) else out.data
        if training and outputs > 1:
            return (out,) + _onnx_running_statistics(x_t, mean, var, momentum)[:outputs - 1]
        return out
    return run


@register("GroupNormalization", since=21)
def group_normalization(node):
    """y = (x − mean_g) / sqrt(var_g + eps) · scale[c] + bias[c], statistics over each group of channels.
    (Opset 18's per-group scale is deprecated and refused by onnx.checker, so only 21 is registered.)"""
    groups, eps = node.attr("num_groups"), node.attr("epsilon", 1e-5)
    if not groups or groups < 1:
        raise OnnxImportError(f"{node}: GroupNormalization needs num_groups ≥ 1")

    def run(x, scale, bias):
        x_t = as_tensor(x)
        out = ops.group_norm(x_t, groups, lift(scale, x_t), lift(bias, x_t), eps)
        return out if is_tensor(x) else out.data
    return run


# -- lifting to nn layers ------------------------------------------------------------------------------
@lifts("LayerNormalization")
def lift_layer_norm(node, graph):
    """Over the last axis with a constant (d,) scale (and bias) and one output → LayerNorm."""
    scale = graph.const(node.inputs[1])
    bias = graph.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if node.attr("axis", -1) != -1 or len([o for o in node.outputs if o]) != 1 or not is_float(scale) \
            or scale.ndim != 1 or scale.shape[0] <= 1 \
            or (len(node.inputs) > 2 and node.inputs[2] and not (is_float(bias) and bias.shape == scale.shape)):
        return None
    module = nn.LayerNorm(scale.shape[0], eps=float(node.attr("epsilon", 1e-5)), bias=bias is not None)
    module.weight = Parameter(scale)
    if bias is not None:
        module.bias = Parameter(bias)
    return Lifted(module, node.inputs[1], [node.inputs[0]], list(node.outputs))


@lifts("InstanceNormalization")
@lifts("BatchNormalization")
def lift_channel_norm(node, graph):
    """Inference-mode statistics with constant (C,) parameters, on an input of known rank 3-5 →
    InstanceNormNd / BatchNormNd (running statistics as buffers)."""
    rank = graph.rank(node.inputs[0])
    params = [graph.const(n) for n in node.inputs[1:]]
    if rank not in (3, 4, 5) or not all(is_float(p) and p.ndim == 1 for p in params) \
            or len([o for o in node.outputs if o]) != 1 or node.attr("training_mode", 0):
        return None
    kind = "InstanceNorm" if node.op_type == "InstanceNormalization" else "BatchNorm"
    cls = getattr(nn_conv, f"{kind}{rank - 2}d")
    scale = params[0]
    if kind == "InstanceNorm":
        module = cls(scale.shape[0], eps=float(node.attr("epsilon", 1e-5)), affine=True)
    else:
        module = cls(scale.shape[0], eps=float(node.attr("epsilon", 1e-5)))
        module.running_mean.data = np.array(params[2], dtype=scale.dtype)
        module.running_var.data = np.array(params[3], dtype=scale.dtype)
    module.weight = Parameter(scale)
    module.bias = Parameter(params[1])
    return Lifted(module, node.inputs[1], [node.inputs[0]], list(node.outputs))
