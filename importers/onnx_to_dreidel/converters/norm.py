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


def _per_channel(v, ndim):
    """A (C,) vector shaped to broadcast over (N, C, spatial...)."""
    return ops.reshape(v, (1, -1) + (1,) * (ndim - 2))


@register("InstanceNormalization", since=6)
def instance_normalization(node):
    eps = node.attr("epsilon", 1e-5)

    def run(x, scale, bias):
        x_t = x if is_tensor(x) else Tensor(np.asarray(x))
        axes = tuple(range(2, x_t.ndim))
        centred = x_t - ops.mean(x_t, axis=axes, keepdims=True)
        variance = ops.mean(centred * centred, axis=axes, keepdims=True)
        out = centred / ops.sqrt(variance + eps)
        out = out * _per_channel(lift(scale, x_t), x_t.ndim) + _per_channel(lift(bias, x_t), x_t.ndim)
        return out if is_tensor(x) else out.data
    return run


def _batch_norm_training(x_t, scale, bias, mean, var, eps, momentum, outputs):
    """Training mode: normalise by the batch statistics (biased variance); also return the updated
    running statistics r ← momentum·r + (1 − momentum)·batch statistic (ONNX's convention)."""
    axes = (0,) + tuple(range(2, x_t.ndim))
    batch_mean = ops.mean(x_t, axis=axes, keepdims=True)
    centred = x_t - batch_mean
    batch_var = ops.mean(centred * centred, axis=axes, keepdims=True)
    out = centred / ops.sqrt(batch_var + eps)
    out = out * _per_channel(lift(scale, x_t), x_t.ndim) + _per_channel(lift(bias, x_t), x_t.ndim)
    running_mean = momentum * array(mean) + (1 - momentum) * batch_mean.data.reshape(-1)
    running_var = momentum * array(var) + (1 - momentum) * batch_var.data.reshape(-1)
    extra = (running_mean.astype(x_t.dtype), running_var.astype(x_t.dtype))
    return (out,) + extra[:outputs - 1] if outputs > 1 else out


@register("BatchNormalization", since=9)
def batch_normalization(node):
    eps = node.attr("epsilon", 1e-5)
    training = bool(node.attr("training_mode", 0))
    momentum = node.attr("momentum", 0.9)
    outputs = len([o for o in node.outputs if o])

    def run(x, scale, bias, mean, var):
        x_t = x if is_tensor(x) else Tensor(np.asarray(x))
        if training:
            result = _batch_norm_training(x_t, scale, bias, mean, var, eps, momentum, outputs)
            if is_tensor(x):
                return result
            return tuple(r.data if is_tensor(r) else r for r in result) if isinstance(result, tuple) else result.data
        inv = lift(1 / np.sqrt(array(var).astype(np.float64) + eps), x_t)
        shift = lift(mean, x_t)
        nd = x_t.ndim
        out = (x_t - _per_channel(shift, nd)) * _per_channel(inv, nd)
        out = out * _per_channel(lift(scale, x_t), nd) + _per_channel(lift(bias, x_t), nd)
        return out if is_tensor(x) else out.data
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
