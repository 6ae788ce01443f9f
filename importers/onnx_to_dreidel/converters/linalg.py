"""Matrix-product converters: MatMul, Gemm (both lifted to `nn.Linear` when the weight is a constant
matrix, absorbing MatMul's bias Add) and Einsum."""
from collections import Counter

import numpy as np

from dreidel import nn, ops
from dreidel.nn.module import Parameter
from dreidel.tensor import record
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import (NO_DRAW, Lifted, any_tensor, array, call_layer, engine_op, is_float,
                                                lift, lifts, register, tensor_like)


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


def _einsum_terms(equation, ranks):
    """Explicit subscripts (ellipses spelled out with spare letters) and the output subscript."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise OnnxImportError(f"Einsum equation {equation!r} names {len(terms)} operands, got {len(ranks)}")
    used = set(equation) - set(".,->")
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in used]
    width = max([rank - len(t.replace("...", "")) for t, rank in zip(terms, ranks) if "..." in t] or [0])
    ellipsis = "".join(spare[:width])
    terms = [t.replace("...", ellipsis[width - (rank - len(t.replace("...", ""))):]) if "..." in t else t
             for t, rank in zip(terms, ranks)]
    if arrow:
        out = rhs.replace("...", ellipsis)
    else:  # implicit output: the ellipsis, then letters used once, alphabetically
        counts = Counter("".join(terms))
        out = ellipsis + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ellipsis))
    return terms, out


@register("Einsum", since=12)
def einsum(node):
    """Σ over the letters missing from the output of the product of the operands. The gradient of
    operand i is the einsum of the output gradient with the other operands, broadcast over letters
    only operand i carries."""
    equation = node.attr("equation")

    def run(*xs):
        arrays = [array(x) for x in xs]
        terms, out = _einsum_terms(equation, [a.ndim for a in arrays])
        result = np.einsum(",".join(terms) + "->" + out, *arrays)
        if not any_tensor(xs):
            return np.asarray(result)
        like = tensor_like(xs)
        tensors = [lift(x, like) for x in xs]

        def backward(g):
            grads = []
            for i, (t, term) in enumerate(zip(tensors, terms)):
                if not t.requires_grad:
                    grads.append(None)
                    continue
                if len(set(term)) != len(term):
                    raise OnnxImportError(f"Einsum {equation!r}: no gradient for repeated indices in {term!r}")
                others = [(terms[j], tensors[j].data) for j in range(len(terms)) if j != i]
                available = set(out).union(*[set(o) for o, _ in others])
                kept = "".join(c for c in term if c in available)
                partial = np.einsum(",".join([out] + [o for o, _ in others]) + "->" + kept,
                                    g, *[a for _, a in others])
                shape = [t.shape[k] if c in available else 1 for k, c in enumerate(term)]
                grads.append(np.broadcast_to(partial.reshape(shape), t.shape))
            return tuple(grads)
        return record(np.asarray(result, dtype=like.dtype), tensors, backward)
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
