"""The row softmax forward kernel (dreidel/_kernels_softmax.h) on each of its paths against numpy.

The float32 kernel has AVX-512F / AVX2 / scalar paths picked at run time; every test here runs
on each path the CPU has, forced through the private switch K._kernels._softmax_isa. The general
API tests (other axes, out=, backward, bad input) are in test_kernels.py."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreidel import kernels as K

# the isa fixture is set once per test and is meant to hold for every generated input
SET = settings(deadline=None, max_examples=40,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ISAS = ["scalar", "avx2", "avx512"]
LENGTHS = [1, 2, 7, 8, 15, 16, 17, 31, 33, 64, 197, 513, 1500]


@pytest.fixture(params=ISAS)
def isa(request):
    before = K._kernels._softmax_isa()
    try:
        if K._kernels._softmax_isa(request.param) != request.param:
            pytest.skip(f"this CPU has no {request.param}")
        yield request.param
    finally:
        K._kernels._softmax_isa(before)


def _ref(x):
    """numpy in float64: exp(x - max) / sum, NaN rows where numpy gives them."""
    x = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        e = np.exp(x - np.max(x, axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


@st.composite
def _inputs(draw):
    n = draw(st.one_of(st.sampled_from(LENGTHS), st.integers(1, 300)))
    rows = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = draw(st.sampled_from([1.0, 30.0, 1e3, 1e30]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    x = (rng.standard_normal((rows, n)) * scale).astype(dtype)
    if draw(st.booleans()):                                         # attention-style masks
        x[rng.random(x.shape) < draw(st.sampled_from([0.1, 0.5, 0.95]))] = -np.inf
        if draw(st.booleans()):
            x[0] = -np.inf                                          # a fully masked row
    if draw(st.booleans()):                                         # very negative next to the max
        x[rng.random(x.shape) < 0.3] = -draw(st.sampled_from([80.0, 87.3, 88.0, 103.0, 1e5, 3e38]))
    return x


def _check(x, y):
    ref = _ref(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))      # fully masked rows: NaN, like numpy
    ok = ~np.isnan(ref)
    np.testing.assert_array_equal(y[np.isneginf(x) & ok], 0)        # masked entries: exactly 0
    # float32: the input's own rounding of x - max (<= 0.5 ulp of |x - max|) is the main error;
    # the kernel adds ~2 ulp (exp, sum, scale)
    if x.dtype == np.float32:
        with np.errstate(invalid="ignore"):
            xm = np.abs(x.astype(np.float64) - np.max(x, axis=-1, keepdims=True))
            rtol = 4e-7 + np.where(np.isfinite(xm), xm, 0) * 2 ** -24
        err = np.abs(y.astype(np.float64) - ref)
        assert (err[ok] <= rtol[ok] * ref[ok] + 1.2e-38).all(), float(np.max(err[ok] / (rtol[ok] * ref[ok] + 1.2e-38)))
        assert np.abs(y[ok] - ref[ok]).max(initial=0) <= 1e-6
    else:
        np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-300)


@SET
@given(x=_inputs())
def test_matches_numpy_on_each_path(isa, x):
    _check(x, K.softmax(x))


@SET
@given(x=_inputs())
def test_in_place_equals_out_of_place(isa, x):
    y = K.softmax(x)
    z = x.copy()
    K.softmax(z, out=z)
    np.testing.assert_array_equal(z, y)


@pytest.mark.parametrize("n", LENGTHS)
def test_special_values_each_length(isa, n):
    rows = []
    for special in (-np.inf, np.nan, np.inf):
        r = np.zeros(n)
        r[n // 2] = special
        rows.append(r)
    rows.append(np.full(n, -np.inf))
    rows.append(np.linspace(0, -120, n))            # walks through the subnormal range of exp
    for dtype in (np.float32, np.float64):
        x = np.array(rows, dtype=dtype)
        y = K.softmax(x)
        with np.errstate(invalid="ignore"):
            _check(x, y)
        nan_rows = np.isnan(y).all(axis=1)
        assert nan_rows.tolist() == [n == 1, True, True, True, False]


def test_paths_give_the_same_exps():
    """Every path computes each exp with the same operations: rows whose sum is exact in float32
    lanes (one nonzero term) agree bitwise, and others to the sum's rounding."""
    before = K._kernels._softmax_isa()
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((7, 1500)) * 10).astype(np.float32)
    x[:, 1:][rng.random((7, 1499)) < 0.99] = -np.inf
    x[0, 1:] = -np.inf
    try:
        outs = {}
        for isa in ISAS:
            if K._kernels._softmax_isa(isa) == isa:
                outs[isa] = K.softmax(x)
    finally:
        K._kernels._softmax_isa(before)
    base = outs.pop("scalar")
    for y in outs.values():
        np.testing.assert_array_equal(y[0], base[0])
        np.testing.assert_allclose(y, base, rtol=2e-7, atol=0)


def test_exp_is_within_one_ulp():
    t = np.concatenate([np.linspace(-87.33, 0, 200001), -np.logspace(-12, 0, 1001)]).astype(np.float32)
    e = np.array([K._kernels._softmax_expf_check(float(v)) for v in t], dtype=np.float32)
    true = np.exp(t.astype(np.float64))
    assert (np.abs(e - true) <= np.spacing(true.astype(np.float32))).all()
    assert K._kernels._softmax_expf_check(0.0) == 1.0
    assert K._kernels._softmax_expf_check(-np.inf) == 0.0
    assert K._kernels._softmax_expf_check(-88.0) == 0.0               # below FLT_MIN: flushed
    assert np.isnan(K._kernels._softmax_expf_check(np.nan))


def test_isa_switch():
    before = K._kernels._softmax_isa()
    assert before in ISAS
    try:
        with pytest.raises(ValueError, match="avx2"):
            K._kernels._softmax_isa("sse")
        assert K._kernels._softmax_isa("scalar") == "scalar"
    finally:
        K._kernels._softmax_isa(before)
    assert K._kernels._softmax_isa() == before


def test_bits_do_not_depend_on_the_thread_count():
    import dreidel
    x = np.random.default_rng(2).standard_normal((600, 1500)).astype(np.float32)
    before = K._kernels.get_num_threads()
    try:
        dreidel.set_num_threads(1)
        a = K.softmax(x)
        dreidel.set_num_threads(2)
        b = K.softmax(x)
    finally:
        dreidel.set_num_threads(before)
    np.testing.assert_array_equal(a, b)
