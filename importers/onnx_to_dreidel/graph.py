"""`GraphModule`: an ONNX graph as a `dreidel.nn.Module`.

Import does, in order:
1. read initializers (float16/bfloat16 upcast to float32) and check every node has a converter
   (one error lists all the missing ones);
2. build each node's runner and fold every node whose inputs are all constants (weights, Constant
   nodes, and whatever is computed from them alone: Cast of stored float16 weights, Transposes...);
3. recognise structure among the remaining nodes: MatMul/Gemm with a constant weight (+ its bias Add)
   → `nn.Linear`, LayerNormalization → `nn.LayerNorm`, Gather from a constant table → `nn.Embedding`,
   Conv/ConvTranspose → `nn.ConvNd`/`nn.ConvTransposeNd`, Instance/BatchNormalization → `nn.InstanceNormNd`/
   `nn.BatchNormNd` (when the graph records the input's rank),
   PRelu → `nn.PReLU`, and the TorchScript exporter's spelled-out GELU (Div/Erf/Add/Mul/Mul), LayerNorm
   (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul/Add]) and RMSNorm (Pow/ReduceMean/Add/Sqrt/
   Reciprocal/Mul[/Mul]) → `nn.GELU`, `nn.LayerNorm`, `nn.RMSNorm`. Modules are named after the graph's
   scopes (the exporter's name_scopes metadata, or node names like `/encoder/layers.0/self_attn/q_proj/MatMul`, or weight names), so
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
from collections import Counter

import numpy as np
import onnx

from dreidel import nn, ops
from dreidel.nn import conv as nn_conv
from dreidel.nn.module import Module, Parameter
from dreidel.tensor import Tensor, is_grad_enabled
from importers.onnx_to_dreidel.errors import (OnnxImportError, OnnxInputError, OnnxRuntimeError,
                                              UnsupportedOpsError)
from importers.onnx_to_dreidel.loader import numpy_dtype, tensor_to_array
from importers.onnx_to_dreidel.ops_math import softmax_in_place
from importers.onnx_to_dreidel.ops_nn import check_attribute_lengths, check_kernel, conv_geometry
from importers.onnx_to_dreidel.registry import Node, is_tensor, resolve, set_float_dtype

_DATA_DEPENDENT_SHAPES = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "StringSplit"}
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


class Scope(Module):
    """A named container standing for one of the teacher's modules (it only groups children)."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("a Scope only groups imported layers; call the GraphModule")


class _Step:
    __slots__ = ("node", "run", "module", "inputs", "outputs", "free", "kind", "shape_only")

    def __init__(self, node, run, inputs, outputs, module=None, kind="op"):
        self.node, self.run, self.inputs, self.outputs = node, run, inputs, outputs
        self.module, self.kind, self.free = module, kind, ()
        self.shape_only = False  # depends on the inputs' shapes only: cached per input-shape signature


# -- naming -----------------------------------------------------------------------------------------
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


# -- the module -------------------------------------------------------------------------------------
class GraphModule(Module):
    """An imported ONNX graph; see the module docstring for the calling convention."""

    def __init__(self, model, base_dir=None, label="<model>"):
        super().__init__()
        graph = model.graph
        self.label = label
        self.opsets = {("" if o.domain in ("", "ai.onnx") else o.domain): o.version for o in model.opset_import}
        initializer_names = {t.name for t in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in initializer_names]
        self.output_names = [v.name for v in graph.output]
        self._input_specs = {v.name: _value_spec(v) for v in graph.input if v.name not in initializer_names}
        self.op_counts = Counter(n.op_type for n in graph.node)

        _check_supported(graph, self.opsets)
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
        self._shared = {}
        absorbed = set()  # runtime indices merged into a module step (bias Adds, spelled-out norms)
        steps = []
        self.module_paths = []
        fused = _Patterns(runtime, constants, consumers, self.output_names).find()
        for first, covered, *_ in fused.values():
            absorbed.update(covered)
        for index, (proto, node, run) in enumerate(runtime):
            if index in fused:
                first, covered, module, x_name, out_name, kind = fused[index]
                path = self._add_module(runtime[first][0], None, module)
                steps.append(_Step(runtime[first][1], None, [x_name], [out_name], module=path, kind=kind))
                continue
            if index in absorbed:
                continue
            made = self._as_module(proto, node, runtime, index, constants, consumers, absorbed)
            if made is not None:
                path, module_inputs, outputs, kind = made
                steps.append(_Step(node, None, module_inputs, outputs, module=path, kind=kind))
                continue
            steps.append(_Step(node, run, list(node.inputs), list(node.outputs)))
        self._finish(steps, constants)
        del self._shared

    def _as_module(self, proto, node, runtime, index, constants, consumers, absorbed):
        """(path, inputs, outputs, kind) when the node is a recognised layer with constant weights."""
        const = lambda name: constants.get(name) if name else None  # noqa: E731
        is_float = lambda v: v is not None and np.asarray(v).dtype.kind == "f"  # noqa: E731
        op = node.op_type
        if op == "MatMul" and node.inputs[0] not in constants and is_float(const(node.inputs[1])) \
                and const(node.inputs[1]).ndim == 2:
            weight = const(node.inputs[1]).T
            bias, outputs = None, list(node.outputs)
            add_index = self._single_consumer(runtime, index, node.outputs[0], consumers)
            if add_index is not None and runtime[add_index][1].op_type == "Add" \
                    and len(runtime[add_index][1].inputs) == 2:  # a unary reader (Tanh...) is no bias
                add = runtime[add_index][1]
                other = add.inputs[1] if add.inputs[0] == node.outputs[0] else add.inputs[0]
                candidate = const(other)
                if add.op_type == "Add" and is_float(candidate) and candidate.shape == (weight.shape[0],):
                    bias, outputs = candidate, list(add.outputs)
                    absorbed.add(add_index)
            path = self._add_module(proto, node.inputs[1], _linear(self._parameter(weight), bias))
            return path, [node.inputs[0]], outputs, "linear"
        if op == "Gemm" and node.inputs[0] not in constants and is_float(const(node.inputs[1])) \
                and const(node.inputs[1]).ndim == 2 and self._ranks.get(node.inputs[0], 2) == 2 \
                and node.attr("alpha", 1.0) == 1.0 and node.attr("beta", 1.0) == 1.0 and not node.attr("transA", 0):
            b = const(node.inputs[1])
            weight = b if node.attr("transB", 0) else b.T
            bias = None
            if len(node.inputs) > 2 and node.inputs[2]:
                c = const(node.inputs[2])
                if not is_float(c) or c.size != weight.shape[0]:
                    return None
                bias = c.reshape(-1)
            path = self._add_module(proto, node.inputs[1], _linear(self._parameter(weight), bias))
            return path, [node.inputs[0]], list(node.outputs), "gemm"
        if op == "LayerNormalization" and node.attr("axis", -1) == -1 and len([o for o in node.outputs if o]) == 1 \
                and is_float(const(node.inputs[1])) and const(node.inputs[1]).ndim == 1 \
                and const(node.inputs[1]).shape[0] > 1 \
                and (len(node.inputs) < 3 or not node.inputs[2] or
                     (is_float(const(node.inputs[2])) and const(node.inputs[2]).shape == const(node.inputs[1]).shape)):
            scale = const(node.inputs[1])
            bias = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
            module = nn.LayerNorm(scale.shape[0], eps=float(node.attr("epsilon", 1e-5)), bias=bias is not None)
            module.weight = Parameter(scale)
            if bias is not None:
                module.bias = Parameter(bias)
            path = self._add_module(proto, node.inputs[1], module)
            return path, [node.inputs[0]], list(node.outputs), "module"
        if op == "Gather" and node.attr("axis", 0) == 0 and is_float(const(node.inputs[0])) \
                and const(node.inputs[0]).ndim == 2 and node.inputs[1] not in constants:
            table = const(node.inputs[0])
            module = nn.Embedding(1, table.shape[1])
            module.num_embeddings = table.shape[0]
            module.weight = self._parameter(table)
            path = self._add_module(proto, node.inputs[0], module)
            return path, [node.inputs[1]], list(node.outputs), "embedding"
        if op in ("Conv", "ConvTranspose") and node.inputs[0] not in constants and is_float(const(node.inputs[1])) \
                and (len(node.inputs) < 3 or not node.inputs[2] or is_float(const(node.inputs[2]))):
            module = _conv_module(node, const(node.inputs[1]),
                                  const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None)
            if module is None:
                return None
            path = self._add_module(proto, node.inputs[1], module)
            return path, [node.inputs[0]], list(node.outputs), "module"
        rank = self._ranks.get(node.inputs[0])
        if op in ("InstanceNormalization", "BatchNormalization") and rank in (3, 4, 5) \
                and all(is_float(const(n)) and const(n).ndim == 1 for n in node.inputs[1:]) \
                and len([o for o in node.outputs if o]) == 1 and not node.attr("training_mode", 0):
            kind = "InstanceNorm" if op == "InstanceNormalization" else "BatchNorm"
            cls = getattr(nn_conv, f"{kind}{rank - 2}d")
            scale = const(node.inputs[1])
            if kind == "InstanceNorm":
                module = cls(scale.shape[0], eps=float(node.attr("epsilon", 1e-5)), affine=True)
            else:  # inference form: running statistics as buffers
                module = cls(scale.shape[0], eps=float(node.attr("epsilon", 1e-5)))
                module.running_mean.data = np.array(const(node.inputs[3]), dtype=scale.dtype)
                module.running_var.data = np.array(const(node.inputs[4]), dtype=scale.dtype)
            module.weight = Parameter(scale)
            module.bias = Parameter(const(node.inputs[2]))
            path = self._add_module(proto, node.inputs[1], module)
            return path, [node.inputs[0]], list(node.outputs), "module"
        if op == "PRelu" and is_float(const(node.inputs[1])) and const(node.inputs[1]).size == 1:
            module = nn_conv.PReLU(1)
            module.weight = Parameter(const(node.inputs[1]).reshape(1))
            path = self._add_module(proto, node.inputs[1], module)
            return path, [node.inputs[0]], list(node.outputs), "module"
        return None

    def _parameter(self, array):
        """One Parameter per stored weight: a tied table (an Embedding and, through a folded Transpose,
        the output projection reading the same memory) stays one shared Parameter."""
        key = (array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str)
        if key not in self._shared:
            self._shared[key] = (Parameter(np.ascontiguousarray(array)), array)  # keep the source alive
        return self._shared[key][0]

    def _single_consumer(self, runtime, index, value, consumers):
        """Index of the one runtime node reading `value` (not a graph output), else None."""
        if consumers[value] != 1 or value in self.output_names:
            return None
        for j in range(index + 1, len(runtime)):
            if value in runtime[j][1].inputs:
                return j
        return None

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
        self._donate_scores(steps)
        self._shape_cache = {}
        if any(step.node.op_type in _DATA_DEPENDENT_SHAPES for step in steps):
            for step in steps:  # a shape may depend on values: no caching at all
                step.shape_only = False

    def _donate_scores(self, steps):
        """Let a Softmax (opset ≥ 13) overwrite its input when that input is a MatMul result read by
        this Softmax alone (attention scores): no second score-sized buffer per head. At run time it
        still falls back to the ordinary runner when autograd records, or the array is not its own."""
        readers = Counter(s for step in steps for s in step.inputs if s is not None)
        producer = {slot: step for step in steps for slot in step.outputs if slot is not None}
        outputs = {self._slots[name] for name in self.output_names}
        for step in steps:
            if step.module is not None or step.node.op_type != "Softmax" or step.node.opset < 13:
                continue
            slot = step.inputs[0]
            source = producer.get(slot)
            if source is None or source.module is not None or source.node.op_type != "MatMul" \
                    or readers[slot] != 1 or slot in outputs or slot not in step.free:
                continue
            step.run = _donated_softmax(step.run, step.node.attr("axis", -1))

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
        import time
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
                outputs = (_call_module(module, step, inputs[0]),)
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


# -- spelled-out layers ------------------------------------------------------------------------------
class _Patterns:
    """Exporters (TorchScript, opset ≤ 16) spell GELU, LayerNorm and RMSNorm as primitive ops; find
    those chains among the run-time nodes so they run as one fused module.

    `find()` → {index of the chain's last node: (first index, indices covered, module, input name,
    output name, kind)}. Every intermediate value must be read only inside the chain.
    """

    def __init__(self, runtime, constants, consumers, outputs):
        self.nodes = [node for _, node, _ in runtime]
        self.constants, self.consumers, self.outputs = constants, consumers, set(outputs)
        self.readers = {}
        for i, node in enumerate(self.nodes):
            for name in node.inputs:
                if name:
                    self.readers.setdefault(name, []).append(i)
        self.producer = {name: i for i, node in enumerate(self.nodes) for name in node.outputs}

    def only_reader(self, value, op):
        """The single node (of type op) reading an internal value, else None."""
        readers = self.readers.get(value, [])
        if value in self.outputs or len(readers) != 1 or self.nodes[readers[0]].op_type != op:
            return None
        return readers[0]

    def scalar(self, name):
        value = self.constants.get(name)
        if value is None or np.asarray(value).size != 1 or np.asarray(value).dtype.kind != "f":
            return None
        return float(np.asarray(value).reshape(()))

    def other(self, node, value):
        """The other input of a binary node, given one of them."""
        a, b = node.inputs[0], node.inputs[1]
        return b if a == value else a if b == value else None

    def last_axis_mean(self, index):
        node = self.nodes[index]
        if node.op_type != "ReduceMean" or not node.attr("keepdims", 1):
            return False
        axes = node.attr("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1]:
            axes = self.constants.get(node.inputs[1])
            axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
        return axes is not None and list(axes) == [-1]

    def find(self):
        found = {}
        taken = set()
        for index, node in enumerate(self.nodes):
            for match in (self.gelu, self.layer_norm, self.rms_norm):
                result = match(index)
                if result is not None and not (set(result[0]) & taken):
                    taken.update(result[0])
                    found[max(result[0])] = (index,) + result
                    break
        return found

    def gelu(self, i):
        """x · ½ · (1 + erf(x / √2)), spelled Div(√2) or Mul(1/√2), ½ applied first or last."""
        node = self.nodes[i]
        if node.op_type not in ("Div", "Mul") or node.inputs[1] in self.producer:
            return None
        c = self.scalar(node.inputs[1])
        x = node.inputs[0]
        if c is None or not (abs(c - (2 ** 0.5 if node.op_type == "Div" else 2 ** -0.5)) < 1e-4):
            return None
        e = self.only_reader(node.outputs[0], "Erf")
        a = e is not None and self.only_reader(self.nodes[e].outputs[0], "Add")
        if not a or self.scalar(self.other(self.nodes[a], self.nodes[e].outputs[0])) != 1.0:
            return None
        m = self.only_reader(self.nodes[a].outputs[0], "Mul")
        if m is None:
            return None
        factor = self.other(self.nodes[m], self.nodes[a].outputs[0])
        if factor == x:  # (x · (1 + erf)) · ½
            h = self.only_reader(self.nodes[m].outputs[0], "Mul")
            if h is None or self.scalar(self.other(self.nodes[h], self.nodes[m].outputs[0])) != 0.5:
                return None
            covered = [i, e, a, m, h]
        else:  # (x · ½) · (1 + erf)
            half = self.producer.get(factor)
            if half is None or self.nodes[half].op_type != "Mul" or self.only_reader(factor, "Mul") != m \
                    or self.other(self.nodes[half], x) is None or self.scalar(self.other(self.nodes[half], x)) != 0.5:
                return None
            covered, h = [half, i, e, a, m], m
        return covered, nn.GELU(), x, self.nodes[h].outputs[0], "module"

    def _affine_tail(self, value, covered):
        """Optional Mul(γ) then Add(β) after a normalisation; returns (γ, β, output name)."""
        gamma = beta = None
        mul = self.only_reader(value, "Mul")
        if mul is not None:
            g = self.constants.get(self.other(self.nodes[mul], value))
            # a (1,) γ broadcasts over any last axis; LayerNorm(1)/RMSNorm(1) would refuse it
            if g is not None and np.asarray(g).ndim == 1 and np.asarray(g).dtype.kind == "f" \
                    and np.asarray(g).shape[0] > 1:
                gamma, value = g, self.nodes[mul].outputs[0]
                covered.append(mul)
        add = self.only_reader(value, "Add")
        if add is not None and gamma is not None:
            b = self.constants.get(self.other(self.nodes[add], value))
            if b is not None and np.asarray(b).shape == gamma.shape and np.asarray(b).dtype.kind == "f":
                beta, value = b, self.nodes[add].outputs[0]
                covered.append(add)
        return gamma, beta, value

    def layer_norm(self, i):
        """(x − mean) / sqrt(mean((x − mean)²) + eps) · γ + β over the last axis."""
        if not self.last_axis_mean(i):
            return None
        x = self.nodes[i].inputs[0]
        sub = self.only_reader(self.nodes[i].outputs[0], "Sub")
        if sub is None or self.nodes[sub].inputs != [x, self.nodes[i].outputs[0]]:
            return None
        centred = self.nodes[sub].outputs[0]
        readers = self.readers.get(centred, [])
        if centred in self.outputs or len(readers) != 2:
            return None
        kinds = {self.nodes[r].op_type: r for r in readers}
        if set(kinds) != {"Pow", "Div"} or self.scalar(self.nodes[kinds["Pow"]].inputs[1]) != 2.0 \
                or self.nodes[kinds["Div"]].inputs[0] != centred:
            return None
        pw, div = kinds["Pow"], kinds["Div"]
        var = self.only_reader(self.nodes[pw].outputs[0], "ReduceMean")
        if var is None or not self.last_axis_mean(var):
            return None
        add = self.only_reader(self.nodes[var].outputs[0], "Add")
        eps = add is not None and self.scalar(self.other(self.nodes[add], self.nodes[var].outputs[0]))
        sq = add is not None and eps is not None and self.only_reader(self.nodes[add].outputs[0], "Sqrt")
        if not sq or self.only_reader(self.nodes[sq].outputs[0], "Div") != div:
            return None
        covered = [i, sub, pw, var, add, sq, div]
        gamma, beta, out = self._affine_tail(self.nodes[div].outputs[0], covered)
        if gamma is None:
            return None
        module = nn.LayerNorm(gamma.shape[0], eps=eps, bias=beta is not None)
        module.weight = Parameter(gamma)
        if beta is not None:
            module.bias = Parameter(beta)
        return covered, module, x, out, "module"

    def rms_norm(self, i):
        """x · 1/sqrt(mean(x²) + eps) · γ over the last axis (Reciprocal or Div(1, ·))."""
        node = self.nodes[i]
        if node.op_type != "Pow" or self.scalar(node.inputs[1]) != 2.0:
            return None
        x = node.inputs[0]
        mean = self.only_reader(node.outputs[0], "ReduceMean")
        if mean is None or not self.last_axis_mean(mean):
            return None
        add = self.only_reader(self.nodes[mean].outputs[0], "Add")
        eps = add is not None and self.scalar(self.other(self.nodes[add], self.nodes[mean].outputs[0]))
        sq = add is not None and eps is not None and self.only_reader(self.nodes[add].outputs[0], "Sqrt")
        if not sq:
            return None
        rec = self.only_reader(self.nodes[sq].outputs[0], "Reciprocal")
        if rec is None:
            return None
        mul = self.only_reader(self.nodes[rec].outputs[0], "Mul")
        if mul is None or self.other(self.nodes[mul], self.nodes[rec].outputs[0]) != x:
            return None
        covered = [i, mean, add, sq, rec, mul]
        gamma, beta, out = self._affine_tail(self.nodes[mul].outputs[0], covered)
        if gamma is None or beta is not None:
            return None
        module = nn.RMSNorm(gamma.shape[0], eps=eps)
        module.weight = Parameter(gamma)
        return covered, module, x, out, "module"


# -- helpers ----------------------------------------------------------------------------------------
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


def check_supported(model):
    """Raise UnsupportedOpsError listing every (domain, op, opset) without a converter, with counts."""
    opsets = {("" if o.domain in ("", "ai.onnx") else o.domain): o.version for o in model.opset_import}
    _check_supported(model.graph, opsets)


def _check_supported(graph, opsets):
    missing = Counter()
    for proto in graph.node:
        domain = "" if proto.domain in ("", "ai.onnx") else proto.domain
        if isinstance(domain, bytes) or isinstance(proto.op_type, bytes):  # damaged names: not UTF-8
            missing[(str(domain), str(proto.op_type), 0)] += 1
            continue
        version = opsets.get(domain)
        if version is None or resolve(domain, proto.op_type, version) is None:
            missing[(domain, proto.op_type, version if version is not None else 0)] += 1
    if missing:
        raise UnsupportedOpsError(missing)


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


def _call_module(module, step, x):
    if step.kind == "embedding":
        indices = np.asarray(x.data if is_tensor(x) else x).astype(np.int64, copy=False)
        if indices.size and indices.min() < 0:  # ONNX Gather counts negative indices from the end
            indices = np.where(indices < 0, indices + module.weight.shape[0], indices)
        try:
            return module(indices)
        except Exception as exc:
            raise OnnxRuntimeError(f"node {step.node.name!r} ({step.node.op_type}): {exc}") from exc
    if not is_tensor(x):
        x = Tensor(np.asarray(x))
    if step.kind == "gemm" and x.ndim != 2:
        raise OnnxRuntimeError(f"node {step.node.name!r} (Gemm) needs a 2-D input A, got shape {x.shape}")
    try:
        return module(x)
    except Exception as exc:
        raise OnnxRuntimeError(f"node {step.node.name!r} ({step.node.op_type}) → {type(module).__name__} failed "
                               f"on input shape {x.shape}: {type(exc).__name__}: {exc}") from exc


def _donated_softmax(run, axis):
    def donate(x):
        if is_tensor(x) and not (x.requires_grad and is_grad_enabled()) and x.dtype.kind == "f" \
                and x.data.flags.owndata and x.data.flags.writeable and -x.ndim <= axis < x.ndim:
            return softmax_in_place(x.data, axis)
        return run(x)
    return donate


def _as_output(value):
    return value if is_tensor(value) else Tensor(np.asarray(value))


class Linear(nn.Linear):
    """The `nn.Linear` imported MatMul/Gemm layers become: y = x Wᵀ + b. (`ops.linear` already
    multiplies (…, in) inputs as one (N·T, in) × (in, out) GEMM, numpy's stacked matmul being an
    order of magnitude slower, so no reshapes around it here.)"""


def _linear(weight, bias):
    """A Linear holding the Parameter `weight` (out, in) and `bias`, without drawing a random init first."""
    layer = Linear(1, 1, bias=bias is not None)
    layer.in_features, layer.out_features = int(weight.shape[1]), int(weight.shape[0])
    layer.weight = weight
    if bias is not None:
        layer.bias = Parameter(bias)
    return layer


_CONV_CLASSES = {(1, False): "Conv1d", (2, False): "Conv2d", (3, False): "Conv3d",
                 (1, True): "ConvTranspose1d", (2, True): "ConvTranspose2d", (3, True): "ConvTranspose3d"}


def _conv_module(node, weight, bias):
    check_kernel(node, weight.shape)
    spatial = weight.ndim - 2
    transposed = node.op_type == "ConvTranspose"
    name = _CONV_CLASSES.get((spatial, transposed))
    if name is None or not hasattr(nn_conv, name):
        return None
    cls = getattr(nn_conv, name)
    groups = int(node.attr("group", 1))
    if transposed:
        check_attribute_lengths(node, spatial)
        if node.attr("output_shape") is not None or node.attr("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID"):
            return None  # output size decided per call
        pads = tuple(node.attr("pads", [0] * 2 * spatial)) if node.attr("auto_pad", "NOTSET") != "VALID" \
            else (0,) * (2 * spatial)
        return cls.from_weights(weight, bias, stride=tuple(node.attr("strides", [1] * spatial)), padding=pads,
                                output_padding=tuple(node.attr("output_padding", [0] * spatial)), groups=groups,
                                dilation=tuple(node.attr("dilations", [1] * spatial)))
    stride, dilation, pads, _ = conv_geometry(node, spatial)
    if pads is None:
        return None
    return cls.from_weights(weight, bias, stride=stride, padding=pads, dilation=dilation, groups=groups)
