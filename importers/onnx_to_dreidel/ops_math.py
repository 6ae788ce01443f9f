"""Converters for arithmetic, activations, reductions, matrix products and normalisation.

Floating Tensors go through dreidel ops (so gradients flow); numpy inputs (constants, integer shape
arithmetic) are computed with plain numpy and stay numpy.
"""
from collections import Counter

import numpy as np

from dreidel import kernels, ops
from dreidel.tensor import Tensor, _result
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import any_tensor, array, axes_in, axis_in, ints, is_tensor, lift, register


def _tensor_like(values):
    return next(v for v in values if isinstance(v, Tensor))


# -- elementwise -----------------------------------------------------------------------------------
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
        ("Erf", lambda x: ops._erf_array(x), ops.erf),
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
                like = _tensor_like(xs)
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


# -- activations -----------------------------------------------------------------------------------
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
    # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): no overflow for large x
    return _tensor_fn(lambda x: ops.relu(x) + ops.log(ops.exp(-ops.abs(x)) + 1.0))


@register("HardSigmoid", since=6)
def hard_sigmoid(node):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return _tensor_fn(lambda x: ops.clip(x * alpha + beta, 0.0, 1.0))


@register("HardSwish", since=14)
def hard_swish(node):
    return _tensor_fn(lambda x: x * ops.clip(x * (1 / 6) + 0.5, 0.0, 1.0))


@register("Mish", since=18)
def mish(node):
    return _tensor_fn(lambda x: x * ops.tanh(ops.relu(x) + ops.log(ops.exp(-ops.abs(x)) + 1.0)))


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


# -- reductions ------------------------------------------------------------------------------------
def _empty_reduction(v, axis, keepdims, identity):
    """A reduction over zero elements: ONNX defines it as the operation's identity (−inf for max...)."""
    axes = range(v.ndim) if axis is None else axis
    shape = tuple(1 if i in axes else n for i, n in enumerate(v.shape)) if keepdims else \
        tuple(n for i, n in enumerate(v.shape) if i not in axes)
    if v.dtype.kind in "iub" and np.isinf(identity):
        info = np.iinfo(v.dtype) if v.dtype.kind != "b" else None
        identity = (info.min if identity < 0 else info.max) if info else identity > 0
    return np.full(shape, identity, dtype=v.dtype)


def _reduce(numpy_fn, tensor_fn, axes_from_input, identity=0.0):
    def build(node):
        keepdims = bool(node.attr("keepdims", 1))
        noop = bool(node.attr("noop_with_empty_axes", 0))
        attr_axes = node.attr("axes")

        def run(x, axes=None):
            axes = attr_axes if not axes_from_input else (None if axes is None else ints(axes))
            if axes is not None and len(axes) == 0:
                axes = None
            if axes is None and noop:
                return x
            ndim = np.ndim(array(x))
            axis = None if axes is None else tuple(sorted(axes_in(axes, ndim, node.op_type))) if ndim else None
            v = array(x)
            if v.size == 0 or any(v.shape[a] == 0 for a in (axis or ())):
                out = _empty_reduction(v, axis, keepdims, identity)
                return Tensor(out) if is_tensor(x) else out
            if is_tensor(x):
                return tensor_fn(x, axis, keepdims)
            if v.dtype.kind in "iu":
                return _integer_reduction(node.op_type, numpy_fn, v, axis, keepdims)
            return np.asarray(numpy_fn(np.asarray(x), axis=axis, keepdims=keepdims))
        return run
    return build


def _integer_reduction(op_type, numpy_fn, v, axis, keepdims):
    """Integer reductions keep the input dtype (numpy promotes int32 sums to int64 and means to
    float64); a mean is the int64 sum divided by the count, truncated toward zero like onnxruntime."""
    if op_type == "ReduceMean":
        total = np.sum(v, axis=axis, keepdims=keepdims, dtype=np.int64)
        count = v.size // max(total.size, 1)
        out = np.sign(total) * (np.abs(total) // count)
    else:
        out = numpy_fn(v, axis=axis, keepdims=keepdims)
    return np.asarray(out).astype(v.dtype, copy=False)


def _sum_square(x, axis, keepdims):
    return ops.sum(ops.mul(x, x), axis=axis, keepdims=keepdims)


def _l2(x, axis, keepdims):
    return ops.sqrt(_sum_square(x, axis, keepdims))


def _l1(x, axis, keepdims):
    return ops.sum(ops.abs(x), axis=axis, keepdims=keepdims)


def _log_sum_exp(x, axis, keepdims):
    axis = tuple(range(x.ndim)) if axis is None else axis
    return ops.logsumexp(x, axis=axis, keepdims=keepdims)


def _prod_tensor(x, axis, keepdims):  # no gradient rule in the engine; products appear on shapes only
    return Tensor(np.prod(x.data, axis=axis, keepdims=keepdims))


_REDUCTIONS = [  # name, numpy, Tensor, opset where axes become an input, value over no elements
    ("ReduceMean", np.mean, lambda x, a, k: ops.mean(x, a, k), 18, np.nan),
    ("ReduceMax", np.max, lambda x, a, k: ops.max(x, a, k), 18, -np.inf),
    ("ReduceMin", np.min, lambda x, a, k: ops.min(x, a, k), 18, np.inf),
    ("ReduceProd", np.prod, _prod_tensor, 18, 1.0),
    ("ReduceSumSquare", lambda v, axis, keepdims: np.sum(v * v, axis=axis, keepdims=keepdims), _sum_square, 18, 0.0),
    ("ReduceL1", lambda v, axis, keepdims: np.sum(np.abs(v), axis=axis, keepdims=keepdims), _l1, 18, 0.0),
    ("ReduceL2", lambda v, axis, keepdims: np.sqrt(np.sum(v * v, axis=axis, keepdims=keepdims)), _l2, 18, 0.0),
    ("ReduceLogSumExp", lambda v, axis, keepdims: np.log(np.sum(np.exp(v), axis=axis, keepdims=keepdims)),
     _log_sum_exp, 18, -np.inf),
    ("ReduceSum", np.sum, lambda x, a, k: ops.sum(x, a, k), 13, 0.0),
]
for _name, _numpy, _tensor, _input_since, _identity in _REDUCTIONS:
    register(_name, since=1)(_reduce(_numpy, _tensor, axes_from_input=False, identity=_identity))
    register(_name, since=_input_since)(_reduce(_numpy, _tensor, axes_from_input=True, identity=_identity))


def _arg_reduce(pick):
    def build(node):
        axis, keepdims = node.attr("axis", 0), bool(node.attr("keepdims", 1))
        last = bool(node.attr("select_last_index", 0))

        def run(x):
            v = array(x)
            if last:
                flipped = np.flip(v, axis=axis)
                out = v.shape[axis] - 1 - pick(flipped, axis=axis)
            else:
                out = pick(v, axis=axis)
            out = np.asarray(out, dtype=np.int64)
            return np.expand_dims(out, axis) if keepdims else out
        return run
    return build


register("ArgMax", since=1)(_arg_reduce(np.argmax))
register("ArgMin", since=1)(_arg_reduce(np.argmin))


def _cumsum_tensor(x, axis, exclusive, reverse):
    def scan(v):
        v = np.flip(v, axis) if reverse else v
        out = np.cumsum(v, axis=axis, dtype=v.dtype)
        if exclusive:
            out = np.concatenate([np.zeros_like(np.take(out, [0], axis=axis)),
                                  np.take(out, np.arange(v.shape[axis] - 1), axis=axis)], axis=axis)
        return np.flip(out, axis) if reverse else out

    def backward(g):  # the adjoint of a prefix sum is the suffix sum (and vice versa)
        g = np.flip(g, axis) if not reverse else g
        out = np.cumsum(g, axis=axis)
        if exclusive:
            out = np.concatenate([np.zeros_like(np.take(out, [0], axis=axis)),
                                  np.take(out, np.arange(g.shape[axis] - 1), axis=axis)], axis=axis)
        return (np.flip(out, axis) if not reverse else out),
    return scan, backward


@register("CumSum", since=11)
def cumsum(node):
    exclusive, reverse = bool(node.attr("exclusive", 0)), bool(node.attr("reverse", 0))

    def run(x, axis):
        axis = axis_in(int(array(axis).reshape(-1)[0]), max(np.ndim(array(x)), 1), "CumSum")
        scan, backward = _cumsum_tensor(x, axis, exclusive, reverse)
        if is_tensor(x):
            return _result(scan(x.data), (x,), backward)
        return scan(np.asarray(x))
    return run


# -- matrix products -------------------------------------------------------------------------------
@register("MatMul", since=1)
def matmul(node):
    def run(a, b):
        if is_tensor(a) or is_tensor(b):
            like = a if is_tensor(a) else b
            return ops.matmul(lift(a, like), lift(b, like))
        return np.matmul(a, b)
    return run


@register("Gemm", since=7)
def gemm(node):
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)

    def run(a, b, c=None):
        if np.ndim(array(a)) != 2 or np.ndim(array(b)) != 2:
            raise OnnxImportError(f"Gemm needs 2-D A and B, got shapes {np.shape(array(a))} and {np.shape(array(b))}")
        if not any_tensor([a, b, c]):
            a_, b_ = (np.asarray(a).T if trans_a else a), (np.asarray(b).T if trans_b else b)
            out = alpha * (a_ @ b_) + (beta * np.asarray(c) if c is not None else 0)
            return np.asarray(out, dtype=np.asarray(a).dtype)
        like = _tensor_like([a, b, c])
        a, b = lift(a, like), lift(b, like)
        out = ops.matmul(a.T if trans_a else a, b.T if trans_b else b)
        if alpha != 1.0:
            out = out * alpha
        if c is not None:
            out = out + (lift(c, like) * beta if beta != 1.0 else lift(c, like))
        return out
    return run


# -- normalisation ---------------------------------------------------------------------------------
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


@register("PRelu", since=9)
def prelu(node):
    def run(x, slope):
        x_t = x if is_tensor(x) else Tensor(np.asarray(x))
        out = ops.where(x_t.data < 0, x_t * lift(slope, x_t), x_t)
        return out if is_tensor(x) else out.data
    return run


# -- Einsum ------------------------------------------------------------------------------------------
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
        like = _tensor_like(xs)
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
        return _result(np.asarray(result, dtype=like.dtype), tensors, backward)
    return run
