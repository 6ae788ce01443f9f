"""Preallocated key/value caches for autoregressive decoding.

``StaticKVCache(num_layers, capacity)`` holds, per layer, keys and values (N, H_kv, capacity, D) in
buffers allocated once (at the first write, from the keys' shape); each decoding step writes its new
keys/values in place at the current position and attends over views of the filled prefix, so no step
concatenates or copies the past.  ``cache[layer]`` is a :class:`LayerKVCache`, which speaks the
``cache=`` protocol of :class:`dreidel.nn.MultiHeadAttention` (``length``, ``static``, ``key``,
``value``, ``append``), so it plugs into that layer (rotary offsets start at its ``length``) or into
hand-written attention.

``static=True`` makes a cross-attention cache: the first ``append`` stores the projected encoder
keys/values, later calls reuse them.

Batch rows can be dropped (``select_rows``: finished sequences stop costing work) or reordered
(``reorder``: beam search) in place along the batch axis.  The cache stores data only: no gradient
flows through cached entries (it is for inference).
"""
import numpy as np

from dreidel.tensor import Tensor

__all__ = ["StaticKVCache", "LayerKVCache"]


class LayerKVCache:
    """One layer's keys and values; see the module docstring.  ``key``/``value`` are Tensors viewing
    the filled prefix (N, H_kv, length, D), or None before the first write."""

    def __init__(self, capacity=None, static=False, dtype=None):
        if not static and (capacity is None or int(capacity) < 1):
            raise ValueError(f"a self-attention KV cache needs a capacity >= 1, got {capacity}")
        self.capacity = None if static else int(capacity)
        self.static, self.dtype = static, dtype
        self._k = self._v = None  # buffers (N_alloc, H_kv, capacity, D) (static: exactly the stored arrays)
        self._rows = 0            # live batch rows: the first _rows of the buffers
        self._length = 0

    @property
    def length(self):
        """Number of positions written (0 for a static cache before its first write)."""
        return self._length

    @property
    def batch_size(self):
        return self._rows

    def _view(self, buffer):
        return None if buffer is None else Tensor(buffer[:self._rows, :, :self._length])

    key = property(lambda self: self._view(self._k))
    value = property(lambda self: self._view(self._v))

    def append(self, key, value):
        """Write keys/values (N, H_kv, T, D) / (N, H_kv, T, D_v) at positions [length, length+T) and
        return views (key, value) of all positions so far.  A static cache stores them once."""
        k, v = _array(key, "key"), _array(value, "value")
        if k.ndim != 4 or v.ndim != 4 or k.shape[:3] != v.shape[:3]:
            raise ValueError(f"KV cache: key {k.shape} and value {v.shape} must be (N, H_kv, T, D) with equal N, H_kv, T")
        if self.static:
            if self._k is not None:
                raise ValueError("static KV cache is already filled; reset() it before storing new keys")
            dtype = self.dtype or k.dtype
            self._k, self._v = np.ascontiguousarray(k, dtype), np.ascontiguousarray(v, dtype)
            self._rows, self._length = k.shape[0], k.shape[2]
            return self.key, self.value
        n, heads, steps = k.shape[:3]
        if self._k is None:
            dtype = self.dtype or k.dtype
            self._k = np.empty((n, heads, self.capacity, k.shape[3]), dtype)
            self._v = np.empty((n, heads, self.capacity, v.shape[3]), dtype)
            self._rows = n
        elif (n, heads, k.shape[3], v.shape[3]) != (self._rows, self._k.shape[1], self._k.shape[3], self._v.shape[3]):
            raise ValueError(f"KV cache holds (N={self._rows}, H_kv={self._k.shape[1]}, D={self._k.shape[3]}, "
                             f"D_v={self._v.shape[3]}); cannot write key {k.shape}, value {v.shape}")
        end = self._length + steps
        if end > self.capacity:
            raise ValueError(f"KV cache capacity {self.capacity} exceeded: {self._length} positions stored, "
                             f"{steps} more written")
        self._k[:n, :, self._length:end] = k
        self._v[:n, :, self._length:end] = v
        self._length = end
        return self.key, self.value

    def index_select(self, indices):
        """Keep batch rows ``indices`` (in that order; repeats allowed up to the allocated batch):
        row i of the cache becomes old row ``indices[i]``.  Done in place in the buffers."""
        if self._k is None:
            return
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._rows):
            raise IndexError(f"KV cache row indices {idx.tolist()} out of range for {self._rows} rows")
        if self.static:
            self._k, self._v = self._k[idx], self._v[idx]
        else:
            if idx.size > self._k.shape[0]:
                raise ValueError(f"KV cache has {self._k.shape[0]} allocated rows, cannot hold {idx.size}")
            length = self._length
            self._k[:idx.size, :, :length] = self._k[idx, :, :length]
            self._v[:idx.size, :, :length] = self._v[idx, :, :length]
        self._rows = idx.size

    def reset(self):
        """Forget everything stored (buffers are reallocated at the next write)."""
        self._k = self._v = None
        self._rows = self._length = 0

    def __repr__(self):
        kind = "static" if self.static else f"capacity={self.capacity}"
        return f"LayerKVCache({kind}, rows={self._rows}, length={self._length})"


class StaticKVCache:
    """Key/value caches of ``num_layers`` attention layers; ``cache[i]`` is layer i's
    :class:`LayerKVCache`.  ``capacity`` bounds the positions of a self-attention cache;
    ``static=True`` builds cross-attention caches (written once).  ``dtype`` defaults to the first
    keys' dtype."""

    def __init__(self, num_layers, capacity=None, static=False, dtype=None):
        self.layers = [LayerKVCache(capacity, static=static, dtype=dtype) for _ in range(int(num_layers))]
        self.static = static

    def __getitem__(self, layer):
        return self.layers[layer]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    @property
    def length(self):
        """Positions stored in layer 0 (all layers advance together in a normal forward)."""
        return self.layers[0].length if self.layers else 0

    @property
    def batch_size(self):
        return self.layers[0].batch_size if self.layers else 0

    def select_rows(self, rows):
        """Keep only batch rows ``rows`` (e.g. the unfinished sequences), in that order."""
        for layer in self.layers:
            layer.index_select(rows)

    def reorder(self, indices):
        """Beam search: new row i is old row ``indices[i]`` (index_select along the batch)."""
        for layer in self.layers:
            layer.index_select(indices)

    def reset(self):
        for layer in self.layers:
            layer.reset()

    def __repr__(self):
        return f"StaticKVCache(layers={len(self.layers)}, length={self.length}, rows={self.batch_size}, static={self.static})"


def _array(x, name):
    if isinstance(x, Tensor):
        return x.numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"KV cache: {name} must be a Tensor or numpy array, got {type(x).__name__}")
