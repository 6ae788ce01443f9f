"""Cast converters: Cast and CastLike (float16/bfloat16 round to their precision but compute in
float32; float8/float4/int4 are numpy-only values)."""
import numpy as np
import onnx

from dreidel import ops
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.loader import low_precision_dtype, numpy_dtype
from importers.onnx_to_dreidel.registry import array, float_dtype, is_tensor, register


def _round_bfloat16(v):
    """float32 → nearest bfloat16 (ties to even), kept in float32."""
    bits = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return np.where(np.isnan(v), v, rounded.view(np.float32)).astype(np.float32)


def _cast_to(x, onnx_type):
    """Cast to an ONNX type; float16/bfloat16 round to their precision but compute stays float32."""
    target = numpy_dtype(onnx_type)
    if target.kind == "f" and float_dtype() == np.float64:  # a .double() graph stays float64 throughout
        target, onnx_type = np.dtype(np.float64), onnx.TensorProto.DOUBLE
    if is_tensor(x):
        if target.kind != "f":
            return x.data.astype(target)
        out = ops.cast(x, target) if x.dtype != target else x
        if onnx_type == onnx.TensorProto.FLOAT16:
            out = ops.cast(ops.cast(out, np.float16), np.float32)
        elif onnx_type == onnx.TensorProto.BFLOAT16:  # rounding passes the gradient straight through:
            # out + (rounded − out) is exactly `rounded` (the difference is exact: Sterbenz)
            out = out + Tensor(_round_bfloat16(out.data) - out.data)
        return out
    x = np.asarray(x)
    if x.dtype.kind == "f" and target.kind in "iub":
        x = np.trunc(x) if target.kind != "b" else x
    out = x.astype(target)
    if onnx_type == onnx.TensorProto.FLOAT16:
        out = out.astype(np.float16).astype(np.float32)
    elif onnx_type == onnx.TensorProto.BFLOAT16:
        out = _round_bfloat16(out)
    return out


def _cast_low_precision(x, target, saturate):
    """Cast to float8/float4/int4 (numpy-only values): saturating floats clip to the finite range."""
    v = np.asarray(x.data if is_tensor(x) else x)
    if v.dtype.kind == "V" or v.dtype.name.startswith(("float8", "float4", "int4", "uint4")):
        v = v.astype(np.float32)
    if target.name.startswith("float8") and saturate:  # ONNX's own rule (±inf and overflow → ±max)
        return onnx.numpy_helper.saturate_cast(v, target)
    return v.astype(target)  # int4/uint4 wrap, float4 rounds, as ml_dtypes (and the ONNX reference) do


@register("Cast", since=6)
def cast(node):
    to, saturate = node.attr("to"), node.attr("saturate", 1)
    low = low_precision_dtype(to)
    if low is not None:
        return lambda x: _cast_low_precision(x, low, saturate)
    return lambda x: _cast_to(x, to)


@register("CastLike", since=15)
def cast_like(node):
    saturate = node.attr("saturate", 1)

    def run(x, like):
        target = array(like).dtype
        try:
            onnx_type = onnx.helper.np_dtype_to_tensor_dtype(target)
        except (KeyError, TypeError, ValueError):
            raise OnnxImportError(f"{node}: CastLike to unsupported dtype {target}") from None
        if low_precision_dtype(onnx_type) is not None:
            return _cast_low_precision(x, target, saturate)
        return _cast_to(x, onnx_type)
    return run
