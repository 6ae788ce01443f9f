"""Import ONNX graphs as dreidel modules: `load(path_or_bytes) -> GraphModule`.

    from importers.onnx_to_dreidel import load
    encoder = load("encoder_model.onnx")
    hidden = encoder(input_features=features)         # a Tensor (one output) or a tuple in output order
    encoder.get_submodule("layers.0.self_attn.q_proj")  # an nn.Linear holding the teacher's weight
    print(encoder.summary())

Errors all derive from `OnnxImportError` (a ValueError): `OnnxLoadError` for unreadable, invalid
or unsafe files, `UnsupportedOpsError` listing every op without a converter, `OnnxInputError` for
wrong inputs at call time, `OnnxRuntimeError` naming the node that failed.
"""
try:
    import onnx  # noqa: F401  (the only extra this importer needs)
except ModuleNotFoundError as error:
    if error.name != "onnx":
        raise
    raise ModuleNotFoundError("importers.onnx_to_dreidel needs the onnx package, an optional extra of dreidel: "
                              "pip install 'dreidel[onnx]' (or pip install onnx)", name="onnx") from None

from importers.onnx_to_dreidel.errors import (OnnxImportError, OnnxInputError, OnnxLoadError, OnnxRuntimeError,
                                              UnsupportedOpsError)
from importers.onnx_to_dreidel.graph import GraphModule, Scope
from importers.onnx_to_dreidel.loader import check_model, parse_model
from importers.onnx_to_dreidel.registry import register, supported_ops
from importers.onnx_to_dreidel.supported import check_supported


def load(path_or_bytes, *, external_data_dir=None):
    """Read an ONNX model (a path or its bytes) and return it as a `GraphModule` in eval mode.

    External data is read from the model's folder (or `external_data_dir`); locations that are
    absolute or leave that folder are refused.
    """
    model, base_dir, label = parse_model(path_or_bytes, external_data_dir)
    check_supported(model)  # every missing op in one error, before the checker trips on the first
    check_model(model, label)
    try:
        return GraphModule(model, base_dir, label).eval()
    except OnnxImportError:
        raise
    except Exception as exc:  # a damaged file that still parses (e.g. names that are not UTF-8)
        raise OnnxLoadError(f"{label}: malformed model: {type(exc).__name__}: {exc}") from exc


__all__ = ["load", "GraphModule", "Scope", "register", "supported_ops", "OnnxImportError", "OnnxLoadError",
           "UnsupportedOpsError", "OnnxInputError", "OnnxRuntimeError"]
