"""Quantisation converters: DequantizeLinear and QuantizeLinear (numpy values: int8/uint8/int4/float8)."""
import ml_dtypes
import numpy as np
import onnx

from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import array, register


@register("DequantizeLinear", since=10)
def dequantize_linear(node):
    axis = node.attr("axis", 1)
    block_size = node.attr("block_size", 0)
    if block_size:
        raise OnnxImportError(f"{node}: blocked DequantizeLinear (block_size) is not supported")

    def run(x, scale, zero_point=None):
        v = array(x)
        scale = array(scale).astype(np.float32)
        zero = np.zeros((), np.int64) if zero_point is None else array(zero_point)
        if scale.ndim == 1 and scale.size > 1:  # per-axis
            shape = [1] * v.ndim
            shape[axis % v.ndim] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim else zero
        # float64 in between: exact for every int8..int32 and float8/int4 value
        return ((v.astype(np.float64) - zero.astype(np.float64)) * scale).astype(scale.dtype)
    return run


@register("QuantizeLinear", since=10)
def quantize_linear(node):
    axis = node.attr("axis", 1)

    def run(x, scale, zero_point=None):
        v = array(x)
        scale = array(scale)
        zero = np.zeros((), np.uint8) if zero_point is None else array(zero_point)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * v.ndim
            shape[axis % v.ndim] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim else zero
        if zero.dtype.name.startswith("float8"):  # float8 targets saturate (ONNX's rule)
            q = v.astype(np.float32) / scale + zero.astype(np.float32)
            return onnx.numpy_helper.saturate_cast(q, zero.dtype) if node.attr("saturate", 1) else q.astype(zero.dtype)
        if zero.dtype.name in ("int4", "uint4"):
            info = ml_dtypes.iinfo(zero.dtype)
        else:
            info = np.iinfo(zero.dtype)
        q = np.rint(v / scale) + zero.astype(np.int64)
        return np.clip(q, info.min, info.max).astype(zero.dtype)
    return run
