"""The importer's exceptions: one hierarchy under `OnnxImportError` (a ValueError)."""


class OnnxImportError(ValueError):
    """Anything the importer refuses: bad files, unsupported ops, wrong inputs."""


class OnnxLoadError(OnnxImportError):
    """The file is not a readable, valid ONNX model (or its external data is refused)."""


class UnsupportedOpsError(OnnxImportError):
    """The graph uses ops without a converter; `.unsupported` maps (domain, op, version) → count."""

    def __init__(self, unsupported):
        self.unsupported = dict(unsupported)
        lines = [f"  {domain or 'ai.onnx'}::{op} (opset {version}) ×{count}"
                 for (domain, op, version), count in sorted(self.unsupported.items())]
        super().__init__(f"{len(self.unsupported)} unsupported op type(s) in the graph:\n" + "\n".join(lines))


class OnnxInputError(OnnxImportError):
    """A call gave inputs that do not match the graph's declared inputs."""


class OnnxRuntimeError(OnnxImportError):
    """A node failed while running (names the node and its op)."""
