"""The baseline CPU users pick today: the same ONNX teacher under onnxruntime dynamic int8 quantisation.

    if int8_available():
        path = quantize_int8("teacher.onnx", "out/teacher.int8.onnx")
        fp32, int8 = OrtModel("teacher.onnx", threads=2), OrtModel(path, threads=2)
        outputs = int8(input_ids=..., attention_mask=...)        # numpy arrays, graph output order

A student has to beat this on speed at equal quality to count. onnxruntime is optional (the `bench`
and `test` extras); without it `int8_available()` is False and the report leaves the row out.
"""
import importlib.util
import os
from pathlib import Path


class Int8Unavailable(RuntimeError):
    """onnxruntime (with its quantization tools) is not installed, or the teacher is not ONNX."""


def int8_available():
    """True when onnxruntime and onnxruntime.quantization can be imported."""
    return importlib.util.find_spec("onnxruntime") is not None


def quantize_int8(onnx_path, out_path):
    """Write `onnx_path` quantised by `onnxruntime.quantization.quantize_dynamic` (int8 weights, per
    tensor, activations quantised on the fly) to `out_path`; returns `out_path`. Reuses an existing
    output newer than the teacher (quantising MiniLM takes seconds, not nothing)."""
    if not int8_available():
        raise Int8Unavailable("the int8 baseline needs onnxruntime (pip install onnxruntime)")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if onnx_path.suffix.lower() != ".onnx":
        raise Int8Unavailable(f"{onnx_path}: the int8 baseline quantises ONNX teachers only")
    if out_path.exists() and out_path.stat().st_mtime >= onnx_path.stat().st_mtime:
        return out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_name(out_path.name + ".partial.onnx")
    try:
        quantize_dynamic(str(onnx_path), str(temporary), weight_type=QuantType.QInt8)
        os.replace(temporary, out_path)  # atomic: a crash never leaves a half-written model behind
    finally:
        if temporary.exists():
            temporary.unlink()
    return out_path


class OrtModel:
    """An onnxruntime CPU session with a fixed intra-op thread count, called with named numpy inputs.

    Inputs the graph does not take are dropped, integer inputs are cast to the graph's type; the
    result is the list of outputs in graph order. Workers do not spin between calls, so interleaved
    timing beside dreidel is fair on a small machine.
    """

    def __init__(self, path, threads=None):
        if not int8_available():
            raise Int8Unavailable("onnxruntime is not installed")
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, **inputs):
        import numpy as np
        feeds = {}
        for name, kind in self.inputs.items():
            if name not in inputs:
                raise ValueError(f"{self.path}: missing input {name!r} (given: {sorted(inputs)})")
            value = np.asarray(inputs[name])
            feeds[name] = value.astype(np.int64) if kind == "tensor(int64)" else \
                value.astype(np.float32) if kind == "tensor(float)" else value
        return self.session.run(None, feeds)


def file_megabytes(path):
    """Size of a model file in MB (the int8 baseline's main selling point beside speed)."""
    return os.path.getsize(path) / 1e6
