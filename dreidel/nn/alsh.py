"""`ALSHSparseDense`: a dense layer that computes only the neurons its hash tables propose (SLIDE)."""
import math
import weakref

import numpy as np

from dreidel import functional as F
from dreidel.hashing import (MAX_TABLE_BITS, DWTAHash, HashTables, SimHash, mips_data_transform,
                             mips_query_transform)
from dreidel.nn.layers import uniform_parameter
from dreidel.nn.module import Module
from dreidel.ops.sparse import sparse_linear
from dreidel.tensor import Tensor, no_grad

_BUILD_CHUNK = 8192  # weight rows hashed per chunk when (re)building: bounds the temporary copies


class ALSHSparseDense(Module):
    """y = x Wᵀ + b computed only on the active neurons A; y_j = 0 exactly for j ∉ A.

    A comes from L hash tables over the rows of W (SLIDE). Maximum inner product search is reduced
    to angular LSH by the asymmetric transform: rows w_j become P(w_j) = [w_j/M, √(1 − ‖w_j/M‖²)]
    (M the largest row norm), a query x becomes Q = [x/‖x‖, 0], so ⟨P(w_j), Q⟩ = w_j·x / (M‖x‖):
    a larger inner product means a smaller angle, i.e. more tables where j shares the query's
    bucket. The bias is not hashed (as in SLIDE): appending it as a coordinate would need a
    constant query coordinate that shrinks every angle's contrast.

    Each table code is `bits` hash functions (SimHash: 1 bit each; DWTA: ⌈log2 bin_size⌉ bits
    each). For a batch, a neuron's score is the largest number of tables in which it shares one
    sample's bucket, then its total votes over the batch (ranking by total votes alone lets the
    B·L random collisions of a big batch drown the real matches); A is the union of the
    candidates over the batch, capped at the `max_active` best scores (it may be smaller, even
    empty, if few neurons collide). Then one gather of W_A and one matrix product for the whole
    batch, forward and backward.

    Tables are rebuilt every `rebuild_every` training forward calls, when the weight array is
    replaced (load_state_dict, to()), and when a fixed sample of weight rows has drifted by more
    than `drift_threshold` (relative Frobenius change since the last build).

    Attributes after a forward: `active` (sorted neuron ids), `active_fraction` = |A| / out.
    `forward(x, active=ids)` uses a given active set (e.g. for gradcheck), `include=ids` forces
    neurons in (e.g. the labels of the batch, as SLIDE does). With `exact_eval=True` eval mode
    computes the dense layer.
    """

    def __init__(self, in_features, out_features, hash="simhash", bits=8, tables=16, max_active=None,
                 rebuild_every=50, bias=True, seed=0, bin_size=8, fast=True, drift_threshold=0.05,
                 exact_eval=False, rng=None, dtype=np.float32):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features),
                            ("bits", bits), ("tables", tables), ("rebuild_every", rebuild_every)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ALSHSparseDense: {name} must be a positive integer, got {value!r}")
        if hash not in ("simhash", "dwta"):
            raise ValueError(f"ALSHSparseDense: hash must be 'simhash' or 'dwta', got {hash!r}")
        if max_active is None:
            max_active = max(1, math.ceil(0.05 * out_features))
        if isinstance(max_active, bool) or not isinstance(max_active, (int, np.integer)) or max_active < 1:
            raise ValueError(f"ALSHSparseDense: max_active must be a positive integer, got {max_active!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.hash, self.bits, self.tables = hash, int(bits), int(tables)
        self.max_active = min(int(max_active), self.out_features)
        self.rebuild_every, self.drift_threshold = int(rebuild_every), float(drift_threshold)
        self.exact_eval, self.seed = bool(exact_eval), seed
        bound = 1 / np.sqrt(in_features)
        self.weight = uniform_parameter((out_features, in_features), bound, rng, dtype)
        self.bias = uniform_parameter((out_features,), bound, rng, dtype) if bias else None
        dim = in_features + 1  # w plus the MIPS coordinate
        if hash == "simhash":
            self.hasher = SimHash(dim, bits, tables, fast=fast, seed=seed)
        else:
            self.hasher = DWTAHash(dim, bits, tables, bin_size=bin_size, seed=seed)
        if self.hasher.code_bits > MAX_TABLE_BITS:
            raise ValueError(f"ALSHSparseDense: {self.hasher.code_bits} bits per table code is more than "
                             f"{MAX_TABLE_BITS}; use fewer bits")
        probe_rng = np.random.default_rng(seed + 1)
        self._probe_rows = np.sort(probe_rng.choice(out_features, min(out_features, 256), replace=False))
        self._hash_tables = None
        self._built_from = None       # weakref to the weight array the tables were built from
        self._probe_snapshot = None
        self._forwards_since_build = 0
        self.rebuilds = 0
        self.active = None
        self.active_fraction = 0.0

    @classmethod
    def from_dense(cls, weight, bias=None, inputs=None, **kwargs):
        """The sparse layer holding copies of a dense layer's `weight` (out, in) and `bias`.

        Exact on its active set; nothing to fit (`inputs` is accepted for a uniform interface and
        unused). `kwargs` go to the constructor (hash, bits, tables, max_active, ...).
        """
        weight = np.asarray(weight.data if isinstance(weight, Tensor) else weight)
        if weight.ndim != 2 or weight.dtype.kind != "f":
            raise ValueError(f"ALSHSparseDense.from_dense: weight must be a 2-D float array, got "
                             f"{weight.dtype} {weight.shape}")
        layer = cls(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, **kwargs)
        layer.weight.data = np.array(weight, copy=True)
        if bias is not None:
            bias = np.asarray(bias.data if isinstance(bias, Tensor) else bias, dtype=weight.dtype)
            if bias.shape != (weight.shape[0],):
                raise ValueError(f"ALSHSparseDense.from_dense: bias shape {bias.shape} does not match "
                                 f"({weight.shape[0]},)")
            layer.bias.data = np.array(bias, copy=True)
        return layer

    # -- tables ------------------------------------------------------------------------------------
    def rebuild_tables(self):
        """Hash every (MIPS-transformed) weight row into fresh tables."""
        w = self.weight.data
        norms2 = np.einsum("ij,ij->i", w, w, dtype=np.float64)
        max_norm = float(np.sqrt(norms2.max())) or 1.0
        codes = np.empty((self.out_features, self.tables), dtype=np.int64)
        for start in range(0, self.out_features, _BUILD_CHUNK):
            rows = slice(start, start + _BUILD_CHUNK)
            data, _ = mips_data_transform(w[rows], max_norm=max_norm * (1 + 1e-6),
                                          norms=np.sqrt(norms2[rows]))
            codes[rows] = self.hasher.codes(data)
        self._hash_tables = HashTables(codes, self.hasher.code_bits)
        self._built_from = weakref.ref(self.weight.data)
        self._probe_snapshot = self.weight.data[self._probe_rows].astype(np.float64)
        self._forwards_since_build = 0
        self.rebuilds += 1

    def _stale(self):
        if self._hash_tables is None or self._built_from() is not self.weight.data:
            return True
        if self._forwards_since_build >= self.rebuild_every:
            return True
        now = self.weight.data[self._probe_rows].astype(np.float64)
        reference = np.linalg.norm(self._probe_snapshot)
        return np.linalg.norm(now - self._probe_snapshot) > self.drift_threshold * max(reference, 1e-30)

    def select_active(self, x, include=None):
        """Active neuron ids (sorted int64) for a batch x (B, in) as a numpy array."""
        if self._stale():
            self.rebuild_tables()
        x = np.asarray(x)
        codes = self.hasher.codes(mips_query_transform(x))
        total, best = self._hash_tables.votes(codes)
        # Best single-sample count first (see the class docstring), then total votes.
        score = best.astype(np.int64) * (int(total.max(initial=0)) + 1) + total
        if include is not None:
            score[self._check_ids(include, "include")] = np.iinfo(np.int64).max // 2  # always kept
        candidates = np.flatnonzero(score)
        if candidates.size > self.max_active:
            keep = np.argpartition(-score[candidates], self.max_active - 1)[:self.max_active]
            candidates = np.sort(candidates[keep])
        return candidates

    def _check_ids(self, ids, name):
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise TypeError(f"ALSHSparseDense: {name} must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.out_features):
            raise ValueError(f"ALSHSparseDense: {name} ids must lie in [0, {self.out_features}), "
                             f"got range [{ids.min()}, {ids.max()}]")
        return np.unique(ids).astype(np.int64)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x, active=None, include=None):
        if not isinstance(x, Tensor):
            x = Tensor(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"ALSHSparseDense expected last dimension {self.in_features}, "
                             f"got input shape {x.shape}")
        if not self.training and self.exact_eval:
            self.active, self.active_fraction = None, 1.0
            return F.linear(x, self.weight, self.bias)
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        if active is None:
            active = self.select_active(rows.data, include)
            if self.training:
                self._forwards_since_build += 1
        else:
            active = self._check_ids(active, "active")
        self.active = active
        self.active_fraction = active.size / self.out_features
        return sparse_linear(rows, self.weight, self.bias, active).reshape(lead + (self.out_features,))

    def measure_recall(self, x, k):
        """Fraction of each sample's true top-k neurons (by w_j·x + b_j) in the active set the
        hash tables give for the batch x, averaged over the samples. Does not count as a step."""
        x = x.data if isinstance(x, Tensor) else np.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"ALSHSparseDense.measure_recall: expected last dimension {self.in_features}, "
                             f"got shape {x.shape}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.out_features:
            raise ValueError(f"ALSHSparseDense.measure_recall: k must be in [1, {self.out_features}], got {k!r}")
        x = x.reshape(-1, self.in_features)
        active = self.select_active(x)
        with no_grad():
            scores = x @ self.weight.data.T
            if self.bias is not None:
                scores = scores + self.bias.data
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        hit = np.zeros(self.out_features, dtype=bool)
        hit[active] = True
        return float(hit[top].mean())

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, hash={self.hash!r}, "
                f"bits={self.bits}, tables={self.tables}, max_active={self.max_active}, "
                f"rebuild_every={self.rebuild_every}, bias={self.bias is not None}")
