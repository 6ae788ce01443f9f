"""Constant converters: Constant, ConstantOfShape, Range, EyeLike (numpy values, folded at import)."""
import numpy as np

from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.loader import numpy_dtype
from importers.onnx_to_dreidel.registry import array, checked_shape, ints, register


@register("Constant", since=1)
def constant(node):
    for key, kind in [("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                      ("value_int", np.int64), ("value_ints", np.int64)]:
        if key in node.attrs:
            value = np.array(node.attrs[key], dtype=kind) if kind is not None else np.asarray(node.attrs[key])
            return lambda: value
    raise OnnxImportError(f"{node}: Constant needs a value / value_float(s) / value_int(s) attribute, "
                          f"got {sorted(node.attrs)}")


@register("ConstantOfShape", since=9)
def constant_of_shape(node):
    value = node.attr("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)

    def run(shape):
        return np.full(checked_shape(ints(shape), "ConstantOfShape"), value[0], dtype=value.dtype)
    return run


@register("Range", since=11)
def range_(node):
    def run(start, limit, delta):
        start, limit, delta = array(start), array(limit), array(delta)
        if delta.item() == 0:
            raise ValueError("Range delta must not be 0")
        checked_shape((max(int(np.ceil((limit.item() - start.item()) / delta.item())), 0),), "Range")
        return np.arange(start.item(), limit.item(), delta.item()).astype(start.dtype)
    return run


@register("EyeLike", since=9)
def eye_like(node):
    k, dtype = node.attr("k", 0), node.attr("dtype")

    def run(x):
        v = array(x)
        return np.eye(v.shape[0], v.shape[1], k=k, dtype=numpy_dtype(dtype) if dtype is not None else v.dtype)
    return run
