"""dreidel: CPU-first deep learning with Cython kernels.

Spectral (Walsh–Hadamard) and hash-sparse layers, an autograd engine over numpy, ONNX import of
pretrained teachers, and block-wise recasting of their dense layers.

The package face is lazy (PEP 562): `dreidel.Tensor`, `dreidel.nn`, ... import their module on
first access, so `import dreidel._kernels` or `import dreidel.kernels` (a light worker) loads no
engine, layers or optimisers. An engine name also imports `dreidel.ops`, which installs Tensor's
operators and, on its first import, tunes the allocator (dreidel/runtime.py).
"""
import os

# Before libgomp loads: idle OpenMP workers sleep instead of spinning. Spinning workers fight
# OpenBLAS's threads for the cores; on 2 shared cores that made small training steps ~30x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Likewise OpenBLAS's workers, which otherwise spin ~0.1 s after every call (read when OpenBLAS loads:
# effective when dreidel is imported before numpy).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

__version__ = "0.1.0"

# module -> the public names it defines, re-exported here under the same names
_EXPORTS = {
    "dreidel.tensor": ("DEFAULT_DTYPE", "Function", "Tensor", "as_tensor", "enable_grad",
                       "is_grad_enabled", "no_grad", "tensor"),
    "dreidel.gradcheck": ("GradcheckError", "gradcheck"),
    "dreidel.serialization": ("CheckpointError", "load", "load_metadata", "load_training_state", "save",
                              "save_training_state"),
    "dreidel.random": ("manual_seed",),
    "dreidel.runtime": ("get_num_threads", "set_num_threads", "tune_allocator"),
    "dreidel.creation": ("zeros", "ones", "randn", "zeros_like", "ones_like", "full", "rand", "arange",
                         "cat", "stack"),
}
_ORIGIN = {name: module for module, names in _EXPORTS.items() for name in names}
# the subpackages and modules of the public API (any other dreidel.<module> also resolves)
_SUBMODULES = ("data", "functional", "kernels", "nn", "ops", "optim", "random")
# modules whose names need Tensor's operators, which dreidel.ops installs when imported
_NEEDS_OPS = ("dreidel.tensor", "dreidel.gradcheck", "dreidel.serialization", "dreidel.creation")
# names that are both a submodule and a function of it: dreidel.tensor is the function
_SHADOWED = ("tensor", "gradcheck")

__all__ = sorted(_ORIGIN) + list(_SUBMODULES)


def __getattr__(name):
    """Import a public name's module on first access (then it is a plain attribute)."""
    if name in _ORIGIN:
        module = importlib.import_module(_ORIGIN[name])
        if module.__name__ in _NEEDS_OPS:
            importlib.import_module("dreidel.ops")
        value = getattr(module, name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Face(types.ModuleType):
    """After importing a submodule the import system binds it on the package. dreidel.tensor and
    dreidel.gradcheck are functions (`dreidel.tensor([1.])`), so their modules are not bound:
    `__getattr__` resolves those names (and imports dreidel.ops with them)."""

    def __setattr__(self, name, value):
        if name in _SHADOWED and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Face
