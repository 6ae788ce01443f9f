"""The autograd core: a Tensor over a numpy array, the graph it records, and custom functions.

Defining an op: compute the output with numpy and hand it to `record(data, parents, backward)`
with a closure that maps the output's gradient to one gradient per parent (None where a parent
needs none). Gradients may keep broadcast shape: `backward` reduces each back to its parent's
shape, so ops never repeat that logic. Every engine op (`dreidel.ops`) is written this way;
`Function` is a torch.autograd.Function-style adapter over `record` for user code.

This module imports no op: `dreidel.ops` installs Tensor's operators and methods when imported
(the package face imports it).
"""
import threading

import numpy as np

DEFAULT_DTYPE = np.float32

_state = threading.local()


def is_grad_enabled():
    return getattr(_state, "grad_enabled", True)


class _GradMode:
    """Context manager and decorator that sets whether ops record the graph."""

    def __init__(self, enabled):
        self.enabled = enabled

    def __enter__(self):
        self.previous = is_grad_enabled()
        _state.grad_enabled = self.enabled

    def __exit__(self, *exc):
        _state.grad_enabled = self.previous

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


class no_grad(_GradMode):
    """Ops inside do not record the graph (inference, optimizer updates)."""

    def __init__(self):
        super().__init__(False)


class enable_grad(_GradMode):
    def __init__(self):
        super().__init__(True)


def _freed_graph(grad):
    raise RuntimeError("backward through a graph that was already freed; "
                       "pass retain_graph=True to the first backward()")


def _to_array(data, dtype=None):
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return np.asarray(data, dtype=dtype)
    array = np.asarray(data)
    if array.dtype.kind == "f" and not isinstance(data, np.ndarray) and not isinstance(data, np.generic):
        return array.astype(DEFAULT_DTYPE)  # Python floats and lists default to float32
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


class _Size(int):
    """`tensor.size`: the element count (numpy's `.size`), and callable like PyTorch's `size()`:
    `t.size()` is the shape tuple, `t.size(d)` the length of axis d."""

    def __new__(cls, count, shape):
        size = super().__new__(cls, count)
        size.shape = tuple(shape)
        return size

    def __call__(self, dim=None):
        return self.shape if dim is None else self.shape[dim]


class Tensor:
    """An n-dimensional array that can record the operations applied to it and differentiate them.

    `Tensor(data, requires_grad=False, dtype=None)`: Python numbers and lists become float32 (or
    int64/bool); numpy arrays keep their dtype (float16 is upcast to float32).
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_hooks", "__weakref__")
    __array_priority__ = 1000  # numpy defers to Tensor's reflected operators

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _to_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got {self.data.dtype}")
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._hooks = None

    # -- array facts -------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: _Size(self.data.size, self.data.shape))
    is_leaf = property(lambda self: self._backward is None)

    def __len__(self):
        return len(self.data)

    def numpy(self):
        return self.data

    def item(self):
        return self.data.item()

    def numel(self):
        """Number of elements (PyTorch's name; `.size` is the same number, numpy's name)."""
        return int(self.data.size)

    def zero_(self):
        """Fill with zeros in place; returns self (for optimizer-style resets outside the graph)."""
        if not self.data.flags.writeable:  # a broadcast view: give the tensor its own memory
            self.data = np.array(self.data)
        self.data[...] = 0
        return self

    def tolist(self):
        return self.data.tolist()

    def detach(self):
        return Tensor(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(self.data, precision=4, threshold=20, prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{grad})"

    def __bool__(self):
        return bool(self.data)

    def __hash__(self):
        return id(self)

    def register_hook(self, hook):
        """Call `hook(grad)` when this tensor's gradient is computed; a returned array replaces it."""
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(hook)
        return hook

    def requires_grad_(self, flag=True):
        if flag and self.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got {self.dtype}")
        self.requires_grad = flag
        return self

    # -- differentiation ---------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into `.grad` of every leaf that requires it.

        A leaf's first `.grad` may be the very array its op computed (no copy), but never one shared
        with another leaf, the caller or a hook, so in-place updates of `.grad` are safe."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input required grad, or it was computed under no_grad)")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a single-element output, "
                                   f"got shape {self.shape}")
            grad = np.ones_like(self.data)
        grad = _to_array(grad, self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"gradient shape {grad.shape} does not match tensor shape {self.shape}")
        grads = {id(self): grad}
        handed_out = {id(grad)}  # arrays a leaf may not adopt: the caller's, or another leaf's
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._hooks:
                for hook in node._hooks:
                    replaced = hook(g)
                    g = g if replaced is None else _to_array(replaced, node.dtype)
                handed_out.add(id(g))  # a hook may have kept it: no leaf downstream adopts it
            if node._backward is None:
                if node.grad is not None:
                    node.grad = node.grad + g
                elif g.flags.owndata and g.flags.writeable and g.dtype == node.dtype and id(g) not in handed_out:
                    node.grad = g  # a fresh array nobody else holds: adopt it (saves a copy per parameter)
                else:  # a view, a pass-through shared with another leaf, or one a hook may keep
                    node.grad = g.astype(node.dtype, copy=True)
                handed_out.add(id(node.grad))
                continue
            parent_grads = node._backward(g)
            if not retain_graph:
                node._backward = _freed_graph
            if not isinstance(parent_grads, (tuple, list)):
                parent_grads = (parent_grads,)
            for parent, pg in zip(node._parents, parent_grads):
                if pg is None or not parent.requires_grad:
                    continue
                pg = _reduce_to(np.asarray(pg), parent.shape).astype(parent.dtype, copy=False)
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg
            if not retain_graph:
                node._parents = ()


def _topological_order(root):
    """Nodes that lead to root, parents before children (iterative: deep graphs are fine)."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if parent.requires_grad and id(parent) not in seen:
                stack.append((parent, False))
    return order


def _reduce_to(grad, shape):
    """Sum a broadcast gradient back down to `shape`."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def record(data, parents, backward):
    """The op primitive: wrap an op's output array as a Tensor, recording `backward` when autograd is
    on and a parent requires a gradient.

    `parents` are the Tensors the output depends on; `backward(grad)` receives the output's gradient
    (an array of the output's shape) and returns one gradient per parent, in order (a tuple; None for
    a parent that needs none; broadcast shapes are summed down by the engine). It must not modify
    `grad` in place, nor return an array the op keeps (an input's data, a saved array): the engine
    may hand a returned array to a leaf's `.grad` without copying, and optimizers update it in place.

        def square(x):
            return record(x.data * x.data, (x,), lambda g: (2 * g * x.data,))
    """
    out = Tensor.__new__(Tensor)
    out.data = data if isinstance(data, np.ndarray) else np.asarray(data)
    out.grad = None
    out._hooks = None
    if is_grad_enabled() and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._parents = tuple(parents)
        out._backward = backward
    else:
        out.requires_grad = False
        out._parents = ()
        out._backward = None
    return out


def tensor(data, dtype=None, requires_grad=False):
    """Make a Tensor; like `torch.tensor` (Python floats become float32)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def as_tensor(value, like=None):
    """Lift a number or array to a Tensor; numbers take `like`'s floating dtype."""
    if isinstance(value, Tensor):
        return value
    if like is not None and like.dtype.kind == "f":
        array = np.asarray(value)
        if array.dtype.kind in "biuf" and (array.ndim == 0 or not isinstance(value, np.ndarray)):
            return Tensor(array.astype(like.dtype))
    return Tensor(value)


class FunctionContext:
    """What a custom Function's forward leaves for its backward."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.saved_tensors = ()

    def save_for_backward(self, *arrays):
        self.saved_tensors = arrays


class Function:
    """A user-defined differentiable operation, in the style of `torch.autograd.Function`: a thin
    adapter over `record` for user code (the library's own ops call `record` directly).

    Subclass with two static methods working on numpy arrays:
        forward(ctx, *args, **kwargs) -> array or tuple of arrays (Tensor args arrive as arrays)
        backward(ctx, *grads) -> one gradient (or None) per positional forward argument
    (backward must not modify `grads` in place: a gradient array may be shared with other nodes)
    and call `MyFunction.apply(*args, **kwargs)`, which returns Tensors.
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = FunctionContext(tuple(isinstance(a, Tensor) and a.requires_grad for a in args))
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        with no_grad():
            outputs = cls.forward(ctx, *raw, **kwargs)
        positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        parents = [args[i] for i in positions]
        single = not isinstance(outputs, tuple)
        outputs = (outputs,) if single else outputs
        shapes = [np.shape(o) for o in outputs]

        def backward_for(index):
            def backward(grad):
                grads = [np.zeros(s, dtype=grad.dtype) for s in shapes]
                grads[index] = grad
                result = cls.backward(ctx, *grads)
                if not isinstance(result, (tuple, list)):
                    result = (result,)
                if len(result) != len(args):
                    raise RuntimeError(f"{cls.__name__}.backward returned {len(result)} gradients "
                                       f"for {len(args)} forward arguments")
                # an array the Function still holds (an input, something saved on ctx) goes out as a copy:
                # the engine lets a leaf adopt a fresh gradient, and optimizers update .grad in place
                held = {id(v) for v in (*raw, *ctx.saved_tensors, *vars(ctx).values())}
                return tuple(np.array(result[i]) if id(result[i]) in held else result[i] for i in positions)
            return backward

        outputs = [np.asarray(o) for o in outputs]
        # integer outputs (indices, counts) carry no gradient
        tensors = tuple(record(o, parents if o.dtype.kind == "f" else (), backward_for(i))
                        for i, o in enumerate(outputs))
        return tensors[0] if single else tensors

