"""Numpy-facing API over the Cython kernels in ``dreidel._kernels``.

Everything here works on plain numpy arrays (no tensors, no autograd): validation, dtype and
contiguity handling, clear errors. Kernels exist for float32 and float64; transforms act on the
last axis; any number of leading (batch) dimensions, including none.

Walsh-Hadamard transform
------------------------
``fwht(x)`` multiplies every row by H_n in natural (Sylvester) order, H_n = H_m kron H_{2^k}.
Supported n: every power of two 1 .. 2^24, and m * 2^k for m in {12, 20, 28} (up to 2^24).
H_12, H_20, H_28 are the symmetric Paley II matrices (q = 5, 9, 13), so H_n is symmetric and
``fwht(fwht(x))`` == x with ``normalized=True`` (scale 1/sqrt(n), orthonormal).
``hadamard_matrix(n)`` gives the dense matrix in the same order.

Non-contiguous inputs cost one copy (out-of-place functions), never a wrong result; in-place
``fwht_`` refuses them with a ValueError.

Threads: ``dreidel.set_num_threads`` (dreidel/runtime.py) sets the kernels' and BLAS's thread
count; results are bitwise independent of it.
"""

import numpy as np

from dreidel import _kernels

__all__ = [
    "fwht", "fwht_", "supported_size", "next_supported_size", "hadamard_matrix",
    "SUPPORTED_M", "MAX_FWHT_SIZE",
    "permute", "permute_inverse", "is_permutation",
    "spectral_block", "spectral_block_backward", "spectral_stack", "spectral_stack_backward",
    "gelu", "gelu_backward", "bias_gelu", "bias_gelu_backward",
    "softmax", "softmax_backward",
]

MAX_FWHT_SIZE = 1 << 24
SUPPORTED_M = (12, 20, 28)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ------------------------------------------------------------------------------------------
# Hadamard matrices
# ------------------------------------------------------------------------------------------
def _gf_elements(q):
    """Elements of GF(q) as (add, mul) tables over integer codes 0..q-1.

    q prime: the integers mod q. q = 9: a + b*i with i^2 = -1 over GF(3), code a + 3b.
    """
    if q == 9:
        codes = [(a, b) for b in range(3) for a in range(3)]   # code = a + 3b
        idx = {c: k for k, c in enumerate(codes)}
        add = np.array([[idx[((a1 + a2) % 3, (b1 + b2) % 3)] for (a2, b2) in codes]
                        for (a1, b1) in codes])
        mul = np.array([[idx[((a1 * a2 - b1 * b2) % 3, (a1 * b2 + a2 * b1) % 3)]
                         for (a2, b2) in codes] for (a1, b1) in codes])
        return add, mul
    r = np.arange(q)
    return (r[:, None] + r[None, :]) % q, (r[:, None] * r[None, :]) % q


def _conference(q):
    """Symmetric conference matrix C = [[0, 1^T], [1, Q]] of order q + 1, Q[a, b] = chi(a - b)
    (quadratic character of GF(q), q = 1 mod 4)."""
    add, mul = _gf_elements(q)
    neg = np.array([int(np.nonzero(add[a] == 0)[0][0]) for a in range(q)])
    squares = {int(mul[a, a]) for a in range(1, q)}
    chi = np.array([0] + [1 if a in squares else -1 for a in range(1, q)])
    Q = np.array([[chi[add[a, neg[b]]] for b in range(q)] for a in range(q)])
    C = np.zeros((q + 1, q + 1), dtype=np.int64)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = Q
    return C


def _paley2(C):
    """Symmetric Hadamard matrix of order 2(q+1) (Paley construction II):
    H = C kron [[1, 1], [1, -1]] + I kron [[1, -1], [-1, -1]]. The kernel evaluates exactly this
    structure from C."""
    return np.kron(C, [[1, 1], [1, -1]]) + np.kron(np.eye(len(C), dtype=np.int64), [[1, -1], [-1, -1]])


_CONF = {12: _conference(5), 20: _conference(9), 28: _conference(13)}
_BASE = {m: _paley2(c) for m, c in _CONF.items()}
for _m, _h in _BASE.items():   # cheap import-time sanity check of the constructions
    assert _h.shape == (_m, _m) and (_h == _h.T).all() and (_h @ _h.T == _m * np.eye(_m)).all()
_BASE_CACHE = {}
_DUMMY = {dt: np.ones((1, 1), dtype=dt) for dt in _FLOATS}
_DUMMY_VEC = {dt: np.zeros(1, dtype=dt) for dt in _FLOATS}


def _base_matrix(m, dtype):
    """What the kernel takes for H_m: the conference matrix C of its Paley II construction."""
    key = (m, np.dtype(dtype))
    h = _BASE_CACHE.get(key)
    if h is None:
        h = np.ascontiguousarray(_CONF[m], dtype=dtype)
        h.flags.writeable = False
        _BASE_CACHE[key] = h
    return h


def _split(n):
    """n -> (m, K) with n = m * K, K a power of two, m in {1, 12, 20, 28}; None if unsupported."""
    if not isinstance(n, (int, np.integer)) or n < 1 or n > MAX_FWHT_SIZE:
        return None
    n = int(n)
    if n & (n - 1) == 0:
        return 1, n
    for m in SUPPORTED_M:
        if n % m == 0:
            k = n // m
            if k & (k - 1) == 0:
                return m, k
    return None


def supported_size(n):
    """True iff the FWHT supports rows of length n."""
    return _split(n) is not None


def _all_sizes():
    s = {1 << k for k in range(25)}
    for m in SUPPORTED_M:
        k = 1
        while m * k <= MAX_FWHT_SIZE:
            s.add(m * k)
            k *= 2
    return sorted(s)


_SIZES = _all_sizes()


def next_supported_size(n):
    """Smallest supported FWHT size >= n (ValueError above 2^24)."""
    n = int(n)
    for s in _SIZES:
        if s >= n:
            return s
    raise ValueError(f"no supported FWHT size >= {n} (the largest is {MAX_FWHT_SIZE})")


def _prev_supported_size(n):
    below = [s for s in _SIZES if s <= n]
    return below[-1] if below else None


def _check_size(n, what="fwht"):
    sp = _split(n)
    if sp is None:
        below = _prev_supported_size(n)
        above = next((s for s in _SIZES if s >= n), None)
        raise ValueError(
            f"{what}: last-axis size {n} is not a supported Walsh-Hadamard size (powers of two "
            f"up to 2^24, or 12, 20, 28 times a power of two); nearest supported sizes: "
            f"{below} below, {above} above")
    return sp


def hadamard_matrix(n, dtype=np.float64):
    """Dense H_n (unnormalised, entries +-1) in the order ``fwht`` uses: H_m kron Sylvester."""
    m, k = _check_size(n, "hadamard_matrix")
    h = np.ones((1, 1), dtype=dtype) if m == 1 else _BASE[m].astype(dtype)
    s = np.ones((1, 1), dtype=dtype)
    h2 = np.array([[1, 1], [1, -1]], dtype=dtype)
    while s.shape[0] < k:
        s = np.kron(s, h2)
    return np.kron(h, s)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _as_float_array(x, what, copy=False, allow_scalar=False):
    """Float32/float64 C-contiguous array; other real dtypes become float64. copy=True always
    returns a fresh array (exactly one copy)."""
    a = np.asarray(x)
    if a.dtype in _FLOATS:
        dt = a.dtype
    elif a.dtype.kind in "biuf":
        dt = np.dtype(np.float64)
    else:
        raise TypeError(f"{what}: expected a real float32/float64 array, got dtype {a.dtype}")
    if a.ndim == 0 and not allow_scalar:
        raise ValueError(f"{what}: expected at least 1 dimension (the transform axis), got a scalar")
    if copy:
        return np.array(a, dtype=dt, order="C", copy=True)
    return np.ascontiguousarray(a, dtype=dt)


def _rows(a):
    n = a.shape[-1]
    return a.reshape(-1, n) if n else a.reshape(0, 0)


def _check_perm(perm, n, validate, what):
    p = np.ascontiguousarray(perm)
    if p.ndim != 1 or p.dtype.kind not in "iu":
        raise TypeError(f"{what}: perm must be a 1-D integer array, got {p.dtype} shape {p.shape}")
    p = p.astype(np.int64, copy=False)
    if p.shape[0] != n:
        raise ValueError(f"{what}: len(perm) = {p.shape[0]} but the last axis has size {n}")
    if validate and not _kernels.is_permutation(p):
        raise ValueError(f"{what}: perm is not a permutation of range({n})")
    return p


def is_permutation(perm):
    """True iff perm (1-D integers) is a permutation of range(len(perm))."""
    p = np.ascontiguousarray(perm)
    if p.ndim != 1 or p.dtype.kind not in "iu":
        return False
    return bool(_kernels.is_permutation(p.astype(np.int64, copy=False)))


def _vector(v, n, dtype, what, name):
    a = np.asarray(v)
    if a.shape != (n,):
        raise ValueError(f"{what}: {name} must have shape ({n},), got {a.shape}")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what}: {name} must be real, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def _approx(approximate, what):
    if approximate in ("none", None, False):
        return False
    if approximate == "tanh":
        return True
    raise ValueError(f"{what}: approximate must be 'none' or 'tanh', got {approximate!r}")


# ------------------------------------------------------------------------------------------
# FWHT
# ------------------------------------------------------------------------------------------
def fwht_(x, normalized=True):
    """In-place FWHT along the last axis of a C-contiguous, writable float32/float64 array.
    Returns x."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"fwht_: expected a numpy array, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"fwht_: in-place transform needs float32 or float64, got {x.dtype} "
                        f"(use fwht(x), which converts)")
    if x.ndim == 0:
        raise ValueError("fwht_: expected at least 1 dimension (the transform axis), got a scalar")
    if not x.flags.c_contiguous:
        raise ValueError("fwht_: in-place transform needs a C-contiguous array (got a strided "
                         "view); use fwht(x) (one copy) or np.ascontiguousarray first")
    if not x.flags.writeable:
        raise ValueError("fwht_: array is read-only")
    n = x.shape[-1]
    m, k = _check_size(n, "fwht_")
    if x.size:
        h = _base_matrix(m, x.dtype) if m > 1 else _DUMMY[x.dtype]
        _kernels.fwht_inplace(_rows(x), m, k, h, bool(normalized))
    return x


def fwht(x, normalized=True):
    """Out-of-place FWHT along the last axis. A C-contiguous float32/float64 input is read once
    (the copy is fused into the transform, tile by tile); anything else (strided, other dtypes:
    integers become float64) costs one conversion copy, transformed in place."""
    a = np.asarray(x)
    if isinstance(a, np.ndarray) and a.dtype in _FLOATS and a.ndim >= 1 and a.flags.c_contiguous:
        m, k = _check_size(a.shape[-1], "fwht")
        out = np.empty(a.shape, dtype=a.dtype)
        if a.size:
            h = _base_matrix(m, a.dtype) if m > 1 else _DUMMY[a.dtype]
            _kernels.fwht_outofplace(_rows(a), _rows(out), m, k, h, bool(normalized))
        return out
    a = _as_float_array(x, "fwht", copy=True)
    _check_size(a.shape[-1], "fwht")
    return fwht_(a, normalized)


# ------------------------------------------------------------------------------------------
# permutations
# ------------------------------------------------------------------------------------------
def _permute(x, perm, validate, inverse, what):
    a = np.asarray(x)
    if a.ndim == 0:
        raise ValueError(f"{what}: expected at least 1 dimension, got a scalar")
    n = a.shape[-1]
    p = _check_perm(perm, n, validate, what)
    if a.dtype not in _FLOATS:
        if inverse:
            out = np.empty_like(a)
            out[..., p] = a
            return out
        return np.take(a, p, axis=-1)
    a = np.ascontiguousarray(a)
    out = np.empty(a.shape, dtype=a.dtype)
    if a.size:
        _kernels.permute_rows(_rows(a), p, _rows(out), inverse)
    return out


def permute(x, perm, validate=True):
    """Gather along the last axis: ``x[..., perm]``."""
    return _permute(x, perm, validate, False, "permute")


def permute_inverse(x, perm, validate=True):
    """Scatter along the last axis: ``out[..., perm] = x`` (inverse of ``permute``; its
    backward)."""
    return _permute(x, perm, validate, True, "permute_inverse")


# ------------------------------------------------------------------------------------------
# fused spectral block
# ------------------------------------------------------------------------------------------
def _block_args(x, perm, d, validate, what):
    a = _as_float_array(x, what)
    n = a.shape[-1]
    m, k = _check_size(n, what)
    p = _check_perm(perm, n, validate, what)
    dv = _vector(d, n, a.dtype, what, "d")
    h = _base_matrix(m, a.dtype) if m > 1 else _DUMMY[a.dtype]
    return a, n, m, k, p, dv, h


def spectral_block(x, perm, d, normalized=True, validate=True):
    """y = H(x[..., perm] * d) along the last axis, fused (gather, scale, transform per row
    tile). len(perm) == len(d) == x.shape[-1], a supported FWHT size."""
    a, n, m, k, p, dv, h = _block_args(x, perm, d, validate, "spectral_block")
    y = np.empty(a.shape, dtype=a.dtype)
    if a.size:
        _kernels.spectral_block_fwd(_rows(a), p, dv, _rows(y), m, k, h, bool(normalized))
    return y


def spectral_block_backward(grad_y, x, perm, d, normalized=True, validate=True):
    """Backward of ``spectral_block``: returns (grad_x, grad_d), grad_d summed over all batch
    dimensions (accumulated in float64, deterministic)."""
    a, n, m, k, p, dv, h = _block_args(x, perm, d, validate, "spectral_block_backward")
    g = np.ascontiguousarray(grad_y, dtype=a.dtype)
    if g.shape != a.shape:
        raise ValueError(f"spectral_block_backward: grad_y shape {g.shape} != x shape {a.shape}")
    gx = np.empty(a.shape, dtype=a.dtype)
    gd = np.zeros(n, dtype=np.float64)
    if a.size:
        _kernels.spectral_block_bwd(_rows(g), _rows(a), p, dv, _rows(gx), gd, m, k, h,
                                    bool(normalized))
    return gx, gd.astype(a.dtype, copy=False)


# ------------------------------------------------------------------------------------------
# whole spectral stack (K fused blocks, tile by tile)
# ------------------------------------------------------------------------------------------
def _stack_args(perms, D, dtype, validate, what):
    p = np.ascontiguousarray(perms)
    if p.ndim != 2 or p.dtype.kind not in "iu":
        raise TypeError(f"{what}: perms must be a 2-D integer array (K, N), got {p.dtype} shape {p.shape}")
    K_, N = p.shape
    if K_ < 1:
        raise ValueError(f"{what}: need at least one block, got perms of shape {p.shape}")
    m, k = _check_size(N, what)
    if validate and not all(_kernels.is_permutation(row.astype(np.int64, copy=False)) for row in p):
        raise ValueError(f"{what}: every row of perms must be a permutation of range({N})")
    p = p.astype(np.intc, copy=False)
    Dv = np.asarray(D)
    if Dv.shape != p.shape:
        raise ValueError(f"{what}: D must have shape {p.shape} like perms, got {Dv.shape}")
    if Dv.dtype.kind not in "biuf":
        raise TypeError(f"{what}: D must be real, got {Dv.dtype}")
    Dv = np.ascontiguousarray(Dv, dtype=dtype)
    h = _base_matrix(m, dtype) if m > 1 else _DUMMY[np.dtype(dtype)]
    return p, Dv, N, m, k, h


def spectral_stack(x, perms, D, out_features=None, bias=None, normalized=True, save=True,
                   validate=True, save_input=True):
    """K spectral blocks in one pass, a tile of rows at a time (the tile stays in L1 through
    all K blocks):

        z_0 = pad(x) (zeros up to N),  z_k = H(P_k z_{k-1} * d_k),  y = z_K[..., :out_features] + bias

    perms (K, N) integer permutations ((P v)[j] = v[perm[j]]), D (K, N); x (..., n_in) with
    n_in <= N; out_features <= N (default N). Returns (y, saved): saved (K, rows, N) holds the
    block inputs z_0 = pad(x), z_1 .. z_{K-1} before their permutation (the permuted inputs are
    u_k = saved[k][:, perms[k]]) that ``spectral_stack_backward`` needs (None when save=False).
    save_input=False leaves z_0 out (saved (K - 1, rows, N)): the backward must then be given x,
    which saves a copy of x to memory and back."""
    a = _as_float_array(x, "spectral_stack")
    p, Dv, N, m, k, h = _stack_args(perms, D, a.dtype, validate, "spectral_stack")
    n_in = a.shape[-1]
    n_out = N if out_features is None else int(out_features)
    if not 1 <= n_in <= N or not 1 <= n_out <= N:
        raise ValueError(f"spectral_stack: need 1 <= in ({n_in}), out ({n_out}) <= N ({N})")
    b = _vector(bias, n_out, a.dtype, "spectral_stack", "bias") if bias is not None else _DUMMY_VEC[a.dtype]
    rows = a.reshape(-1, n_in)
    y = np.empty(a.shape[:-1] + (n_out,), dtype=a.dtype)
    save_input = bool(save_input)
    saved = np.empty((p.shape[0] - (not save_input), rows.shape[0], N), dtype=a.dtype) if save else None
    if rows.shape[0]:
        _kernels.stack_fwd(rows, p, Dv, b, bias is not None, y.reshape(-1, n_out),
                           saved.reshape(-1) if save and saved.size else _DUMMY_VEC[a.dtype], bool(save),
                           m, k, h, bool(normalized), save_input)
    return y, saved


def spectral_stack_backward(grad_y, saved, perms, D, in_features=None, normalized=True, need_x=True,
                            x=None, validate=True):
    """Backward of ``spectral_stack`` (bias excluded: its gradient is grad_y summed over rows).
    Per block from the last: g <- H g; dD_k = sum_rows g * u_k; g <- P_k^T (d_k * g); grad_x is
    the first in_features columns of the final g (dD_k is computed inside that gather, in its
    order, against the saved z_{k-1}: one pass over the saved inputs). The block inputs u_k come from `saved`
    (spectral_stack(save=True)), or, when saved is None, are recomputed tile by tile from the
    forward's input `x` (cheaper than a memory round trip once K * rows * N exceeds the caches).
    saved from spectral_stack(save_input=False) (K - 1 blocks) needs `x` too, for z_0.
    Returns (grad_x or None, grad_D (K, N)). grad_D: the products of each group of 4 rows are
    summed in the input precision, those sums accumulated in float64 per fixed row chunk and the
    chunks added in order (input-precision rounding does not pile up over the batch; the bits do
    not depend on the thread count)."""
    g = np.asarray(grad_y)
    z0_from_x = False
    if saved is not None and x is not None and np.ndim(saved) == 3 and np.shape(saved)[0] == np.shape(perms)[0] - 1:
        z0_from_x = True    # saved without z_0 (spectral_stack(save_input=False)): read it from x
        xa = _as_float_array(x, "spectral_stack_backward")
    if saved is None:
        if x is None:
            raise ValueError("spectral_stack_backward: need the saved block inputs or the input x")
        xa = _as_float_array(x, "spectral_stack_backward")
        dtype = np.result_type(xa.dtype, g.dtype) if g.dtype in _FLOATS else xa.dtype
        xa = np.ascontiguousarray(xa, dtype=dtype)
    else:
        s = np.asarray(saved)
        if s.dtype not in _FLOATS or s.ndim != 3:
            raise TypeError(f"spectral_stack_backward: saved must be the (K, rows, N) float array "
                            f"spectral_stack returned, got {s.dtype} shape {s.shape}")
        dtype = s.dtype
    p, Dv, N, m, k, h = _stack_args(perms, D, dtype, validate, "spectral_stack_backward")
    g = np.ascontiguousarray(g, dtype=dtype)
    n_in = int(in_features if in_features is not None else (xa.shape[-1] if saved is None else N))
    if g.ndim < 1 or not 1 <= g.shape[-1] <= N or not 1 <= n_in <= N:
        raise ValueError(f"spectral_stack_backward: grad_y shape {g.shape} / in_features {n_in} "
                         f"do not fit width {N}")
    rows = g.reshape(-1, g.shape[-1])
    if saved is None:
        if xa.shape[-1] != n_in or xa.size // max(n_in, 1) != rows.shape[0]:
            raise ValueError(f"spectral_stack_backward: x shape {xa.shape} does not match grad_y "
                             f"{g.shape} and in_features {n_in}")
        s = np.empty((p.shape[0], 0, N), dtype=dtype)
        x2 = xa.reshape(-1, n_in)
    else:
        if s.shape[0] != p.shape[0] - z0_from_x or s.shape[2] != N:
            raise ValueError(f"spectral_stack_backward: saved shape {s.shape} does not match perms {p.shape} "
                             f"(K blocks, or K - 1 with x)")
        if rows.shape[0] != s.shape[1]:
            raise ValueError(f"spectral_stack_backward: grad_y has {rows.shape[0]} rows, saved has {s.shape[1]}")
        s = np.ascontiguousarray(s)
        if z0_from_x:
            if xa.shape[-1] != n_in or xa.size // max(n_in, 1) != rows.shape[0]:
                raise ValueError(f"spectral_stack_backward: x shape {xa.shape} does not match grad_y "
                                 f"{g.shape} and in_features {n_in}")
            x2 = np.ascontiguousarray(xa, dtype=dtype).reshape(-1, n_in)
        else:
            x2 = np.empty((0, n_in), dtype=dtype)
    gx = np.empty(g.shape[:-1] + (n_in,), dtype=dtype) if need_x else None
    gD = np.empty(p.shape, dtype=np.float64)
    flat = s.reshape(-1) if s.size else _DUMMY_VEC[np.dtype(dtype)]
    _kernels.stack_bwd(rows, flat, x2, saved is None, p, Dv,
                       gx.reshape(-1, n_in) if need_x else np.empty((0, n_in), dtype=dtype),
                       bool(need_x), gD, m, k, h, bool(normalized), z0_from_x)
    return gx, gD.astype(dtype, copy=False)


# ------------------------------------------------------------------------------------------
# GELU
# ------------------------------------------------------------------------------------------
def gelu(x, approximate="none", out=None):
    """GELU, exact (x * Phi(x), float32 erf approximation with abs error < 1e-6) or
    approximate="tanh". ``out`` may be x itself (in place)."""
    tf = _approx(approximate, "gelu")
    a = _as_float_array(x, "gelu", allow_scalar=True)
    if out is None:
        out = np.empty(a.shape, dtype=a.dtype)
    else:
        _check_out(out, a, "gelu")
    _kernels.gelu_fwd(a.reshape(-1), out.reshape(-1), tf)
    return out


def _check_out(out, a, what):
    if not isinstance(out, np.ndarray) or out.shape != a.shape or out.dtype != a.dtype \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{what}: out must be a writable C-contiguous {a.dtype} array of shape "
                         f"{a.shape}")


def gelu_backward(grad, x, approximate="none", out=None):
    """grad * gelu'(x)."""
    tf = _approx(approximate, "gelu_backward")
    a = _as_float_array(x, "gelu_backward", allow_scalar=True)
    g = np.ascontiguousarray(grad, dtype=a.dtype)
    if g.shape != a.shape:
        raise ValueError(f"gelu_backward: grad shape {g.shape} != x shape {a.shape}")
    if out is None:
        out = np.empty(a.shape, dtype=a.dtype)
    else:
        _check_out(out, a, "gelu_backward")
    _kernels.gelu_bwd(g.reshape(-1), a.reshape(-1), out.reshape(-1), tf)
    return out


def bias_gelu(x, bias, approximate="none"):
    """gelu(x + bias), bias along the last axis, fused. Backward: ``bias_gelu_backward``."""
    tf = _approx(approximate, "bias_gelu")
    a = _as_float_array(x, "bias_gelu")
    n = a.shape[-1]
    b = _vector(bias, n, a.dtype, "bias_gelu", "bias")
    y = np.empty(a.shape, dtype=a.dtype)
    if a.size:
        _kernels.bias_gelu_fwd(_rows(a), b, _rows(y), tf)
    return y


def bias_gelu_backward(grad, x, bias, approximate="none"):
    """Returns (grad_x, grad_bias) of y = gelu(x + bias); grad_bias summed over the batch
    (float64 accumulation, deterministic)."""
    tf = _approx(approximate, "bias_gelu_backward")
    a = _as_float_array(x, "bias_gelu_backward")
    n = a.shape[-1]
    b = _vector(bias, n, a.dtype, "bias_gelu_backward", "bias")
    g = np.ascontiguousarray(grad, dtype=a.dtype)
    if g.shape != a.shape:
        raise ValueError(f"bias_gelu_backward: grad shape {g.shape} != x shape {a.shape}")
    gx = np.empty(a.shape, dtype=a.dtype)
    gb = np.zeros(n, dtype=np.float64)
    if n:
        _kernels.bias_gelu_bwd(_rows(g), _rows(a), b, _rows(gx), gb, tf)
    return gx, gb.astype(a.dtype, copy=False)


try:  # the hashing engineer's numpy API, re-exported
    from dreidel.hashing import *  # noqa: F401,F403
except ImportError:
    pass


# ------------------------------------------------------------------------------------------
# softmax
# ------------------------------------------------------------------------------------------
def _softmax_axis(a, axis, what):
    if not isinstance(axis, (int, np.integer)) or not -a.ndim <= axis < a.ndim:
        raise ValueError(f"{what}: axis {axis!r} out of range for an array of shape {a.shape}")
    if a.shape[axis] == 0:
        raise ValueError(f"{what}: softmax over an empty axis (shape {a.shape}, axis {axis})")
    return int(axis) % a.ndim


def softmax(x, axis=-1, out=None):
    """y = exp(x - max x) / sum exp(x - max x) along ``axis``, in one fused kernel per row.
    ``out`` (last axis only) may be x itself: in place.

    Same special values as that numpy expression: masked (-inf) entries give exactly 0; a row
    of only -inf, or any NaN / +inf in a row, gives a NaN row. float32: AVX-512F / AVX2 /
    portable paths picked at run time (dreidel/_kernels_softmax.h), exp a ~1 ulp polynomial
    (exp(t) below FLT_MIN, t < -87.34, is flushed to 0); float64 uses libm exp. Axes other
    than the last cost one transposed copy.
    """
    a = np.asarray(x)
    if a.ndim == 0:
        raise ValueError("softmax: expected at least 1 dimension, got a scalar")
    axis = _softmax_axis(a, axis, "softmax")
    last = axis == a.ndim - 1
    a = _as_float_array(a if last else np.moveaxis(a, axis, -1), "softmax")
    if out is None:
        y = np.empty(a.shape, dtype=a.dtype)
    elif last:
        _check_out(out, a, "softmax")
        y = out
    else:
        raise ValueError(f"softmax: out= needs the last axis, got axis {axis} of an array of {a.ndim} dimensions")
    if a.size:
        _kernels.softmax_rows(_rows(a), _rows(y))
    return y if last else np.moveaxis(y, -1, axis)


def softmax_backward(grad, y, axis=-1):
    """Vector-Jacobian product of softmax: y * (grad - sum(grad * y, axis)), fused per row."""
    b = np.asarray(y)
    if b.ndim == 0:
        raise ValueError("softmax_backward: expected at least 1 dimension, got a scalar")
    g = np.asarray(grad)
    if g.shape != b.shape:
        raise ValueError(f"softmax_backward: grad shape {g.shape} != y shape {b.shape}")
    axis = _softmax_axis(b, axis, "softmax_backward")
    last = axis == b.ndim - 1
    if not last:
        b, g = np.moveaxis(b, axis, -1), np.moveaxis(g, axis, -1)
    b = _as_float_array(b, "softmax_backward")
    if g.dtype.kind not in "biuf":
        raise TypeError(f"softmax_backward: grad must be real, got {g.dtype}")
    g = np.ascontiguousarray(g, dtype=b.dtype)
    out = np.empty(b.shape, dtype=b.dtype)
    if b.size:
        _kernels.softmax_bwd(_rows(g), _rows(b), _rows(out))
    return out if last else np.moveaxis(out, -1, axis)


# -- depthwise convolution ---------------------------------------------------------------------------
def _depthwise_geometry(x_shape, w_shape, stride, dilation, what):
    """Check a padded input (N, C, *S) against depthwise taps (C·M, 1, *K) (d = 1, 2 or 3): the
    output spatial shape and the stride / dilation as 3-tuples (unit axes in front)."""
    d = len(x_shape) - 2
    if d not in (1, 2, 3) or len(w_shape) != d + 2:
        raise ValueError(f"{what}: need input (N, C, *S) and weight (C*M, 1, *K) with 1-3 spatial axes, "
                         f"got {x_shape} and {w_shape}")
    if x_shape[1] < 1 or w_shape[1] != 1 or w_shape[0] % x_shape[1] or w_shape[0] == 0:
        raise ValueError(f"{what}: weight {w_shape} is not depthwise for {x_shape[1]} input channels "
                         f"(need (C*M, 1, *K))")
    stride, dilation = tuple(int(v) for v in stride), tuple(int(v) for v in dilation)
    if len(stride) != d or len(dilation) != d or min(stride + dilation) < 1:
        raise ValueError(f"{what}: stride {stride} and dilation {dilation} need {d} values >= 1")
    out = []
    for size, k, s, dl in zip(x_shape[2:], w_shape[2:], stride, dilation):
        extent = dl * (k - 1) + 1
        if k < 1 or extent > size:
            raise ValueError(f"{what}: kernel extent {extent} does not fit the padded input size {size}")
        out.append((size - extent) // s + 1)
    pad = (1,) * (3 - d)
    return tuple(out), pad + stride, pad + dilation


def _per_axis(value, d):
    return (value,) * d if np.isscalar(value) else tuple(value)


def _as_3d(a, lead):
    """(lead..., *spatial) → (lead..., 1, ..., *spatial) with 3 spatial axes (a view)."""
    return a.reshape(a.shape[:lead] + (1,) * (3 + lead - a.ndim) + a.shape[lead:])


def _depthwise_arrays(what, *arrays):
    dtypes = {np.asarray(a).dtype for a in arrays}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _FLOATS:
        raise TypeError(f"{what}: expected float32 or float64 arrays of one dtype, got {sorted(map(str, dtypes))}")
    return [np.ascontiguousarray(a) for a in arrays]


def depthwise_conv(x, weight, stride=1, dilation=1):
    """Depthwise correlation of a padded input x (N, C, *S) with weight (C·M, 1, *K), 1-3 spatial
    axes: y[n, c·M + m, p] = Σ_k w[c·M + m, k] · x[n, c, p·s + k·d]. float32 or float64 (one
    dtype); OpenMP over batch × channels."""
    x, weight = _depthwise_arrays("depthwise_conv", x, weight)
    d = x.ndim - 2
    stride, dilation = _per_axis(stride, d), _per_axis(dilation, d)
    out_shape, s, dl = _depthwise_geometry(x.shape, weight.shape, stride, dilation, "depthwise_conv")
    y = np.empty((x.shape[0], weight.shape[0]) + out_shape, dtype=x.dtype)
    if y.size:
        _kernels.depthwise_fwd(_as_3d(x, 2), _as_3d(weight[:, 0], 1), _as_3d(y, 2), *s, *dl)
    return y


def depthwise_conv_input_grad(grad, weight, input_shape, stride=1, dilation=1):
    """Gradient of `depthwise_conv` in its (padded) input of shape `input_shape`, given the output
    gradient `grad` (N, C·M, *P)."""
    grad, weight = _depthwise_arrays("depthwise_conv_input_grad", grad, weight)
    input_shape = tuple(int(v) for v in input_shape)
    d = len(input_shape) - 2
    stride, dilation = _per_axis(stride, d), _per_axis(dilation, d)
    out_shape, s, dl = _depthwise_geometry(input_shape, weight.shape, stride, dilation, "depthwise_conv_input_grad")
    if grad.shape != (input_shape[0], weight.shape[0]) + out_shape:
        raise ValueError(f"depthwise_conv_input_grad: grad shape {grad.shape}, expected "
                         f"{(input_shape[0], weight.shape[0]) + out_shape}")
    gx = np.zeros(input_shape, dtype=grad.dtype)
    if grad.size:
        _kernels.depthwise_input_grad(_as_3d(grad, 2), _as_3d(weight[:, 0], 1), _as_3d(gx, 2), *s, *dl)
    return gx


def depthwise_conv_weight_grad(x, grad, kernel_size, stride=1, dilation=1):
    """Gradient of `depthwise_conv` in its weight (C·M, 1, *kernel_size), given the padded input x
    and the output gradient `grad` (N, C·M, *P); accumulated in float64."""
    x, grad = _depthwise_arrays("depthwise_conv_weight_grad", x, grad)
    d = x.ndim - 2
    kernel = tuple(int(k) for k in kernel_size)
    if grad.ndim != x.ndim or grad.shape[0] != x.shape[0]:
        raise ValueError(f"depthwise_conv_weight_grad: grad shape {grad.shape} does not fit input {x.shape}")
    w_shape = (grad.shape[1], 1) + kernel
    stride, dilation = _per_axis(stride, d), _per_axis(dilation, d)
    out_shape, s, dl = _depthwise_geometry(x.shape, w_shape, stride, dilation, "depthwise_conv_weight_grad")
    if grad.shape[2:] != out_shape:
        raise ValueError(f"depthwise_conv_weight_grad: grad shape {grad.shape}, expected spatial {out_shape}")
    gw = np.zeros(w_shape, dtype=x.dtype)
    if grad.size:
        work = np.empty((w_shape[0], kernel[-1] * out_shape[-1]))  # the kernel's partial sums
        _kernels.depthwise_weight_grad(_as_3d(x, 2), _as_3d(grad, 2), _as_3d(gw[:, 0], 1), work, *s, *dl)
    return gw


__all__ += ["depthwise_conv", "depthwise_conv_input_grad", "depthwise_conv_weight_grad"]
