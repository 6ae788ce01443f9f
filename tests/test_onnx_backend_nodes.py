"""ONNX backend node test cases run through `importers.onnx_to_dreidel`.

The cases come from `onnx.backend.test.case.node.collect_testcases(None)`: each is a one-node model
(or its function expansion, the `*_expanded` cases) with inputs and expected outputs. This onnx wheel
does not ship them as files, so they are regenerated in memory once per session.

Every case whose ops are all in the importer's registry (resolved against the case's own opset
imports, subgraphs included) is imported and run; its outputs must match the expected ones within the
case's rtol/atol (floats, NaN == NaN) or exactly (ints, bools), with the same shape and dtype.
Cases that need what the importer does not claim (sequences, optionals, strings, training mode,
float8/int4-style types numpy cannot hold, ops outside the registry) are skipped with a reason.

`bench/onnx_node_coverage.py` imports this file for its per-op pass-rate table.
"""
import re
import functools
import warnings
from collections import Counter

import numpy as np
import pytest

from timeouts import time_limit

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

importer = pytest.importorskip("importers.onnx_to_dreidel")
registry = pytest.importorskip("importers.onnx_to_dreidel.registry")

# Types numpy has no native dtype for; the backend cases hand them over as TensorProtos.
EXOTIC_TYPES = {"FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0",
                "UINT4", "INT4", "UINT2", "INT2", "FLOAT4E2M1", "BFLOAT16", "STRING"}
# Ops whose outputs are random draws: the expected values cannot be reproduced.
RANDOM_OPS = {"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform",
              "RandomUniformLike"}
CASE_TIMEOUT_S = 20  # one backend case is tiny; longer means a hang
DTYPE_ALLOWANCES = Counter()  # how often compare() let a float32 stand in for float16/float64

# Known importer failures, each checked by hand to be a genuine importer bug or limitation (the
# expected outputs agree with onnxruntime): case-name pattern -> reason. They are xfail(strict=True),
# so a fix shows up as an XPASS failure: then delete the entry.
KNOWN_FAILURES = {
    r"test_(de)?quantizelinear_blocked.*":
        "(De)QuantizeLinear: blocked quantization (block_size, opset 21) unsupported",
    r"test_resize_downsample_(scales|sizes)_(cubic|linear)_antialias":
        "Resize: antialias=1 (opset 18) refused",
    r"test_resize_tf_crop_and_resize.*":
        "Resize: coordinate_transformation_mode='tf_crop_and_resize' (roi input) refused",
}


def known_failure(name):
    """The reason a case is known to fail, or None."""
    for pattern, reason in KNOWN_FAILURES.items():
        if re.fullmatch(pattern, name):
            return reason
    return None


# --------------------------------------------------------------------------------------------------
# The cases, the registry view, the classification.

@functools.lru_cache(maxsize=None)
def backend_cases():
    """All backend node cases, name -> TestCase, generated once (takes a few seconds)."""
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return {case.name: case for case in cases if case.model is not None}


def _canonical_domain(domain):
    return "" if domain in ("", "ai.onnx") else domain


def graph_ops(graph):
    """Every (domain, op_type) node of a graph, subgraphs (If/Loop/Scan bodies) included."""
    ops = []
    for node in graph.node:
        ops.append((_canonical_domain(node.domain), node.op_type))
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                if subgraph.node:
                    ops.extend(graph_ops(subgraph))
    return ops


def resolve(op, opsets):
    """Whether the importer has a converter for `op` at the model's opset (its own resolution:
    the greatest registered since_version <= the model's version of the op's domain)."""
    domain, op_type = op
    return domain in opsets and registry.resolve(domain, op_type, opsets[domain]) is not None


def case_opsets(case):
    return {_canonical_domain(o.domain): o.version for o in case.model.opset_import}


def unsupported_ops(case):
    opsets = case_opsets(case)
    return sorted({f"{d + '.' if d else ''}{t}" for d, t in graph_ops(case.model.graph)
                   if not resolve((d, t), opsets)})


def case_op(case):
    """The op a case tests, for the coverage table: the op of its one node, or for an `_expanded`
    case (the op's function body spelled out in primitive ops) the op of its unexpanded twin."""
    nodes = case.model.graph.node
    if "_expanded" not in case.name and len(nodes) == 1:
        return nodes[0].op_type
    twin = backend_cases().get(re.sub(r"_expanded(_ver\d+)?$", "", case.name))
    if twin is not None and len(twin.model.graph.node) == 1:
        return twin.model.graph.node[0].op_type
    return "(multi-node) " + case.name


def _as_array(value):
    """A case input/output as a numpy array, or raise _Skip with why it can't be one."""
    if isinstance(value, onnx.TensorProto):
        type_name = onnx.TensorProto.DataType.Name(value.data_type)
        if type_name in EXOTIC_TYPES:
            raise _Skip(f"{type_name} tensors (no numpy dtype)")
        return numpy_helper.to_array(value)
    if isinstance(value, (list, dict)):
        raise _Skip("sequence/map values")
    if value is None:
        raise _Skip("optional values")
    array = np.asarray(value)
    if array.dtype.kind in "OSUV":
        raise _Skip(f"{array.dtype} tensors (strings or numpy-less types)")
    return array


class _Skip(Exception):
    pass


def _value_kinds(graph):
    """Skip reasons from the graph's declared input/output types (sequence, optional, map...)."""
    for value in [*graph.input, *graph.output]:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise _Skip(f"{kind} values")
        type_name = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        if type_name in EXOTIC_TYPES:
            raise _Skip(f"{type_name} tensors (no numpy dtype)")


def _training_mode(case):
    for node in case.model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "training_mode" and attribute.i:
                return True
        if node.op_type == "Dropout" and len(node.input) >= 3 and node.input[2]:
            return True
    return "training" in case.name


def classify(case):
    """None if the case should run, else the reason to skip it."""
    missing = unsupported_ops(case)
    if missing:
        return f"unsupported op(s) {', '.join(missing)}"
    try:
        _value_kinds(case.model.graph)
        if _training_mode(case):
            return "training mode"
        random = sorted({t for _, t in graph_ops(case.model.graph)} & RANDOM_OPS)
        if random:
            return f"random op {random[0]} (outputs are draws)"
        for inputs, outputs in case.data_sets:
            for value in [*inputs, *outputs]:
                _as_array(value)
    except _Skip as why:
        return str(why)
    return None


# --------------------------------------------------------------------------------------------------
# Running one case.



def _outputs_as_list(result, output_names):
    """The module's outputs in graph-output order, whatever container it returns them in."""
    if isinstance(result, dict):
        missing = [name for name in output_names if name not in result]
        assert not missing, f"module outputs {sorted(result)} lack graph outputs {missing}"
        return [result[name] for name in output_names]
    if isinstance(result, (tuple, list)):
        return list(result)
    return [result]


def _numpy(value):
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def compare(actual, expected, rtol, atol, name):
    """Assert one output matches: same shape, same dtype, values within rtol/atol (exact for
    integers and bools). The importer computes floats in float32 by design (float16/bfloat16
    weights are upcast, float64 inputs cast down unless the module is `.double()`d), so a float16 or
    float64 output may come back float32: it is cast to the expected dtype before comparing."""
    actual = _numpy(actual)
    assert actual.shape == expected.shape, \
        f"output {name!r}: shape {actual.shape}, expected {expected.shape}"
    if expected.dtype in (np.float16, np.float64) and actual.dtype == np.float32:
        DTYPE_ALLOWANCES[f"{expected.dtype} output returned as float32"] += 1
        if expected.dtype == np.float16:
            # the reference rounds every intermediate to float16 (eps 9.8e-4); float32 compute is
            # more exact, so allow two float16 ulps
            rtol = max(rtol, 2 * float(np.finfo(np.float16).eps))
        actual = actual.astype(expected.dtype)
    assert actual.dtype == expected.dtype, \
        f"output {name!r}: dtype {actual.dtype}, expected {expected.dtype}"
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                                   err_msg=f"output {name!r}")
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=f"output {name!r}")


def run_case(case):
    """Import the case's model, run it on every data set, assert the outputs match."""
    module = importer.load(case.model.SerializeToString())
    graph = case.model.graph
    initializers = {init.name for init in graph.initializer}
    input_names = [v.name for v in graph.input if v.name not in initializers]
    output_names = [v.name for v in graph.output]
    for inputs, expected in case.data_sets:
        arrays = [_as_array(x) for x in inputs]
        result = module(**dict(zip(input_names, arrays)))
        actual = _outputs_as_list(result, output_names)
        assert len(actual) == len(expected), \
            f"{len(actual)} outputs, expected {len(expected)}"
        for name, got, want in zip(output_names, actual, expected):
            compare(got, _as_array(want), case.rtol, case.atol, name)


def run_case_isolated(case):
    """run_case with warnings silenced and a time limit; returns None or the failure as a string."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"), time_limit(CASE_TIMEOUT_S):
            warnings.simplefilter("ignore")
            run_case(case)
    except Exception as error:  # noqa: BLE001 - the coverage table reports every failure kind
        lines = str(error).strip().splitlines()
        first = next((line.strip() for line in lines if line.strip()), "")
        return f"{type(error).__name__}: {first}"
    return None


# --------------------------------------------------------------------------------------------------
# The test.

def _params():
    params = []
    for name, case in sorted(backend_cases().items()):
        reason = classify(case)
        marks = []
        if reason is not None:
            marks.append(pytest.mark.skip(reason=reason))
        elif known_failure(name) is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=known_failure(name)))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.parametrize("name", _params())
def test_backend_node_case(name):
    case = backend_cases()[name]
    with warnings.catch_warnings(), np.errstate(all="ignore"), time_limit(CASE_TIMEOUT_S):
        warnings.simplefilter("ignore")
        run_case(case)


def test_the_filter_runs_every_case_of_a_registered_op_it_can():
    """The skip filter is not so eager that it hides registered ops: most cases whose ops are all
    registered are run, and the registry covers at least the ops every transformer needs."""
    cases = backend_cases()
    runnable = [c for c in cases.values() if classify(c) is None]
    registered = [c for c in cases.values() if not unsupported_ops(c)]
    assert len(runnable) >= 0.8 * len(registered), (len(runnable), len(registered))
    ops = Counter(case_op(c) for c in runnable)
    for op in ("MatMul", "Add", "Softmax", "Reshape", "Transpose"):
        assert ops[op] > 0, f"no runnable backend case for {op}"


def test_positional_and_named_inputs_agree():
    """The cases above feed inputs by name; positional calls (graph-input order) give the same."""
    case = backend_cases()["test_sub_bcast"]
    if classify(case) is not None:
        pytest.skip(classify(case))
    module = importer.load(case.model.SerializeToString())
    (a, b), (expected,) = case.data_sets[0]
    positional = _outputs_as_list(module(a, b), ["z"])[0]
    named = _outputs_as_list(module(y=b, x=a), ["z"])[0]
    compare(positional, expected, case.rtol, case.atol, "z")
    compare(named, expected, case.rtol, case.atol, "z")
