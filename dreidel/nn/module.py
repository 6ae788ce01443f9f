"""`Module` and `Parameter`: the PyTorch-style building blocks of every dreidel model."""
from collections import OrderedDict

import numpy as np

from dreidel.tensor import DEFAULT_DTYPE, Tensor


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

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
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

    def register_buffer(self, name, value):
        """A non-trainable array saved in the state_dict (e.g. fixed permutations, running stats)."""
        self.__dict__.setdefault("_buffer_names", set()).add(name)
        value = value if value is None or isinstance(value, Tensor) else Tensor(np.asarray(value))
        setattr(self, name, value)

    def add_module(self, name, module):
        setattr(self, name, module)

    def register_forward_hook(self, hook):
        """Call `hook(module, inputs, output)` after every forward; returns a handle with `.remove()`."""
        key = object()
        self._forward_hooks[key] = hook
        return _HookHandle(self._forward_hooks, key)

    # -- calling -----------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        output = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            replaced = hook(self, args, output)
            if replaced is not None:
                output = replaced
        return output

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

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

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
    def state_dict(self):
        """Name → numpy array for every parameter and buffer (copies)."""
        state = OrderedDict()
        for name, p in self.named_parameters():
            state[name] = p.data.copy()
        for name, b in self.named_buffers():
            state[name] = b.data.copy()
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into parameters and buffers; shapes must match, and with `strict` the keys too.

        Returns (missing_keys, unexpected_keys).
        """
        own = OrderedDict(self.named_parameters())
        own.update(self.named_buffers())
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
        return missing, unexpected

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
    def __init__(self, table, key):
        self.table, self.key = table, key

    def remove(self):
        self.table.pop(self.key, None)
