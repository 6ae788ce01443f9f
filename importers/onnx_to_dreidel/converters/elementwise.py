"""Elementwise converters: arithmetic, comparisons and logic, Where, Max/Min/Sum/Mean, Clip, and the
unary functions (Exp, Sqrt, Relu, Sigmoid, Erf...).

Floating values go through the engine's ops (`registry.engine_op`: Tensors, so gradients flow, and
floating constants folded at import); integer and boolean values (shape arithmetic, masks) are
computed with plain numpy and stay numpy.
"""
import numpy as np

from dreidel import ops
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.registry import array, engine_op, is_tensor, lift, register


def _unary(tensor_fn, integer_fn=None):
    def build(node):
        return engine_op(tensor_fn, integer_fn, node.op_type)
    return build


def _no_grad_unary(numpy_fn):
    """Piecewise-constant functions (floor, sign...): zero gradient, so no graph is recorded."""
    def build(node):
        return lambda x: Tensor(numpy_fn(x.data)) if is_tensor(x) else numpy_fn(x)
    return build


for _name, _tensor, _integer in [
        ("Neg", ops.neg, np.negative), ("Abs", ops.abs, np.abs), ("Exp", ops.exp, None), ("Log", ops.log, None),
        ("Sqrt", ops.sqrt, None), ("Tanh", ops.tanh, None), ("Sin", ops.sin, None), ("Cos", ops.cos, None),
        ("Relu", ops.relu, lambda x: np.maximum(x, 0).astype(x.dtype)), ("Sigmoid", ops.sigmoid, None),
        ("Erf", ops.erf, None), ("Reciprocal", lambda x: 1 / x, None)]:
    register(_name, since=6 if _name not in ("Erf", "Sin", "Cos") else (9 if _name == "Erf" else 7))(
        _unary(_tensor, _integer))


for _name, _numpy in [("Floor", np.floor), ("Ceil", np.ceil), ("Round", np.round), ("Sign", np.sign)]:
    register(_name, since=6 if _name in ("Floor", "Ceil") else 11 if _name == "Round" else 9)(_no_grad_unary(_numpy))


def _int_divide(a, b):
    """ONNX integer Div truncates toward zero (numpy's // floors)."""
    quotient = np.abs(a) // np.abs(b)
    return (quotient * (np.sign(a) * np.sign(b))).astype(np.result_type(a, b))


def _binary(tensor_fn, integer_fn):
    def build(node):
        return engine_op(tensor_fn, integer_fn, node.op_type)
    return build


def _tensor_pow(a, b):
    if not b.requires_grad and b.dtype != a.dtype:
        b = Tensor(b.data.astype(a.dtype))
    if not b.requires_grad and b.size == 1:
        exponent = float(b.data.reshape(()))
        if exponent == 2.0:  # x² is the common case (norms); a product is exact and cheap
            return ops.mul(a, a)
    return ops.pow(a, b)


register("Add", since=7)(_binary(ops.add, np.add))
register("Sub", since=7)(_binary(ops.sub, np.subtract))
register("Mul", since=7)(_binary(ops.mul, np.multiply))
register("Div", since=7)(_binary(ops.div, _int_divide))


@register("Pow", since=7)
def pow_(node):
    floating = engine_op(_tensor_pow, None, "Pow")

    def run(a, b):  # the base's type is the result's: an integer base stays integer arithmetic
        if is_tensor(a) or is_tensor(b) or np.asarray(a).dtype.kind == "f":
            return floating(a, b)
        return np.power(a, b).astype(np.asarray(a).dtype, copy=False)
    return run


register("Mod", since=10)(lambda node: (lambda a, b: np.fmod(array(a), array(b)) if node.attr("fmod", 0)
                                        else np.mod(array(a), array(b))))


for _name, _fn in [("Equal", np.equal), ("Less", np.less), ("LessOrEqual", np.less_equal),
                   ("Greater", np.greater), ("GreaterOrEqual", np.greater_equal),
                   ("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor)]:
    register(_name, since=7 if _name not in ("LessOrEqual", "GreaterOrEqual") else 12)(
        (lambda fn: lambda node: (lambda a, b: fn(array(a), array(b))))(_fn))


register("Not", since=1)(lambda node: (lambda x: np.logical_not(array(x))))
register("IsNaN", since=9)(lambda node: (lambda x: np.isnan(array(x))))


@register("IsInf", since=10)
def is_inf(node):
    positive, negative = node.attr("detect_positive", 1), node.attr("detect_negative", 1)

    def run(x):
        x = array(x)
        return (np.isposinf(x) & bool(positive)) | (np.isneginf(x) & bool(negative))
    return run


@register("Where", since=9)
def where(node):
    def run(condition, a, b):
        condition = array(condition).astype(bool, copy=False)
        if is_tensor(a) or is_tensor(b):
            like = a if is_tensor(a) else b
            return ops.where(condition, lift(a, like), lift(b, like))
        return np.where(condition, a, b)
    return run


def _variadic(tensor_fn, integer_fn):
    def fold(fn):
        def run(*xs):
            out = xs[0]
            for x in xs[1:]:
                out = fn(out, x)
            return out
        return run

    def build(node):
        combine = engine_op(fold(tensor_fn), fold(integer_fn), node.op_type)
        return lambda *xs: combine(*[x for x in xs if x is not None])
    return build


register("Max", since=8)(_variadic(ops.maximum, np.maximum))
register("Min", since=8)(_variadic(ops.minimum, np.minimum))
register("Sum", since=8)(_variadic(ops.add, np.add))


@register("Mean", since=8)
def mean_of(node):
    def average(*xs):
        total = xs[0]
        for x in xs[1:]:
            total = ops.add(total, x)
        return total / len(xs)
    run = engine_op(average, None, "Mean")
    return lambda *xs: run(*[x for x in xs if x is not None])


def _clip(x, low, high):
    return engine_op(lambda v: ops.clip(v, low, high), lambda v: np.clip(v, low, high).astype(v.dtype), "Clip")(x)


@register("Clip", since=6)
def clip_v6(node):
    low, high = node.attr("min", -3.4028234663852886e38), node.attr("max", 3.4028234663852886e38)
    return lambda x: _clip(x, low, high)


@register("Clip", since=11)
def clip_v11(node):
    def run(x, low=None, high=None):
        low = None if low is None else array(low).item()
        high = None if high is None else array(high).item()
        return _clip(x, low, high)
    return run
