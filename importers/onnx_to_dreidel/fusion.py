"""Graph rewrites: spelled-out layers fused into modules, and softmax donation.

`Patterns(...).find()` recognises the TorchScript exporter's primitive-op spellings of GELU
(Div/Erf/Add/Mul/Mul), LayerNorm (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul/Add]) and RMSNorm
(Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul[/Mul]) among the run-time nodes, so they run as `nn.GELU`,
`nn.LayerNorm`, `nn.RMSNorm`. `donate_scores` lets a Softmax overwrite the MatMul result it alone reads.
"""
from collections import Counter

import numpy as np

from dreidel import nn
from dreidel.nn.module import Parameter
from dreidel.tensor import is_grad_enabled
from importers.onnx_to_dreidel.converters.activation import softmax_in_place
from importers.onnx_to_dreidel.registry import is_tensor


class Patterns:
    """Exporters (TorchScript, opset ≤ 16) spell GELU, LayerNorm and RMSNorm as primitive ops; find
    those chains among the run-time nodes so they run as one fused module.

    `find()` → {index of the chain's last node: (first index, indices covered, module, input name,
    output name)}. Every intermediate value must be read only inside the chain.
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
        return covered, nn.GELU(), x, self.nodes[h].outputs[0]

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
        return covered, module, x, out

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
        return covered, module, x, out


def donate_scores(steps, output_slots):
    """Let a Softmax (opset ≥ 13) overwrite its input when that input is a MatMul result read by
    this Softmax alone (attention scores): no second score-sized buffer per head. At run time it
    still falls back to the ordinary runner when autograd records, or the array is not its own."""
    readers = Counter(s for step in steps for s in step.inputs if s is not None)
    producer = {slot: step for step in steps for slot in step.outputs if slot is not None}
    for step in steps:
        if step.module is not None or step.node.op_type != "Softmax" or step.node.opset < 13:
            continue
        slot = step.inputs[0]
        source = producer.get(slot)
        if source is None or source.module is not None or source.node.op_type != "MatMul" \
                or readers[slot] != 1 or slot in output_slots or slot not in step.free:
            continue
        step.run = _donated_softmax(step.run, step.node.attr("axis", -1))


def _donated_softmax(run, axis):
    def donate(x):
        if is_tensor(x) and not (x.requires_grad and is_grad_enabled()) and x.dtype.kind == "f" \
                and x.data.flags.owndata and x.data.flags.writeable and -x.ndim <= axis < x.ndim:
            return softmax_in_place(x.data, axis)
        return run(x)
    return donate
