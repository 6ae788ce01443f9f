"""Activation converters: Gelu, LeakyRelu, Elu, Selu, Softplus, HardSigmoid, HardSwish, Mish, PRelu
(lifted to `nn.PReLU` when its slope is one constant), Softmax and LogSoftmax."""
import numpy as np

from dreidel import kernels, ops
from dreidel.nn import conv as nn_conv
from dreidel.nn.module import Parameter
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import Lifted, axis_in, is_float, is_tensor, lift, lifts, register


@register("Gelu", since=20)
def gelu(node):
    approximate = node.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise OnnxImportError(f"{node}: Gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return lambda x: ops.gelu(lift(x), approximate=approximate) if is_tensor(x) else \
        ops.gelu(Tensor(x), approximate=approximate).data


def _tensor_fn(fn):
    """Run a Tensor composition on numpy input too (constant folding), returning numpy."""
    def run(x, *args):
        if is_tensor(x):
            return fn(x, *args)
        return fn(Tensor(np.asarray(x)), *args).data
    return run


@register("LeakyRelu", since=6)
def leaky_relu(node):
    alpha = node.attr("alpha", 0.01)
    return _tensor_fn(lambda x: ops.where(x.data >= 0, x, x * alpha))


@register("Elu", since=6)
def elu(node):
    alpha = node.attr("alpha", 1.0)
    return _tensor_fn(lambda x: ops.where(x.data > 0, x, (ops.exp(ops.minimum(x, 0.0)) - 1.0) * alpha))


@register("Selu", since=6)
def selu(node):
    alpha, gamma = node.attr("alpha", 1.67326319217681884765625), node.attr("gamma", 1.05070102214813232421875)
    return _tensor_fn(lambda x: ops.where(x.data > 0, x, (ops.exp(ops.minimum(x, 0.0)) - 1.0) * alpha) * gamma)


@register("Softplus", since=1)
def softplus(node):
    return _tensor_fn(ops.softplus)


@register("HardSigmoid", since=6)
def hard_sigmoid(node):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return _tensor_fn(lambda x: ops.clip(x * alpha + beta, 0.0, 1.0))


@register("HardSwish", since=14)
def hard_swish(node):
    return _tensor_fn(lambda x: x * ops.clip(x * (1 / 6) + 0.5, 0.0, 1.0))


@register("Mish", since=18)
def mish(node):
    return _tensor_fn(lambda x: x * ops.tanh(ops.softplus(x)))


def softmax_in_place(x, axis):
    """softmax over `axis`, overwriting the float array x on the last axis (a value nothing else reads:
    the importer donates a fresh MatMul result, e.g. attention scores), which saves allocating and
    page-faulting a second score-sized buffer. One fused kernel pass per row."""
    if axis in (-1, x.ndim - 1) and x.flags.c_contiguous and x.dtype in (np.float32, np.float64):
        return Tensor(kernels.softmax(x, out=x))
    return ops.softmax(Tensor(x), axis)


def _softmax_builder(tensor_fn, legacy):
    def build(node):
        axis = node.attr("axis", 1 if legacy else -1)

        def run(x):
            x_t = x if is_tensor(x) else Tensor(np.asarray(x))
            a = axis_in(axis, x_t.ndim, node.op_type)
            if legacy:  # opset < 13: softmax of the input flattened to 2-D at `axis`
                shape = x_t.shape
                flat = ops.reshape(x_t, (int(np.prod(shape[:a], dtype=np.int64)), -1))
                out = ops.reshape(tensor_fn(flat, -1), shape)
            else:
                out = tensor_fn(x_t, a)
            return out if is_tensor(x) else out.data
        return run
    return build


register("Softmax", since=1)(_softmax_builder(ops.softmax, legacy=True))
register("Softmax", since=13)(_softmax_builder(ops.softmax, legacy=False))
register("LogSoftmax", since=1)(_softmax_builder(ops.log_softmax, legacy=True))
register("LogSoftmax", since=13)(_softmax_builder(ops.log_softmax, legacy=False))


@register("PRelu", since=9)
def prelu(node):
    def run(x, slope):
        x_t = x if is_tensor(x) else Tensor(np.asarray(x))
        out = ops.where(x_t.data < 0, x_t * lift(slope, x_t), x_t)
        return out if is_tensor(x) else out.data
    return run


@lifts("PRelu")
def lift_prelu(node, graph):
    """One constant slope → PReLU(1)."""
    slope = graph.const(node.inputs[1])
    if not is_float(slope) or slope.size != 1:
        return None
    module = nn_conv.PReLU(1)
    module.weight = Parameter(slope.reshape(1))
    return Lifted(module, node.inputs[1], [node.inputs[0]], list(node.outputs))
