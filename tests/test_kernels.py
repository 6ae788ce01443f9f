"""Property tests of the numpy-level kernels (dreidel.kernels) against plain numpy references.

References are built here, independently of dreidel: Sylvester matrices by np.kron, the base
Hadamard matrices H_12, H_20, H_28 by a separate Paley II construction (Euler's criterion for the
quadratic character), GELU from math.erf in float64.
"""
import functools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dreidel
from dreidel import kernels as K

SET = settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [np.float32, np.float64]


# ------------------------------------------------------------------------------------------
# independent references
# ------------------------------------------------------------------------------------------
def _gf9_mul(x, y):
    """GF(9) = GF(3)[i]/(i^2 + 1); element (a, b) = a + b i, integer code a + 3 b."""
    (a, b), (c, d) = x, y
    return ((a * c - b * d) % 3, (a * d + b * c) % 3)


def _chi(q, code):
    """Quadratic character by Euler's criterion: x^((q-1)/2) in {0, 1, -1}."""
    if code == 0:
        return 0
    e = (q - 1) // 2
    if q == 9:
        x = (code % 3, code // 3)
        r = (1, 0)
        for _ in range(e):
            r = _gf9_mul(r, x)
        return 1 if r == (1, 0) else -1
    r = pow(code, e, q)
    return 1 if r == 1 else -1


def _sub(q, a, b):
    if q == 9:
        return ((a % 3 - b % 3) % 3) + 3 * ((a // 3 - b // 3) % 3)
    return (a - b) % q


def paley2(q):
    Q = np.array([[_chi(q, _sub(q, a, b)) for b in range(q)] for a in range(q)])
    S = np.block([[np.zeros((1, 1)), np.ones((1, q))], [np.ones((q, 1)), Q]])
    return np.kron(S, [[1, 1], [1, -1]]) + np.kron(np.eye(q + 1), [[1, -1], [-1, -1]])


BASE = {1: np.ones((1, 1)), 12: paley2(5), 20: paley2(9), 28: paley2(13)}


@functools.lru_cache(maxsize=None)
def sylvester(k):
    s = np.ones((1, 1))
    while s.shape[0] < k:
        s = np.kron(s, [[1, 1], [1, -1]])
    return s


def ref_factors(n):
    for m in (1, 12, 20, 28):
        if n % m == 0 and (n // m) & (n // m - 1) == 0:
            return BASE[m], sylvester(n // m)
    raise AssertionError(n)


def ref_hadamard(n):
    a, s = ref_factors(n)
    return np.kron(a, s)


def ref_supported(n):
    return 1 <= n <= 2 ** 24 and any(
        n % m == 0 and (n // m) & (n // m - 1) == 0 for m in (1, 12, 20, 28))


def ref_fwht(x, normalized=True):
    """x @ kron(A, S).T, evaluated as A X S^T on x viewed as (..., m, K)."""
    n = x.shape[-1]
    a, s = ref_factors(n)
    xv = x.astype(np.float64).reshape(x.shape[:-1] + (a.shape[0], s.shape[0]))
    y = (a @ xv @ s.T).reshape(x.shape)
    return y / math.sqrt(n) if normalized else y


_erf = np.vectorize(math.erf, otypes=[np.float64])


def ref_gelu(x, tanh_form=False):
    x = np.asarray(x, dtype=np.float64)
    if tanh_form:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def ref_dgelu(x, tanh_form=False):
    x = np.asarray(x, dtype=np.float64)
    if tanh_form:
        k = math.sqrt(2 / math.pi)
        t = np.tanh(k * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)
    return 0.5 * (1 + _erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


SMALL_SIZES = sorted({2 ** k for k in range(11)} |
                     {m * 2 ** k for m in (12, 20, 28) for k in range(10) if m * 2 ** k <= 4096})
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}
batch_shapes = st.sampled_from([(), (1,), (3,), (2, 3), (5, 1, 2), (17,)])


def _data(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------------------
# Hadamard matrices and sizes
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [12, 20, 28])
def test_base_matrices_are_symmetric_hadamard(m):
    h = BASE[m]
    assert h.shape == (m, m) and set(np.unique(h)) == {-1.0, 1.0}
    np.testing.assert_array_equal(h @ h.T, m * np.eye(m))
    np.testing.assert_array_equal(h, h.T)
    np.testing.assert_array_equal(K.hadamard_matrix(m), h)


@pytest.mark.parametrize("n", [1, 2, 8, 24, 40, 112, 256, 384])
def test_hadamard_matrix_matches_reference(n):
    np.testing.assert_array_equal(K.hadamard_matrix(n), ref_hadamard(n))


def test_supported_sizes_match_brute_force():
    for n in range(1, 3000):
        assert K.supported_size(n) == ref_supported(n), n
        nxt = K.next_supported_size(n)
        assert nxt >= n and ref_supported(nxt)
        assert not any(ref_supported(j) for j in range(n, nxt))
    assert K.supported_size(2 ** 24) and not K.supported_size(2 ** 24 + 1)
    assert K.supported_size(12 * 2 ** 20) and not K.supported_size(0)


@pytest.mark.parametrize("n", [3, 5, 100, 1000, 4095, 10 ** 6 + 1])
def test_unsupported_size_error_names_neighbours(n):
    below = max(j for j in range(1, n) if ref_supported(j))
    above = next(j for j in range(n, 2 * n + 64) if ref_supported(j))
    with pytest.raises(ValueError) as e:
        K.fwht(np.zeros((2, n), dtype=np.float32))
    assert str(below) in str(e.value) and str(above) in str(e.value)
    with pytest.raises(ValueError):
        K.fwht_(np.zeros(n))


# ------------------------------------------------------------------------------------------
# FWHT
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalized", [True, False])
def test_fwht_every_small_size_equals_dense(dtype, normalized):
    rng = np.random.default_rng(1)
    for n in SMALL_SIZES:
        for rows in (1, 5):
            x = _data(rng, (rows, n), dtype)
            y = K.fwht(x, normalized)
            assert y.dtype == dtype and y.shape == x.shape
            scale = 1.0 if normalized else math.sqrt(n)
            np.testing.assert_allclose(y / scale, ref_fwht(x, normalized) / scale,
                                       err_msg=f"n={n}", **TOL[dtype])


@pytest.mark.parametrize("n", [1, 2, 4, 16, 12, 24, 20, 80, 28, 224, 256, 384])
def test_fwht_of_identity_is_dense_hadamard(n):
    h = ref_hadamard(n)                       # explicit np.kron(H_m, Sylvester) matrix
    for dtype in DTYPES:
        np.testing.assert_allclose(K.fwht(np.eye(n, dtype=dtype), normalized=False), h.T,
                                   rtol=0, atol=0)
        np.testing.assert_allclose(K.fwht(np.eye(n, dtype=dtype)), h / math.sqrt(n),
                                   **TOL[dtype])


@SET
@given(n=st.sampled_from(SMALL_SIZES), batch=batch_shapes, dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2 ** 31))
def test_fwht_property_dense(n, batch, dtype, seed):
    x = _data(np.random.default_rng(seed), batch + (n,), dtype)
    np.testing.assert_allclose(K.fwht(x), ref_fwht(x), **TOL[dtype])


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(logn=st.integers(0, 16), m=st.sampled_from([1, 1, 12, 20, 28]),
       rows=st.integers(1, 4), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2 ** 31))
def test_fwht_involution_parseval_linearity(logn, m, rows, dtype, seed):
    n = m * 2 ** logn
    if n > 2 ** 17:
        n //= 8
    rng = np.random.default_rng(seed)
    x, z = _data(rng, (rows, n), dtype), _data(rng, (rows, n), dtype)
    y = K.fwht(x)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(K.fwht(y), x, rtol=tol, atol=tol * 10)           # H(Hx) = x
    np.testing.assert_allclose((y.astype(np.float64) ** 2).sum(-1),
                               (x.astype(np.float64) ** 2).sum(-1), rtol=tol * 10)  # Parseval
    a, b = 0.5, -2.0
    np.testing.assert_allclose(K.fwht(a * x + b * z), a * y + b * K.fwht(z),
                               rtol=tol, atol=tol * 10)                           # linearity


@pytest.mark.parametrize("dtype", DTYPES)
def test_fwht_large_pow2_matches_numpy_butterflies(dtype):
    rng = np.random.default_rng(3)
    for n, rows in [(2 ** 13, 3), (2 ** 16, 1), (2 ** 16, 5), (2 ** 18, 1), (2 ** 19, 1), (2 ** 19, 4)]:
        x = _data(rng, (rows, n), dtype)
        ref = x.astype(np.float64)
        h = 1
        while h < n:                       # textbook radix-2 butterflies, natural order
            v = ref.reshape(rows, n // (2 * h), 2, h)
            ref = np.stack([v[:, :, 0] + v[:, :, 1], v[:, :, 0] - v[:, :, 1]], 2).reshape(rows, n)
            h *= 2
        tol = 2e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(K.fwht(x, normalized=False) / math.sqrt(n),
                                   ref / math.sqrt(n), rtol=tol, atol=tol)


# the float32 FWHT has an AVX-512 path (runtime dispatch) beside the x86-64-v3 one: both are
# forced here through the private switch, checked against the reference and against each other
# (same butterflies in the same order: bitwise equal)
ISAS = ["avx2", "avx512"]


def _with_isa(isa, fn):
    before = K._kernels._fwht_isa()
    try:
        if K._kernels._fwht_isa(isa) != isa:
            pytest.skip(f"this CPU has no {isa}")
        return fn()
    finally:
        K._kernels._fwht_isa(before)


def test_fwht_isa_switch():
    assert K._kernels._fwht_isa() in ISAS
    with pytest.raises(ValueError, match="avx2"):
        K._kernels._fwht_isa("sse")
    assert _with_isa("avx2", K._kernels._fwht_isa) == "avx2"


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(logn=st.integers(0, 19), m=st.sampled_from([1, 1, 1, 12, 20, 28]), rows=st.integers(1, 5),
       normalized=st.booleans(), seed=st.integers(0, 2 ** 31))
def test_fwht_avx2_and_avx512_paths_agree(logn, m, rows, normalized, seed):
    n = m * 2 ** logn
    while n * rows > 2 ** 19:
        n //= 2
    if not (n & (n - 1) == 0 or (n % m == 0 and (n // m) & (n // m - 1) == 0)):
        n = 2 ** logn
    x = _data(np.random.default_rng(seed), (rows, n), np.float32)
    out = {isa: _with_isa(isa, lambda: K.fwht(x, normalized)) for isa in ISAS}
    np.testing.assert_array_equal(out["avx2"], out["avx512"])
    if n <= 4096:
        ref = ref_fwht(x, normalized)
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(out["avx512"] / scale, ref / scale, rtol=2e-5, atol=2e-5 * math.sqrt(logn + 1))


@SET
@given(n=st.sampled_from([256, 512, 1024, 2048, 3072, 4096]), rows=st.sampled_from([1, 3, 4, 9]),
       depth=st.integers(1, 4), seed=st.integers(0, 2 ** 31))
def test_spectral_stack_avx2_and_avx512_paths_agree(n, rows, depth, seed):
    rng = np.random.default_rng(seed)
    x, g = _data(rng, (rows, n), np.float32), _data(rng, (rows, n), np.float32)
    D = _data(rng, (depth, n), np.float32)
    perms = np.stack([rng.permutation(n) for _ in range(depth)])

    def run():
        y, saved = K.spectral_stack(x, perms, D)
        return (y, saved, *K.spectral_stack_backward(g, saved, perms, D, n),
                *K.spectral_stack_backward(g, None, perms, D, n, x=x))
    a, b = (_with_isa(isa, run) for isa in ISAS)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    ref_y, ref_u, ref_gx, ref_gD = ref_stack(x, perms, D, n, None, True, g)
    np.testing.assert_allclose(b[0], ref_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b[2], ref_gx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b[3], ref_gD, rtol=1e-4, atol=1e-4 * rows)


def _assert_stack_matches_numpy(x, perms, D, n, g, y, saved, gx, gD):
    rows = x.shape[0]
    ref_y, ref_u, ref_gx, ref_gD = ref_stack(x, perms, D, n, None, True, g)
    np.testing.assert_allclose(_permuted_saved(saved, perms), ref_u, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gD, ref_gD, rtol=1e-4, atol=1e-4 * rows)


@SET
@given(n=st.sampled_from([8, 12, 16, 96, 160, 1024, 1536]), rows=st.sampled_from([1, 2, 3, 4, 5, 9]),
       depth=st.integers(1, 4), seed=st.integers(0, 2 ** 31))
def test_spectral_stack_vector_gather_equals_scalar_and_reference(n, rows, depth, seed):
    # the float32 permutation gathers have an AVX-512 path (n % 16 == 0, four rows per index
    # load, single-row tails): a copy, so it must give the scalar gather's bits exactly
    rng = np.random.default_rng(seed)
    x, g = _data(rng, (rows, n), np.float32), _data(rng, (rows, n), np.float32)
    D = _data(rng, (depth, n), np.float32)
    perms = np.stack([rng.permutation(n) for _ in range(depth)])

    def run(vector):
        before = K._kernels._stack_tuning()[2]
        try:
            K._kernels._stack_tuning(gather512=vector)
            y, saved = K.spectral_stack(x, perms, D)
            return (y, saved, *K.spectral_stack_backward(g, saved, perms, D, n),
                    *K.spectral_stack_backward(g, None, perms, D, n, x=x))
        finally:
            K._kernels._stack_tuning(gather512=before)
    a, b = run(False), run(True)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    _assert_stack_matches_numpy(x, perms, D, n, g, b[0], b[1], b[2], b[3])


@SET
@given(n=st.sampled_from([16, 96, 256, 512, 1024, 2048, 3072, 4096]), rows=st.sampled_from([1, 2, 3, 4, 5, 9]),
       depth=st.integers(1, 4), n_in=st.sampled_from([None, 7]), seed=st.integers(0, 2 ** 31))
def test_spectral_stack_scalar_gather_equals_vgather_and_reference(n, rows, depth, n_in, seed):
    # float32 with AVX-512: by default the permutations are gathered by scalar loads into a buffer
    # and the transform's first pass (backward: with the dD sums; the last gather: dr_load_dot_rows512,
    # times d) runs on that buffer; scalar_gather=False gathers with vgatherdps inside that pass.
    # The same products in the same order: the bits must agree, and both match numpy
    rng = np.random.default_rng(seed)
    n_in = n if n_in is None else min(n_in, n)
    x, g = _data(rng, (rows, n_in), np.float32), _data(rng, (rows, n), np.float32)
    D = _data(rng, (depth, n), np.float32)
    perms = np.stack([rng.permutation(n) for _ in range(depth)])

    def run(scalar):
        try:
            K._kernels._stack_tuning(scalar_gather=scalar)
            y, saved = K.spectral_stack(x, perms, D)
            y2, inner = K.spectral_stack(x, perms, D, save_input=False)
            return (y, saved, y2, inner, *K.spectral_stack_backward(g, saved, perms, D, n_in),
                    *K.spectral_stack_backward(g, None, perms, D, n_in, x=x),
                    *K.spectral_stack_backward(g, inner, perms, D, n_in, x=x),
                    K.spectral_stack_backward(g, saved, perms, D, n_in, need_x=False)[1])
        finally:
            K._kernels._stack_tuning(scalar_gather=True)
    a, b = run(False), run(True)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    _assert_stack_matches_numpy(x, perms, D, n, g, b[0], b[1], b[4], b[5])
    _assert_stack_matches_numpy(x, perms, D, n, g, b[0], b[1], b[4], b[-1])


@SET
@given(n=st.sampled_from([16, 48, 1024, 4096]), rows=st.sampled_from([1, 2, 3, 4, 5, 9]), data=st.data())
def test_scalar_gather_rows_equals_numpy(n, rows, data):
    # the stack's scalar gather (two rows per index over 8 KiB rows, four below, single-row tails)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 31), "seed"))
    src = _data(rng, (rows, n), np.float32)
    idx = rng.permutation(n).astype(np.intc)
    out = np.full((rows, n), np.nan, dtype=np.float32)
    K._kernels._gather_rows_scalar(src, idx, out)
    np.testing.assert_array_equal(out, src[:, idx])


def test_fwht_batch_shapes_and_edge_cases():
    rng = np.random.default_rng(4)
    x = _data(rng, (8,), np.float64)                 # no batch dims
    np.testing.assert_allclose(K.fwht(x), ref_fwht(x[None])[0], rtol=1e-12, atol=1e-12)
    for shape in [(0, 16), (3, 0, 16), (2, 1)]:
        x = _data(rng, shape, np.float32)
        y = K.fwht(x)
        assert y.shape == shape
        np.testing.assert_array_equal(y, x if shape[-1] == 1 else y)
    one = np.array([[2.5], [-1.0]])
    np.testing.assert_array_equal(K.fwht(one), one)   # n = 1: identity
    np.testing.assert_array_equal(K.fwht(np.arange(4)), K.fwht(np.arange(4.0)))  # ints -> f64
    assert K.fwht(np.arange(4)).dtype == np.float64
    with pytest.raises(ValueError):
        K.fwht(np.float64(1.0))
    with pytest.raises(TypeError):
        K.fwht(np.zeros(4, dtype=np.complex128))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fwht_strided_and_transposed_inputs(dtype):
    rng = np.random.default_rng(5)
    base = _data(rng, (64, 48), dtype)
    for view in [base.T, base[::2], base[:, ::2][:, :16], base[::-1], base.T[::3]]:
        if not K.supported_size(view.shape[-1]):
            continue
        before = base.copy()
        np.testing.assert_allclose(K.fwht(view), ref_fwht(np.array(view)), **TOL[dtype])
        np.testing.assert_array_equal(base, before)          # out of place: input untouched
        if not view.flags.c_contiguous:
            with pytest.raises(ValueError, match="contiguous"):
                K.fwht_(view)


def test_fwht_inplace_contract():
    x = np.random.default_rng(6).standard_normal((3, 32)).astype(np.float32)
    ref = ref_fwht(x)
    assert K.fwht_(x) is x
    np.testing.assert_allclose(x, ref, **TOL[np.float32])
    with pytest.raises(TypeError):
        K.fwht_(np.zeros(8, dtype=np.int64))
    ro = np.zeros(8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        K.fwht_(ro)
    with pytest.raises(TypeError):
        K.fwht_([1.0, 2.0])


# ------------------------------------------------------------------------------------------
# permutations
# ------------------------------------------------------------------------------------------
@SET
@given(n=st.integers(1, 300), batch=batch_shapes, dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2 ** 31))
def test_permute_gather_scatter(n, batch, dtype, seed):
    rng = np.random.default_rng(seed)
    x = _data(rng, batch + (n,), dtype)
    perm = rng.permutation(n)
    y = K.permute(x, perm)
    np.testing.assert_array_equal(y, x[..., perm])
    np.testing.assert_array_equal(K.permute_inverse(y, perm), x)
    np.testing.assert_array_equal(K.permute(K.permute_inverse(x, perm), perm), x)
    ref = np.empty_like(x)
    ref[..., perm] = x
    np.testing.assert_array_equal(K.permute_inverse(x, perm), ref)


def test_permute_validation_and_strided():
    rng = np.random.default_rng(7)
    x = _data(rng, (10, 6), np.float64)
    with pytest.raises(ValueError, match="permutation"):
        K.permute(x, np.array([0, 1, 2, 3, 4, 4]))
    with pytest.raises(ValueError, match="permutation"):
        K.permute_inverse(x, np.array([0, 1, 2, 3, 4, 6]))
    with pytest.raises(ValueError, match="permutation"):
        K.permute(x, np.array([0, 1, 2, 3, 4, -1]))
    with pytest.raises(ValueError):
        K.permute(x, np.arange(5))
    with pytest.raises(TypeError):
        K.permute(x, np.arange(6.0))
    assert K.is_permutation(np.arange(5)[::-1]) and not K.is_permutation([0, 0])
    perm = rng.permutation(10)
    np.testing.assert_array_equal(K.permute(x.T, perm), x.T[:, perm])
    np.testing.assert_array_equal(K.permute(np.arange(6), np.arange(6)[::-1]), np.arange(6)[::-1])


# ------------------------------------------------------------------------------------------
# fused spectral block
# ------------------------------------------------------------------------------------------
@SET
@given(n=st.sampled_from([1, 2, 8, 12, 64, 96, 160, 448, 1024, 1536]),
       batch=batch_shapes, dtype=st.sampled_from(DTYPES), normalized=st.booleans(),
       seed=st.integers(0, 2 ** 31))
def test_spectral_block_equals_unfused(n, batch, dtype, normalized, seed):
    rng = np.random.default_rng(seed)
    x = _data(rng, batch + (n,), dtype)
    g = _data(rng, batch + (n,), dtype)
    d = _data(rng, (n,), dtype)
    perm = rng.permutation(n)
    y = K.spectral_block(x, perm, d, normalized)
    scale = 1.0 if normalized else math.sqrt(n)
    ref = K.fwht(x[..., perm] * d, normalized)
    np.testing.assert_allclose(y / scale, ref / scale, **TOL[dtype])
    gx, gd = K.spectral_block_backward(g, x, perm, d, normalized)
    gz = ref_fwht(g, normalized)                     # H symmetric: H^T g = H g
    ref_gx = np.empty_like(gz)
    ref_gx[..., perm] = gz * d
    ref_gd = (gz * x[..., perm].astype(np.float64)).reshape(-1, n).sum(0)
    assert gx.dtype == dtype and gd.dtype == dtype and gd.shape == (n,)
    np.testing.assert_allclose(gx / scale, ref_gx / scale, **TOL[dtype])
    tol = TOL[dtype]["atol"] * max(1, x.size // n)
    np.testing.assert_allclose(gd / scale, ref_gd / scale, rtol=tol, atol=tol)


def test_spectral_block_errors():
    x = np.zeros((2, 12), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        K.spectral_block(x, np.arange(12), np.ones(8))
    with pytest.raises(ValueError, match="permutation"):
        K.spectral_block(x, np.zeros(12, dtype=np.int64), np.ones(12))
    with pytest.raises(ValueError, match="nearest"):
        K.spectral_block(np.zeros((2, 10)), np.arange(10), np.ones(10))


# ------------------------------------------------------------------------------------------
# whole spectral stack (K blocks per call)
# ------------------------------------------------------------------------------------------
def _permuted_saved(saved, perms):
    """The permuted block inputs u_k = z_{k-1}[perm_k] from spectral_stack's saved z (K, rows, N)."""
    return np.stack([s[..., p] for s, p in zip(saved, perms)])


def ref_stack(x, perms, D, n_out, bias, normalized, g):
    """Plain float64 numpy: z_0 = pad(x), z_k = H(z_{k-1}[perm_k] * d_k), y = z_K[:n_out] + b, and
    the backward of <y, g> by the chain rule, block by block."""
    N = perms.shape[1]
    z = np.zeros(x.shape[:-1] + (N,))
    z[..., :x.shape[-1]] = x
    us = []
    for perm, d in zip(perms, D.astype(np.float64)):
        us.append(z[..., perm])
        z = ref_fwht(us[-1] * d, normalized)
    y = z[..., :n_out] + (0 if bias is None else bias.astype(np.float64))
    G = np.zeros(g.shape[:-1] + (N,))
    G[..., :n_out] = g
    gD = np.zeros(perms.shape)
    for k in reversed(range(len(perms))):
        G = ref_fwht(G, normalized)
        gD[k] = (G * us[k]).reshape(-1, N).sum(0)
        scattered = np.empty_like(G)
        scattered[..., perms[k]] = G * D[k]
        G = scattered
    return y, np.stack(us), G[..., :x.shape[-1]], gD


@SET
@given(n=st.sampled_from([1, 2, 8, 12, 64, 96, 160, 448, 1024, 1536]),
       batch=st.sampled_from([(), (1,), (3,), (2, 3), (17,), (300,)]), depth=st.integers(1, 4),
       dtype=st.sampled_from(DTYPES), normalized=st.booleans(), with_bias=st.booleans(),
       data=st.data())
def test_spectral_stack_equals_reference(n, batch, depth, dtype, normalized, with_bias, data):
    n_in = data.draw(st.integers(1, n), "n_in")
    n_out = data.draw(st.integers(1, n), "n_out")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 31), "seed"))
    x = _data(rng, batch + (n_in,), dtype)
    g = _data(rng, batch + (n_out,), dtype)
    D = _data(rng, (depth, n), dtype)
    perms = np.stack([rng.permutation(n) for _ in range(depth)])
    bias = _data(rng, (n_out,), dtype) if with_bias else None
    y, saved = K.spectral_stack(x, perms, D, n_out, bias, normalized)
    ref_y, ref_u, ref_gx, ref_gD = ref_stack(x, perms, D, n_out, bias, normalized, g)
    assert y.shape == batch + (n_out,) and y.dtype == dtype and saved.dtype == dtype

    def close(a, b, rows=1):   # relative to the reference's scale (unnormalized blocks grow by sqrt n)
        scale = max(1.0, float(np.max(np.abs(b), initial=0)))
        np.testing.assert_allclose(a / scale, b / scale, rtol=TOL[dtype]["rtol"] * rows,
                                   atol=TOL[dtype]["atol"] * rows)

    close(y, ref_y)
    close(_permuted_saved(saved, perms), ref_u.reshape(depth, -1, n))
    rows = max(1, x.size // n_in)
    for grads in (K.spectral_stack_backward(g, saved, perms, D, n_in, normalized),
                  K.spectral_stack_backward(g, None, perms, D, n_in, normalized, x=x)):
        gx, gD = grads
        assert gx.shape == x.shape and gx.dtype == dtype and gD.shape == (depth, n) and gD.dtype == dtype
        close(gx, ref_gx)
        close(gD, ref_gD, rows)
    # recomputing the block inputs is the same arithmetic as saving them: same bits
    a, b = (K.spectral_stack_backward(g, saved, perms, D, n_in, normalized),
            K.spectral_stack_backward(g, None, perms, D, n_in, normalized, x=x))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    gx, gD = K.spectral_stack_backward(g, saved, perms, D, n_in, normalized, need_x=False)
    assert gx is None
    np.testing.assert_array_equal(gD, a[1])
    y2, nothing = K.spectral_stack(x, perms, D, n_out, bias, normalized, save=False)
    assert nothing is None
    np.testing.assert_array_equal(y2, y)
    # without z_0 in saved (the layer's mode) the backward reads it from x: same bits
    y3, inner = K.spectral_stack(x, perms, D, n_out, bias, normalized, save_input=False)
    assert inner.shape == (depth - 1,) + saved.shape[1:]
    np.testing.assert_array_equal(y3, y)
    np.testing.assert_array_equal(inner, saved[1:])
    for need_x in (True, False):
        c = K.spectral_stack_backward(g, inner, perms, D, n_in, normalized, need_x=need_x, x=x)
        np.testing.assert_array_equal(c[1], a[1])
        if need_x:
            np.testing.assert_array_equal(c[0], a[0])
    with pytest.raises(ValueError, match="saved shape"):
        K.spectral_stack_backward(g, inner, perms, D, n_in, normalized)


@SET
@given(n=st.sampled_from([1, 5, 16, 48, 96, 1024]), rows=st.sampled_from([1, 2, 3, 4, 5, 8, 9]),
       dtype=st.sampled_from(DTYPES), scaled=st.booleans(), store=st.booleans(),
       vector=st.booleans(), data=st.data())
def test_gather_dot_rows_equals_numpy(n, rows, dtype, scaled, store, vector, data):
    # the backward's gather fused with the dD reduction: out = src[:, idx] (* d) and
    # acc[:nz] += sum_rows src[:, idx][:, :nz] * z[:, :nz]; the AVX-512 path (float32, n % 16 == 0)
    # must give the scalar path's bits
    nz = data.draw(st.integers(0, n), "nz")
    zw = data.draw(st.integers(nz, n + 3), "z width")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 31), "seed"))
    src, z = _data(rng, (rows, n), dtype), _data(rng, (rows, zw), dtype)
    idx = rng.permutation(n).astype(np.intc)
    d = _data(rng, (n,), dtype) if scaled else None
    acc0 = rng.standard_normal(n)
    results = []
    before = K._kernels._stack_tuning()[2]
    try:
        for vec in (False, vector):
            K._kernels._stack_tuning(gather512=vec)
            out = np.full((rows if store else 0, n), np.nan, dtype=dtype)
            acc = acc0.copy()
            K._kernels._gather_dot_rows(src, idx, d, out, z, nz, acc)
            results.append((out, acc))
    finally:
        K._kernels._stack_tuning(gather512=before)
    for u, v in zip(*results):
        np.testing.assert_array_equal(u, v)
    out, acc = results[1]
    gathered = src.astype(np.float64)[:, idx]
    if store:
        want = gathered * (1 if d is None else d.astype(np.float64))
        np.testing.assert_allclose(out, want, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"])
    ref = acc0.copy()
    ref[:nz] += (gathered[:, :nz] * z[:, :nz].astype(np.float64)).sum(0)
    np.testing.assert_allclose(acc, ref, rtol=TOL[dtype]["rtol"] * rows, atol=TOL[dtype]["atol"] * rows)
    with pytest.raises(ValueError, match="shapes"):
        K._kernels._gather_dot_rows(src, idx, d, out, np.ascontiguousarray(z[:, :nz - 1] if nz else z[:0]),
                                    nz, acc)


def test_spectral_stack_errors():
    x = np.zeros((2, 12), dtype=np.float32)
    perms = np.stack([np.arange(16)] * 2)
    D = np.ones((2, 16))
    with pytest.raises(ValueError, match="D must have shape"):
        K.spectral_stack(x, perms, np.ones((2, 12)))
    with pytest.raises(ValueError, match="permutation"):
        K.spectral_stack(x, np.zeros((2, 16), dtype=np.int64), D)
    with pytest.raises(TypeError, match="2-D integer"):
        K.spectral_stack(x, np.arange(16), D[0])
    with pytest.raises(ValueError, match="nearest"):
        K.spectral_stack(x, np.stack([np.arange(10)] * 2), np.ones((2, 10)))
    with pytest.raises(ValueError, match=r"in \(20\)"):
        K.spectral_stack(np.zeros((2, 20)), perms, D)
    with pytest.raises(ValueError, match="bias must have shape"):
        K.spectral_stack(x, perms, D, out_features=8, bias=np.ones(9))
    y, saved = K.spectral_stack(x, perms, D, out_features=8)
    with pytest.raises(ValueError, match="rows"):
        K.spectral_stack_backward(np.zeros((3, 8)), saved, perms, D, 12)
    with pytest.raises(ValueError, match="saved shape"):
        K.spectral_stack_backward(np.zeros((2, 8)), saved[:1], perms, D, 12)
    with pytest.raises(ValueError, match="saved block inputs or the input x"):
        K.spectral_stack_backward(np.zeros((2, 8)), None, perms, D, 12)
    with pytest.raises(ValueError, match="does not match"):
        K.spectral_stack_backward(np.zeros((2, 8)), None, perms, D, 12, x=np.zeros((3, 12)))
    gx, gD = K.spectral_stack_backward(np.zeros((0, 8)), np.zeros((2, 0, 16)), perms, D, 12)
    assert gx.shape == (0, 12) and not gD.any()


# ------------------------------------------------------------------------------------------
# GELU
# ------------------------------------------------------------------------------------------
def test_gelu_float32_exact_dense_sweep():
    x = np.concatenate([np.linspace(-12, 12, 200001), [0.0, -0.0, 1e-30, -1e-30, 50, -50, 1e4,
                                                         -1e4]]).astype(np.float32)
    ref = ref_gelu(x)
    err = np.abs(K.gelu(x).astype(np.float64) - ref)
    assert (err <= 1e-6 + 2e-7 * np.abs(ref)).all(), err.max()
    dref = ref_dgelu(x)
    derr = np.abs(K.gelu_backward(np.ones_like(x), x).astype(np.float64) - dref)
    assert (derr <= 2e-6 + 2e-7 * np.abs(dref)).all(), derr.max()
    t = np.abs(K.gelu(x, approximate="tanh").astype(np.float64) - ref_gelu(x, True))
    assert (t <= 1e-6 + 4e-7 * np.abs(x)).all(), t.max()
    dt = np.abs(K.gelu_backward(np.ones_like(x), x, approximate="tanh") - ref_dgelu(x, True))
    assert (dt <= 2e-6 + 4e-7 * np.abs(x)).all(), dt.max()


@SET
@given(batch=batch_shapes, n=st.integers(1, 70), form=st.sampled_from(["none", "tanh"]),
       dtype=st.sampled_from(DTYPES), scale=st.sampled_from([0.1, 1.0, 4.0]),
       seed=st.integers(0, 2 ** 31))
def test_gelu_forward_backward_property(batch, n, form, dtype, scale, seed):
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal(batch + (n,))).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    tf = form == "tanh"
    tol = dict(rtol=1e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    y = K.gelu(x, approximate=form)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, ref_gelu(x, tf), **tol)
    np.testing.assert_allclose(K.gelu_backward(g, x, approximate=form), g * ref_dgelu(x, tf),
                               rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * np.abs(g).max())
    b = rng.standard_normal(n).astype(dtype)
    np.testing.assert_allclose(K.bias_gelu(x, b, form), ref_gelu(x + b, tf), **tol)
    gx, gb = K.bias_gelu_backward(g, x, b, form)
    ref_gx = g * ref_dgelu(x + b, tf)
    np.testing.assert_allclose(gx, ref_gx, rtol=tol["rtol"] * 10,
                               atol=tol["atol"] * 10 * np.abs(g).max())
    np.testing.assert_allclose(gb, ref_gx.reshape(-1, n).sum(0),
                               rtol=1e-5, atol=tol["atol"] * 10 * max(1, x.size // n))


def test_gelu_misc():
    x = np.linspace(-3, 3, 11)
    out = x.copy()
    assert K.gelu(out, out=out) is out                    # in place
    np.testing.assert_allclose(out, ref_gelu(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(K.gelu(x[::2]), ref_gelu(x[::2]), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(K.gelu(np.float64(1.5)), ref_gelu(1.5), rtol=1e-12)
    with pytest.raises(ValueError, match="approximate"):
        K.gelu(x, approximate="fast")
    with pytest.raises(ValueError):
        K.gelu(x, out=np.empty(3))
    with pytest.raises(ValueError):
        K.bias_gelu(np.zeros((2, 3)), np.zeros(4))
    gx, gb = K.bias_gelu_backward(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(3))
    assert gx.shape == (0, 3) and (gb == 0).all()


# ------------------------------------------------------------------------------------------
# threads: bitwise identical results
# ------------------------------------------------------------------------------------------
@pytest.fixture
def restore_threads():
    nt = dreidel.get_num_threads()
    yield
    dreidel.set_num_threads(nt)


def test_results_identical_with_1_and_2_threads(restore_threads):
    rng = np.random.default_rng(8)
    cases = [(300, 1024), (7, 64), (1, 2 ** 16), (1, 12 * 2 ** 12), (2, 2 ** 15), (40, 384),
             (1, 2 ** 19), (5, 2 ** 17)]
    outs = {}
    for nt in (1, 2):
        dreidel.set_num_threads(nt)
        assert dreidel.get_num_threads() == nt or not K._kernels.has_openmp()
        res = []
        for rows, n in cases:
            for dtype in DTYPES:
                r = np.random.default_rng(rows * n)
                x = r.standard_normal((rows, n)).astype(dtype)
                g = r.standard_normal((rows, n)).astype(dtype)
                d = r.standard_normal(n).astype(dtype)
                perm = r.permutation(n)
                perms = np.stack([perm, r.permutation(n), perm[::-1]])
                D = np.stack([d, -d, d[::-1]])
                y, saved = K.spectral_stack(x, perms, D)
                res += [y, saved, *K.spectral_stack_backward(g, saved, perms, D, n),
                        *K.spectral_stack_backward(g, None, perms, D, n, x=x)]
                res += [K.fwht(x), K.permute(x, perm), K.permute_inverse(x, perm),
                        K.spectral_block(x, perm, d), *K.spectral_block_backward(g, x, perm, d),
                        K.gelu(x), K.gelu_backward(g, x, "tanh"),
                        *K.bias_gelu_backward(g, x, d)]
        outs[nt] = res
    for a, b in zip(outs[1], outs[2]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        dreidel.set_num_threads(0)
    del rng


@pytest.mark.slow
@pytest.mark.parametrize("n", [2 ** 20, 2 ** 24, 12 * 2 ** 20])
def test_fwht_huge_rows_roundtrip(n, restore_threads):
    x = np.random.default_rng(9).standard_normal(n).astype(np.float32)
    for nt in (1, 2):
        dreidel.set_num_threads(nt)
        y = K.fwht(x)
        np.testing.assert_allclose(K.fwht(y), x, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.sum(y.astype(np.float64) ** 2),
                                   np.sum(x.astype(np.float64) ** 2), rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fwht_out_of_place_equals_in_place_and_keeps_input(dtype):
    rng = np.random.default_rng(10)
    for rows, n in [(33, 64), (5, 384), (1, 2 ** 16), (3, 12 * 2 ** 12), (1, 2 ** 19), (2, 1)]:
        x = _data(rng, (rows, n), dtype)
        keep = x.copy()
        x.flags.writeable = False                     # read-only input is fine out of place
        y = K.fwht(x)
        np.testing.assert_array_equal(x, keep)
        np.testing.assert_array_equal(y, K.fwht_(keep.copy()))   # same arithmetic, same bits


# ------------------------------------------------------------------------------------------
# softmax
# ------------------------------------------------------------------------------------------
def _softmax_ref(x, axis=-1):
    """Plain numpy in float64: exp(x - max) / sum, NaN rows where numpy gives them."""
    x = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)


_SM_SHAPES = st.one_of(
    st.tuples(st.integers(0, 9), st.integers(1, 70)),                       # rows (incl. 0), n (incl. 1)
    st.tuples(st.integers(1, 3), st.integers(0, 4), st.integers(1, 40)),    # batch dims
    st.tuples(st.integers(1, 70)))                                          # one row, 1-D


@st.composite
def _softmax_inputs(draw):
    shape = draw(_SM_SHAPES)
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([1.0, 30.0, 1e4]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    if draw(st.booleans()) and x.size:                                      # attention-style masks
        x[rng.random(shape) < draw(st.sampled_from([0.3, 0.9]))] = -np.inf
        if x.ndim > 1 and x.shape[-2] > 0:
            x[..., 0, :] = -np.inf                                          # one fully masked row
    return x


def _assert_softmax_close(y, ref, dtype):
    rtol, atol = (1e-5, 1e-37) if dtype == np.float32 else (1e-13, 1e-300)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=atol)


@SET
@given(x=_softmax_inputs(), transposed=st.booleans())
def test_softmax_matches_numpy(x, transposed):
    if transposed and x.ndim > 1 and x.shape[-2]:     # non-contiguous input, softmax over the last axis
        x = np.swapaxes(x, -1, -2)
    y = K.softmax(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    ref = _softmax_ref(x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))   # fully masked rows are NaN, like numpy
    np.testing.assert_array_equal(y[np.isneginf(x) & ~np.isnan(ref)], 0)   # masked entries: exactly 0
    _assert_softmax_close(y, ref, x.dtype)


@SET
@given(x=_softmax_inputs(), data=st.data())
def test_softmax_other_axes_match_numpy(x, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    if x.shape[axis] == 0:
        with pytest.raises(ValueError, match="empty axis"):
            K.softmax(x, axis=axis)
        return
    _assert_softmax_close(K.softmax(x, axis=axis), _softmax_ref(x, axis), x.dtype)


@SET
@given(x=_softmax_inputs(), data=st.data())
def test_softmax_backward_matches_formula(x, data):
    axis = data.draw(st.sampled_from([-1, 0]))
    if x.shape[axis] == 0:
        return
    y = np.nan_to_num(K.softmax(x, axis=axis))        # a NaN row would make every comparison NaN
    g = np.random.default_rng(x.size).standard_normal(x.shape).astype(x.dtype)
    y64, g64 = y.astype(np.float64), g.astype(np.float64)
    ref = y64 * (g64 - (g64 * y64).sum(axis=axis, keepdims=True))
    out = K.softmax_backward(g, y, axis=axis)
    assert out.shape == x.shape and out.dtype == x.dtype
    tol = 1e-5 if x.dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * (1 + np.abs(g64).max(initial=0)))


def test_softmax_special_rows():
    x = np.array([[-np.inf, -np.inf, -np.inf], [0, -np.inf, 0], [np.nan, 1, 2], [np.inf, 0, 1],
                  [1e4, -1e4, 1e4], [88.0, 0.0, -200.0]])
    for dtype in DTYPES:
        with np.errstate(invalid="ignore"):
            ref = _softmax_ref(x.astype(dtype))
        y = K.softmax(x.astype(dtype))
        assert np.isnan(y[:4]).sum() == 9 and (y[1] == [0.5, 0, 0.5]).all()
        _assert_softmax_close(y, ref, dtype)


def test_softmax_bad_input():
    with pytest.raises(ValueError, match="scalar"):
        K.softmax(np.float32(1))
    with pytest.raises(ValueError, match="axis"):
        K.softmax(np.zeros((2, 3)), axis=2)
    with pytest.raises(ValueError, match="empty axis"):
        K.softmax(np.zeros((2, 0)))
    with pytest.raises(TypeError):
        K.softmax(np.zeros(3, dtype=complex))
    with pytest.raises(ValueError, match="grad shape"):
        K.softmax_backward(np.zeros((2, 3)), np.zeros((2, 4)))
    assert K.softmax(np.zeros((0, 5), np.float32)).shape == (0, 5)
    np.testing.assert_array_equal(K.softmax(np.array([3, 3])), [0.5, 0.5])   # ints become float64


def test_softmax_identical_with_1_and_2_threads(restore_threads):
    outs = {}
    for nt in (1, 2):
        dreidel.set_num_threads(nt)
        res = []
        for rows, n in [(300, 1024), (3, 1500), (1, 2 ** 19), (600, 1500)]:
            for dtype in DTYPES:
                r = np.random.default_rng(rows + n)
                x = (r.standard_normal((rows, n)) * 10).astype(dtype)
                x[r.random((rows, n)) < 0.2] = -np.inf
                g = r.standard_normal((rows, n)).astype(dtype)
                y = K.softmax(x)
                res += [y, K.softmax_backward(g, y)]
        outs[nt] = res
    for a, b in zip(outs[1], outs[2]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_in_place_equals_out_of_place(dtype):
    x = (np.random.default_rng(11).standard_normal((4, 5, 77)) * 8).astype(dtype)
    x[0, 1, ::3] = -np.inf
    y = K.softmax(x)
    assert K.softmax(x, out=x) is x
    np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="out"):
        K.softmax(x, out=np.empty((4, 5, 76), dtype))
    with pytest.raises(ValueError, match="last axis"):
        K.softmax(x, axis=0, out=x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_flushes_its_subnormal_far_negative_side_to_zero(dtype, approximate):
    # x·Φ(x) is subnormal for x below about -13 (float32) / -37 (float64): a subnormal input makes the
    # next GEMM slow on Intel cores, so GELU and its derivative return 0 there (an absolute change
    # below the smallest normal number), and the normal values are untouched
    x = np.linspace(-60, 3, 200001).astype(dtype)
    tiny = np.finfo(dtype).tiny
    from math import erfc, tanh
    ref = np.array([0.5 * v * erfc(-v / np.sqrt(2)) if approximate == "none" else
                    0.5 * v * (1 + tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3))) for v in x.astype(np.float64)])
    y = K.gelu(x, approximate=approximate)
    g = K.gelu_backward(np.ones_like(x), x, approximate=approximate)
    assert not np.any((y != 0) & (np.abs(y) < tiny)) and not np.any((g != 0) & (np.abs(g) < tiny))
    if approximate == "none":  # the exact form's reference does reach the subnormal range
        assert np.any((ref != 0) & (np.abs(ref) < tiny))
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-6 if dtype == np.float32 else 1e-12)
