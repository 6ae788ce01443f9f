"""Regression tests for importer fixes: integer reductions, attribute-length checks, (1,)-shaped
norm scales, MaxPool's Indices output, the donated (in-place) attention Softmax, the tanh-form
Sigmoid, and `GraphModule.profile`. onnxruntime is the oracle where it runs the node."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from hypothesis import given, settings, strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import dreidel  # noqa: E402
from importers.onnx_to_dreidel import load  # noqa: E402
from importers.onnx_to_dreidel.errors import OnnxImportError  # noqa: E402

FEW = settings(max_examples=25, deadline=None, derandomize=True)


def model_of(nodes, inputs, outputs, initializers=(), opset=18):
    """inputs/outputs: (name, elem type, shape or None)."""
    graph = helper.make_graph(nodes, "regression", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs], list(initializers))
    for value in graph.output:  # unknown shape: an empty (but present) shape, as the checker wants
        value.type.tensor_type.shape.SetInParent()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def ort_run(model, feeds):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def dreidel_run(model, feeds):
    out = load(model.SerializeToString())(**feeds)
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in outs]


# -- integer reductions keep their dtype; means truncate toward zero ----------------------------------
@FEW
@given(op=st.sampled_from(["ReduceSum", "ReduceProd", "ReduceL1", "ReduceMean", "ReduceMax", "ReduceSumSquare"]),
       dtype=st.sampled_from([np.int32, np.int64]), axis=st.sampled_from([0, 1, -1]),
       keepdims=st.booleans(), seed=st.integers(0, 2**16))
def test_integer_reductions_match_onnxruntime_dtype_and_values(op, dtype, axis, keepdims, seed):
    x = np.random.default_rng(seed).integers(-9, 10, (3, 4)).astype(dtype)
    elem = TensorProto.INT32 if dtype == np.int32 else TensorProto.INT64
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=int(keepdims))
    model = model_of([node], [("x", elem, [3, 4])], [("y", elem, None)],
                     [numpy_helper.from_array(np.array([axis], np.int64), "axes")])
    try:
        (expected,) = ort_run(model, {"x": x})
    except Exception:  # noqa: BLE001 - this onnxruntime build has no kernel for the (op, dtype)
        pytest.skip(f"onnxruntime does not run {op} on {np.dtype(dtype)}")
    (got,) = dreidel_run(model, {"x": x})
    assert got.dtype == expected.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, expected)


def test_integer_mean_truncates_toward_zero():
    x = np.array([[-7, -6, -1], [1, 5, 7]], np.int32)  # means -14/3 → -4, 13/3 → 4 (floor would give -5)
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)
    model = model_of([node], [("x", TensorProto.INT32, [2, 3])], [("y", TensorProto.INT32, None)],
                     [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    (got,) = dreidel_run(model, {"x": x})
    np.testing.assert_array_equal(got, np.array([-4, 4], np.int32))


# -- attribute lengths ---------------------------------------------------------------------------------
BAD_ATTRIBUTES = [
    ("Conv", {"pads": [1, 1]}, "pads"), ("Conv", {"strides": [1, 1, 1]}, "strides"),
    ("Conv", {"dilations": [1]}, "dilations"), ("ConvTranspose", {"pads": [0, 0, 0]}, "pads"),
    ("ConvTranspose", {"strides": [2]}, "strides"), ("ConvTranspose", {"output_padding": [0, 0, 0]}, "output_padding"),
    ("MaxPool", {"pads": [1, 1]}, "pads"), ("MaxPool", {"strides": [1]}, "strides"),
    ("MaxPool", {"dilations": [1, 1, 1]}, "dilations"), ("AveragePool", {"dilations": [1, 1, 1]}, "dilations"),
    ("AveragePool", {"pads": [0, 0, 0, 0, 0, 0]}, "pads"),
]


@pytest.mark.parametrize("op, attrs, name", BAD_ATTRIBUTES, ids=[f"{o}-{n}" for o, _, n in BAD_ATTRIBUTES])
def test_wrong_attribute_lengths_are_refused_naming_node_and_attribute(op, attrs, name):
    inits, inputs = [], ["x"]
    if op in ("Conv", "ConvTranspose"):
        inits.append(numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w"))
        inputs.append("w")
    else:
        attrs = dict(attrs, kernel_shape=[2, 2])
    node = helper.make_node(op, inputs, ["y"], name="the_node", **attrs)
    model = model_of([node], [("x", TensorProto.FLOAT, [1, 2, 6, 5])], [("y", TensorProto.FLOAT, None)], inits,
                     opset=19)  # AveragePool has dilations from opset 19
    with pytest.raises(OnnxImportError) as info:
        dreidel_run(model, {"x": np.ones((1, 2, 6, 5), np.float32)})
    assert "the_node" in str(info.value) and name in str(info.value)


# -- spelled-out LayerNorm / RMSNorm with a broadcast (1,) scale -----------------------------------------
def _layer_norm_nodes(gamma_name, beta_name=None):
    nodes = [helper.make_node("ReduceMean", ["x", "ax"], ["m"]), helper.make_node("Sub", ["x", "m"], ["c"]),
             helper.make_node("Pow", ["c", "two"], ["p"]), helper.make_node("ReduceMean", ["p", "ax"], ["v"]),
             helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["c", "s"], ["n"]), helper.make_node("Mul", ["n", gamma_name], ["g"])]
    if beta_name:
        nodes.append(helper.make_node("Add", ["g", beta_name], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["g"], ["y"]))
    return nodes


@pytest.mark.parametrize("width", [1, 6])
def test_spelled_out_layer_norm_matches_onnxruntime_and_fuses_only_full_width_scales(width):
    rng = np.random.default_rng(width)
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "ax"), numpy_helper.from_array(np.float32(2.0), "two"),
             numpy_helper.from_array(np.float32(1e-5), "eps"),
             numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "beta")]
    model = model_of(_layer_norm_nodes("gamma", "beta"), [("x", TensorProto.FLOAT, [2, 3, 6])],
                     [("y", TensorProto.FLOAT, None)], inits)
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    (expected,) = ort_run(model, {"x": x})
    (got,) = dreidel_run(model, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    kinds = {type(m).__name__ for _, m in load(model.SerializeToString()).named_modules()}
    assert ("LayerNorm" in kinds) == (width == 6)


# -- MaxPool Indices --------------------------------------------------------------------------------------
@FEW
@given(spatial=st.sampled_from([1, 2, 3]), storage_order=st.sampled_from([0, 1]), stride=st.sampled_from([1, 2]),
       pad=st.sampled_from([0, 1]), seed=st.integers(0, 2**16))
def test_max_pool_indices_match_onnxruntime(spatial, storage_order, stride, pad, seed):
    shape = (2, 3) + (5, 4, 6)[:spatial]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2] * spatial, strides=[stride] * spatial,
                            pads=[pad] * 2 * spatial, storage_order=storage_order)
    model = model_of([node], [("x", TensorProto.FLOAT, list(shape))],
                     [("y", TensorProto.FLOAT, None), ("i", TensorProto.INT64, None)], opset=12)
    try:
        expected = ort_run(model, {"x": x})
    except Exception:  # noqa: BLE001
        pytest.skip("onnxruntime does not run this MaxPool")
    got = dreidel_run(model, {"x": x})
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    assert got[1].dtype == np.int64
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize("pads,ceil_mode", [([0, 0, 1, 1], 0), ([1, 0, 0, 1], 1), ([0, 0, 0, 0], 1)])
def test_max_pool_indices_with_asymmetric_pads_or_ceil_mode_match_onnxruntime(pads, ceil_mode):
    # the engine's max_pool takes per-side pads and ceil mode, so these are no longer refused
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2], pads=pads,
                            ceil_mode=ceil_mode)
    model = model_of([node], [("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                     [("y", TensorProto.FLOAT, None), ("i", TensorProto.INT64, None)], opset=12)
    x = np.random.default_rng(5).standard_normal((1, 2, 5, 5)).astype(np.float32)
    expected = ort_run(model, {"x": x})
    got = dreidel_run(model, {"x": x})
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


# -- attention: Softmax overwriting its MatMul scores ------------------------------------------------------
def _attention_model(scores_also_output):
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    outputs = [("y", TensorProto.FLOAT, None)] + ([("s", TensorProto.FLOAT, None)] if scores_also_output else [])
    return model_of(nodes, [("q", TensorProto.FLOAT, [2, 3, 50, 8]), ("kt", TensorProto.FLOAT, [2, 3, 8, 700]),
                            ("v", TensorProto.FLOAT, [2, 3, 700, 8])], outputs)


@pytest.mark.parametrize("scores_also_output", [False, True])
def test_attention_softmax_matches_onnxruntime_and_keeps_scores_read_elsewhere(scores_also_output):
    rng = np.random.default_rng(3)
    feeds = {"q": rng.standard_normal((2, 3, 50, 8)).astype(np.float32),  # 210,000 scores: the blocked path
             "kt": rng.standard_normal((2, 3, 8, 700)).astype(np.float32) * 3,
             "v": rng.standard_normal((2, 3, 700, 8)).astype(np.float32)}
    model = _attention_model(scores_also_output)
    expected = ort_run(model, feeds)
    with dreidel.no_grad():
        got = dreidel_run(model, feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_attention_softmax_gradients_with_autograd():
    rng = np.random.default_rng(4)
    model = model_of([helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["y"])],
                     [("q", TensorProto.FLOAT, [2, 3, 4]), ("kt", TensorProto.FLOAT, [2, 4, 5])],
                     [("y", TensorProto.FLOAT, None)])
    module = load(model.SerializeToString()).double()
    q = dreidel.Tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
    kt = dreidel.Tensor(rng.standard_normal((2, 4, 5)), requires_grad=True)
    weights = dreidel.Tensor(rng.standard_normal((2, 3, 5)))
    assert dreidel.gradcheck(lambda a, b: (module(a, b) * weights).sum(), q, kt)


# -- Sigmoid -------------------------------------------------------------------------------------------------
def test_sigmoid_matches_onnxruntime_without_overflow_and_has_gradients():
    x = np.array([[-200.0, -30.0, -1.5, 0.0, 0.25, 17.0, 90.0, 1e4]], np.float32)
    model = model_of([helper.make_node("Sigmoid", ["x"], ["y"])], [("x", TensorProto.FLOAT, [1, 8])],
                     [("y", TensorProto.FLOAT, None)])
    (expected,) = ort_run(model, {"x": x})
    with np.errstate(all="raise"):
        (got,) = dreidel_run(model, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    module = load(model.SerializeToString()).double()
    t = dreidel.Tensor(np.linspace(-4, 4, 8).reshape(1, 8), requires_grad=True)
    assert dreidel.gradcheck(lambda a: module(a).sum(), t)


# -- profile ---------------------------------------------------------------------------------------------------
def test_profile_lists_each_run_time_op_and_leaves_outputs_alone():
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w")
    model = model_of([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
                      helper.make_node("Softmax", ["t"], ["y"], axis=-1)],
                     [("x", TensorProto.FLOAT, [3, 4])], [("y", TensorProto.FLOAT, None)], [w])
    module = load(model.SerializeToString())
    x = rng.standard_normal((3, 4)).astype(np.float32)
    before = module(x).numpy()
    table = module.profile(x, repeats=2)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:-1]}
    assert set(rows) == {"Linear", "Tanh", "Softmax"}
    assert all(int(row[1]) == 1 for row in rows.values())  # calls per run
    np.testing.assert_array_equal(module(x).numpy(), before)


# -- BatchNormalization in training mode: batch statistics, ONNX's running-statistics outputs -------------
def test_batch_norm_training_mode_matches_the_onnx_reference_and_passes_gradcheck():
    from onnx.reference import ReferenceEvaluator
    rng = np.random.default_rng(11)
    params = {"scale": 1 + 0.1 * rng.standard_normal(3), "bias": rng.standard_normal(3),
              "mean": rng.standard_normal(3), "var": 1 + rng.random(3)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
    node = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y", "rm", "rv"],
                            training_mode=1, momentum=0.8, epsilon=1e-3)
    model = model_of([node], [("x", TensorProto.FLOAT, [4, 3, 5])],
                     [("y", TensorProto.FLOAT, None), ("rm", TensorProto.FLOAT, None), ("rv", TensorProto.FLOAT, None)],
                     inits, opset=15)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    expected = ReferenceEvaluator(model).run(None, {"x": x})
    got = dreidel_run(model, {"x": x})
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    module = load(model.SerializeToString()).double()
    xt = dreidel.Tensor(x.astype(np.float64), requires_grad=True)
    dreidel.gradcheck(lambda v: module(v)[0], xt)
