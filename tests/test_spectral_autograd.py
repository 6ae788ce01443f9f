"""Gradients of the differentiable spectral ops (dreidel.ops.spectral): float64 gradchecks, and the
backward against explicit dense Jacobians built from the Hadamard matrix."""
import math

import numpy as np
import pytest

from dreidel import kernels
from dreidel.ops import spectral as S
from dreidel.gradcheck import gradcheck
from dreidel.tensor import Tensor


def _t(rng, shape, grad=True):
    return Tensor(rng.standard_normal(shape), requires_grad=grad)


@pytest.mark.parametrize("n", [1, 2, 8, 12, 20, 28, 24, 64])
@pytest.mark.parametrize("normalized", [True, False])
def test_fwht_gradcheck(n, normalized):
    rng = np.random.default_rng(n)
    x = _t(rng, (3, n))
    assert gradcheck(lambda a: S.fwht(a, normalized), x)


def test_fwht_forward_and_backward_values():
    rng = np.random.default_rng(0)
    n = 40
    x = _t(rng, (2, 5, n))
    y = S.fwht(x)
    assert isinstance(y, Tensor) and y.requires_grad and y.shape == x.shape
    h = kernels.hadamard_matrix(n) / math.sqrt(n)
    np.testing.assert_allclose(y.data, x.data @ h.T, rtol=1e-12, atol=1e-12)
    w = rng.standard_normal(y.shape)
    (y * Tensor(w)).sum().backward()
    np.testing.assert_allclose(x.grad, w @ h, rtol=1e-12, atol=1e-12)   # J^T w


def test_fwht_float32_and_plain_arrays():
    x = Tensor(np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32),
               requires_grad=True)
    y = S.fwht(x)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32 and x.grad.shape == (4, 16)
    z = S.fwht(np.ones(4))                      # no Tensor input: no graph
    assert isinstance(z, Tensor) and not z.requires_grad


@pytest.mark.parametrize("n", [1, 5, 16])
def test_permute_gradcheck(n):
    rng = np.random.default_rng(n)
    perm = rng.permutation(n)
    x = _t(rng, (2, 3, n))
    assert gradcheck(lambda a: S.permute(a, perm), x)
    assert gradcheck(lambda a: S.permute_inverse(a, perm), x)
    np.testing.assert_array_equal(S.permute(x, perm).data, x.data[..., perm])
    np.testing.assert_array_equal(S.permute_inverse(S.permute(x, perm), perm).data, x.data)


@pytest.mark.parametrize("n", [1, 4, 12, 32, 28])
@pytest.mark.parametrize("normalized", [True, False])
def test_spectral_block_gradcheck(n, normalized):
    rng = np.random.default_rng(n + 100)
    perm = rng.permutation(n)
    x = _t(rng, (3, n))
    d = _t(rng, (n,))
    assert gradcheck(lambda a, b: S.spectral_block(a, perm, b, normalized), x, d)
    # only one of the two needs a gradient
    x2 = _t(rng, (2, n), grad=False)
    assert gradcheck(lambda b: S.spectral_block(x2, perm, b, normalized), d)
    d2 = _t(rng, (n,), grad=False)
    assert gradcheck(lambda a: S.spectral_block(a, perm, d2, normalized), x)


def test_spectral_block_matches_unfused_graph():
    rng = np.random.default_rng(7)
    n = 24
    perm = rng.permutation(n)
    xa, da = rng.standard_normal((4, n)), rng.standard_normal(n)
    w = rng.standard_normal((4, n))
    grads = []
    for fused in (True, False):
        x, d = Tensor(xa.copy(), requires_grad=True), Tensor(da.copy(), requires_grad=True)
        y = S.spectral_block(x, perm, d) if fused else S.fwht(S.permute(x, perm) * d)
        (y * Tensor(w)).sum().backward()
        grads.append((y.data, x.grad, d.grad))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_stacked_blocks_gradcheck():
    """Two spectral blocks with a nonlinearity in between, through the engine's own ops."""
    rng = np.random.default_rng(3)
    n = 16
    p1, p2 = rng.permutation(n), rng.permutation(n)
    x, d1, d2 = _t(rng, (2, n)), _t(rng, (n,)), _t(rng, (n,))

    def f(a, b, c):
        h = S.spectral_block(a, p1, b)
        return S.spectral_block(h * h, p2, c)

    assert gradcheck(f, x, d1, d2)
