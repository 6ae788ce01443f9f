"""Run a teacher on calibration batches with hooks and keep what recasting needs."""
import hashlib
import os
import tempfile

import numpy as np

from dreidel import nn, no_grad
from dreidel.nn.fitting import InputStatistics
from dreidel.progress import progress
from dreidel.recast.structure import (BlockBoundaries, as_array, call_model, find_blocks, find_targets,
                                      first_output)


def teacher_fingerprint(model):
    """A short hash of the names, shapes and weights of the model's nn.Linear layers: plans and
    checkpoints are tied to it."""
    digest = hashlib.sha256()
    for name, layer in model.named_modules():
        if not isinstance(layer, nn.Linear):
            continue
        weight = np.ascontiguousarray(as_array(layer.weight), dtype=np.float32)
        digest.update(f"{name}:{weight.shape};".encode())
        digest.update(weight.tobytes())
    return digest.hexdigest()[:16]


class SampleStore:
    """A list of arrays kept in memory until a shared byte budget is spent, then written to `.npy`
    files and read back memory-mapped (`np.load(..., mmap_mode="r")`): same values, little RAM."""

    def __init__(self, budget, name):
        self.budget, self.name, self.items = budget, name, []

    def append(self, array):
        array = np.ascontiguousarray(array)
        if self.budget.take(array.nbytes):
            self.items.append(array.copy())
            return
        path = os.path.join(self.budget.folder(), f"{self.name}-{len(self.items)}.npy")
        np.save(path, array, allow_pickle=False)
        self.items.append(np.load(path, mmap_mode="r", allow_pickle=False))

    def __getitem__(self, index):
        return self.items[index]

    def __len__(self):
        return len(self.items)

    @property
    def spilled(self):
        return sum(isinstance(a, np.memmap) for a in self.items)


class _Budget:
    def __init__(self, limit, spill_dir):
        self.limit, self.used, self.spill_dir = int(limit), 0, spill_dir

    def take(self, nbytes):
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        return True

    def folder(self):
        if self.spill_dir is None:
            self.spill_dir = tempfile.mkdtemp(prefix="dreidel-recast-spill-")
        os.makedirs(self.spill_dir, exist_ok=True)
        return self.spill_dir


class Calibration:
    """What the teacher did on the calibration batches.

    - `batches`: the batches (model inputs); `fit_indices` / `holdout_indices` split them (disjoint).
    - `stats[target]["fit" | "holdout"]`: `InputStatistics` of the target layer's inputs.
    - `rows[target]`: input rows per batch (the layer's real shape, for latency measurements).
    - `block_outputs[block][i]`, `outputs[i]`: the teacher's block output / model output on batch i
      (`SampleStore`s, memory-mapped beyond the memory budget).
    - `boundaries`: where block inputs/outputs are tapped (`BlockBoundaries`); `fingerprint` of the teacher.
    """

    def __init__(self, batches, targets, blocks, boundaries, fit_indices, holdout_indices, fingerprint):
        self.batches, self.targets, self.blocks, self.boundaries = batches, targets, blocks, boundaries
        self.fit_indices, self.holdout_indices, self.fingerprint = fit_indices, holdout_indices, fingerprint
        self.stats, self.rows, self.block_outputs, self.outputs = {}, {}, {}, None

    def fit_batches(self):
        return [self.batches[i] for i in self.fit_indices]

    def holdout_batches(self):
        return [self.batches[i] for i in self.holdout_indices]


def calibrate(teacher, batches, targets=None, blocks=None, memory_budget=1 << 30, spill_dir=None,
              holdout=0.25, seed=0):
    """Run `teacher` on every batch with forward hooks; returns a `Calibration`.

    Per target layer, streamed input statistics (mean and covariance, float64) separately for the fit
    batches and the held-out ones (a seeded `holdout` fraction of the batches, at least one when there
    are two or more); per block and for the model output, the teacher's values on every batch, kept in
    memory up to `memory_budget` bytes in total and spilled to memory-mapped `.npy` files in `spill_dir`
    (a temporary folder when None) beyond it.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("calibrate needs at least one batch")
    blocks = find_blocks(teacher) if blocks is None else list(blocks)
    targets = find_targets(teacher, blocks) if targets is None else list(targets)
    for name in targets:
        teacher.get_submodule(name)  # a clear AttributeError naming a wrong target
    order = np.random.default_rng(seed).permutation(len(batches))
    n_holdout = int(round(holdout * len(batches))) if len(batches) > 1 else 0
    n_holdout = min(max(n_holdout, 1 if holdout > 0 and len(batches) > 1 else 0), len(batches) - 1)
    holdout_indices = sorted(int(i) for i in order[:n_holdout])
    fit_indices = sorted(int(i) for i in order[n_holdout:])
    boundaries = BlockBoundaries(teacher, blocks, batches[0])
    calib = Calibration(batches, targets, blocks, boundaries, fit_indices, holdout_indices,
                        teacher_fingerprint(teacher))
    budget = _Budget(memory_budget, spill_dir)
    calib.block_outputs = {b: SampleStore(budget, f"block-{b or 'model'}") for b in blocks}
    calib.outputs = SampleStore(budget, "output")
    for name in targets:
        width = teacher.get_submodule(name).in_features
        calib.stats[name] = {"fit": InputStatistics(width), "holdout": InputStatistics(width)}
    current = {}
    handles = []
    for name in targets:
        def record(module, args, out, name=name):
            x = as_array(args[0])
            calib.stats[name][current["part"]].update(x)
            calib.rows.setdefault(name, int(np.prod(x.shape[:-1])))
        handles.append(teacher.get_submodule(name).register_forward_hook(record))
    taps = {}
    for block, (_, leaf, is_input) in boundaries.taps.items():
        taps.setdefault(leaf, []).append((block, is_input))
    for leaf, wanted in taps.items():
        def keep(module, args, out, wanted=wanted):
            for block, is_input in wanted:
                if block not in current["seen"]:  # first call only
                    current["seen"].add(block)
                    calib.block_outputs[block].append(as_array(args[0] if is_input else out))
        handles.append(teacher.get_submodule(leaf).register_forward_hook(keep))
    holdout_set = set(holdout_indices)
    try:
        with no_grad():
            for i, batch in enumerate(progress(batches, "calibrate")):
                current.update(part="holdout" if i in holdout_set else "fit", seen=set())
                calib.outputs.append(as_array(first_output(call_model(teacher, batch))))
    finally:
        for h in handles:
            h.remove()
    return calib
