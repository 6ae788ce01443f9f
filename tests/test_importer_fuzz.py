"""Corrupted and malformed ONNX files through `importers.onnx_to_dreidel`: clean errors, never a crash.

A small valid model (Conv -> Relu -> Reshape -> Gemm, built with onnx.helper) is corrupted in every way
we could think of: flipped bytes, truncation, random bytes, wrong attributes, missing or dangling
inputs, duplicate outputs, a cycle, external data escaping the model's folder, unsupported ops.
Each must either load and run, or fail with a clean error: the importer's own `OnnxImportError`
(a ValueError), or at least a ValueError/TypeError with a message. An IndexError/KeyError/
AttributeError/... leaking out is an importer bug; a hang is caught by a time limit; a segfault is
caught by running a batch of corruptions in a child process.
"""
import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

importer = pytest.importorskip("importers.onnx_to_dreidel")
errors = pytest.importorskip("importers.onnx_to_dreidel.errors")

TIME_LIMIT_S = 20
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
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

@contextlib.contextmanager
def time_limit(seconds):
    def on_alarm(signum, frame):
        raise TimeoutError(f"the importer took longer than {seconds} s (hang?)")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _first_output(result):
    if isinstance(result, dict):
        return next(iter(result.values()))
    if isinstance(result, (tuple, list)):
        return result[0]
    return result


def load_and_run(source, **load_kwargs):
    """Load then call on X. Returns the output array, or the clean error raised at load or call
    time; anything else (unexpected exception type, empty message, a hang) fails the test."""
    try:
        with time_limit(TIME_LIMIT_S), np.errstate(all="ignore"):
            module = importer.load(source, **load_kwargs)
            out = _first_output(module(X))
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

@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(BASE_BYTES) - 1), st.integers(1, 255)), min_size=1, max_size=8))
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
    outcome = load_and_run(make_model(conv_attrs={"kernel_shape": [5, 5], "pads": [1, 1, 1, 1]})
                           .SerializeToString())
    assert_clean_error(outcome)


def test_reshape_to_an_impossible_shape():
    assert_clean_error(load_and_run(make_model(reshape_shape=(5, 7)).SerializeToString()))
    assert_clean_error(load_and_run(make_model(reshape_shape=(-1, -1)).SerializeToString()))
    assert_clean_error(load_and_run(make_model(reshape_shape=(7, -1)).SerializeToString()))


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


STRUCTURAL = {
    "missing required input": _nodes(conv=helper.make_node("Conv", ["x"], ["c"], name="conv")),
    "dangling node input": _nodes(relu=helper.make_node("Relu", ["nowhere"], ["r"], name="relu")),
    "duplicate outputs": _nodes(relu=helper.make_node("Relu", ["c"], ["c"], name="relu"),
                                flatten=helper.make_node("Reshape", ["c", "shape"], ["f"], name="flatten")),
    "cycle": _nodes(relu=helper.make_node("Relu", ["y"], ["r"], name="relu")),
    "missing graph output": _nodes(fc=helper.make_node("Gemm", ["f", "gemm_w", "gemm_b"], ["z"], name="fc")),
    "unknown attribute": _nodes(relu=helper.make_node("Relu", ["c"], ["r"], name="relu", alpha=0.5)),
}


@pytest.mark.parametrize("what", sorted(STRUCTURAL))
def test_structurally_broken_graph_fails_cleanly(what):
    assert_clean_error(load_and_run(make_model(nodes=STRUCTURAL[what]).SerializeToString()))


# Attribute fuzzing: each op's attributes drawn from small integer ranges; the importer must match
# onnxruntime when it runs, and fail cleanly otherwise.
small_ints = st.integers(-3, 6)


def _ort(model, feeds):
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
    graph = helper.make_graph([node], "fuzz_attr", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
                              list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def check_against_ort(model, feeds):
    """Importer vs onnxruntime on one model: equal outputs, or a clean importer error."""
    try:
        onnx.checker.check_model(model)
    except Exception:  # noqa: BLE001
        pass  # the importer must refuse it cleanly too; load_and_run below checks that
    try:
        with time_limit(TIME_LIMIT_S), np.errstate(all="ignore"):
            module = importer.load(model.SerializeToString())
            result = _first_output(module(**feeds))
            out = np.asarray(result.numpy() if hasattr(result, "numpy") else result)
    except TimeoutError:
        raise
    except (ValueError, TypeError) as error:
        assert str(error).strip(), f"{type(error).__name__} with an empty message"
        return
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"unexpected {type(error).__name__} leaked out of the importer: {error!r}")
    expected = _ort(model, feeds)
    if expected is not None:
        assert out.shape == expected.shape, (out.shape, expected.shape)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@FUZZ
@given(kernel=st.lists(st.integers(-1, 5), min_size=1, max_size=3),
       strides=st.lists(small_ints, min_size=0, max_size=3),
       pads=st.lists(small_ints, min_size=0, max_size=5),
       dilations=st.lists(small_ints, min_size=0, max_size=3),
       group=st.integers(-1, 3))
def test_conv_with_random_attributes(kernel, strides, pads, dilations, group):
    conv_w, conv_b, _, _ = _weights()
    attrs = {"kernel_shape": kernel, "group": group}
    for name, value in (("strides", strides), ("pads", pads), ("dilations", dilations)):
        if value:
            attrs[name] = value
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    model = _single_node_model(node, [("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                               [numpy_helper.from_array(conv_w, "w"), numpy_helper.from_array(conv_b, "b")])
    check_against_ort(model, {"x": X})


@FUZZ
@given(shape=st.lists(st.integers(-2, 40), min_size=0, max_size=4), allowzero=st.integers(0, 1))
def test_reshape_with_random_shapes(shape, allowzero):
    node = helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=allowzero)
    model = _single_node_model(node, [("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                               [numpy_helper.from_array(np.array(shape, dtype=np.int64), "s")])
    check_against_ort(model, {"x": X})


@FUZZ
@given(trans_a=st.integers(-2, 9), trans_b=st.integers(-2, 9), alpha=st.floats(-2, 2), beta=st.floats(-2, 2),
       a_shape=st.sampled_from([(3, 4), (4, 3), (3, 3), (4,), (2, 3, 4)]))
def test_gemm_with_random_attributes(trans_a, trans_b, alpha, beta, a_shape):
    w = np.arange(20, dtype=np.float32).reshape(4, 5) / 10
    node = helper.make_node("Gemm", ["a", "w"], ["y"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    model = _single_node_model(node, [("a", TensorProto.FLOAT, list(a_shape))], [numpy_helper.from_array(w, "w")])
    a = np.random.default_rng(2).standard_normal(a_shape).astype(np.float32)
    check_against_ort(model, {"a": a})


@FUZZ
@given(op=st.sampled_from(["Transpose", "Softmax", "Concat", "Gather", "Split", "Flatten", "Squeeze",
                           "Unsqueeze", "ReduceMean", "Slice", "Pad", "Expand", "Tile", "LayerNormalization"]),
       values=st.lists(st.integers(-6, 6), min_size=0, max_size=5), axis=st.integers(-6, 6))
def test_tensor_ops_with_random_axes_and_indices(op, values, axis):
    """Out-of-range axes, perms and indices: each op's integer attribute/input drawn at random."""
    ints = np.array(values, dtype=np.int64)
    inits, inputs = [], ["x"]
    attrs = {}
    if op == "Transpose":
        if values:  # no perm at all means "reverse the axes"
            attrs["perm"] = values
    elif op in ("Softmax", "Flatten", "Concat", "LayerNormalization"):
        attrs["axis"] = axis
        if op == "Concat":
            inputs = ["x", "x"]
        if op == "LayerNormalization":
            inputs = ["x", "scale"]
            inits.append(numpy_helper.from_array(np.ones(4, np.float32), "scale"))
    elif op == "Gather":
        attrs["axis"] = axis
        inputs = ["x", "i"]
        inits.append(numpy_helper.from_array(ints, "i"))
    elif op == "Split":
        attrs["axis"] = axis
        inputs = ["x", "split"]
        inits.append(numpy_helper.from_array(np.abs(ints), "split"))
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
    node = helper.make_node(op, inputs, ["y"], **attrs)
    model = _single_node_model(node, [("x", TensorProto.FLOAT, [2, 3, 4])], inits)
    x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)
    check_against_ort(model, {"x": x})


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
    assert "2" in frob_line.replace("FrobnicateV2", ""), frob_line
    assert "Relu" not in str(outcome)
