"""`check_supported`: one error naming every op of a model that has no converter."""
from collections import Counter

from importers.onnx_to_dreidel import converters  # noqa: F401  (registers every converter)
from importers.onnx_to_dreidel.errors import UnsupportedOpsError
from importers.onnx_to_dreidel.registry import resolve


def opsets_of(model):
    """{domain: opset version} imported by the model ('' for ai.onnx)."""
    return {("" if o.domain in ("", "ai.onnx") else o.domain): o.version for o in model.opset_import}


def check_supported(model):
    """Raise UnsupportedOpsError listing every (domain, op, opset) without a converter, with counts."""
    check_graph(model.graph, opsets_of(model))


def check_graph(graph, opsets):
    """check_supported for a graph under the given opsets."""
    missing = Counter()
    for proto in graph.node:
        domain = "" if proto.domain in ("", "ai.onnx") else proto.domain
        if isinstance(domain, bytes) or isinstance(proto.op_type, bytes):  # damaged names: not UTF-8
            missing[(str(domain), str(proto.op_type), 0)] += 1
            continue
        version = opsets.get(domain)
        if version is None or resolve(domain, proto.op_type, version) is None:
            missing[(domain, proto.op_type, version if version is not None else 0)] += 1
    if missing:
        raise UnsupportedOpsError(missing)
