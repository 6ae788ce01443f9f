"""Reading ONNX files: parse, check, and turn initializers (embedded or external) into numpy arrays.

External data is read by this module, never by `onnx.load_external_data`, so that every location
can be vetted first: absolute paths and paths leaving the model's folder (`..`, symlinks out) are
refused. float16/bfloat16 tensors are upcast to float32 (compute is float32); integer types stay.
"""
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from importers.onnx_to_dreidel.errors import OnnxLoadError

_NUMPY_OF = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT16: np.int16, onnx.TensorProto.UINT16: np.uint16, onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.UINT64: np.uint64,
    onnx.TensorProto.BOOL: np.bool_,
}


_LOW_PRECISION = {"FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "INT4", "UINT4", "FLOAT4E2M1"}


def low_precision_dtype(onnx_type):
    """The ml_dtypes dtype of a float8/int4/float4 ONNX type (stored, cast and dequantised only), or None."""
    known = onnx_type in onnx.TensorProto.DataType.values()
    if not known or onnx.TensorProto.DataType.Name(onnx_type) not in _LOW_PRECISION:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx_type))
    except (KeyError, TypeError, ValueError, ImportError):
        return None


def numpy_dtype(onnx_type):
    """numpy dtype for an ONNX TensorProto data type (bfloat16/float16 compute as float32)."""
    if onnx_type in (onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16):
        return np.dtype(np.float32)
    low = low_precision_dtype(onnx_type)
    if low is not None:
        return low
    if onnx_type not in _NUMPY_OF:
        known = onnx_type in onnx.TensorProto.DataType.values()
        name = onnx.TensorProto.DataType.Name(onnx_type) if known else onnx_type
        raise OnnxLoadError(f"unsupported tensor data type {name}")
    return np.dtype(_NUMPY_OF[onnx_type])


def _upcast(array, onnx_type):
    if onnx_type == onnx.TensorProto.BFLOAT16:
        bits = np.asarray(array).view(np.uint16) if np.asarray(array).dtype.itemsize == 2 else \
            np.asarray(array).astype(np.uint16)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if onnx_type == onnx.TensorProto.FLOAT16:
        return np.asarray(array, dtype=np.float16).astype(np.float32)
    return array


def tensor_to_array(tensor, base_dir=None):
    """A TensorProto as a numpy array, reading vetted external data relative to `base_dir`."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return _read_external(tensor, base_dir)
    if tensor.data_type == onnx.TensorProto.BFLOAT16:
        if tensor.raw_data:
            bits = np.frombuffer(tensor.raw_data, dtype=np.uint16)
        else:
            bits = np.asarray(tensor.int32_data, dtype=np.uint16)
        return _upcast(bits, tensor.data_type).reshape(tuple(tensor.dims))
    numpy_dtype(tensor.data_type)  # refuses strings and exotic types with a clear error
    try:
        array = numpy_helper.to_array(tensor)
        if low_precision_dtype(tensor.data_type) is not None:
            return np.array(array)
    except Exception as exc:  # malformed payloads (wrong byte count...)
        raise OnnxLoadError(f"tensor {tensor.name!r} is malformed: {exc}") from None
    return np.array(_upcast(array, tensor.data_type))


def _safe_location(location, base_dir, tensor_name):
    if isinstance(location, bytes):  # protobuf hands back undecodable strings as bytes
        raise OnnxLoadError(f"external data location {location!r} of tensor {tensor_name!r} is not valid UTF-8")
    if not location:
        raise OnnxLoadError(f"tensor {tensor_name!r} is marked external but has no location")
    if os.path.isabs(location) or Path(location).is_absolute() or location.startswith(("/", "\\")):
        raise OnnxLoadError(f"external data location {location!r} of tensor {tensor_name!r} is absolute; "
                            f"only paths inside the model's folder are allowed")
    parts = Path(location.replace("\\", "/")).parts
    if ".." in parts:
        raise OnnxLoadError(f"external data location {location!r} of tensor {tensor_name!r} escapes the "
                            f"model's folder ('..' is not allowed)")
    if base_dir is None:
        raise OnnxLoadError(f"tensor {tensor_name!r} has external data ({location!r}) but the model was given "
                            f"as bytes: pass external_data_dir=")
    base = Path(base_dir).resolve()
    path = (base / location).resolve()
    if base != path and base not in path.parents:
        raise OnnxLoadError(f"external data location {location!r} of tensor {tensor_name!r} resolves outside "
                            f"the model's folder {str(base)!r}")
    return path


def _read_external(tensor, base_dir):
    info = {entry.key: entry.value for entry in tensor.external_data}
    path = _safe_location(info.get("location", ""), base_dir, tensor.name)
    dtype = np.dtype(np.uint16) if tensor.data_type in (onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16) \
        else numpy_dtype(tensor.data_type)
    shape = tuple(int(d) for d in tensor.dims)
    count = int(np.prod(shape)) if shape else 1
    offset = int(info.get("offset", 0) or 0)
    length = int(info.get("length", count * dtype.itemsize) or 0)
    if length != count * dtype.itemsize:
        raise OnnxLoadError(f"external tensor {tensor.name!r}: length {length} bytes does not hold "
                            f"{shape} × {dtype.itemsize} bytes")
    if not path.is_file():
        raise OnnxLoadError(f"external data file {str(path)!r} of tensor {tensor.name!r} does not exist")
    with open(path, "rb") as handle:
        handle.seek(offset)
        raw = handle.read(length)
    if len(raw) != length:
        raise OnnxLoadError(f"external data file {str(path)!r} is truncated: tensor {tensor.name!r} needs "
                            f"bytes {offset}..{offset + length}")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if tensor.data_type == onnx.TensorProto.FLOAT16:
        array = array.view(np.float16)
    return np.array(_upcast(array, tensor.data_type))


def _without_external_data(model):
    """The checker resolves external files against the working directory: check a copy whose external
    tensors are empty placeholders instead (their files are vetted and read by `_read_external`)."""
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.dims[:]
            tensor.dims.append(0)
    return copy


def read_model(path_or_bytes, external_data_dir=None):
    """Parse and check a model. Returns (ModelProto, base_dir for external data, label for errors)."""
    model, base_dir, label = parse_model(path_or_bytes, external_data_dir)
    check_model(model, label)
    return model, base_dir, label


def parse_model(path_or_bytes, external_data_dir=None):
    """Parse a model and vet its external-data locations (no onnx.checker yet): (model, base_dir, label)."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        label, raw = "<bytes>", bytes(path_or_bytes)
        base_dir = external_data_dir
    else:
        path = Path(os.fspath(path_or_bytes))
        label = str(path)
        if not path.is_file():
            raise OnnxLoadError(f"{label}: no such file")
        raw = path.read_bytes()
        base_dir = external_data_dir if external_data_dir is not None else path.parent
    if not raw:
        raise OnnxLoadError(f"{label}: empty file, not an ONNX model")
    try:
        model = onnx.ModelProto()
        model.ParseFromString(raw)
    except Exception as exc:
        raise OnnxLoadError(f"{label}: not a readable ONNX model (truncated or not protobuf): {exc}") from None
    if not model.graph.node and not model.graph.output:
        raise OnnxLoadError(f"{label}: not an ONNX model (no graph)")
    for tensor in model.graph.initializer:  # vet every location before anything touches the files
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            try:
                _safe_location(location, base_dir if base_dir is not None else ".", tensor.name)
            except OnnxLoadError as exc:
                raise OnnxLoadError(f"{label}: {exc}") from None
    return model, base_dir, label


def check_model(model, label):
    """Run onnx.checker, refusing an invalid model with its first error line."""
    try:
        checked = _without_external_data(model)
        # a file on disk is checked from its path: the checker then need not re-serialise the model
        onnx.checker.check_model(label if checked is model and label != "<bytes>" else checked)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxLoadError(f"{label}: fails onnx.checker: {first}") from None
