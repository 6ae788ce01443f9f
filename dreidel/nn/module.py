"""`Module` and `Parameter`: the PyTorch-style building blocks of every dreidel model.

Input policy (`Module._input_kind`, checked by `Module.__call__` on the first positional input of the
layers that declare it): numpy arrays, numpy scalars, Python numbers and lists are lifted to Tensors
(Python numbers and lists take the layer's dtype, arrays keep theirs). A float layer ("float") takes
floating inputs no wider than its parameters (float32 into a float64 layer promotes, as in numpy); a
float64 input to a float32 layer is a TypeError, as in PyTorch, rather than a silent float64
computation, and so is an integer or bool input. An index layer ("index", `Embedding`) takes integers.

State-dict versions: every Module class has `_version` (1 unless its state layout changed).
`state_dict()._metadata` maps each module's prefix to {"version": ...}; `dreidel.save` keeps the
versions other than 1 in the file and `dreidel.load` restores them, and `load_state_dict` calls
`module._migrate_state_dict(state, prefix, version)` for every module whose stored version is older
(no record means version 1: every state dict written before versions existed).
"""
from collections import OrderedDict, namedtuple

import numpy as np

from dreidel.tensor import DEFAULT_DTYPE, Tensor, as_tensor

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = "What `load_state_dict` returns: the model's keys the state lacked, and the state's extra keys."

# what the input policy lifts to a Tensor (by `as_tensor`: numbers and lists take the layer's dtype)
_LIFTED = (np.ndarray, np.generic, int, float, list)


SUPPORTED_DTYPES = (np.float32, np.float64)


def check_dtype(dtype, owner):
    """The numpy dtype a layer's `dtype=` argument names, refusing (by name) what layers do not
    support: parameters are float32 (the default) or float64; float16, bfloat16, integers and
    complex types would be silently changed or break the kernels."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{owner}: dtype={dtype!r} is not a numpy dtype; use np.float32 or np.float64") from None
    if resolved.type not in SUPPORTED_DTYPES:
        raise TypeError(f"{owner}: dtype={resolved.name} is not supported for parameters; "
                        f"use np.float32 (the default) or np.float64")
    return resolved.type


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (requires_grad by default)."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        array = np.asarray(data, dtype=dtype) if dtype is not None else np.asarray(data)
        if array.dtype.kind != "f":
            array = array.astype(DEFAULT_DTYPE)
        super().__init__(np.array(array, copy=True), requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter(" + super().__repr__() + ")"


class Module:
    """Base class of layers and models: holds parameters, buffers and child modules by attribute.

    Subclasses set attributes in `__init__` (after `super().__init__()`) and define `forward`.
    """

    # Version of this class's state_dict layout: bump it when parameters or buffers are renamed,
    # reshaped or added, and override `_migrate_state_dict` to turn older states into the new one.
    _version = 1
    # What the first positional input must be (see the module docstring): None (unchecked),
    # "float" (a float tensor no wider than the parameters) or "index" (integer ids).
    _input_kind = None

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration ------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        if name in self._parameters and not (value is None or isinstance(value, Parameter)):
            # silently turning a parameter into a plain attribute would drop it from training
            raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} "
                            f"(a Parameter or None is expected; to change the values set .data)")
        if isinstance(value, Module) and name in self._modules:
            self._modules[name] = value  # a replaced child keeps its place (module order, fingerprints)
            return
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self.__dict__.get("_buffer_names", ()):
            self._buffers[name] = value if value is None or isinstance(value, Tensor) else Tensor(np.asarray(value))
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            values = self.__dict__.get(table)
            if values is not None and name in values:
                return values[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, parameter):
        if parameter is None:
            self._parameters.pop(name, None)
            object.__setattr__(self, name, None)
            return
        if not isinstance(parameter, Parameter):
            raise TypeError(f"register_parameter({name!r}) needs a Parameter, got {type(parameter).__name__}")
        setattr(self, name, parameter)

    def register_buffer(self, name, value, persistent=True):
        """A non-trainable array of the module (e.g. fixed permutations, running stats), cast by `to()`
        and listed by `named_buffers()`; saved in the state_dict unless `persistent=False` (caches
        that are rebuilt from other state, such as rotary tables)."""
        self.__dict__.setdefault("_buffer_names", set()).add(name)
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)
        value = value if value is None or isinstance(value, Tensor) else Tensor(np.asarray(value))
        setattr(self, name, value)

    def add_module(self, name, module):
        setattr(self, name, module)

    def register_forward_pre_hook(self, hook):
        """Call `hook(module, args)` before every forward (args: the positional inputs, a tuple); a
        return value other than None replaces them (a tuple, or one input). Hooks run in
        registration order, each seeing the previous one's args, before the input check. Returns
        a handle with `.remove()`."""
        key = object()
        self._forward_pre_hooks[key] = hook
        return _HookHandle(self._forward_pre_hooks, key)

    def register_forward_hook(self, hook):
        """Call `hook(module, inputs, output)` after every forward; a return value other than None
        replaces the output. Returns a handle with `.remove()`."""
        key = object()
        self._forward_hooks[key] = hook
        return _HookHandle(self._forward_hooks, key)

    # -- calling -----------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        if self._forward_pre_hooks:
            for hook in list(self._forward_pre_hooks.values()):
                replaced = hook(self, args)
                if replaced is not None:
                    args = replaced if isinstance(replaced, tuple) else (replaced,)
        if self._input_kind is not None and args:  # the input policy (module docstring)
            x, reference = args[0], None
            for reference in self._parameters.values():
                if reference is not None:
                    break
            # the usual case first and inline: layers are called in every inner loop
            if not (type(x) is Tensor and reference is not None and x.data.dtype is reference.data.dtype
                    and self._input_kind == "float"):
                args = (self._checked_input(x, reference),) + args[1:]
        output = self.forward(*args, **kwargs)
        if self._forward_hooks:
            for hook in list(self._forward_hooks.values()):
                replaced = hook(self, args, output)
                if replaced is not None:
                    output = replaced
        return output

    def _checked_input(self, x, reference):
        """`x` under the input policy (module docstring): lifted to a Tensor, its dtype checked
        against the `reference` parameter (the module's first, or None)."""
        if not isinstance(x, Tensor):
            if not isinstance(x, _LIFTED):
                raise TypeError(f"{type(self).__name__} expects a Tensor or numpy array as input, "
                                f"got {type(x).__name__}")
            x = as_tensor(x, like=reference if self._input_kind == "float" else None)
        dtype = x.dtype
        if self._input_kind == "index":
            if dtype.kind not in "iu":
                raise TypeError(f"{type(self).__name__} expects integer indices, got {dtype}")
            return x
        if reference is not None and dtype == reference.dtype:
            return x  # the usual case
        name = type(self).__name__
        expected = "floating-point" if reference is None else str(reference.dtype)
        if dtype.kind != "f":
            raise TypeError(f"{name} expects a {expected} input, got {dtype}: cast it first, "
                            f"e.g. x.float() (float32) or x.double() (float64)")
        if reference is not None and dtype.itemsize > reference.dtype.itemsize:
            widen = ".double()" if dtype == np.float64 else f".to(np.{dtype})"
            raise TypeError(f"{name} has {reference.dtype} parameters but got a {dtype} input: cast the "
                            f"input (x.astype(np.{reference.dtype})) or the layer ({widen})")
        return x

    # -- traversal ---------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        stack = [(prefix, self)]
        seen = set()
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = list(module._modules.items())
            for child_name, child in reversed(children):
                if child is not None:
                    stack.append((f"{name}.{child_name}" if name else child_name, child))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return ((n, m) for n, m in self._modules.items() if m is not None)

    def children(self):
        return (m for _, m in self.named_children())

    def named_parameters(self, prefix="", recurse=True):
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_name, module in modules:
            for name, parameter in module._parameters.items():
                if parameter is not None and id(parameter) not in seen:
                    seen.add(id(parameter))
                    yield (f"{module_name}.{name}" if module_name else name), parameter

    def parameters(self, recurse=True):
        return (p for _, p in self.named_parameters(recurse=recurse))

    def named_buffers(self, prefix=""):
        for module_name, module in self.named_modules(prefix):
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    yield (f"{module_name}.{name}" if module_name else name), buffer

    def buffers(self):
        return (b for _, b in self.named_buffers())

    def get_submodule(self, target):
        module = self
        if not target:
            return module
        for part in target.split("."):
            children = module.__dict__["_modules"]
            if part not in children:
                raise AttributeError(f"{type(module).__name__} has no submodule {part!r} (looking up {target!r})")
            module = children[part]
        return module

    def set_submodule(self, target, new_module):
        """Replace the module at dotted path `target` (used by recasting to swap layers)."""
        parent_name, _, child = target.rpartition(".")
        parent = self.get_submodule(parent_name)
        if child not in parent._modules:
            raise AttributeError(f"no submodule {target!r} to replace")
        setattr(parent, child, new_module)

    def apply(self, fn):
        """Call `fn(module)` on every child module (recursively, children first) and then on self;
        returns self, e.g. `model.apply(init_weights)`."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def parameter_count(self):
        """Number of scalar parameters (shared ones counted once)."""
        return int(sum(p.size for p in self.parameters()))

    # -- modes and dtypes --------------------------------------------------------------------
    def train(self, mode=True):
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, flag=True):
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's gradient: to None (the default), else to a fresh zero array."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:  # a new array: a gradient array may be shared with the graph or the caller
                p.grad = np.zeros_like(p.grad)

    def to(self, dtype):
        """Cast floating parameters and buffers to `dtype` in place."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"Module.to needs a floating dtype, got {dtype}")
        for p in self.parameters():
            if p.dtype != dtype:  # no copy of weights that already have the dtype
                p.data = p.data.astype(dtype)
                p.grad = None
        for module in self.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.dtype.kind == "f":
                    buffer.data = buffer.data.astype(dtype, copy=False)
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    # -- state -------------------------------------------------------------------------------
    def _named_state(self):
        """(name, tensor) of everything the state_dict holds: parameters, then persistent buffers."""
        yield from self.named_parameters()
        for module_name, module in self.named_modules():
            skip = module._non_persistent_buffers
            for name, buffer in module._buffers.items():
                if buffer is not None and name not in skip:
                    yield (f"{module_name}.{name}" if module_name else name), buffer

    def state_dict(self):
        """Name → numpy array (copies) for every parameter and persistent buffer, as an OrderedDict
        whose `_metadata` maps each module's prefix ("" for self) to {"version": its `_version`}."""
        state = OrderedDict((name, t.data.copy()) for name, t in self._named_state())
        state._metadata = OrderedDict((prefix, {"version": module._version})
                                      for prefix, module in self.named_modules())
        return state

    def _migrate_state_dict(self, state, prefix, version):
        """Turn this module's entries of `state` (keys `prefix + name`, in place) written at the
        older `version` into the layout of `self._version`; called by `load_state_dict`. Override it
        with `_version`; leave keys already in the new layout alone (a state copied into a plain
        dict loses its versions and counts as version 1)."""

    def _migrated(self, state_dict):
        """A shallow copy of `state_dict` with every module's older entries migrated."""
        versions = getattr(state_dict, "_metadata", None) or {}
        state = OrderedDict(state_dict)
        for prefix, module in self.named_modules():
            stored = versions.get(prefix, {}).get("version", 1)
            if isinstance(stored, bool) or not isinstance(stored, (int, np.integer)):
                raise ValueError(f"state_dict version of {prefix or 'the model'!r} must be an integer, got {stored!r}")
            if stored > module._version:
                raise ValueError(f"state_dict entries of {prefix or 'the model'!r} were written by version "
                                 f"{stored} of {type(module).__name__}; this code has version {module._version}")
            if stored < module._version:
                module._migrate_state_dict(state, f"{prefix}." if prefix else "", int(stored))
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into parameters and persistent buffers; shapes must match, and with `strict`
        the keys too. Entries of modules saved at an older `_version` are migrated first (see
        `_migrate_state_dict`).

        Returns (missing_keys, unexpected_keys), a namedtuple as in PyTorch.
        """
        state_dict = self._migrated(state_dict)
        own = OrderedDict(self._named_state())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not match {type(self).__name__}: "
                           f"missing keys {missing}, unexpected keys {unexpected}")
        mismatched = []
        for name, target in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            array = value.data if isinstance(value, Tensor) else np.asarray(value)
            if array.shape != target.shape:
                mismatched.append(f"{name}: checkpoint {array.shape}, model {target.shape}")
        if mismatched:
            raise ValueError("state_dict shapes do not match: " + "; ".join(mismatched))
        for name, target in own.items():
            if name in state_dict:
                value = state_dict[name]
                array = value.data if isinstance(value, Tensor) else np.asarray(value)
                target.data = np.array(array, dtype=target.dtype, copy=True)
        return IncompatibleKeys(missing, unexpected)

    # -- display -----------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        children = list(self.named_children())
        if not children:
            return lines[0] + ")"
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


class _HookHandle:
    """Removes a registered hook: `handle.remove()`, or use it as a context manager."""

    def __init__(self, table, key):
        self.table, self.key = table, key

    def remove(self):
        self.table.pop(self.key, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
