"""Reduction converters: ReduceSum/Mean/Max/Min/Prod/L1/L2/SumSquare/LogSumExp, ArgMax/ArgMin, CumSum."""
import numpy as np

from dreidel import ops
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.registry import array, axes_in, axis_in, ints, is_tensor, register


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
            if v.dtype.kind == "f":  # a floating constant folded at import: the engine's reduction too
                return tensor_fn(Tensor(v), axis, keepdims).data
            if v.dtype.kind in "iu":
                return _integer_reduction(node.op_type, numpy_fn, v, axis, keepdims)
            return np.asarray(numpy_fn(v, axis=axis, keepdims=keepdims))  # booleans (ReduceMax/Min)
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


_REDUCTIONS = [  # name, numpy (integer/boolean data), Tensor, opset where axes become an input, value over no elements
    ("ReduceMean", np.mean, lambda x, a, k: ops.mean(x, a, k), 18, np.nan),
    ("ReduceMax", np.max, lambda x, a, k: ops.max(x, a, k), 18, -np.inf),
    ("ReduceMin", np.min, lambda x, a, k: ops.min(x, a, k), 18, np.inf),
    ("ReduceProd", np.prod, lambda x, a, k: ops.prod(x, a, k), 18, 1.0),
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


@register("CumSum", since=11)
def cumsum(node):
    exclusive, reverse = bool(node.attr("exclusive", 0)), bool(node.attr("reverse", 0))

    def run(x, axis):
        axis = axis_in(int(array(axis).reshape(-1)[0]), max(np.ndim(array(x)), 1), "CumSum")
        if is_tensor(x):
            return ops.cumsum(x, axis, exclusive, reverse)
        v = np.asarray(x)  # integer sums keep their dtype (numpy widens int32 to int64)
        return ops.cumsum(Tensor(v), axis, exclusive, reverse).data.astype(v.dtype, copy=False)
    return run
