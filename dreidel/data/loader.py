"""Batches for training loops, PyTorch-style: `DataLoader(dataset, batch_size, shuffle, ...)`.

A dataset is anything with `__len__` and `__getitem__(i)` returning a sample (an array, a number, or
a tuple/dict of those); `TensorDataset(*arrays)` wraps arrays whose first axis is the sample axis and
is batched by slicing, without a per-sample loop. Batches come out as `dreidel.Tensor`s.

Shuffling is reproducible: epoch e uses the permutation drawn from `seed` and e, so a run resumed at
epoch e (`loader.load_state_dict(...)`) sees the same batches as an uninterrupted one.
"""
import numpy as np

from dreidel.tensor import Tensor


class TensorDataset:
    """Samples i of equally long arrays: `TensorDataset(x, y)[i] == (x[i], y[i])`."""

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        self.arrays = tuple(a.data if isinstance(a, Tensor) else np.asarray(a) for a in arrays)
        lengths = {len(a) if a.ndim else None for a in self.arrays}
        if None in lengths or len(lengths) != 1:
            raise ValueError("TensorDataset arrays need the same length along their first axis, got shapes "
                             + ", ".join(str(a.shape) for a in self.arrays))

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)


def default_collate(samples):
    """Stack a list of samples field by field into Tensors (tuples and dicts keep their structure)."""
    first = samples[0]
    if isinstance(first, (tuple, list)):
        if any(len(s) != len(first) for s in samples):
            raise ValueError("samples in one batch have different numbers of fields")
        return type(first)(default_collate([s[i] for s in samples]) for i in range(len(first)))
    if isinstance(first, dict):
        return {key: default_collate([s[key] for s in samples]) for key in first}
    arrays = [s.data if isinstance(s, Tensor) else np.asarray(s) for s in samples]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"samples in one batch have different shapes ({arrays[0].shape} and others); "
                         f"pass a collate_fn that pads them")
    return Tensor(np.stack(arrays))


class DataLoader:
    """Iterate over a dataset in batches.

    `batch_size` samples per batch (the last one smaller unless `drop_last`); `shuffle` with `seed`
    reorders the samples every epoch, reproducibly; `collate_fn(list_of_samples)` builds a batch
    (default: `default_collate`). `len(loader)` is the number of batches per epoch. Each `for` over
    the loader is one epoch; `state_dict()` taken inside the loop records the next batch, and after
    `load_state_dict` the next `for` resumes the interrupted epoch at that batch.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, collate_fn=None, seed=0):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"a dataset needs __len__ and __getitem__, got {type(dataset).__name__}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.drop_last, self.seed = bool(shuffle), bool(drop_last), int(seed)
        self.collate_fn = collate_fn
        self.epoch, self._batch, self._resumed = 0, 0, False  # the next batch to yield: (epoch, batch)

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch):
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def __iter__(self):
        if self._batch and not self._resumed:  # a loop left early: the next one is a new epoch
            self.epoch, self._batch = self.epoch + 1, 0
        self._resumed = False
        order = self._order(self.epoch)
        sliceable = isinstance(self.dataset, TensorDataset) and self.collate_fn is None
        while self._batch < len(self):
            indices = order[self._batch * self.batch_size:(self._batch + 1) * self.batch_size]
            self._batch += 1
            if sliceable:
                yield tuple(Tensor(a[indices]) for a in self.dataset.arrays)
            else:
                yield (self.collate_fn or default_collate)([self.dataset[int(i)] for i in indices])
        self.epoch, self._batch = self.epoch + 1, 0

    def state_dict(self):
        """Where the loader is: with the seed, (epoch, batch) fixes every batch still to come."""
        return {"seed": self.seed, "epoch": self.epoch, "batch": self._batch}

    def load_state_dict(self, state):
        self.seed, self.epoch, self._batch = int(state["seed"]), int(state["epoch"]), int(state["batch"])
        self._resumed = True
