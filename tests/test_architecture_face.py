"""The lazy package face (dreidel/__init__.py): the kernels load alone, every public name resolves.

Each check runs in a fresh interpreter (subprocess) so that sys.modules holds only what that
import pulled in.
"""
import json
import os
import pathlib
import platform
import pkgutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("dreidel.nn", "dreidel.optim", "dreidel.models", "dreidel.recast")
ENGINE = ("dreidel.tensor", "dreidel.ops", "dreidel.functional", "dreidel.runtime")

# every name `dreidel.X` that the eager face (before the lazy one) defined, and where it lives
PUBLIC = {
    "dreidel.tensor": ["DEFAULT_DTYPE", "Function", "Tensor", "as_tensor", "enable_grad", "is_grad_enabled",
                       "no_grad", "tensor"],
    "dreidel.gradcheck": ["GradcheckError", "gradcheck"],
    "dreidel.serialization": ["CheckpointError", "load", "load_metadata", "load_training_state", "save",
                              "save_training_state"],
    "dreidel.random": ["manual_seed"],
    "dreidel.runtime": ["get_num_threads", "set_num_threads", "tune_allocator"],
    "dreidel.creation": ["zeros", "ones", "randn", "zeros_like", "ones_like", "full", "rand", "arange", "cat",
                         "stack"],
}
SUBMODULES = ["random", "functional", "kernels", "ops", "nn", "optim", "data"]


def run(code, env=None):
    """Run `code` in a fresh interpreter at the repository root; return its stdout (JSON lines)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    full_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def loaded_after(statement):
    return set(json.loads(run(f"{statement}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))")))


@pytest.mark.parametrize("statement", ["import dreidel._kernels", "from dreidel import _kernels",
                                       "import dreidel.kernels", "import dreidel.hashing", "import dreidel"])
def test_kernels_load_without_the_package_face(statement):
    mods = loaded_after(statement)
    assert not [m for m in mods if m.startswith(HEAVY)]
    assert not mods & set(ENGINE)          # no engine, so no allocator tuning either


def test_env_defaults_are_set_before_numpy_loads():
    out = json.loads(run("import dreidel._kernels, os, json\n"
                         "print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), "
                         "os.environ.get('OPENBLAS_THREAD_TIMEOUT')]))"))
    assert out == ["PASSIVE", "4"]


def test_every_public_name_resolves_to_its_module():
    code = f"""
import importlib, json, types, dreidel
public, submodules = {PUBLIC!r}, {SUBMODULES!r}
bad = [n for m, names in public.items() for n in names
       if getattr(dreidel, n) is not getattr(importlib.import_module(m), n)]
bad += [s for s in submodules if getattr(dreidel, s) is not importlib.import_module('dreidel.' + s)]
star = {{}}
exec('from dreidel import *', star)
print(json.dumps({{"bad": bad, "dir": sorted(dir(dreidel)), "all": sorted(dreidel.__all__),
                  "star": sorted(k for k in star if k != '__builtins__'), "version": dreidel.__version__}}))
"""
    out = json.loads(run(code))
    assert out["bad"] == []
    names = {n for names in PUBLIC.values() for n in names} | set(SUBMODULES)
    assert names <= set(out["dir"])
    assert set(out["all"]) == names and not [n for n in out["all"] if n.startswith("_")]
    assert out["star"] == out["all"]
    assert out["version"] == "0.1.0"


def test_engine_names_work_from_a_bare_import():
    out = json.loads(run("""
import json, numpy as np, dreidel
layer = dreidel.nn.Linear(3, 2)
x = dreidel.randn(4, 3, requires_grad=True)
y = (layer(x) * 2).sum()          # Tensor operators come with the face's Tensor
y.backward()
print(json.dumps([list(layer(x).shape), list(x.grad.shape), float(dreidel.cat([dreidel.ones(2), dreidel.zeros(1)]).sum().item()),
                  dreidel.arange(3).numpy().tolist()]))
"""))
    assert out == [[4, 2], [4, 3], 2.0, [0, 1, 2]]


@pytest.mark.parametrize("first", ["import dreidel.tensor", "import dreidel.nn", "import dreidel.gradcheck",
                                   "from dreidel.tensor import Tensor", "import dreidel.tensor as T"])
def test_tensor_and_gradcheck_stay_functions_after_their_module_loads(first):
    # the import system binds a loaded submodule on its package; the face keeps the functions
    out = json.loads(run(f"""
{first}
import json, types, dreidel
t = dreidel.tensor([1.0, 2.0])
print(json.dumps([type(t).__name__, isinstance(dreidel.tensor, types.FunctionType),
                  isinstance(dreidel.gradcheck, types.FunctionType), float((t + t).sum().item())]))
"""))
    assert out == ["Tensor", True, True, 6.0]


def test_unknown_names_raise_attribute_error():
    out = json.loads(run("""
import json, dreidel
try:
    dreidel.no_such_thing
    msg = None
except AttributeError as e:
    msg = str(e)
print(json.dumps([msg, hasattr(dreidel, '__wrapped__'), hasattr(dreidel, 'hashing')]))
"""))
    assert "no_such_thing" in out[0] and out[1:] == [False, True]


TOP_LEVEL = sorted(m.name for m in pkgutil.iter_modules([str(ROOT / "dreidel")], "dreidel.")
                   if m.name not in ("dreidel.__main__",))


@pytest.mark.parametrize("module", TOP_LEVEL)
def test_each_module_imports_first(module):
    # with a lazy face nothing runs before a submodule's own imports: an import cycle would show here
    run(f"import {module}")


def _heap_growth(statement, tuning="1"):
    """Bytes the [heap] grows by for one 64 MiB malloc after `statement` (glibc serves it from the
    heap only when the mmap threshold was raised, i.e. the allocator was tuned)."""
    code = f"""
{statement}
import ctypes, json
def heap():
    for line in open('/proc/self/maps'):
        if line.rstrip().endswith('[heap]'):
            a, b = (int(v, 16) for v in line.split()[0].split('-'))
            return b - a
    return 0
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
before = heap()
p = libc.malloc(64 << 20)
print(json.dumps(heap() - before))
"""
    return json.loads(run(code, env={"DREIDEL_MALLOC_TUNING": tuning}))


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc tuning is glibc's")
def test_allocator_is_tuned_by_the_engine_not_by_a_bare_kernel_import():
    # the heap may already have had a little room at its top: "grew by most of 64 MiB" vs "not at all"
    assert _heap_growth("import dreidel._kernels") < 16 << 20      # mmap'ed: glibc's defaults
    assert _heap_growth("import dreidel.kernels") < 16 << 20
    assert _heap_growth("import dreidel.ops") > 48 << 20           # in the heap: tuned by the engine
    assert _heap_growth("import dreidel; dreidel.Tensor") > 48 << 20
    assert _heap_growth("import dreidel.nn") > 48 << 20
    assert _heap_growth("import dreidel.ops", tuning="0") < 16 << 20      # opted out
