"""The importer's shape as issue 8 asks: importing draws from no random generator, its modules import
each other only at the top (no lazy imports, no cycles), and it implements no op of its own (every
gradient rule lives in the engine)."""
import ast
import random
from pathlib import Path

import numpy as np
import pytest

import dreidel
from dreidel import nn
from shared_data import shared_path

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from importers.onnx_to_dreidel import load  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "importers" / "onnx_to_dreidel"
PREFIX = "importers.onnx_to_dreidel"
F32 = TensorProto.FLOAT


def _layers_model():
    """ids → Gather(table) → MatMul + bias Add → Gemm; x → Conv → ConvTranspose: every op the
    importer lifts to a randomly initialised layer class (Embedding, Linear, ConvNd)."""
    rng = np.random.default_rng(0)
    weights = {"table": (10, 6), "w1": (6, 5), "b1": (5,), "w2": (4, 5), "b2": (4,),
               "conv_w": (3, 2, 3, 3), "conv_b": (3,), "tconv_w": (3, 2, 2, 2)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in weights.items()]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="/embed/Gather"),
             helper.make_node("MatMul", ["e", "w1"], ["h"], name="/fc1/MatMul"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="/fc1/Add"),
             helper.make_node("Gemm", ["hb", "w2", "b2"], ["y"], name="/fc2/Gemm", transB=1),
             helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c", "tconv_w"], ["z"], name="/up/ConvTranspose", strides=[2, 2])]
    graph = helper.make_graph(nodes, "layers", [helper.make_tensor_value_info("ids", TensorProto.INT64, [3]),
                                                helper.make_tensor_value_info("x", F32, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", F32, [3, 4]),
                               helper.make_tensor_value_info("z", F32, [1, 2, 10, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def _random_states():
    return (repr(dreidel.random.get_state()), repr(np.random.get_state()), random.getstate())


def _assert_load_draws_nothing(source):
    dreidel.manual_seed(1234)
    before = _random_states()
    module = load(source)
    assert _random_states() == before, "load() drew from a random generator"
    return module


def test_load_draws_from_no_random_generator():
    module = _assert_load_draws_nothing(_layers_model())
    kinds = {type(m).__name__ for _, m in module.named_modules()}
    assert {"Embedding", "Linear", "Conv2d", "ConvTranspose2d"} <= kinds, kinds  # the layers were lifted


@pytest.mark.parametrize("folder,filename", [("whisper-tiny-en", "encoder_model.onnx"),
                                             ("deit-tiny-random", "model.onnx")])
def test_loading_a_real_teacher_draws_from_no_random_generator(folder, filename):
    module = _assert_load_draws_nothing(shared_path("onnx", folder, filename))
    assert any(isinstance(m, nn.Linear) for _, m in module.named_modules())


def test_a_seeded_student_does_not_depend_on_the_teacher_imported_before_it():
    dreidel.manual_seed(0)
    alone = nn.Linear(6, 4).weight.numpy()
    dreidel.manual_seed(0)
    load(_layers_model())
    after_import = nn.Linear(6, 4).weight.numpy()
    np.testing.assert_array_equal(alone, after_import)


def test_imported_layers_hold_the_teachers_weights():
    model = onnx.load_from_string(_layers_model())
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    module = load(model.SerializeToString())
    np.testing.assert_array_equal(module.get_submodule("embed").weight.numpy(), weights["table"])
    np.testing.assert_array_equal(module.get_submodule("fc1").weight.numpy(), weights["w1"].T)
    np.testing.assert_array_equal(module.get_submodule("fc2").bias.numpy(), weights["b2"])
    np.testing.assert_array_equal(module.get_submodule("conv").weight.numpy(), weights["conv_w"])
    np.testing.assert_array_equal(module.get_submodule("up").weight.numpy(), weights["tconv_w"])


# -- module structure ----------------------------------------------------------------------------------
def _modules():
    """{dotted module name: parsed tree} for every file of the importer package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join((PREFIX,) + (parts[:-1] if parts[-1] == "__init__" else parts))
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imported(node, modules):
    """The importer modules an import statement names (a `from package import submodule` names it)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if node.module is None or not node.module.startswith(PREFIX):
        return set()
    names = {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n in modules} or ({node.module} & set(modules))


def test_the_importer_has_no_function_level_imports():
    lazy = set()
    for name, tree in _modules().items():
        for scope in ast.walk(tree):
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                lazy |= {f"{name}:{n.lineno}" for n in ast.walk(scope) if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert not lazy, f"imports inside functions or classes: {sorted(lazy)}"


def test_the_importers_modules_import_each_other_without_a_cycle():
    modules = _modules()
    edges = {name: set().union(*[_imported(n, modules) for n in tree.body
                                 if isinstance(n, (ast.Import, ast.ImportFrom))] or [set()]) - {name}
             for name, tree in modules.items()}
    assert edges[f"{PREFIX}.graph"] and edges[f"{PREFIX}.converters"]  # the scan sees real edges
    state = {}

    def visit(name, path):
        state[name] = "open"
        for target in sorted(edges[name]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path + [name, target]))
            if target not in state:
                visit(target, path + [name])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [])


def test_the_importer_defines_no_differentiable_op_of_its_own():
    """Gradient rules live in the engine: no file of the importer records a graph node itself
    (`dreidel.tensor.record` / `_result` / a `Function`) or writes a `backward`."""
    own = set()
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "dreidel.tensor":
                own |= {f"{name}:{node.lineno} imports {a.name}" for a in node.names
                        if a.name in ("record", "_result", "Function")}
            elif isinstance(node, (ast.FunctionDef, ast.Lambda)) and getattr(node, "name", "") == "backward":
                own.add(f"{name}:{node.lineno} defines backward")
            elif isinstance(node, ast.Attribute) and node.attr in ("record", "_result", "Function"):
                own.add(f"{name}:{node.lineno} uses .{node.attr}")
            elif isinstance(node, ast.ClassDef) and any("Function" in ast.unparse(b) for b in node.bases):
                own.add(f"{name}:{node.lineno} subclasses Function")
    assert not own, f"ops implemented in the importer: {sorted(own)}"


def test_without_onnx_the_error_names_the_extra():
    import subprocess
    import sys
    code = ("import sys; sys.modules['onnx'] = None\n"
            "try:\n    import importers.onnx_to_dreidel\n"
            "except ModuleNotFoundError as e:\n    print(e.name, '|', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1])).stdout
    assert out.startswith("onnx |") and "pip install 'dreidel[onnx]'" in out
