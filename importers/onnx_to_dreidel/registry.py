"""The op-converter registry: (domain, op_type, since_version) → converter.

A converter is a *builder*: `build(node) -> run`, called once at import time with the node's
attributes (a `Node`), returning `run(*inputs) -> output or tuple of outputs`, called at every
forward. The converters live in `converters/` (one file per op family) and register on import.
Inputs are either `dreidel.Tensor` (floating data that may carry gradients) or numpy arrays
(constants, integer/boolean data and shape arithmetic, which never touch autograd); an omitted
optional input is None.

Resolution follows ONNX's versioning: for a model importing ai.onnx opset 18, the converter with the
greatest `since_version` ≤ 18 is used. Adding an op is one decorated function:

    @register("Neg", since=6)
    def neg(node):
        return lambda x: -x

A converter's file may also *lift* the op to a layer when its weights are constants (MatMul/Gemm →
`nn.Linear`, Conv → `nn.ConvNd`...): `@lifts("MatMul")` on `lift(node, graph) -> Lifted or None`,
where `graph` (the GraphModule being built) answers `const(name)`, `rank(name)`, `parameter(array)`,
`single_reader(value)` and `absorb(index)`. A lifted node runs as `call(module, x)` on its one
run-time input.

Converters compute nothing themselves: floating values go through the engine's ops (`engine_op`
routes folded floating constants there too), integer and boolean values (shape arithmetic) through
numpy.
"""
import threading
from typing import Callable, NamedTuple, Optional

import numpy as np
import onnx
from onnx import helper

from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.loader import tensor_to_array

_REGISTRY = {}  # (domain, op_type) -> {since_version: builder}
_LIFTS = {}  # (domain, op_type) -> lift(node, graph) -> Lifted or None
_STATE = threading.local()  # the running GraphModule's floating compute dtype (float64 after .double())


def float_dtype():
    """Floating dtype the running graph computes in: float32, or float64 after `module.double()`."""
    return getattr(_STATE, "float_dtype", np.dtype(np.float32))


def set_float_dtype(dtype):
    previous = float_dtype()
    _STATE.float_dtype = np.dtype(dtype)
    return previous


DEFAULT_DOMAIN = ""


def _canonical_domain(domain):
    return DEFAULT_DOMAIN if domain in ("", "ai.onnx") else domain


def register(op_type, since=1, domain=DEFAULT_DOMAIN):
    """Decorator: register `build(node) -> run` for `op_type` from opset `since` on."""
    def decorate(build):
        versions = _REGISTRY.setdefault((_canonical_domain(domain), op_type), {})
        if since in versions:
            raise ValueError(f"converter for {domain or 'ai.onnx'}::{op_type} since {since} registered twice")
        versions[since] = build
        return build
    return decorate


def supported_ops():
    """Every registered (domain, op_type, since_version), sorted."""
    return sorted((domain, op, since) for (domain, op), versions in _REGISTRY.items() for since in versions)


def resolve(domain, op_type, opset_version):
    """The builder for `op_type` at `opset_version` (greatest since ≤ version), or None."""
    versions = _REGISTRY.get((_canonical_domain(domain), op_type), {})
    usable = [v for v in versions if v <= opset_version]
    return versions[max(usable)] if usable else None


class _NoDraw:
    """Given as `rng=` to a layer constructor whose random initialisation the import overwrites at
    once with the teacher's weights: it hands back zeros, so importing a model draws nothing from any
    random generator (a seeded student built afterwards does not depend on which teacher was imported)."""

    def uniform(self, low=0.0, high=1.0, size=None):
        return np.zeros(size, np.float32)

    def standard_normal(self, size=None, dtype=np.float32):
        return np.zeros(size, dtype)


NO_DRAW = _NoDraw()


def call_layer(module, x):
    """How a lifted layer runs by default: on its input as a Tensor."""
    return module(x if isinstance(x, Tensor) else Tensor(np.asarray(x)))


class Lifted(NamedTuple):
    """A node (and whatever it absorbed) as one layer: `call(module, x)` runs it on the input `inputs[0]`."""
    module: object
    weight: Optional[str]  # the weight's name: names the layer when the node's name does not
    inputs: list
    outputs: list
    call: Callable = call_layer


def lifts(op_type, domain=DEFAULT_DOMAIN):
    """Decorator: register `lift(node, graph) -> Lifted or None` for `op_type` (any opset)."""
    def decorate(lift_fn):
        key = (_canonical_domain(domain), op_type)
        if key in _LIFTS:
            raise ValueError(f"lifting of {domain or 'ai.onnx'}::{op_type} registered twice")
        _LIFTS[key] = lift_fn
        return lift_fn
    return decorate


def lifter(domain, op_type):
    """The lifting function registered for op_type, or None."""
    return _LIFTS.get((_canonical_domain(domain), op_type))


class Node:
    """What a builder sees: op, names, decoded attributes and the opset version it runs under."""

    __slots__ = ("name", "op_type", "domain", "inputs", "outputs", "attrs", "opset")

    def __init__(self, proto, opset):
        self.name = proto.name
        self.op_type = proto.op_type
        self.domain = _canonical_domain(proto.domain)
        self.inputs = list(proto.input)
        self.outputs = list(proto.output)
        self.opset = opset
        self.attrs = {}
        for attribute in proto.attribute:
            value = helper.get_attribute_value(attribute)
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            elif isinstance(value, onnx.TensorProto):
                value = tensor_to_array(value)
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode("utf-8") for v in value]
            self.attrs[attribute.name] = value

    def attr(self, name, default=None):
        return self.attrs.get(name, default)

    def __repr__(self):
        return f"Node({self.op_type} {self.name!r}, opset {self.opset})"


# -- helpers shared by the converters --------------------------------------------------------------
def is_tensor(value):
    return isinstance(value, Tensor)


def as_tensor(value):
    """A Tensor for a value (numpy arrays become non-trainable leaves, in their own dtype)."""
    return value if isinstance(value, Tensor) else Tensor(np.asarray(value))


def tensor_like(values):
    """The first Tensor among values (mixed Tensor/numpy inputs take its dtype)."""
    return next(v for v in values if isinstance(v, Tensor))


def is_float(value):
    """A constant holding floating data (a weight), not None / integer / boolean."""
    return value is not None and np.asarray(value).dtype.kind == "f"


def engine_op(tensor_fn, integer_fn=None, what="this op"):
    """`run(*xs)` for an op the engine computes: with any Tensor among the inputs, or floating numpy
    values (constants folded at import), it is `tensor_fn` on Tensors (numpy in, numpy out); integer
    and boolean values (shape arithmetic) take `integer_fn` in numpy, or are refused without one."""
    def run(*xs):
        for like in xs:  # the first Tensor sets the dtype of the others
            if isinstance(like, Tensor):
                return tensor_fn(*[x if x is None or isinstance(x, Tensor) else lift(x, like) for x in xs])
        present = [x for x in xs if x is not None]
        floating = [x for x in present if np.asarray(x).dtype.kind == "f"]
        if floating or integer_fn is None:
            if not floating:
                dtypes = [np.asarray(x).dtype.name for x in present]
                raise OnnxImportError(f"{what} needs floating inputs, got {dtypes}")
            like = Tensor(np.asarray(floating[0]))
            return tensor_fn(*[None if x is None else lift(x, like) for x in xs]).data
        return integer_fn(*[None if x is None else np.asarray(x) for x in xs])
    return run


def array(value):
    """The numpy array behind a value (Tensor or array)."""
    return value.data if isinstance(value, Tensor) else np.asarray(value)


def ints(value):
    """A constant or shape value as a tuple of Python ints."""
    values = np.asarray(array(value))
    if values.dtype.kind in "iu":  # tolist() converts in C: shape arithmetic runs every call
        return tuple(values.reshape(-1).tolist())
    return tuple(int(v) for v in values.reshape(-1))


def lift(value, like=None):
    """A Tensor for a value mixed with Tensors (numpy constants become non-trainable leaves)."""
    if isinstance(value, Tensor):
        return value
    value = np.asarray(value)
    if like is not None and value.dtype.kind == "f" and value.dtype != like.dtype and like.dtype.kind == "f":
        value = value.astype(like.dtype)
    return Tensor(value)


def axis_in(axis, rank, what):
    """`axis` normalised to [0, rank), or an OnnxImportError naming the op (ONNX refuses it too)."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise OnnxImportError(f"{what}: axis {axis} is out of range for an input of rank {rank}")
    return axis % rank


def axes_in(axes, rank, what):
    """Distinct axes normalised to [0, rank), else an OnnxImportError."""
    normal = [axis_in(a, rank, what) for a in axes]
    if len(set(normal)) != len(normal):
        raise OnnxImportError(f"{what}: repeated axes {list(axes)} for rank {rank}")
    return normal


MAX_ELEMENTS = 1 << 31  # refuse to materialise more (a corrupt shape must not exhaust memory or hang)


def checked_shape(shape, what):
    """`shape` as ints, refusing negative sizes and outputs beyond MAX_ELEMENTS."""
    shape = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"{what}: negative size in shape {shape}")
    if int(np.prod(shape, dtype=object)) > MAX_ELEMENTS:
        raise ValueError(f"{what}: shape {shape} has more than {MAX_ELEMENTS} elements")
    return shape


def any_tensor(values):
    return any(isinstance(v, Tensor) for v in values)
