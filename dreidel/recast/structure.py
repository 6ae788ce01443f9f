"""Where the blocks and target layers of a model are, and how to run a model up to a block's output."""
import re

import numpy as np

from dreidel import nn
from dreidel.tensor import Tensor

_NUMBERED = re.compile(r"^\d+$")


def _wrap(value):
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return Tensor(value)  # floating arrays as Tensors (native modules need them); ids stay numpy
    return value


def call_model(model, batch):
    """Call `model` on one batch: dict -> model(**batch), tuple/list -> model(*batch), else model(batch).
    Floating numpy arrays are passed as Tensors, integer ones (token ids, masks) as they are."""
    if isinstance(batch, dict):
        return model(**{k: _wrap(v) for k, v in batch.items()})
    if isinstance(batch, (tuple, list)):
        return model(*[_wrap(v) for v in batch])
    return model(_wrap(batch))


def first_output(output):
    """The first Tensor of a model's output (a Tensor, or a tuple/list/dict of them)."""
    if isinstance(output, dict):
        output = next(iter(output.values()))
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


def as_array(value):
    return value.data if isinstance(value, Tensor) else np.asarray(value)


def _has_linear(module):
    return any(isinstance(m, nn.Linear) for m in module.modules())


def _numbered_linear_children(module):
    """The numbered children holding a Linear, when they are at least half of the children holding one."""
    children = list(module.named_children())
    numbered = [(n, c) for n, c in children if _NUMBERED.match(n) and _has_linear(c)]
    if numbered and len(numbered) >= sum(_has_linear(c) for _, c in children) // 2:
        return numbered
    return []


def _holds_repeated_blocks(module):
    """Whether some container strictly inside `module` has two or more numbered Linear-holding children."""
    return any(len(_numbered_linear_children(m)) >= 2 for n, m in module.named_modules() if n)


def find_blocks(model):
    """Dotted names of the model's blocks, in definition order.

    Blocks are the numbered children (`0`, `1`, ...) of containers (`ModuleList`, `Sequential`, an
    imported graph's `layers` scope) that hold `nn.Linear` layers; a container nested inside a block
    does not start new blocks. A lone numbered child that itself holds repeated numbered layers is a
    wrapper, not a block (sentence-transformers' `Sequential` puts the whole encoder at `0`, its
    layers at `0.auto_model.encoder.layer.N`), so the search goes on inside it. A model without
    numbered children has one block per top-level child holding a Linear, or the whole model (`""`)
    when it is itself a Linear or has no such children.
    """
    blocks = []
    for name, module in model.named_modules():
        if any(name == b or name.startswith(b + ".") for b in blocks):
            continue
        numbered = _numbered_linear_children(module)
        if len(numbered) == 1 and _holds_repeated_blocks(numbered[0][1]):
            continue
        blocks.extend(f"{name}.{n}" if name else n for n, _ in numbered)
    if blocks:
        return blocks
    top = [n for n, c in model.named_children() if _has_linear(c)]
    return top or [""]


def find_targets(model, blocks=None):
    """Dotted names of the `nn.Linear` modules inside `blocks` (default `find_blocks(model)`)."""
    blocks = find_blocks(model) if blocks is None else list(blocks)
    targets = []
    for block in blocks:
        root = model.get_submodule(block)
        for name, module in root.named_modules(prefix=block):
            if isinstance(module, nn.Linear) and name not in targets:
                targets.append(name)
    return targets


def block_of(name, blocks):
    """The block holding module `name` (longest matching prefix), or None."""
    best = None
    for block in blocks:
        if block == "" or name == block or name.startswith(block + "."):
            if best is None or len(block) > len(best):
                best = block
    return best


def block_kind(block):
    """The container a block belongs to (`encoder.layers.3` -> `encoder.layers`): learning rates and
    other settings are given per kind."""
    return re.sub(r"\.?\d+$", "", block) or block


def leaf_modules(model):
    return [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.named_children())]


def trace_order(model, batch):
    """Names of the leaf modules in the order one forward pass runs them (first call each)."""
    order, handles = [], []
    for name, module in leaf_modules(model):
        handles.append(module.register_forward_hook(
            lambda m, args, out, name=name: order.append(name) if name not in order else None))
    try:
        from dreidel import no_grad
        with no_grad():
            call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return order


class BlockBoundaries:
    """Where each block's input and output can be observed with forward hooks.

    input: the first argument of the block's first leaf module to run; output: the first argument of
    the first leaf run after the block's last one, or that last leaf's own output when nothing runs
    after it. `taps[block] = (input_leaf, output_leaf, output_is_input)`.
    """

    def __init__(self, model, blocks, batch):
        order = trace_order(model, batch)
        self.order, self.taps = order, {}
        for block in blocks:
            inside = [i for i, n in enumerate(order) if block_of(n, [block]) == block]
            if not inside:
                raise ValueError(f"block {block!r} runs no module on the calibration batch")
            first, last = inside[0], inside[-1]
            if last + 1 < len(order):
                self.taps[block] = (order[first], order[last + 1], True)
            else:
                self.taps[block] = (order[first], order[last], False)


class _Stop(BaseException):
    """Raised by a hook to end a forward pass once the wanted block output is seen (a BaseException,
    like KeyboardInterrupt, so wrappers that re-raise every Exception with context let it through)."""


def run_to_block_output(model, batch, boundaries, block, keep_input=False):
    """Run `model` on `batch` until `block`'s output is produced; returns it (a Tensor, in the graph
    when autograd records), and the block input too when `keep_input`."""
    input_leaf, output_leaf, output_is_input = boundaries.taps[block]
    seen = {}

    def grab_input(module, args, out):
        seen.setdefault("input", args[0])

    def grab_output(module, args, out):
        seen["output"] = args[0] if output_is_input else out
        raise _Stop()

    handles = [model.get_submodule(input_leaf).register_forward_hook(grab_input)] if keep_input else []
    handles.append(model.get_submodule(output_leaf).register_forward_hook(grab_output))
    try:
        call_model(model, batch)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    if "output" not in seen:
        raise RuntimeError(f"block {block!r}: its output tap {output_leaf!r} did not run")
    return (seen["output"], seen.get("input")) if keep_input else seen["output"]
