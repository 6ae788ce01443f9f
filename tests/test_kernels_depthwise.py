"""Depthwise convolution kernels (dreidel.kernels.depthwise_conv*) against plain numpy loops over
kernel offsets, written here independently of dreidel.ops."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dreidel
from dreidel import kernels


def reference(x, w, stride, dilation):
    """y[n, c·M + m, p] = Σ_k w[c·M + m, 0, k] · x[n, c, p·s + k·d], in float64."""
    n, c = x.shape[:2]
    m = w.shape[0] // c
    kernel = w.shape[2:]
    out = [(size - dl * (k - 1) - 1) // s + 1 for size, k, s, dl in zip(x.shape[2:], kernel, stride, dilation)]
    y = np.zeros((n, c, m, *out))
    xc = x.astype(np.float64)[:, :, None]
    taps = w.astype(np.float64).reshape((c, m) + kernel)
    for offset in itertools.product(*map(range, kernel)):
        window = xc[(slice(None),) * 3 + tuple(slice(k * dl, k * dl + (o - 1) * s + 1, s)
                                                for k, s, dl, o in zip(offset, stride, dilation, out))]
        y += taps[(slice(None), slice(None)) + offset].reshape((1, c, m) + (1,) * len(kernel)) * window
    return y.reshape((n, c * m, *out))


@st.composite
def problems(draw):
    d = draw(st.integers(1, 3))
    n, c, m = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    kernel = draw(st.lists(st.integers(1, 3), min_size=d, max_size=d))
    stride = draw(st.lists(st.integers(1, 3), min_size=d, max_size=d))
    dilation = draw(st.lists(st.integers(1, 2), min_size=d, max_size=d))
    size = [dl * (k - 1) + 1 + draw(st.integers(0, 5)) for k, dl in zip(kernel, dilation)]
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**16))
    return n, c, m, tuple(kernel), tuple(stride), tuple(dilation), tuple(size), dtype, seed


def arrays(problem):
    n, c, m, kernel, stride, dilation, size, dtype, seed = problem
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + size).astype(dtype)
    w = rng.standard_normal((c * m, 1) + kernel).astype(dtype)
    return x, w, stride, dilation, (1e-5 if dtype == np.float32 else 1e-12)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_forward_matches_reference(problem):
    x, w, stride, dilation, tol = arrays(problem)
    y = kernels.depthwise_conv(x, w, stride, dilation)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(y, reference(x, w, stride, dilation), rtol=tol, atol=tol)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_gradients_are_the_adjoints(problem):
    """⟨conv(x), g⟩ = ⟨x, input_grad(g)⟩ = ⟨w, weight_grad(x, g)⟩ (the reference is linear in x and w),
    and each gradient against the reference's own finite structure: the weight gradient entry k is
    the reference output of x with a unit tap at k, dotted with g."""
    x, w, stride, dilation, tol = arrays(problem)
    y = reference(x, w, stride, dilation)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    gx = kernels.depthwise_conv_input_grad(g, w, x.shape, stride, dilation)
    gw = kernels.depthwise_conv_weight_grad(x, g, w.shape[2:], stride, dilation)
    assert gx.shape == x.shape and gw.shape == w.shape and gx.dtype == gw.dtype == x.dtype
    scale = np.abs(y).sum() * np.abs(g).max() + 1
    np.testing.assert_allclose(np.sum(x.astype(np.float64) * gx), np.sum(y * g), rtol=tol, atol=tol * scale)
    want_gw = np.zeros(w.shape)
    for index in np.ndindex(*w.shape):
        unit = np.zeros(w.shape)
        unit[index] = 1
        want_gw[index] = np.sum(reference(x, unit, stride, dilation) * g)
    np.testing.assert_allclose(gw, want_gw, rtol=tol, atol=tol * (np.abs(want_gw).max() + 1))
    # the input gradient entry-wise: unit input impulses
    n_check = min(x.size, 12)
    for flat in np.random.default_rng(2).choice(x.size, n_check, replace=False):
        unit = np.zeros(x.shape)
        unit.flat[flat] = 1
        np.testing.assert_allclose(gx.flat[flat], np.sum(reference(unit, w, stride, dilation) * g),
                                   rtol=tol, atol=tol * (np.abs(gx).max() + 1))


def test_read_only_inputs_and_threads_give_the_same_bits():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 8, 7)).astype(np.float32)
    w = rng.standard_normal((6, 1, 3, 3, 3)).astype(np.float32)
    x.flags.writeable = w.flags.writeable = False
    before = dreidel.get_num_threads()
    try:
        g = rng.standard_normal((2, 6, 7, 6, 5)).astype(np.float32)
        g.flags.writeable = False
        runs = []
        for threads in (1, 2):
            dreidel.set_num_threads(threads)
            runs.append((kernels.depthwise_conv(x, w), kernels.depthwise_conv_input_grad(g, w, x.shape),
                         kernels.depthwise_conv_weight_grad(x, g, (3, 3, 3))))
        one, two = runs
    finally:
        dreidel.set_num_threads(before)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)
    np.testing.assert_allclose(one[0], reference(x, w, (1, 1, 1), (1, 1, 1)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call,message", [
    (lambda: kernels.depthwise_conv(np.ones((1, 2, 5)), np.ones((3, 1, 2))), "not depthwise"),
    (lambda: kernels.depthwise_conv(np.ones((1, 2, 5)), np.ones((2, 2, 2))), "not depthwise"),
    (lambda: kernels.depthwise_conv(np.ones((1, 2, 2)), np.ones((2, 1, 3))), "does not fit"),
    (lambda: kernels.depthwise_conv(np.ones((1, 2, 5)), np.ones((2, 1, 2)), stride=0), ">= 1"),
    (lambda: kernels.depthwise_conv(np.ones((1, 2, 5, 5, 5, 5)), np.ones((2, 1, 1, 1, 1, 1))), "1-3 spatial"),
    (lambda: kernels.depthwise_conv(np.ones((1, 2, 5), np.float32), np.ones((2, 1, 2))), "one dtype"),
    (lambda: kernels.depthwise_conv(np.ones((1, 2, 5), np.int64), np.ones((2, 1, 2), np.int64)), "float32 or float64"),
    (lambda: kernels.depthwise_conv_input_grad(np.ones((1, 2, 3)), np.ones((2, 1, 2)), (1, 2, 5)), "grad shape"),
    (lambda: kernels.depthwise_conv_weight_grad(np.ones((1, 2, 5)), np.ones((1, 2, 3)), (2,)), "expected spatial"),
])
def test_bad_input_gives_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
