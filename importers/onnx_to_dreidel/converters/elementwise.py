"""Elementwise converters: arithmetic, comparisons and logic, Where, Max/Min/Sum/Mean, Clip, and the
unary functions (Exp, Sqrt, Relu, Sigmoid, Erf...).

Floating Tensors go through dreidel ops (so gradients flow); numpy inputs (constants, integer shape
arithmetic) are computed with plain numpy and stay numpy.
"""
import numpy as np

from dreidel import ops
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.registry import any_tensor, array, is_tensor, lift, register, tensor_like


def _unary(numpy_fn, tensor_fn):
    def build(node):
        return lambda x: tensor_fn(x) if is_tensor(x) else numpy_fn(x)
    return build


def _no_grad_unary(numpy_fn):
    """Piecewise-constant functions (floor, sign...): zero gradient, so no graph is recorded."""
    def build(node):
        return lambda x: Tensor(numpy_fn(x.data)) if is_tensor(x) else numpy_fn(x)
    return build


def _float_only(numpy_fn):
    return lambda x: numpy_fn(x).astype(x.dtype, copy=False)


for _name, _numpy, _tensor in [
        ("Neg", np.negative, ops.neg), ("Abs", np.abs, ops.abs),
        ("Exp", _float_only(np.exp), ops.exp), ("Log", _float_only(np.log), ops.log),
        ("Sqrt", _float_only(np.sqrt), ops.sqrt), ("Tanh", _float_only(np.tanh), ops.tanh),
        ("Sin", _float_only(np.sin), ops.sin), ("Cos", _float_only(np.cos), ops.cos),
        ("Relu", lambda x: np.maximum(x, 0).astype(x.dtype), ops.relu),
        ("Sigmoid", lambda x: ops.sigmoid(Tensor(np.asarray(x))).data, ops.sigmoid),
        ("Erf", lambda x: ops.erf(Tensor(np.asarray(x))).data, ops.erf),
        ("Reciprocal", lambda x: (1 / x).astype(x.dtype), lambda x: 1 / x)]:
    register(_name, since=6 if _name not in ("Erf", "Sin", "Cos") else (9 if _name == "Erf" else 7))(
        _unary(_numpy, _tensor))


for _name, _numpy in [("Floor", np.floor), ("Ceil", np.ceil), ("Round", np.round), ("Sign", np.sign)]:
    register(_name, since=6 if _name in ("Floor", "Ceil") else 11 if _name == "Round" else 9)(_no_grad_unary(_numpy))


def _int_divide(a, b):
    """ONNX integer Div truncates toward zero (numpy's // floors)."""
    quotient = np.abs(a) // np.abs(b)
    return (quotient * (np.sign(a) * np.sign(b))).astype(np.result_type(a, b))


def _numpy_div(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return _int_divide(a, b)
    return (a / b).astype(np.result_type(a, b), copy=False)


def _numpy_pow(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.power(a, b.astype(a.dtype) if a.dtype.kind == "f" else b).astype(a.dtype, copy=False)


def _binary(numpy_fn, tensor_fn):
    def build(node):
        def run(a, b):
            if is_tensor(a) or is_tensor(b):
                like = a if is_tensor(a) else b
                return tensor_fn(lift(a, like), lift(b, like))
            return numpy_fn(np.asarray(a), np.asarray(b))
        return run
    return build


def _tensor_pow(a, b):
    if not b.requires_grad and b.dtype != a.dtype:
        b = Tensor(b.data.astype(a.dtype))
    if not b.requires_grad and b.size == 1:
        exponent = float(b.data.reshape(()))
        if exponent == 2.0:  # x² is the common case (norms); a product is exact and cheap
            return ops.mul(a, a)
    return ops.pow(a, b)


register("Add", since=7)(_binary(np.add, ops.add))


register("Sub", since=7)(_binary(np.subtract, ops.sub))


register("Mul", since=7)(_binary(np.multiply, ops.mul))


register("Div", since=7)(_binary(_numpy_div, ops.div))


register("Pow", since=7)(_binary(_numpy_pow, _tensor_pow))


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


def _variadic(numpy_fn, tensor_fn):
    def build(node):
        def run(*xs):
            xs = [x for x in xs if x is not None]
            if any_tensor(xs):
                like = tensor_like(xs)
                out = lift(xs[0], like)
                for x in xs[1:]:
                    out = tensor_fn(out, lift(x, like))
                return out
            out = np.asarray(xs[0])
            for x in xs[1:]:
                out = numpy_fn(out, np.asarray(x))
            return out
        return run
    return build


register("Max", since=8)(_variadic(np.maximum, ops.maximum))


register("Min", since=8)(_variadic(np.minimum, ops.minimum))


register("Sum", since=8)(_variadic(np.add, ops.add))


@register("Mean", since=8)
def mean_of(node):
    total = _variadic(np.add, ops.add)(node)

    def run(*xs):
        out = total(*xs)
        count = len([x for x in xs if x is not None])
        return out / count if is_tensor(out) else (out / count).astype(out.dtype)
    return run


def _clip(x, low, high):
    if is_tensor(x):
        return ops.clip(x, low, high)
    return np.clip(x, low, high).astype(np.asarray(x).dtype)


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
