"""`GraphModule`: an ONNX graph as a `dreidel.nn.Module`.

Import does, in order:
1. read initializers (float16/bfloat16 upcast to float32) and check every node has a converter
   (one error lists all the missing ones);
2. build each node's runner and fold every node whose inputs are all constants (weights, Constant
   nodes, and whatever is computed from them alone: Cast of stored float16 weights, Transposes...);
3. recognise structure among the remaining nodes. Each converter's file lifts its op to a layer when
   the weights are constants (`registry.lifts`): MatMul/Gemm (+ its bias Add) → `nn.Linear`,
   LayerNormalization → `nn.LayerNorm`, Gather from a constant table → `nn.Embedding`,
   Conv/ConvTranspose → `nn.ConvNd`/`nn.ConvTransposeNd`, Instance/BatchNormalization →
   `nn.InstanceNormNd`/`nn.BatchNormNd` (when the graph records the input's rank), PRelu → `nn.PReLU`;
   `fusion.py` finds the TorchScript exporter's spelled-out GELU, LayerNorm and RMSNorm. Layers are
   built without random initialisation (import draws from no random generator). Modules are named
   after the graph's scopes (the exporter's name_scopes metadata, node names like
   `/encoder/layers.0/self_attn/q_proj/MatMul`, or weight names), so
   `get_submodule("encoder.layers.0.self_attn.q_proj")` finds the teacher's layer; steps look their
   module up at every call, so `set_submodule` swaps take effect.

Calling: `module(*inputs)` (graph-input order) or `module(**named_inputs)`, numpy arrays or Tensors.
Returns a Tensor for a single-output graph, else a tuple of Tensors in `module.output_names` order.
Floating values are Tensors (dreidel ops, differentiable); integer/boolean values (token ids, shape
arithmetic, masks) are numpy arrays computed without autograd. Steps that depend only on the inputs'
shapes (Shape → Gather → Concat → ...) are computed once per input-shape signature and cached.
`module.profile(*inputs, repeats=1)` runs the graph timing every step and returns a table of time
per op type (imported layers by their module class), heaviest first.
"""
import ast
import re
import time
from collections import Counter

import numpy as np
import onnx

from dreidel.nn.module import Module, Parameter
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.errors import OnnxImportError, OnnxInputError, OnnxRuntimeError
from importers.onnx_to_dreidel.fusion import Patterns, donate_scores
from importers.onnx_to_dreidel.loader import numpy_dtype, tensor_to_array
from importers.onnx_to_dreidel.registry import Node, call_layer, is_tensor, lifter, resolve, set_float_dtype
from importers.onnx_to_dreidel.supported import check_graph, opsets_of

_DATA_DEPENDENT_SHAPES = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "StringSplit"}
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


class Scope(Module):
    """A named container standing for one of the teacher's modules (it only groups children)."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("a Scope only groups imported layers; call the GraphModule")


class _Step:
    __slots__ = ("node", "run", "module", "call", "inputs", "outputs", "free", "shape_only")

    def __init__(self, node, run, inputs, outputs, module=None, call=None):
        self.node, self.run, self.inputs, self.outputs = node, run, inputs, outputs
        self.module, self.call, self.free = module, call, ()  # a module step runs call(module, x)
        self.shape_only = False  # depends on the inputs' shapes only: cached per input-shape signature


def _clean(part):
    part = re.sub(r"[^0-9A-Za-z_]", "_", part)
    return part if part and not part.startswith("_") else "m" + part


def _scope_of(proto, weight_name=None):
    """The teacher-module path a node belongs to, or None."""
    for entry in proto.metadata_props:
        if entry.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(entry.value)
            except (ValueError, SyntaxError):
                break
            if len(scopes) >= 2 and scopes[-2]:
                return scopes[-2]
    name = proto.name if isinstance(proto.name, str) else proto.name.decode("utf-8", "replace")
    if "/" in name:
        parts = [p for p in name.split("/") if p][:-1]
        if parts:
            return ".".join(parts)
    if weight_name and "." in weight_name and not weight_name.startswith(("onnx::", "val_")):
        for suffix in (".weight_fp16", ".weight", ".bias", ".scale"):
            if weight_name.endswith(suffix):
                return weight_name[: -len(suffix)]
    return None


class GraphModule(Module):
    """An imported ONNX graph; see the module docstring for the calling convention."""

    def __init__(self, model, base_dir=None, label="<model>"):
        super().__init__()
        graph = model.graph
        self.label = label
        self.opsets = opsets_of(model)
        initializer_names = {t.name for t in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in initializer_names]
        self.output_names = [v.name for v in graph.output]
        self._input_specs = {v.name: _value_spec(v) for v in graph.input if v.name not in initializer_names}
        self.op_counts = Counter(n.op_type for n in graph.node)

        check_graph(graph, self.opsets)
        constants = {}
        for tensor in graph.initializer:
            try:
                constants[tensor.name] = tensor_to_array(tensor, base_dir)
            except OnnxImportError as exc:
                raise type(exc)(f"{label}: {exc}") from None
        for tensor in graph.sparse_initializer:
            raise OnnxImportError(f"{label}: sparse initializers are not supported ({tensor.values.name!r})")

        nodes = []
        for proto in graph.node:
            node = Node(proto, self.opsets.get(("" if proto.domain in ("", "ai.onnx") else proto.domain), 0))
            try:
                run = resolve(node.domain, node.op_type, node.opset)(node)
            except OnnxImportError as exc:
                raise OnnxImportError(f"{label}: node {node.name!r} ({node.op_type}): {exc}") from None
            except Exception as exc:
                raise OnnxImportError(f"{label}: node {node.name!r} ({node.op_type}) has invalid attributes: "
                                      f"{type(exc).__name__}: {exc}") from None
            nodes.append((proto, node, run))

        self.folded_count = 0
        runtime = []
        for proto, node, run in nodes:
            inputs = [name for name in node.inputs if name]
            if node.op_type not in _NEVER_FOLD and all(name in constants for name in inputs):
                values = _call(run, node, [constants[n] if n else None for n in node.inputs])
                for name, value in zip(node.outputs, values):
                    if name:
                        constants[name] = value if not is_tensor(value) else value.data
                self.folded_count += 1
            else:
                runtime.append((proto, node, run))
        self._ranks = {v.name: len(v.type.tensor_type.shape.dim)
                       for v in list(graph.value_info) + list(graph.input) + list(graph.output)
                       if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
        self._build_steps(runtime, constants)
        del self._ranks

    # -- structure ------------------------------------------------------------------------------
    def _build_steps(self, runtime, constants):
        consumers = Counter(name for _, node, _ in runtime for name in node.inputs if name)
        consumers.update(self.output_names)
        building = _Building(runtime, constants, consumers, self.output_names, self._ranks)
        steps = []
        self.module_paths = []
        fused = Patterns(runtime, constants, consumers, self.output_names).find()
        for first, covered, *_ in fused.values():
            building.absorbed.update(covered)
        for index, (proto, node, run) in enumerate(runtime):
            if index in fused:
                first, covered, module, x_name, out_name = fused[index]
                path = self._add_module(runtime[first][0], None, module)
                steps.append(_Step(runtime[first][1], None, [x_name], [out_name], module=path, call=call_layer))
                continue
            if index in building.absorbed:
                continue
            lift = lifter(node.domain, node.op_type)
            lifted = None if lift is None else lift(node, building.at(index))
            if lifted is not None:
                path = self._add_module(proto, lifted.weight, lifted.module)
                steps.append(_Step(node, None, list(lifted.inputs), list(lifted.outputs), module=path,
                                   call=lifted.call))
                continue
            steps.append(_Step(node, run, list(node.inputs), list(node.outputs)))
        self._finish(steps, constants)

    def _add_module(self, proto, weight_name, module):
        scope = _scope_of(proto, weight_name) or f"{proto.op_type.lower()}_{len(self.module_paths)}"
        parts = [_clean(p) for p in scope.split(".") if p] or [_clean(proto.op_type.lower())]
        if parts[0] in _RESERVED:
            parts[0] += "_"
        parent = self
        for part in parts[:-1]:
            child = parent._modules.get(part)
            if child is None:
                child = Scope()
                setattr(parent, part, child)
            parent = child
        leaf, n = parts[-1], 1
        while leaf in parent._modules:
            n += 1
            leaf = f"{parts[-1]}_{n}"
        setattr(parent, leaf, module)
        path = ".".join(parts[:-1] + [leaf])
        self.module_paths.append(path)
        return path

    def _finish(self, steps, constants):
        """Assign value slots, pre-place constants, and note when each slot can be freed."""
        slots = {}
        used = {n for step in steps for n in step.inputs if n} | set(self.output_names)
        # only constants still read at run time keep a slot: weights moved into modules are dropped
        for name in [n for n in constants if n in used] + self.input_names:
            slots.setdefault(name, len(slots))
        for step in steps:
            for name in step.inputs + step.outputs:
                if name:
                    slots.setdefault(name, len(slots))
        for name in self.output_names:
            if name not in slots:
                raise OnnxImportError(f"{self.label}: graph output {name!r} is produced by no node")
        missing = [n for step in steps for n in step.inputs
                   if n and n not in constants and n not in self.input_names
                   and not any(n in s.outputs for s in steps)]
        if missing:
            raise OnnxImportError(f"{self.label}: node inputs {sorted(set(missing))[:10]} are produced by no node, "
                                  f"initializer or graph input")
        last_use = {}
        for i, step in enumerate(steps):
            for name in step.inputs:
                if name and name not in constants:
                    last_use[name] = i
        keep = set(self.output_names)
        frees = [[] for _ in steps]
        for name, i in last_use.items():
            if name not in keep:
                frees[i].append(slots[name])
        for step, free in zip(steps, frees):
            step.free = tuple(free)
            step.inputs = [slots[n] if n else None for n in step.inputs]
            step.outputs = [slots[n] if n else None for n in step.outputs]
        self._slots = slots
        self._steps = steps
        self._constant_slots = [(slots[name], value) for name, value in constants.items() if name in slots]
        self._compute_dtype = np.dtype(np.float32)
        # Shape-only steps: Shape/Size of anything, then steps fed only by constants and shape-only
        # results (the exporters' shape arithmetic). Their numpy results are cached per input shapes.
        shape_slots = set()
        constant_slots = {slot for slot, _ in self._constant_slots}
        for step in steps:
            fed = [s for s in step.inputs if s is not None]
            if step.module is None and step.node.op_type not in _NEVER_FOLD and (
                    step.node.op_type in ("Shape", "Size") or all(s in shape_slots or s in constant_slots
                                                                  for s in fed)):
                step.shape_only = True
                shape_slots.update(s for s in step.outputs if s is not None)
        donate_scores(steps, {slots[name] for name in self.output_names})
        self._shape_cache = {}
        if any(step.node.op_type in _DATA_DEPENDENT_SHAPES for step in steps):
            for step in steps:  # a shape may depend on values: no caching at all
                step.shape_only = False

    # -- calling --------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        previous = set_float_dtype(self._compute_dtype)
        try:
            return self._forward(*args, **kwargs)
        finally:
            set_float_dtype(previous)

    def profile(self, *args, repeats=1, **kwargs):
        """Run the graph `repeats` times timing every step; returns a text table of total time per
        op type (modules by their class), heaviest first, with call counts and share of the run."""
        timings = Counter()
        calls = Counter()
        previous = set_float_dtype(self._compute_dtype)
        try:
            for _ in range(repeats):
                self._forward(*args, _timer=(time.perf_counter, timings, calls), **kwargs)
        finally:
            set_float_dtype(previous)
        total = sum(timings.values()) or 1.0
        lines = [f"{'op / module':<28}{'calls':>8}{'total ms':>12}{'per call us':>14}{'share':>8}"]
        for op, seconds in timings.most_common():
            lines.append(f"{op:<28}{calls[op] // repeats:>8}{1e3 * seconds / repeats:>12.2f}"
                         f"{1e6 * seconds / calls[op]:>14.1f}{seconds / total:>8.1%}")
        lines.append(f"{'total (steps)':<28}{sum(calls.values()) // repeats:>8}{1e3 * total / repeats:>12.2f}")
        return "\n".join(lines)

    def _forward(self, *args, _timer=None, **kwargs):
        feeds = self._bind(args, kwargs)
        values = [None] * len(self._slots)
        for slot, value in self._constant_slots:
            values[slot] = value
        for name, value in feeds.items():
            values[self._slots[name]] = value
        modules = {}
        signature = (self._compute_dtype,) + tuple((name, np.shape(v.data if is_tensor(v) else v))
                                                   for name, v in sorted(feeds.items()))
        cached = self._shape_cache.get(signature)
        if cached is not None:
            for slot, value in cached:
                values[slot] = value
        record = [] if cached is None else None
        for step in self._steps:
            if cached is not None and step.shape_only:
                continue
            inputs = [None if s is None else values[s] for s in step.inputs]
            if _timer is not None:
                start = _timer[0]()
            if step.module is not None:
                module = modules.get(step.module)
                if module is None:
                    module = modules[step.module] = self.get_submodule(step.module)
                outputs = (_call_layer(module, step, inputs[0]),)
            else:
                outputs = _call(step.run, step.node, inputs)
            if _timer is not None:
                key = step.node.op_type if step.module is None else type(module).__name__
                _timer[1][key] += _timer[0]() - start
                _timer[2][key] += 1
            for slot, value in zip(step.outputs, outputs):
                if slot is not None:
                    values[slot] = value
            if record is not None and step.shape_only:
                if any(is_tensor(v) for v in outputs):
                    step.shape_only = False  # not plain numpy after all: always run it
                else:
                    record.extend((slot, value) for slot, value in zip(step.outputs, outputs) if slot is not None)
            for slot in step.free:
                values[slot] = None
        if record is not None:
            if len(self._shape_cache) >= 16:  # a decode loop sees a new length per step: keep few
                self._shape_cache.pop(next(iter(self._shape_cache)))
            self._shape_cache[signature] = record
        results = tuple(_as_output(values[self._slots[name]]) for name in self.output_names)
        return results[0] if len(results) == 1 else results

    def _bind(self, args, kwargs):
        if len(args) > len(self.input_names):
            raise OnnxInputError(f"{self.label}: got {len(args)} positional inputs, the graph takes "
                                 f"{len(self.input_names)}: {self.input_names}")
        feeds = dict(zip(self.input_names, args))
        for name, value in kwargs.items():
            if name not in self._input_specs:
                raise OnnxInputError(f"{self.label}: unknown input {name!r}; the graph's inputs are "
                                     f"{self._describe_inputs()}")
            if name in feeds:
                raise OnnxInputError(f"{self.label}: input {name!r} given twice (positionally and by name)")
            feeds[name] = value
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise OnnxInputError(f"{self.label}: missing input(s) {missing}; the graph's inputs are "
                                 f"{self._describe_inputs()}")
        symbols = {}
        return {name: self._check_input(name, value, symbols) for name, value in feeds.items()}

    def _describe_inputs(self):
        return ", ".join(f"{n} {_spec_text(self._input_specs[n])}" for n in self.input_names)

    def _check_input(self, name, value, symbols):
        elem_type, dims = self._input_specs[name]
        array = value.data if isinstance(value, Tensor) else np.asarray(value)
        expected = numpy_dtype(elem_type) if elem_type else None
        if array.dtype.kind == "V" and expected is not None and expected.kind == "f":
            try:  # bfloat16 and other ml_dtypes floats compute as float32
                array = array.astype(np.float32)
            except (TypeError, ValueError):
                pass
        spec = _spec_text(self._input_specs[name])
        if expected is not None:
            if expected.kind == "f" and array.dtype.kind != "f":
                raise OnnxInputError(f"{self.label}: input {name!r} must be floating {spec}, got {array.dtype}")
            if expected.kind in "iu" and array.dtype.kind not in "iu":
                raise OnnxInputError(f"{self.label}: input {name!r} must be integer {spec}, got {array.dtype}")
            if expected.kind == "b" and array.dtype.kind != "b":
                raise OnnxInputError(f"{self.label}: input {name!r} must be boolean {spec}, got {array.dtype}")
        if dims is not None:
            if array.ndim != len(dims):
                raise OnnxInputError(f"{self.label}: input {name!r} must have rank {len(dims)} {spec}, "
                                     f"got shape {array.shape}")
            for axis, (want, got) in enumerate(zip(dims, array.shape)):
                if isinstance(want, int) and want != got:
                    raise OnnxInputError(f"{self.label}: input {name!r} axis {axis} must be {want} {spec}, "
                                         f"got shape {array.shape}")
                if isinstance(want, str):
                    seen = symbols.setdefault(want, (got, name))
                    if seen[0] != got:
                        raise OnnxInputError(f"{self.label}: input {name!r} axis {axis} ({want}) is {got} but "
                                             f"input {seen[1]!r} has {want} = {seen[0]}")
        if array.dtype.kind == "f":
            if isinstance(value, Tensor):
                return value
            return Tensor(array.astype(self._compute_dtype, copy=False))
        if expected is not None and array.dtype != expected:
            array = array.astype(expected)
        return array

    def set_submodule(self, target, new_module):
        """Replace an imported layer (recasting); cached shape arithmetic is recomputed next call."""
        super().set_submodule(target, new_module)
        self._shape_cache.clear()

    # -- dtype and display ----------------------------------------------------------------------
    def to(self, dtype):
        """Cast parameters and floating constants (e.g. `.double()` for gradcheck)."""
        super().to(dtype)
        dtype = np.dtype(dtype)
        self._constant_slots = [(s, v.astype(dtype) if np.asarray(v).dtype.kind == "f" else v)
                                for s, v in self._constant_slots]
        self._compute_dtype = dtype
        return self

    def summary(self):
        """A text table: the imported modules with parameter counts, then the graph's op counts."""
        lines = [f"GraphModule from {self.label}: inputs {self._describe_inputs()}; outputs {self.output_names}",
                 f"{'module':<60} {'type':<18} {'parameters':>12}"]
        for path in self.module_paths:
            module = self.get_submodule(path)
            count = module.parameter_count()
            lines.append(f"{path:<60} {type(module).__name__:<18} {count:>12,}")
        lines.append(f"{len(self.module_paths)} modules, {self.parameter_count():,} parameters; "
                     f"{sum(self.op_counts.values())} nodes: {self.folded_count} folded at import, "
                     f"{len(self._steps)} steps at run time")
        kinds = Counter(step.node.op_type if step.module is None else type(self.get_submodule(step.module)).__name__
                        for step in self._steps)
        shape_steps = sum(step.shape_only for step in self._steps)
        lines.append("op counts (graph): " + ", ".join(f"{op} {n}" for op, n in sorted(self.op_counts.items())))
        lines.append("run-time steps (modules by type): " + ", ".join(f"{op} {n}" for op, n in sorted(kinds.items()))
                     + f"; {shape_steps} shape-only steps cached per input shapes")
        return "\n".join(lines)

    def extra_repr(self):
        return f"{self.label!r}, inputs={self.input_names}, outputs={self.output_names}"


_RESERVED = set(dir(GraphModule)) | {"label", "opsets", "input_names", "output_names", "op_counts",
                                     "folded_count", "module_paths", "training"}


class _Building:
    """What a lifting function (`registry.lifts`) sees of the graph being built, at one node."""

    def __init__(self, runtime, constants, consumers, outputs, ranks):
        self.nodes = [node for _, node, _ in runtime]
        self.constants, self.consumers, self.outputs, self.ranks = constants, consumers, set(outputs), ranks
        self.absorbed = set()  # runtime indices merged into a module step (bias Adds, spelled-out norms)
        self.shared = {}
        self.index = 0

    def at(self, index):
        self.index = index
        return self

    def const(self, name):
        """The constant (weight, folded value) called `name`, or None when it is computed at run time."""
        return self.constants.get(name) if name else None

    def rank(self, name, default=None):
        """The value's rank when the graph records it."""
        return self.ranks.get(name, default)

    def parameter(self, array):
        """One Parameter per stored weight: a tied table (an Embedding and, through a folded Transpose,
        the output projection reading the same memory) stays one shared Parameter."""
        key = (array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str)
        if key not in self.shared:
            self.shared[key] = (Parameter(np.ascontiguousarray(array)), array)  # keep the source alive
        return self.shared[key][0]

    def single_reader(self, value):
        """(index, node) of the one later run-time node reading `value` (not a graph output), else None."""
        if self.consumers[value] != 1 or value in self.outputs:
            return None
        for j in range(self.index + 1, len(self.nodes)):
            if value in self.nodes[j].inputs:
                return j, self.nodes[j]
        return None

    def absorb(self, index):
        """The node at `index` is part of the layer just lifted: it gets no step of its own."""
        self.absorbed.add(index)


def _value_spec(value_info):
    t = value_info.type.tensor_type if value_info.type.HasField("tensor_type") else None
    if t is None:
        return 0, None
    dims = None
    if t.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return t.elem_type, dims


def _spec_text(spec):
    elem_type, dims = spec
    kind = onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "any"
    shape = "?" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
    return f"({kind} {shape})"


def _call(run, node, inputs):
    try:
        out = run(*inputs)
    except OnnxImportError:
        raise
    except Exception as exc:
        shapes = [None if v is None else np.shape(v.data if is_tensor(v) else v) for v in inputs]
        raise OnnxRuntimeError(f"node {node.name!r} ({node.op_type}) failed on input shapes {shapes}: "
                               f"{type(exc).__name__}: {exc}") from exc
    return out if isinstance(out, tuple) else (out,)


def _call_layer(module, step, x):
    try:
        return step.call(module, x)
    except Exception as exc:
        shape = np.shape(x.data if is_tensor(x) else x)
        raise OnnxRuntimeError(f"node {step.node.name!r} ({step.node.op_type}) → {type(module).__name__} failed "
                               f"on input shape {shape}: {type(exc).__name__}: {exc}") from exc


def _as_output(value):
    return value if is_tensor(value) else Tensor(np.asarray(value))
