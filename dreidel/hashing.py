"""Locality-sensitive hashing for hash-sparse layers (SLIDE-style), over numpy arrays.

The Cython loops live in `dreidel/_kernels_hashing.pxi`; this module validates inputs and holds the
random parameters. Nothing here knows about Tensors.

* `SimHash`: signed random projections. Bit k of table l is [⟨r_{lK+k}, x⟩ > 0], so two vectors at
  angle θ agree on a bit with probability 1 − θ/π. Dense Gaussian r (`fast=False`, O(d·K·L) per row)
  or the structured form sign(H·D·x) (`fast=True`): random ±1 diagonal D, unnormalised Walsh–Hadamard
  H over the next power of two, K·L of its coordinates (more rotations D_r if K·L > n): O(n log n).
* `DWTAHash`: densified winner-take-all (Chen & Shrivastava; SLIDE). Each of K·L bins holds `bin_size`
  random coordinates; its hash is the position of the largest non-zero one. Empty bins (all zero)
  borrow the hash of the first non-empty bin probed by a universal hash, so sparse inputs still
  get full codes. A table code packs K such positions (K·⌈log2 bin_size⌉ bits).
* The asymmetric MIPS transform (Neyshabur & Srebro, "simple LSH"): data P(x) = [x/M, √(1 − ‖x/M‖²)],
  queries Q(q) = [q/‖q‖, 0]. Then ‖P(x)‖ = 1 and ⟨P(x), Q(q)⟩ = ⟨x, q⟩ / (M‖q‖): the largest inner
  product is the smallest angle, which is what SimHash/DWTA find.
* `HashTables`: L tables of CSR-like buckets over N items (per table an offsets array of 2^bits + 1
  entries and a flat ids array, built by counting sort); batched queries return the deduplicated
  union of a sample's buckets (CSR per sample) or per-item vote counts over the batch.
* `scatter_columns`, `gather_columns`, `add_rows`, `zero_rows`: the active-set moves of the
  hash-sparse layer (`dreidel.nn.alsh.ALSHSparseDense`), one parallel pass each.

Every kernel is deterministic and independent of the thread count (`dreidel.set_num_threads`).
"""
import numpy as np

from dreidel import _kernels

__all__ = ["SimHash", "DWTAHash", "HashTables", "mips_data_transform", "mips_query_transform",
           "pack_sign_codes", "dwta_probe", "scatter_columns", "gather_columns", "add_rows", "zero_rows",
           "MAX_TABLE_BITS"]

MAX_TABLE_BITS = 24  # 2^24 + 1 int32 offsets = 64 MiB per table: beyond that use more tables instead


# Below this much work (elements touched, ~1 ms on one core) a kernel runs on one thread: waking
# an OpenMP team costs ~10 µs on an idle machine but milliseconds on a loaded one (measured: a
# 420k-element gather took 1.4 ms on one thread, 17-30 ms on two, with 2 cores at load 5).
# Results are the same either way.
PARALLEL_MIN_WORK = 1 << 20


def _threads(work):
    return _kernels.get_num_threads() if work >= PARALLEL_MIN_WORK else 1


def _positive_int(value, name, who):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _float_rows(x, dim, who):
    """x (..., dim) of a floating dtype → (C-contiguous float32/float64 (B, dim), leading shape)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{who}: expected a floating-point array, got dtype {x.dtype}")
    if x.ndim < 1 or (dim is not None and x.shape[-1] != dim):
        raise ValueError(f"{who}: expected shape (..., {dim}), got {x.shape}")
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    lead = x.shape[:-1]
    rows = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=dtype)
    return rows, lead


def pack_sign_codes(projections, bits, tables):
    """codes[..., l] = Σ_k [projections[..., l·bits + k] > 0] · 2^k, int64 of shape (..., tables)."""
    who = "pack_sign_codes"
    bits, tables = _positive_int(bits, "bits", who), _positive_int(tables, "tables", who)
    if bits > 62:
        raise ValueError(f"{who}: at most 62 bits per code, got {bits}")
    rows, lead = _float_rows(projections, None, who)
    if rows.shape[1] < bits * tables:
        raise ValueError(f"{who}: need at least bits·tables = {bits * tables} projections, "
                         f"got {rows.shape[1]}")
    codes = np.empty((rows.shape[0], tables), dtype=np.int64)
    _kernels.simhash_pack_signs(rows, codes, bits, _threads(rows.size))
    return codes.reshape(lead + (tables,))


class SimHash:
    """Signed random projections: `tables` codes of `bits` bits for vectors of length `dim`.

    `fast=False`: dense Gaussian matrix R (bits·tables, dim), projections x Rᵀ.
    `fast=True`: y_r = H D_r pad(x) over n = next power of two ≥ dim (unnormalised WHT, ±1 diagonal
    D_r), projections p = y_{p // n}[coords[p]] with distinct coords per rotation.
    """

    def __init__(self, dim, bits, tables, fast=True, seed=0):
        who = "SimHash"
        self.dim = _positive_int(dim, "dim", who)
        self.bits = _positive_int(bits, "bits", who)
        self.tables = _positive_int(tables, "tables", who)
        if self.bits > 62:
            raise ValueError(f"{who}: at most 62 bits per code, got {bits}")
        self.fast = bool(fast)
        self.code_bits = self.bits
        rng = np.random.default_rng(seed)
        total = self.bits * self.tables
        self._cache = {}
        if self.fast:
            self.n = 1 << (self.dim - 1).bit_length()
            rotations = -(-total // self.n)
            self.signs = rng.choice(np.array([-1.0, 1.0]), size=(rotations, self.n))
            self.coords = np.concatenate([rng.permutation(self.n)[:min(self.n, total - r * self.n)]
                                          for r in range(rotations)]).astype(np.int64)
        else:
            self.matrix = rng.standard_normal((total, self.dim))

    def _params(self, dtype):
        if dtype not in self._cache:
            source = self.signs if self.fast else self.matrix
            self._cache[dtype] = np.ascontiguousarray(source, dtype=dtype)
        return self._cache[dtype]

    def project(self, x):
        """The bits·tables projections of x (..., dim), same float dtype (float16 → float32)."""
        rows, lead = _float_rows(x, self.dim, "SimHash.project")
        total = self.bits * self.tables
        if self.fast:
            out = np.empty((rows.shape[0], total), dtype=rows.dtype)
            _kernels.simhash_fast_project(rows, self._params(rows.dtype), self.coords, out,
                                          _threads(rows.shape[0] * self.n * len(self.signs) * 8))
        else:
            out = rows @ self._params(rows.dtype).T
        return out.reshape(lead + (total,))

    def codes(self, x):
        """int64 codes (..., tables), each in [0, 2^bits)."""
        if not self.fast:
            return pack_sign_codes(self.project(x), self.bits, self.tables)
        rows, lead = _float_rows(x, self.dim, "SimHash.codes")
        codes = np.empty((rows.shape[0], self.tables), dtype=np.int64)
        _kernels.simhash_fast_codes(rows, self._params(rows.dtype), self.coords, codes, self.bits,
                                    _threads(rows.shape[0] * self.n * len(self.signs) * 8))
        return codes.reshape(lead + (self.tables,))

    def __repr__(self):
        return f"SimHash(dim={self.dim}, bits={self.bits}, tables={self.tables}, fast={self.fast})"


class DWTAHash:
    """Densified winner-take-all: `tables` codes, each packing `bits` WTA hashes over `bin_size`
    random coordinates (code_bits = bits·⌈log2 bin_size⌉ bits per code).

    Bins are consecutive chunks of concatenated random permutations of range(dim) (as in SLIDE).
    A bin's hash is the position of its largest non-zero coordinate (first on ties); a bin whose
    coordinates are all zero takes the hash of bin j_t = mix(a·((i+1)·64 + t) + b) mod (bits·tables)
    (arithmetic mod 2^64, mix = the splitmix64 finaliser, see `dwta_probe`) for the first
    t = 1..max_probes that is non-empty (0 if none is).
    """

    def __init__(self, dim, bits, tables, bin_size=8, seed=0, max_probes=100):
        who = "DWTAHash"
        self.dim = _positive_int(dim, "dim", who)
        self.bits = _positive_int(bits, "bits", who)
        self.tables = _positive_int(tables, "tables", who)
        self.bin_size = _positive_int(bin_size, "bin_size", who)
        self.max_probes = _positive_int(max_probes, "max_probes", who)
        if self.bin_size < 2:
            raise ValueError(f"{who}: bin_size must be at least 2, got {bin_size}")
        self.width = (self.bin_size - 1).bit_length()  # bits per WTA hash
        self.code_bits = self.bits * self.width
        if self.code_bits > 62:
            raise ValueError(f"{who}: bits·⌈log2 bin_size⌉ = {self.code_bits} exceeds 62")
        rng = np.random.default_rng(seed)
        n_hashes = self.bits * self.tables
        need = n_hashes * self.bin_size
        perms = np.concatenate([rng.permutation(self.dim) for _ in range(-(-need // self.dim))])
        self.bins = np.ascontiguousarray(perms[:need].reshape(n_hashes, self.bin_size), dtype=np.int64)
        self.probe_a = int(rng.integers(0, 2**63, dtype=np.uint64)) * 2 + 1  # odd multiplier
        self.probe_b = int(rng.integers(0, 2**63, dtype=np.uint64))

    def hashes(self, x):
        """Densified WTA hashes (..., bits·tables), int64 in [0, bin_size)."""
        rows, lead = _float_rows(x, self.dim, "DWTAHash.hashes")
        out = np.empty((rows.shape[0], self.bins.shape[0]), dtype=np.int64)
        _kernels.dwta_hash(rows, self.bins, out, self.probe_a, self.probe_b, self.max_probes,
                           _threads(rows.shape[0] * self.bins.size))
        return out.reshape(lead + (self.bins.shape[0],))

    def codes(self, x):
        """int64 codes (..., tables): code_l = Σ_k hash_{lK+k} · 2^(k·width)."""
        h = self.hashes(x)
        h = h.reshape(h.shape[:-1] + (self.tables, self.bits))
        return (h << (self.width * np.arange(self.bits, dtype=np.int64))).sum(axis=-1)

    def __repr__(self):
        return (f"DWTAHash(dim={self.dim}, bits={self.bits}, tables={self.tables}, "
                f"bin_size={self.bin_size})")


def dwta_probe(a, b, i, t, n_hashes):
    """The bin that empty bin i probes at attempt t (pure Python; the kernel does the same)."""
    m = 2**64 - 1
    h = (a * ((i + 1) * 64 + t) + b) & m
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & m
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & m
    return (h ^ (h >> 31)) % n_hashes


def mips_data_transform(x, max_norm=None, norms=None):
    """P(x) = [x/M, √(1 − ‖x/M‖²)] row-wise, M = max row norm unless given (must be ≥ it).

    Returns (P (..., d+1), M). Every row of P has unit norm. `norms`: the row norms if the caller
    already has them (saves a pass over x).
    """
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.ndim < 1:
        raise TypeError(f"mips_data_transform: expected a floating array (..., d), got {x.dtype} {x.shape}")
    if norms is None:
        norms = np.sqrt(np.einsum("...i,...i->...", x, x, dtype=np.float64))
    else:
        norms = np.asarray(norms, dtype=np.float64)
        if norms.shape != x.shape[:-1]:
            raise ValueError(f"mips_data_transform: norms shape {norms.shape} does not match rows {x.shape[:-1]}")
    largest = float(norms.max()) if norms.size else 0.0
    if max_norm is None:
        max_norm = largest if largest > 0 else 1.0
    elif not max_norm > 0 or max_norm < largest * (1 - 1e-6):
        raise ValueError(f"mips_data_transform: max_norm={max_norm} must be positive and at least "
                         f"the largest row norm {largest}")
    out = np.empty(x.shape[:-1] + (x.shape[-1] + 1,), dtype=x.dtype)
    np.multiply(x, np.asarray(1 / max_norm, dtype=x.dtype), out=out[..., :-1])
    out[..., -1] = np.sqrt(np.clip(1 - (norms / max_norm) ** 2, 0, None))
    return out, float(max_norm)


def mips_query_transform(q):
    """Q(q) = [q/‖q‖, 0] row-wise (zero rows stay zero)."""
    q = np.asarray(q)
    if q.dtype.kind != "f" or q.ndim < 1:
        raise TypeError(f"mips_query_transform: expected a floating array (..., d), got {q.dtype} {q.shape}")
    norms = np.linalg.norm(q, axis=-1, keepdims=True)
    unit = q / np.where(norms > 0, norms, 1).astype(q.dtype)
    return np.concatenate([unit, np.zeros(q.shape[:-1] + (1,), dtype=q.dtype)], axis=-1)


def _codes_2d(codes, code_bits, who, tables=None):
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise TypeError(f"{who}: codes must be integers, got dtype {codes.dtype}")
    if codes.ndim != 2 or (tables is not None and codes.shape[1] != tables):
        want = f"(n, {tables})" if tables is not None else "(n, tables)"
        raise ValueError(f"{who}: codes must have shape {want}, got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << code_bits)):
        raise ValueError(f"{who}: codes must lie in [0, 2^{code_bits}), got range "
                         f"[{codes.min()}, {codes.max()}]")
    return np.ascontiguousarray(codes, dtype=np.int64)


class HashTables:
    """L hash tables over N items from their codes (N, L), as CSR-like buckets.

    Table l: `ids[l, offsets[l, c]:offsets[l, c+1]]` are the items whose code in table l is c, in
    ascending order. Built by counting sort: O(N + 2^bits) per table, tables in parallel.
    """

    def __init__(self, codes, code_bits):
        who = "HashTables"
        self.code_bits = _positive_int(code_bits, "code_bits", who)
        if self.code_bits > MAX_TABLE_BITS:
            raise ValueError(f"{who}: code_bits={code_bits} would need 2^{code_bits} buckets per table; "
                             f"at most {MAX_TABLE_BITS} (use fewer bits and more tables)")
        codes = _codes_2d(codes, self.code_bits, who)
        self.n_items, self.n_tables = codes.shape
        if self.n_items >= 2**31:
            raise ValueError(f"{who}: at most 2^31 − 1 items, got {self.n_items}")
        self.offsets = np.empty((self.n_tables, (1 << self.code_bits) + 1), dtype=np.int32)
        self.ids = np.empty((self.n_tables, self.n_items), dtype=np.int32)
        _kernels.bucket_build(codes, self.offsets, self.ids, _threads(self.offsets.size + codes.size))

    def bucket(self, table, code):
        """Items with `code` in table `table` (ascending int32 ids)."""
        return self.ids[table, self.offsets[table, code]:self.offsets[table, code + 1]]

    def query(self, codes, sort=True):
        """Union over tables of each sample's buckets, deduplicated.

        codes (B, L) → (offsets (B+1,) int64, ids int32): sample b's candidates are
        ids[offsets[b]:offsets[b+1]], ascending if `sort`.
        """
        codes = _codes_2d(codes, self.code_bits, "HashTables.query", self.n_tables)
        counts = np.empty(codes.shape[0], dtype=np.int64)
        threads = _threads(codes.size * (self.n_items >> self.code_bits) + codes.shape[0] * 64)
        _kernels.bucket_query_count(codes, self.offsets, self.ids, self.n_items, counts, threads)
        offsets = np.zeros(codes.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        ids = np.empty(int(offsets[-1]), dtype=np.int32)
        _kernels.bucket_query_fill(codes, self.offsets, self.ids, self.n_items, offsets, ids,
                                   bool(sort), threads)
        return offsets, ids

    def votes(self, codes):
        """Per-item vote counts over a batch of query codes (B, L), two int32 arrays (N,):
        total[i] = number of (sample, table) pairs whose bucket holds item i, and
        best[i] = max over samples of the number of tables in which item i shares the sample's bucket.
        """
        codes = _codes_2d(codes, self.code_bits, "HashTables.votes", self.n_tables)
        total = np.empty(self.n_items, dtype=np.int32)
        best = np.empty(self.n_items, dtype=np.int32)
        threads = _threads(codes.size * (self.n_items >> self.code_bits) + self.n_items)
        _kernels.bucket_votes(codes, self.offsets, self.ids, total, best, threads)
        return total, best

    def __repr__(self):
        return f"HashTables(items={self.n_items}, tables={self.n_tables}, code_bits={self.code_bits})"


# -- moving active columns / rows (the sparse layer's gathers and scatters) --------------------------
def _index_vector(ids, limit, who):
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu" or ids.ndim != 1:
        raise TypeError(f"{who}: indices must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= limit):
        raise ValueError(f"{who}: indices must lie in [0, {limit}), got range [{ids.min()}, {ids.max()}]")
    return np.ascontiguousarray(ids, dtype=np.int64)


def _float_matrix(a, who, name):
    if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64) or a.ndim != 2:
        raise TypeError(f"{who}: {name} must be a 2-D float32/float64 array, got "
                        f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")
    return a


def scatter_columns(src, cols, n_cols):
    """out (B, n_cols) with out[:, cols] = src (B, len(cols)) and exact zeros elsewhere."""
    who = "scatter_columns"
    src = np.ascontiguousarray(_float_matrix(np.asarray(src), who, "src"))
    cols = _index_vector(cols, n_cols, who)
    if src.shape[1] != cols.size:
        raise ValueError(f"{who}: src has {src.shape[1]} columns but {cols.size} indices")
    out = np.empty((src.shape[0], n_cols), dtype=src.dtype)
    _kernels.bucket_scatter_columns(src, cols, out, _threads(out.size))
    return out


def gather_columns(src, cols):
    """src[:, cols] as a new C-contiguous array."""
    who = "gather_columns"
    src = np.ascontiguousarray(_float_matrix(np.asarray(src), who, "src"))
    cols = _index_vector(cols, src.shape[1], who)
    out = np.empty((src.shape[0], cols.size), dtype=src.dtype)
    _kernels.bucket_gather_columns(src, cols, out, _threads(out.size))
    return out


def add_rows(dst, rows, src):
    """dst[rows] += src in place (rows distinct; dst C-contiguous)."""
    who = "add_rows"
    _float_matrix(dst, who, "dst")
    if not dst.flags.c_contiguous or not dst.flags.writeable:
        raise ValueError(f"{who}: dst must be a writeable C-contiguous array")
    rows = _index_vector(rows, dst.shape[0], who)
    src = np.ascontiguousarray(src, dtype=dst.dtype)
    if src.shape != (rows.size, dst.shape[1]):
        raise ValueError(f"{who}: src shape {src.shape} does not match ({rows.size}, {dst.shape[1]})")
    _kernels.bucket_add_rows(dst, rows, src, _threads(src.size))


def zero_rows(dst, rows):
    """dst[rows] = 0 in place (dst C-contiguous)."""
    who = "zero_rows"
    _float_matrix(dst, who, "dst")
    if not dst.flags.c_contiguous or not dst.flags.writeable:
        raise ValueError(f"{who}: dst must be a writeable C-contiguous array")
    rows = _index_vector(rows, dst.shape[0], who)
    _kernels.bucket_zero_rows(dst, rows, _threads(rows.size * dst.shape[1]))
