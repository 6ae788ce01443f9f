"""Matrix-product converters: MatMul, Gemm (both lifted to `nn.Linear` when the weight is a constant
matrix, absorbing MatMul's bias Add) and Einsum."""
import numpy as np

from dreidel import nn, ops
from dreidel.nn.module import Parameter
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import (NO_DRAW, Lifted, any_tensor, array, call_layer, engine_op, is_float,
                                                lifts, register)


register("MatMul", since=1)(lambda node: engine_op(ops.matmul, np.matmul, "MatMul"))


@register("Gemm", since=7)
def gemm(node):
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)

    def floating(a, b, c=None):
        out = ops.matmul(a.T if trans_a else a, b.T if trans_b else b)
        if alpha != 1.0:
            out = out * alpha
        if c is not None:
            out = out + (c * beta if beta != 1.0 else c)
        return out

    def integer(a, b, c=None):
        out = alpha * ((a.T if trans_a else a) @ (b.T if trans_b else b)) + (beta * c if c is not None else 0)
        return np.asarray(out, dtype=a.dtype)
    both = engine_op(floating, integer, "Gemm")

    def run(a, b, c=None):
        if np.ndim(array(a)) != 2 or np.ndim(array(b)) != 2:
            raise OnnxImportError(f"Gemm needs 2-D A and B, got shapes {np.shape(array(a))} and {np.shape(array(b))}")
        return both(a, b, c)
    return run


@register("Einsum", since=12)
def einsum(node):
    equation = node.attr("equation")

    def run(*xs):
        out = ops.einsum(equation, *xs)
        return out if any_tensor(xs) else out.data
    return run


# -- lifting to nn.Linear ------------------------------------------------------------------------------
def linear(weight, bias):
    """An `nn.Linear` holding the Parameter `weight` (out, in) and `bias`, without drawing a random init
    first. (`ops.linear` multiplies (…, in) inputs as one (N·T, in) × (in, out) GEMM, numpy's stacked
    matmul being an order of magnitude slower, so no reshapes around it.)"""
    layer = nn.Linear(1, 1, bias=bias is not None, rng=NO_DRAW)
    layer.in_features, layer.out_features = int(weight.shape[1]), int(weight.shape[0])
    layer.weight = weight
    if bias is not None:
        layer.bias = Parameter(bias)
    return layer


@lifts("MatMul")
def lift_matmul(node, graph):
    """x @ W with a constant 2-D W → Linear(Wᵀ), taking the bias of a following Add of a constant (out,)."""
    w = graph.const(node.inputs[1])
    if graph.const(node.inputs[0]) is not None or not is_float(w) or w.ndim != 2:
        return None
    weight = w.T
    bias, outputs = None, list(node.outputs)
    reader = graph.single_reader(node.outputs[0])
    if reader is not None and reader[1].op_type == "Add" and len(reader[1].inputs) == 2:  # a unary reader is no bias
        index, add = reader
        other = add.inputs[1] if add.inputs[0] == node.outputs[0] else add.inputs[0]
        candidate = graph.const(other)
        if is_float(candidate) and candidate.shape == (weight.shape[0],):
            bias, outputs = candidate, list(add.outputs)
            graph.absorb(index)
    return Lifted(linear(graph.parameter(weight), bias), node.inputs[1], [node.inputs[0]], outputs)


def _call_gemm(module, x):
    if np.ndim(array(x)) != 2:
        raise OnnxImportError(f"Gemm needs a 2-D input A, got shape {np.shape(array(x))}")
    return call_layer(module, x)


@lifts("Gemm")
def lift_gemm(node, graph):
    """A·B (+ C) with a constant B, alpha = beta = 1, A not transposed and 2-D → Linear."""
    b = graph.const(node.inputs[1])
    if graph.const(node.inputs[0]) is not None or not is_float(b) or b.ndim != 2 \
            or graph.rank(node.inputs[0], 2) != 2 or node.attr("alpha", 1.0) != 1.0 \
            or node.attr("beta", 1.0) != 1.0 or node.attr("transA", 0):
        return None
    weight = b if node.attr("transB", 0) else b.T
    bias = None
    if len(node.inputs) > 2 and node.inputs[2]:
        c = graph.const(node.inputs[2])
        if not is_float(c) or c.size != weight.shape[0]:
            return None
        bias = c.reshape(-1)
    return Lifted(linear(graph.parameter(weight), bias), node.inputs[1], [node.inputs[0]], list(node.outputs),
                  _call_gemm)
