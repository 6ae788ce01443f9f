"""Corrupted and malformed ONNX files through `importers.onnx_to_dreidel`: clean errors, never a crash.

A small valid model (Conv -> Relu -> Reshape -> Gemm, built with onnx.helper) is corrupted in every way
we could think of: flipped bytes, truncation, random bytes, structural mutations (swapped op types,
dropped inputs, retyped or reshaped initializers...), wrong attributes, missing or dangling inputs,
duplicate outputs, a cycle, damaged external data or external data escaping the model's folder,
unsupported ops. Each must either load and run, or fail with a clean error: the importer's own
`OnnxImportError` (a ValueError), or at least a ValueError/TypeError with a message. An IndexError/
KeyError/AttributeError/... leaking out is an importer bug; a hang is caught by a time limit; a
segfault by running a batch of corruptions in a child process.

Single nodes with random attributes are also checked against onnxruntime: where it runs the node the
importer must give the same output (or refuse cleanly). Known importer bugs are xfail(strict=True)
regression tests, so a fix shows up as an XPASS failure (then drop the xfail).
"""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from timeouts import time_limit

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from hypothesis import HealthCheck, assume, given, settings, strategies as st  # noqa: E402

importer = pytest.importorskip("importers.onnx_to_dreidel")
errors = pytest.importorskip("importers.onnx_to_dreidel.errors")

TIME_LIMIT_S = 20
FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------------
# The valid model everything is a corruption of, and its numpy reference.

def _weights():
    rng = np.random.default_rng(0)
    conv_w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    conv_b = rng.standard_normal(3).astype(np.float32)
    gemm_w = rng.standard_normal((48, 5)).astype(np.float32)
    gemm_b = rng.standard_normal(5).astype(np.float32)
    return conv_w, conv_b, gemm_w, gemm_b


def make_model(conv_attrs=None, reshape_shape=(1, -1), gemm_attrs=None, nodes=None, initializers=None,
               opset=18):
    """x [1,2,4,4] -> Conv(3 filters 3x3, pad 1) -> Relu -> Reshape [1,48] -> Gemm(48->5) -> y [1,5]."""
    conv_w, conv_b, gemm_w, gemm_b = _weights()
    conv_attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]} if conv_attrs is None else conv_attrs
    gemm_attrs = {} if gemm_attrs is None else gemm_attrs
    if nodes is None:
        nodes = [
            helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", **conv_attrs),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Reshape", ["r", "shape"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "gemm_w", "gemm_b"], ["y"], name="fc", **gemm_attrs),
        ]
    if initializers is None:
        initializers = [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(conv_b, "conv_b"),
                        numpy_helper.from_array(np.array(reshape_shape, dtype=np.int64), "shape"),
                        numpy_helper.from_array(gemm_w, "gemm_w"), numpy_helper.from_array(gemm_b, "gemm_b")]
    graph = helper.make_graph(nodes, "fuzz_base", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def reference(x):
    """numpy forward of the base model."""
    conv_w, conv_b, gemm_w, gemm_b = _weights()
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((1, 3, 4, 4), dtype=np.float64)
    for i in range(4):
        for j in range(4):
            conv[0, :, i, j] = np.einsum("chw,ochw->o", padded[0, :, i:i + 3, j:j + 3], conv_w)
    conv += conv_b[None, :, None, None]
    return np.maximum(conv, 0).reshape(1, -1) @ gemm_w + gemm_b


X = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
BASE_BYTES = make_model().SerializeToString()


# --------------------------------------------------------------------------------------------------
# The contract.



def _first_output(result):
    if isinstance(result, dict):
        return next(iter(result.values()))
    if isinstance(result, (tuple, list)):
        return result[0]
    return result


def load_and_run(source, feeds=None, **load_kwargs):
    """Load then call (on X by default). Returns the output array, or the clean error raised at load
    or call time; anything else (unexpected exception type, empty message, a hang) fails the test."""
    try:
        with time_limit(TIME_LIMIT_S), np.errstate(all="ignore"):
            module = importer.load(source, **load_kwargs)
            out = _first_output(module(X) if feeds is None else module(**feeds))
            return np.asarray(out.numpy() if hasattr(out, "numpy") else out)
    except TimeoutError:
        raise
    except (ValueError, TypeError) as error:
        assert str(error).strip(), f"{type(error).__name__} with an empty message"
        return error
    except Exception as error:  # noqa: BLE001 - the point: report the leaking type
        pytest.fail(f"unexpected {type(error).__name__} leaked out of the importer: {error!r}")


def assert_clean_error(outcome, *words):
    """The outcome is an importer error whose message names every one of `words` (any case)."""
    assert isinstance(outcome, BaseException), f"expected an error, the model ran and gave {outcome!r}"
    assert isinstance(outcome, errors.OnnxImportError), \
        f"expected the importer's OnnxImportError, got {type(outcome).__name__}: {outcome}"
    message = str(outcome).lower()
    for word in words:
        assert str(word).lower() in message, f"error does not name {word!r}: {outcome}"


def test_base_model_runs_and_matches_numpy():
    """The uncorrupted model works, so every failure below is down to its corruption."""
    out = load_and_run(BASE_BYTES)
    assert not isinstance(out, BaseException), out
    np.testing.assert_allclose(out, reference(X), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Byte-level corruption (hypothesis).

FLIPS = dict(flips=st.lists(st.tuples(st.integers(0, len(BASE_BYTES) - 1), st.integers(1, 255)),
                            min_size=1, max_size=8))


@FUZZ
@given(**FLIPS)
def test_flipped_bytes_load_or_fail_cleanly(flips):
    corrupted = bytearray(BASE_BYTES)
    for position, mask in flips:
        corrupted[position] ^= mask
    load_and_run(bytes(corrupted))


@FUZZ
@given(st.integers(0, len(BASE_BYTES) - 1))
def test_truncated_file_fails_cleanly(length):
    outcome = load_and_run(BASE_BYTES[:length])
    if not isinstance(outcome, BaseException):
        # cutting exactly between two top-level fields can leave a valid smaller model: then it must
        # still compute the same thing (only trailing metadata can have been lost)
        np.testing.assert_allclose(outcome, reference(X), rtol=1e-4, atol=1e-4)


@FUZZ
@given(st.binary(min_size=0, max_size=512))
def test_random_bytes_fail_cleanly(data):
    load_and_run(data)


def test_empty_and_garbage_name_the_file(tmp_path):
    for content in (b"", b"not an onnx model at all\n", BASE_BYTES[:len(BASE_BYTES) // 2]):
        path = tmp_path / "broken.onnx"
        path.write_bytes(content)
        assert_clean_error(load_and_run(str(path)), "broken.onnx")
    assert_clean_error(load_and_run(str(tmp_path / "missing.onnx")), "missing.onnx")


def test_a_batch_of_corruptions_never_crashes_the_process():
    """Segfault guard: 300 corrupted variants loaded in a child process, which must exit normally
    and report no unexpected exception type."""
    script = textwrap.dedent("""
        import sys, numpy as np
        from importers.onnx_to_dreidel import load
        data = sys.stdin.buffer.read()
        rng = np.random.default_rng(7)
        x = np.zeros((1, 2, 4, 4), np.float32)
        bad = []
        for trial in range(300):
            b = bytearray(data)
            if trial % 3 == 0:
                b = b[: int(rng.integers(0, len(b)))]
            else:
                for p in rng.integers(0, len(b), int(rng.integers(1, 6))):
                    b[p] = int(rng.integers(0, 256))
            try:
                with np.errstate(all="ignore"):
                    load(bytes(b))(x)
            except (ValueError, TypeError):
                pass
            except Exception as e:
                bad.append(f"{trial}: {type(e).__name__}: {e}"[:200])
        print("\\n".join(bad))
    """)
    done = subprocess.run([sys.executable, "-c", script], input=BASE_BYTES, capture_output=True,
                          timeout=240, cwd=ROOT)
    assert done.returncode == 0, f"child died with {done.returncode}: {done.stderr.decode()[-2000:]}"
    assert not done.stdout.strip(), "unexpected exception types:\n" + done.stdout.decode()


# --------------------------------------------------------------------------------------------------
# Structurally wrong models.

def test_conv_kernel_shape_mismatching_its_weight():
    """Conv used to ignore kernel_shape instead of checking it against the weight (fixed)."""
    outcome = load_and_run(make_model(conv_attrs={"kernel_shape": [5, 5], "pads": [1, 1, 1, 1]})
                           .SerializeToString())
    assert_clean_error(outcome)


def test_reshape_to_an_impossible_shape():
    for shape in ((5, 7), (-1, -1), (7, -1)):
        assert_clean_error(load_and_run(make_model(reshape_shape=shape).SerializeToString()), "reshape")


def test_gemm_with_trans_a_seven():
    """transA=7 is either refused or read as 'transpose'; either way A^T [48,1] @ [48,5] can't run."""
    assert_clean_error(load_and_run(make_model(gemm_attrs={"transA": 7}).SerializeToString()))


def test_gemm_with_mismatched_weight():
    _, _, _, gemm_b = _weights()
    conv_w, conv_b, _, _ = _weights()
    inits = [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(conv_b, "conv_b"),
             numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape"),
             numpy_helper.from_array(np.ones((47, 5), np.float32), "gemm_w"),
             numpy_helper.from_array(gemm_b, "gemm_b")]
    assert_clean_error(load_and_run(make_model(initializers=inits).SerializeToString()))


def _nodes(**override):
    nodes = {
        "conv": helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv",
                                 kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        "relu": helper.make_node("Relu", ["c"], ["r"], name="relu"),
        "flatten": helper.make_node("Reshape", ["r", "shape"], ["f"], name="flatten"),
        "fc": helper.make_node("Gemm", ["f", "gemm_w", "gemm_b"], ["y"], name="fc"),
    }
    nodes.update(override)
    return [node for node in nodes.values() if node is not None]


# what -> (nodes, words the error must name)
STRUCTURAL = {
    "missing required input": (_nodes(conv=helper.make_node("Conv", ["x"], ["c"], name="conv")), ["conv"]),
    "dangling node input": (_nodes(relu=helper.make_node("Relu", ["nowhere"], ["r"], name="relu")), ["nowhere"]),
    "duplicate outputs": (_nodes(relu=helper.make_node("Relu", ["c"], ["c"], name="relu"),
                                 flatten=helper.make_node("Reshape", ["c", "shape"], ["f"], name="flatten")), ["'c'"]),
    "cycle": (_nodes(relu=helper.make_node("Relu", ["y"], ["r"], name="relu")), ["'y'"]),
    "missing graph output": (_nodes(fc=helper.make_node("Gemm", ["f", "gemm_w", "gemm_b"], ["z"], name="fc")), ["'y'"]),
    "unknown attribute": (_nodes(relu=helper.make_node("Relu", ["c"], ["r"], name="relu", alpha=0.5)), ["alpha"]),
}


@pytest.mark.parametrize("what", sorted(STRUCTURAL))
def test_structurally_broken_graph_fails_cleanly(what):
    nodes, words = STRUCTURAL[what]
    assert_clean_error(load_and_run(make_model(nodes=nodes).SerializeToString()), *words)


def _mutate(model, kind, pick, value):
    """One structural mutation of the base model (pick/value choose where and what)."""
    graph = model.graph
    node = graph.node[pick % len(graph.node)]
    tensor = graph.initializer[pick % len(graph.initializer)]
    if kind == "swap op type":
        node.op_type = ["Relu", "Gemm", "Conv", "Reshape", "Softmax", "Transpose", "Concat", "Add",
                        "MatMul", "Gather", "Split", "Slice", "LayerNormalization", "Pad"][value % 14]
    elif kind == "drop an input":
        if node.input:
            del node.input[value % len(node.input)]
    elif kind == "blank an input":
        if node.input:
            node.input[value % len(node.input)] = ""
    elif kind == "add an int attribute":
        node.attribute.append(helper.make_attribute(["axis", "perm", "group", "strides", "pads", "transB"][value % 6],
                                                    value - 3))
    elif kind == "scramble initializer dims":
        tensor.dims[:] = [value % 7 + 1] + list(tensor.dims[1:])
    elif kind == "retype initializer":
        tensor.data_type = [TensorProto.INT64, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BOOL,
                            TensorProto.STRING, TensorProto.BFLOAT16, TensorProto.UINT8, 99][value % 8]
    elif kind == "rename graph input":
        graph.input[0].name = f"renamed{value}"
    elif kind == "change opset":
        model.opset_import[0].version = value % 30
    elif kind == "zero or negative initializer dim":
        if tensor.dims:
            tensor.dims[value % len(tensor.dims)] = (value % 3) - 1
    elif kind == "retype graph input":
        graph.input[0].type.tensor_type.elem_type = [TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT16,
                                                     TensorProto.BOOL, TensorProto.STRING][value % 5]
    elif kind == "reshape graph input":
        dims = graph.input[0].type.tensor_type.shape.dim
        if value % 2:
            del dims[value % len(dims)]
        else:
            dims[value % len(dims)].dim_value = value % 5
    return model


MUTATIONS = dict(kinds=st.lists(st.sampled_from(["swap op type", "drop an input", "blank an input",
                                                 "add an int attribute", "scramble initializer dims",
                                                 "retype initializer", "rename graph input", "change opset",
                                                 "zero or negative initializer dim", "retype graph input",
                                                 "reshape graph input"]),
                                min_size=1, max_size=3),
                 pick=st.integers(0, 20), value=st.integers(0, 40))


@settings(FUZZ, max_examples=600)
@given(**MUTATIONS)
def test_structural_mutations_fail_cleanly(kinds, pick, value):
    model = make_model()
    for kind in kinds:
        model = _mutate(model, kind, pick, value)
    load_and_run(model.SerializeToString())


def test_gemm_with_a_one_dimensional_constant_weight():
    """Found by test_structural_mutations_fail_cleanly ('drop an input' on the Gemm: B = the bias);
    it leaked an IndexError from the Linear fusion (fixed)."""
    model = make_model()
    del model.graph.node[3].input[1]  # Gemm(f, gemm_b): valid for the checker, B is 1-D
    assert_clean_error(load_and_run(model.SerializeToString()))


def test_wrong_inputs_at_call_time_name_the_input():
    module = importer.load(BASE_BYTES)
    for call in (lambda: module(nope=X), lambda: module(X[0]), lambda: module(X.astype(np.int64)),
                 lambda: module(np.zeros((1, 2, 4, 5), np.float32)), lambda: module()):
        with pytest.raises(errors.OnnxImportError, match="'x'|\\bx\\b"):
            call()


# Attribute fuzzing: each op's attributes and integer inputs drawn at random. Where onnxruntime runs
# the node, the importer must give the same result or refuse cleanly; where it refuses (its refusals
# come from ONNX's own shape inference, i.e. the spec), the importer must refuse too rather than run
# to a made-up answer (INVALID_NODES below lists the ones found so far).

def _ort(model, feeds):
    """onnxruntime's output, or None when it refuses the model."""
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)[0]
    except Exception:  # noqa: BLE001 - any refusal by onnxruntime just means "no oracle"
        return None


def _single_node_model(node, inputs, initializers=(), opset=18):
    """One node; its output declared with the rank shape inference gives it (symbolic dims, so no
    declared size can disagree), or the first input's rank when inference gives up on the node."""
    def build(rank):
        output = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [f"d{i}" for i in range(rank)])
        graph = helper.make_graph([node], "fuzz_attr", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                                  [output], list(initializers))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return model

    rank = len(inputs[0][2])
    try:
        inferred = onnx.shape_inference.infer_shapes(build(rank), strict_mode=True)
        rank = len(inferred.graph.output[0].type.tensor_type.shape.dim)
    except Exception:  # noqa: BLE001 - an invalid node: keep the guess, the importer must refuse it
        pass
    return build(rank)


def importer_outcome(model, feeds):
    """The importer's output on a ModelProto, or the clean error it raised (see load_and_run)."""
    return load_and_run(model.SerializeToString(), feeds)


def check_against_ort(model, feeds):
    """Importer vs onnxruntime on one model: equal outputs when both run, a clean error otherwise;
    a node onnxruntime refuses must be refused too (not run to a made-up answer)."""
    out = importer_outcome(model, feeds)
    expected = _ort(model, feeds)
    if isinstance(out, BaseException):
        return
    if expected is None:
        pytest.fail(f"onnxruntime refuses this node, the importer ran it: {out.shape}")
    assert out.shape == expected.shape, (out.shape, expected.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


X3 = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)
some_ints = st.integers(-3, 6)
mostly_valid = st.integers(1, 3)  # strides/kernels that make a valid node more often than not


@FUZZ
@given(kernel=st.one_of(st.just("weight"), st.just([]), st.lists(st.integers(-1, 5), max_size=3)),
       strides=st.one_of(st.lists(mostly_valid, min_size=2, max_size=2), st.lists(some_ints, max_size=3)),
       pads=st.one_of(st.lists(st.integers(0, 2), min_size=4, max_size=4), st.lists(some_ints, max_size=5)),
       dilations=st.one_of(st.lists(st.integers(1, 2), min_size=2, max_size=2), st.lists(some_ints, max_size=3)),
       group=st.sampled_from([1, 1, 1, 2, 0, -1, 3]), weight_hw=st.sampled_from([(3, 3), (1, 1), (2, 3)]))
def test_conv_with_random_attributes(kernel, strides, pads, dilations, group, weight_hw):
    weight = np.random.default_rng(4).standard_normal((4, 2 // max(group, 1) or 1, *weight_hw)).astype(np.float32)
    attrs = {"group": group}
    kernel = list(weight_hw) if kernel == "weight" else kernel  # the right kernel_shape, often
    for name, value in (("kernel_shape", kernel), ("strides", strides), ("pads", pads), ("dilations", dilations)):
        if value:
            attrs[name] = value
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    model = _single_node_model(node, [("x", TensorProto.FLOAT, [1, 2, 5, 5])], [numpy_helper.from_array(weight, "w")])
    x = np.random.default_rng(5).standard_normal((1, 2, 5, 5)).astype(np.float32)
    check_against_ort(model, {"x": x})


@FUZZ
@given(shape=st.lists(st.integers(-2, 40), min_size=0, max_size=4), allowzero=st.integers(0, 1))
def test_reshape_with_random_shapes(shape, allowzero):
    node = helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=allowzero)
    model = _single_node_model(node, [("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                               [numpy_helper.from_array(np.array(shape, dtype=np.int64), "s")])
    check_against_ort(model, {"x": X})


@FUZZ
@given(trans_a=st.integers(0, 1) | st.integers(-2, 9), trans_b=st.integers(0, 1) | st.integers(-2, 9),
       alpha=st.floats(-2, 2), beta=st.floats(-2, 2), a_shape=st.sampled_from([(3, 4), (4, 3), (3, 3), (2, 3, 4)]),
       with_bias=st.booleans())
def test_gemm_with_random_attributes(trans_a, trans_b, alpha, beta, a_shape, with_bias):
    w = np.arange(20, dtype=np.float32).reshape(4, 5) / 10
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.arange(5, dtype=np.float32), "c")]
    node = helper.make_node("Gemm", ["a", "w", "c"] if with_bias else ["a", "w"], ["y"], transA=trans_a,
                            transB=trans_b, alpha=alpha, beta=beta)
    model = _single_node_model(node, [("a", TensorProto.FLOAT, list(a_shape))], inits)
    check_against_ort(model, {"a": np.random.default_rng(2).standard_normal(a_shape).astype(np.float32)})


def tensor_op_model(op, values, axis):
    """A one-node model of `op` on x [2,3,4] whose integer attribute/input comes from values/axis."""
    ints = np.array(values, dtype=np.int64)
    inits, inputs, attrs, outputs = [], ["x"], {}, ["y"]
    if op == "Transpose":
        if values:  # no perm at all means "reverse the axes"
            attrs["perm"] = values
    elif op in ("Softmax", "Flatten", "Concat", "LayerNormalization", "Gather", "Split"):
        attrs["axis"] = axis
    if op == "Concat":
        inputs = ["x", "x"]
    elif op == "LayerNormalization":
        inputs = ["x", "scale"]
        inits.append(numpy_helper.from_array(np.ones(4, np.float32), "scale"))
    elif op == "Gather":
        inputs = ["x", "i"]
        inits.append(numpy_helper.from_array(ints, "i"))
    elif op == "Split":
        inputs = ["x", "split"]
        inits.append(numpy_helper.from_array(np.abs(ints), "split"))
        outputs = ["y"] + [f"y{i}" for i in range(1, len(values))]
    elif op in ("Squeeze", "Unsqueeze", "ReduceMean"):
        inputs = ["x", "axes"]
        inits.append(numpy_helper.from_array(ints, "axes"))
    elif op == "Slice":
        inputs = ["x", "starts", "ends", "axes"]
        n = len(values)
        inits += [numpy_helper.from_array(ints, "starts"), numpy_helper.from_array(ints[::-1].copy(), "ends"),
                  numpy_helper.from_array(np.arange(n, dtype=np.int64) - (axis % 2) * n, "axes")]
    elif op == "Pad":
        inputs = ["x", "pads"]
        inits.append(numpy_helper.from_array(ints, "pads"))
    elif op in ("Expand", "Tile"):
        inputs = ["x", "shape"]
        inits.append(numpy_helper.from_array(np.abs(ints), "shape"))
    node = helper.make_node(op, inputs, outputs, **attrs)
    return _single_node_model(node, [("x", TensorProto.FLOAT, [2, 3, 4])], inits)


TENSOR_OPS = ["Transpose", "Softmax", "Concat", "Gather", "Split", "Flatten", "Squeeze", "Unsqueeze", "ReduceMean",
              "Slice", "Pad", "Expand", "Tile", "LayerNormalization"]


TENSOR_OP_DRAWS = dict(op=st.sampled_from(TENSOR_OPS), values=st.lists(st.integers(-6, 6), max_size=5),
                       axis=st.integers(-6, 6))


@settings(FUZZ, max_examples=600)
@given(**TENSOR_OP_DRAWS)
def test_tensor_ops_with_random_axes_and_indices(op, values, axis):
    """Out-of-range axes, perms, indices, pads, repeats: each op's integer attribute/input at random."""
    check_against_ort(tensor_op_model(op, values, axis), {"x": X3})


def consensus(model, feeds):
    """onnxruntime's output when onnx's reference evaluator agrees with it, else None (the two
    differ on a few edge cases, e.g. SAME padding when the kernel is smaller than the stride)."""
    from onnx.reference import ReferenceEvaluator
    expected = _ort(model, feeds)
    if expected is None:
        return None
    try:
        with np.errstate(all="ignore"):
            reference_out = ReferenceEvaluator(model).run(None, feeds)[0]
    except Exception:  # noqa: BLE001 - no second opinion
        return None
    if reference_out.shape != expected.shape or not np.allclose(reference_out, expected, rtol=1e-4, atol=1e-5):
        return None
    return expected


def pool_conv_model(op, hw, group, attrs):
    """A Conv/ConvTranspose/MaxPool/AveragePool node on x [1,2,6,5] (weights of spatial shape hw)."""
    inits, inputs = [], ["x"]
    if op in ("Conv", "ConvTranspose"):
        shape = (4, 2 // group, *hw) if op == "Conv" else (2, 4 // group, *hw)
        inits.append(numpy_helper.from_array(np.random.default_rng(6).standard_normal(shape).astype(np.float32), "w"))
        inputs.append("w")
        attrs = dict(attrs, group=group)
    else:
        attrs = dict(attrs, kernel_shape=list(hw))
        attrs.pop("output_padding", None)
    if op != "AveragePool":
        attrs.pop("count_include_pad", None)
    if op not in ("MaxPool", "AveragePool"):
        attrs.pop("ceil_mode", None)
    node = helper.make_node(op, inputs, ["y"], **attrs)
    return _single_node_model(node, [("x", TensorProto.FLOAT, [1, 2, 6, 5])], inits, opset=19)


X4 = np.random.default_rng(7).standard_normal((1, 2, 6, 5)).astype(np.float32)
pairs = st.lists(st.integers(1, 3), min_size=2, max_size=2)


def no_pool_oracle(op, hw, strides, dilations, auto_pad):
    """Pooling geometries left out of the comparison: SAME pooling with dilations, where onnxruntime
    and the reference evaluator both leave dilation out of the padding (the spec's formula keeps it,
    so does the importer); SAME pooling whose padding comes out negative (kernel extent < stride),
    which onnxruntime refuses or crops depending on its code path: no reliable oracle."""
    if op in ("MaxPool", "AveragePool") and auto_pad.startswith("SAME"):
        strides, dilations = strides or [1, 1], dilations or [1, 1]
        if max(dilations) > 1:
            return True
        for size, k, s, d in zip((6, 5), hw, strides, dilations):
            if (-(-size // s) - 1) * s + (k - 1) * d + 1 - size < 0:
                return True
    return False


def test_maxpool_ceil_mode_with_asymmetric_pads():
    """Found by the geometry fuzzer: MaxPool padded asymmetric pads with -inf first, then applied
    ceil_mode to the padded size, keeping a last window that starts in the end padding (fixed)."""
    model = pool_conv_model("MaxPool", (3, 3), 1, {"ceil_mode": 1, "pads": [0, 0, 1, 1], "strides": [3, 2]})
    expected = consensus(model, {"x": X4})
    assert expected is not None and expected.shape == (1, 2, 2, 3)
    out = importer_outcome(model, {"x": X4})
    assert not isinstance(out, BaseException) and out.shape == expected.shape, out


GEOMETRIES = dict(op=st.sampled_from(["Conv", "ConvTranspose", "MaxPool", "AveragePool"]),
                  hw=st.sampled_from([(3, 3), (1, 1), (2, 3)]), group=st.sampled_from([1, 2]),
                  strides=st.none() | pairs, dilations=st.none() | st.lists(st.integers(1, 2), min_size=2, max_size=2),
                  pads=st.none() | st.lists(st.integers(0, 2), min_size=4, max_size=4),
                  auto_pad=st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
                  ceil_mode=st.integers(0, 1), count_include_pad=st.integers(0, 1),
                  output_padding=st.none() | st.lists(st.integers(0, 1), min_size=2, max_size=2))


@settings(FUZZ, max_examples=300)
@given(**GEOMETRIES)
def test_conv_and_pool_geometry_matches_onnxruntime(op, hw, group, strides, dilations, pads, auto_pad, ceil_mode,
                                                    count_include_pad, output_padding):
    """Valid geometry (strides, dilations, pads, auto_pad, ceil_mode...) gives onnxruntime's output
    wherever onnx's reference evaluator agrees with onnxruntime."""
    attrs = {"ceil_mode": ceil_mode, "count_include_pad": count_include_pad}
    for name, value in (("strides", strides), ("dilations", dilations), ("output_padding", output_padding)):
        if value is not None:
            attrs[name] = value
    if auto_pad != "NOTSET":
        attrs["auto_pad"] = auto_pad
    elif pads is not None:
        attrs["pads"] = pads
    assume(not no_pool_oracle(op, hw, strides, dilations, auto_pad))
    model = pool_conv_model(op, hw, group, attrs)
    expected = consensus(model, {"x": X4})
    assume(expected is not None)
    out = importer_outcome(model, {"x": X4})
    if isinstance(out, errors.UnsupportedOpsError):
        return
    assert not isinstance(out, BaseException), f"refused a node onnxruntime runs: {out}"
    assert out.shape == expected.shape, (out.shape, expected.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


# Integer arithmetic must keep ONNX's dtypes and rounding (numpy promotes int32 sums to int64, divides
# ints to floats, floors where ONNX truncates...): exact match with onnxruntime, dtype included.
_INT_A = np.array([[-7, -6, -1], [0, 5, 7]])
_INT_B = np.array([[2, -4, 3], [5, -3, 7]])
INTEGER_NODES = {
    "Div": ("Div", {}, True), "Mod": ("Mod", {}, True), "Mod fmod": ("Mod", {"fmod": 1}, True),
    "Mul": ("Mul", {}, True), "Max": ("Max", {}, True), "Abs": ("Abs", {}, False), "Neg": ("Neg", {}, False),
    "Sign": ("Sign", {}, False), "ReduceSum": ("ReduceSum", {}, "axes"), "ReduceProd": ("ReduceProd", {}, "axes"),
    "ReduceMean": ("ReduceMean", {}, "axes"), "ReduceL1": ("ReduceL1", {}, "axes"),
    "ReduceMax": ("ReduceMax", {}, "axes"), "CumSum": ("CumSum", {}, "axis"),
}
# (integer reductions used to come back int64 for int32 input, and ReduceMean float64: fixed)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
@pytest.mark.parametrize("what", sorted(INTEGER_NODES))
def test_integer_ops_keep_dtype_and_rounding(what, dtype):
    op, attrs, second = INTEGER_NODES[what]
    elem = TensorProto.INT32 if dtype == "int32" else TensorProto.INT64
    inputs, feeds, inits = [("a", elem, [2, 3])], {"a": _INT_A.astype(dtype)}, []
    names = ["a"]
    if second is True:
        inputs.append(("b", elem, [2, 3]))
        feeds["b"] = _INT_B.astype(dtype)
        names.append("b")
    elif second:
        inits.append(numpy_helper.from_array(np.array([1] if second == "axes" else 1, dtype=np.int64), "k"))
        names.append("k")
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph([node], "ints", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    graph.output[0].type.tensor_type.shape.SetInParent()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    expected = _ort(model, feeds)
    assert expected is not None, "onnxruntime refused the node"
    out = importer_outcome(model, feeds)
    assert not isinstance(out, BaseException), out
    assert out.dtype == expected.dtype, f"dtype {out.dtype}, onnxruntime gives {expected.dtype}"
    np.testing.assert_array_equal(out, expected)


# Invalid nodes (onnxruntime and ONNX shape inference refuse them) that the importer ran anyway,
# returning a made-up answer instead of an error, when the fuzzers above found them (all fixed since).
INVALID_NODES = {
    "Flatten axis 4 > rank 3": ("Flatten", [], 4),
    "Gather axis 6 out of range": ("Gather", [], 6),
    "LayerNormalization axis 4 out of range": ("LayerNormalization", [], 4),
    "ReduceMean axes [3, 5] out of range": ("ReduceMean", [3, 5], 0),
    "Slice axes [0..4] on rank 3": ("Slice", [1, 5, 0, -6, 2], 0),
    "Tile 2 repeats for rank 3": ("Tile", [1, 3], 0),
    "Unsqueeze axes repeated": ("Unsqueeze", [-4, -5, -5, 5, -3], 0),
    "Reshape dim -2": ("Reshape", [-2], 0),
    "Gemm rank-1 A": ("Gemm", [], 0),
    "Transpose perm [4, 5, 0] out of range": ("Transpose", [4, 5, 0], 0),
    "Pad 5 pads for rank 3": ("Pad", [1, 0, 3, 3, 0], 0),
    "CumSum axis 3 on rank 3": ("CumSum", [3], 0),
    "Conv with 2 pads for 2 spatial axes": ("Conv", {"pads": [1, 1]}, 0),
    "ConvTranspose with 2 pads for 2 spatial axes": ("ConvTranspose", {"pads": [1, 1]}, 0),
    "AveragePool with 3 dilations for 2 spatial axes": ("AveragePool", {"dilations": [1, 1, 1]}, 0),
}


def _silently_accepted_model(what):
    op, values, axis = INVALID_NODES[what]
    if op == "Reshape":
        node = helper.make_node("Reshape", ["x", "s"], ["y"])
        return _single_node_model(node, [("x", TensorProto.FLOAT, [2, 3, 4])],
                                  [numpy_helper.from_array(np.array(values, dtype=np.int64), "s")])
    if op in ("Conv", "ConvTranspose", "AveragePool"):
        return pool_conv_model(op, (3, 3), 1, values)
    if op == "CumSum":
        node = helper.make_node("CumSum", ["x", "axis"], ["y"])
        return _single_node_model(node, [("x", TensorProto.FLOAT, [2, 3, 4])],
                                  [numpy_helper.from_array(np.array(values[0], dtype=np.int64), "axis")])
    if op == "Gemm":
        node = helper.make_node("Gemm", ["x", "w"], ["y"])
        return _single_node_model(node, [("x", TensorProto.FLOAT, [4])],
                                  [numpy_helper.from_array(np.ones((4, 5), np.float32), "w")])
    return tensor_op_model(op, values, axis)


@pytest.mark.parametrize("what", sorted(INVALID_NODES))
def test_invalid_node_is_refused_not_run(what):
    model = _silently_accepted_model(what)
    assert_clean_error(importer_outcome(model, _silently_accepted_feeds(what)))


def _silently_accepted_feeds(what):
    if INVALID_NODES[what][0] in ("Conv", "ConvTranspose", "AveragePool"):
        return {"x": X4}
    return {"x": np.ones(4, np.float32) if what == "Gemm rank-1 A" else X3}


def test_the_silently_accepted_nodes_are_really_invalid():
    """Keeps the list above honest: onnxruntime refuses every one of those nodes."""
    for what in INVALID_NODES:
        assert _ort(_silently_accepted_model(what), _silently_accepted_feeds(what)) is None, what



def _bomb(nodes, initializers):
    graph = helper.make_graph(nodes, "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _f32(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.float32), name)


# Tiny files asking for terabytes (sizes far beyond RAM + swap, so even without the importer's guard
# numpy's allocation would fail at once rather than eat the machine's memory).
BOMBS = {
    "Range to 1e13": ([helper.make_node("Range", ["s", "l", "d"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])],
                      [_f32("s", 0.0), _f32("l", 1e13), _f32("d", 1.0)]),
    "ConstantOfShape 1e7 x 1e7": ([helper.make_node("ConstantOfShape", ["shape"], ["c"]),
                                   helper.make_node("Add", ["c", "x"], ["y"])], [_i64("shape", [10**7, 10**7])]),
    "Expand to 1e7 x 1e7": ([helper.make_node("Expand", ["x", "shape"], ["e"]),
                             helper.make_node("Add", ["e", "x"], ["y"])], [_i64("shape", [10**7, 10**7])]),
    "Tile by 1e13": ([helper.make_node("Tile", ["x", "repeats"], ["y"])], [_i64("repeats", [10**13])]),
}


@pytest.mark.parametrize("what", sorted(BOMBS))
def test_size_bombs_are_refused_cleanly(what):
    outcome = importer_outcome(_bomb(*BOMBS[what]), {"x": np.ones(1, np.float32)})
    assert_clean_error(outcome)


# Near misses of the spelled-out LayerNorm / RMSNorm / GELU chains the importer fuses into modules:
# only the exact pattern may be fused, and the result must match onnx's reference evaluator (not
# onnxruntime: its own LayerNorm fusion also fires on Pow(·, 3), a wrong answer). A (1,)-shaped gamma
# used to be fused into LayerNorm(1)/RMSNorm(1), which then refused every input (fixed).

def _f(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def layer_norm_chain(power=2.0, axes=(-1,), gamma_shape=(4,)):
    g = np.random.default_rng(9).standard_normal(gamma_shape)
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["mean"]), helper.make_node("Sub", ["x", "mean"], ["c"]),
             helper.make_node("Pow", ["c", "power"], ["sq"]), helper.make_node("ReduceMean", ["sq", "axes"], ["var"]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["std"]),
             helper.make_node("Div", ["c", "std"], ["n"]), helper.make_node("Mul", ["n", "gamma"], ["gn"]),
             helper.make_node("Add", ["gn", "beta"], ["y"])]
    return nodes, [_i64("axes", list(axes)), _f("power", power), _f("eps", 1e-5), _f("gamma", g), _f("beta", -g)]


def rms_norm_chain(power=2.0, gamma_shape=(4,)):
    nodes = [helper.make_node("Pow", ["x", "power"], ["sq"]), helper.make_node("ReduceMean", ["sq", "axes"], ["ms"]),
             helper.make_node("Add", ["ms", "eps"], ["me"]), helper.make_node("Sqrt", ["me"], ["rms"]),
             helper.make_node("Reciprocal", ["rms"], ["inv"]), helper.make_node("Mul", ["x", "inv"], ["n"]),
             helper.make_node("Mul", ["n", "gamma"], ["y"])]
    gamma = np.random.default_rng(9).standard_normal(gamma_shape)
    return nodes, [_i64("axes", [-1]), _f("power", power), _f("eps", 1e-5), _f("gamma", gamma)]


def gelu_chain(root2=2 ** 0.5, one=1.0, half=0.5):
    nodes = [helper.make_node("Div", ["x", "root2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    return nodes, [_f("root2", root2), _f("one", one), _f("half", half)]


CHAINS = {
    "LayerNorm": layer_norm_chain(), "LayerNorm with Pow 3": layer_norm_chain(power=3.0),
    "LayerNorm over axis -2": layer_norm_chain(axes=(-2,), gamma_shape=(3, 1)),
    "LayerNorm with gamma (1,)": layer_norm_chain(gamma_shape=(1,)),
    "RMSNorm": rms_norm_chain(), "RMSNorm with Pow 3": rms_norm_chain(power=3.0),
    "RMSNorm with gamma (1,)": rms_norm_chain(gamma_shape=(1,)),
    "GELU": gelu_chain(), "GELU with 1.5 for sqrt 2": gelu_chain(root2=1.5), "GELU with 2 for 1": gelu_chain(one=2.0),
    "GELU with 0.4 for 1/2": gelu_chain(half=0.4),
}


@pytest.mark.parametrize("what", sorted(CHAINS))
def test_fused_chains_and_near_misses_match_the_reference(what):
    from onnx.reference import ReferenceEvaluator
    nodes, inits = CHAINS[what]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    x = np.random.default_rng(10).standard_normal((2, 3, 4)).astype(np.float32)
    with np.errstate(all="ignore"):
        expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    out = importer_outcome(model, {"x": x})
    assert not isinstance(out, BaseException), out
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4, equal_nan=True)
    fused = {type(module).__name__ for _, module in importer.load(model.SerializeToString()).named_modules()}
    kind = what.split()[0]  # the module an exact chain becomes; a near miss must stay primitive ops
    assert (kind in fused) == (what == kind), f"fused modules {sorted(fused)}"


# The MatMul/Gemm (+ bias Add) -> nn.Linear fusion and its near misses, against the reference.
_W = np.random.default_rng(11).standard_normal((4, 6)).astype(np.float32)
_B = np.random.default_rng(12).standard_normal(6).astype(np.float32)
LINEAR_CASES = {
    "MatMul + Add": ([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])], _B),
    "bias first": ([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["b", "m"], ["y"])], _B),
    "bias (1, 6)": ([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
                    _B.reshape(1, 6)),
    "bias (3, 6) is no bias": ([helper.make_node("MatMul", ["x", "w"], ["m"]),
                                helper.make_node("Add", ["m", "b"], ["y"])], np.tile(_B, (3, 1))),
    "Sub, not Add": ([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Sub", ["m", "b"], ["y"])], _B),
    "MatMul read twice": ([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
                           helper.make_node("Mul", ["a", "m"], ["y"])], _B),
    "Gemm transB alpha beta": ([helper.make_node("Gemm", ["x2", "wt", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)], _B),
    "Gemm transA": ([helper.make_node("Transpose", ["x2"], ["xt"]),
                     helper.make_node("Gemm", ["xt", "w", "b"], ["y"], transA=1)], _B),
}


@pytest.mark.parametrize("what", sorted(LINEAR_CASES))
def test_linear_fusion_and_near_misses_match_the_reference(what):
    from onnx.reference import ReferenceEvaluator
    nodes, bias = LINEAR_CASES[what]
    if nodes[-1].op_type == "Gemm":  # Gemm wants 2-D A: flatten x [2, 3, 4] to [6, 4] first
        nodes = [helper.make_node("Reshape", ["x", "shape2d"], ["x2"])] + nodes
    inits = [_f("w", _W), _f("wt", _W.T), _f("b", bias), _i64("shape2d", [6, 4])]
    out_dims = ["rows", "cols"] if "Gemm" in what else ["batch", "rows", "cols"]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    x = np.random.default_rng(13).standard_normal((2, 3, 4)).astype(np.float32)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    out = importer_outcome(model, {"x": x})
    assert not isinstance(out, BaseException), out
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# External data and unsupported ops.

def _external_model(location):
    """The base model with gemm_w stored externally at `location`."""
    model = make_model()
    for tensor in model.graph.initializer:
        if tensor.name == "gemm_w":
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", "0"), ("length", str(48 * 5 * 4))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    return model


def test_external_data_inside_the_folder_loads(tmp_path):
    _, _, gemm_w, _ = _weights()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(gemm_w.tobytes())
    path = tmp_path / "model.onnx"
    path.write_bytes(_external_model("weights/w.bin").SerializeToString())
    out = load_and_run(str(path))
    assert not isinstance(out, BaseException), out
    np.testing.assert_allclose(out, reference(X), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("location", ["OUTSIDE", "../w.bin", "sub/../../w.bin", "LINK"])
def test_external_data_escaping_the_folder_is_refused(tmp_path, location):
    _, _, gemm_w, _ = _weights()
    outside = tmp_path / "w.bin"
    outside.write_bytes(gemm_w.tobytes())  # a real file, so only the location check can refuse it
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    if location == "OUTSIDE":
        location = str(outside)  # absolute
    if location == "LINK":
        os.symlink(outside, folder / "link.bin")
        location = "link.bin"
    path = folder / "model.onnx"
    path.write_bytes(_external_model(location).SerializeToString())
    assert_clean_error(load_and_run(str(path)), location)


@pytest.mark.parametrize("damage", ["truncated file", "offset past the end", "missing file", "wrong length"])
def test_damaged_external_data_fails_cleanly(tmp_path, damage):
    _, _, gemm_w, _ = _weights()
    data = gemm_w.tobytes()
    model = _external_model("w.bin")
    entries = {e.key: e for t in model.graph.initializer for e in t.external_data}
    if damage == "truncated file":
        data = data[:100]
    elif damage == "offset past the end":
        entries["offset"].value = str(len(data))
    elif damage == "wrong length":
        entries["length"].value = "12"
    if damage != "missing file":
        (tmp_path / "w.bin").write_bytes(data)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    assert_clean_error(load_and_run(str(path)), "w.bin" if damage != "wrong length" else "gemm_w")


def test_external_data_location_not_utf8(tmp_path):
    """Found by test_real_export_with_flipped_bytes_fails_cleanly (a flip inside a location string):
    protobuf hands the location back as bytes, and Path(bytes) raised a bare TypeError (fixed)."""
    raw = _external_model("w.bin").SerializeToString().replace(b"w.bin", b"w\xffbin")
    outcome = load_and_run(raw, external_data_dir=str(tmp_path))
    assert_clean_error(outcome, "gemm_w")


def test_external_data_given_as_bytes_needs_a_folder():
    assert_clean_error(load_and_run(_external_model("w.bin").SerializeToString()), "w.bin")


def test_unsupported_ops_are_listed_all_at_once_with_counts():
    """Three made-up ops, one used twice: one error names all three, and the count 2."""
    nodes = [helper.make_node("FrobnicateV2", ["x"], ["a"], domain="com.example"),
             helper.make_node("FrobnicateV2", ["a"], ["b"], domain="com.example"),
             helper.make_node("Wobble", ["b"], ["c"], domain="com.example"),
             helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("Zorch", ["d"], ["y"], domain="com.example")]
    graph = helper.make_graph(nodes, "made_up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.example", 1)])
    outcome = load_and_run(model.SerializeToString())
    assert_clean_error(outcome, "FrobnicateV2", "Wobble", "Zorch", "com.example")
    assert isinstance(outcome, errors.UnsupportedOpsError), type(outcome)
    assert outcome.unsupported == {("com.example", "FrobnicateV2", 1): 2, ("com.example", "Wobble", 1): 1,
                                   ("com.example", "Zorch", 1): 1}
    frob_line = next(line for line in str(outcome).splitlines() if "FrobnicateV2" in line)
    assert re.search(r"\b2\b", frob_line.replace("FrobnicateV2", "")), f"no count 2 in {frob_line!r}"
    assert "Relu" not in str(outcome)


def _chain_model(op_types, domain=""):
    """x -> op_types[0] -> op_types[1] -> ... -> y, every op in `domain`, float [2] all along."""
    names = ["x"] + [f"v{i}" for i in range(len(op_types) - 1)] + ["y"]
    nodes = [helper.make_node(op, [names[i]], [names[i + 1]], domain=domain) for i, op in enumerate(op_types)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_real_onnx_ops_without_converter_are_listed_all_at_once():
    """Real ai.onnx ops the registry lacks: one UnsupportedOpsError names each with its count."""
    registered = {op for domain, op, _ in importer.supported_ops() if domain == ""}
    missing = [op for op in ("Shrink", "Softsign", "ThresholdedRelu", "Sinh", "Cosh", "Acos", "Asin", "Atan",
                             "Tan", "Celu") if op not in registered][:3]
    if len(missing) < 3:
        pytest.skip(f"the registry covers all but {missing} of the candidate unary ops")
    outcome = load_and_run(_chain_model([missing[0], "Relu", missing[1], missing[0], missing[2]])
                           .SerializeToString())
    assert isinstance(outcome, errors.UnsupportedOpsError), outcome
    assert outcome.unsupported == {("", missing[0], 18): 2, ("", missing[1], 18): 1, ("", missing[2], 18): 1}
    assert_clean_error(outcome, *missing)


def test_made_up_default_domain_ops_are_listed_all_at_once():
    """Made-up ai.onnx ops fail onnx.checker; the unsupported-op scan must still name them all
    (it used to run after the checker, which names only the first)."""
    outcome = load_and_run(_chain_model(["Frobnicate", "Frobnicate", "Wobble", "Zorch"]).SerializeToString())
    assert_clean_error(outcome, "Frobnicate", "Wobble", "Zorch")


# --------------------------------------------------------------------------------------------------
# A real export: the 3-D UNet fixture (PyTorch exporter, external weights), corrupted.

UNET_DIR = os.path.join(ROOT, "..", "shared", "onnx", "unet3d-random")


@pytest.fixture(scope="module")
def unet_copy(tmp_path_factory):
    """A private copy of the UNet fixture folder (model bytes, folder path)."""
    if not os.path.isfile(os.path.join(UNET_DIR, "model.onnx")):
        pytest.skip("the shared ONNX fixtures are not here")
    folder = tmp_path_factory.mktemp("unet")
    for name in ("model.onnx", "model.onnx.data"):
        with open(os.path.join(UNET_DIR, name), "rb") as source:
            (folder / name).write_bytes(source.read())
    return (folder / "model.onnx").read_bytes(), folder


@settings(FUZZ, max_examples=25)
@given(flips=st.lists(st.tuples(st.integers(0, 40_000), st.integers(1, 255)), min_size=1, max_size=4))
def test_real_export_with_flipped_bytes_fails_cleanly(unet_copy, flips):
    model_bytes, folder = unet_copy
    corrupted = bytearray(model_bytes)
    for position, mask in flips:
        corrupted[position % len(corrupted)] ^= mask
    x = np.random.default_rng(8).standard_normal((1, 1, 32, 32, 32)).astype(np.float32)
    load_and_run(bytes(corrupted), {"input": x}, external_data_dir=str(folder))


def test_real_export_with_truncated_weights_names_the_file(unet_copy, tmp_path):
    model_bytes, folder = unet_copy
    (tmp_path / "model.onnx").write_bytes(model_bytes)
    (tmp_path / "model.onnx.data").write_bytes((folder / "model.onnx.data").read_bytes()[:100_000])
    assert_clean_error(load_and_run(str(tmp_path / "model.onnx")), "model.onnx.data")


# --------------------------------------------------------------------------------------------------
# The same fuzzers, much longer (python -m pytest -m slow tests/test_importer_fuzz.py).

DEEP = settings(FUZZ, max_examples=3000)


@pytest.mark.slow
@pytest.mark.parametrize("fuzzer, draws", [
    ("test_flipped_bytes_load_or_fail_cleanly", FLIPS),
    ("test_structural_mutations_fail_cleanly", MUTATIONS),
    ("test_tensor_ops_with_random_axes_and_indices", TENSOR_OP_DRAWS),
    ("test_conv_and_pool_geometry_matches_onnxruntime", GEOMETRIES),
], ids=["flips", "mutations", "tensor_ops", "geometry"])
def test_deep_fuzz(fuzzer, draws):
    DEEP(given(**draws)(globals()[fuzzer].hypothesis.inner_test))()
