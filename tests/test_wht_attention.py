"""Walsh–Hadamard attention and the per-head GEMM attention kernels: gradients, an independent
reference of the formula, and the comparison with softmax attention."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.linalg import hadamard

import dreidel
from dreidel import functional as F
from dreidel.nn.wht_attention import (WalshHadamardAttention, batched_matmul, softmax_attention,
                                      softmax_attention_multiply_adds)


def tensors(shapes, seed=0, scale=1.0, dtype=np.float64, grad=True):
    rng = np.random.default_rng(seed)
    return [dreidel.tensor((scale * rng.standard_normal(s)).astype(dtype), requires_grad=grad) for s in shapes]


def reference_wht(attention, q, k, v):
    """The docstring's formula with the dense ±1 feature matrix built from scipy's Hadamard matrix."""
    d, n = attention.head_dim, attention.size
    H = hadamard(n).astype(np.float64)
    W = np.concatenate([(H * signs)[:, :d] for signs in attention.signs.data.astype(np.float64)])  # (m, d)
    scale = d ** -0.25

    def phi(x):
        x = x * scale
        return np.exp(x @ W.T - 0.5 * np.sum(x * x, axis=-1, keepdims=True))
    fq, fk = phi(q), phi(k)
    return (fq @ (np.swapaxes(fk, -1, -2) @ v)) / (fq @ np.sum(fk, axis=-2)[..., None])


@pytest.mark.parametrize("head_dim, features", [(8, None), (6, 16), (16, 48)])
def test_wht_attention_matches_the_dense_formula(head_dim, features):
    attention = WalshHadamardAttention(head_dim, num_features=features, seed=3).double()
    q, k, v = tensors([(2, 3, 5, head_dim), (2, 3, 7, head_dim), (2, 3, 7, 4)], grad=False, scale=0.7)
    out = attention(q, k, v)
    assert out.shape == (2, 3, 5, 4)
    np.testing.assert_allclose(out.data, reference_wht(attention, q.data, k.data, v.data), rtol=1e-10, atol=1e-12)


def test_wht_attention_gradcheck():
    attention = WalshHadamardAttention(6, num_features=16, seed=1).double()
    q, k, v = tensors([(1, 2, 4, 6), (1, 2, 5, 6), (1, 2, 5, 3)], seed=2, scale=0.8)
    assert dreidel.gradcheck(lambda a, b, c: attention(a, b, c), q, k, v)


def test_wht_attention_float32_is_close_to_float64():
    attention = WalshHadamardAttention(16, seed=0)
    q, k, v = tensors([(1, 2, 50, 16)] * 3, seed=4, grad=False)
    single = attention(*(dreidel.tensor(t.data.astype(np.float32)) for t in (q, k, v)))
    double = reference_wht(attention, q.data, k.data, v.data)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single.data, double, rtol=1e-4, atol=1e-5)


def test_wht_attention_approaches_softmax_as_features_grow():
    """An approximation of softmax attention: its error shrinks with m (moderate q·k, as after
    LayerNorm'd, scaled projections) and is well below that of ignoring the queries (uniform weights)."""
    q, k, v = tensors([(1, 4, 128, 16)] * 3, seed=5, grad=False, scale=0.5)
    exact = F.scaled_dot_product_attention(q, k, v).data
    errors = []
    for m in (16, 64, 512):
        approx = WalshHadamardAttention(16, num_features=m, seed=0).double()(q, k, v).data
        errors.append(np.linalg.norm(approx - exact) / np.linalg.norm(exact))
    uniform = np.broadcast_to(v.data.mean(axis=-2, keepdims=True), exact.shape)
    assert errors[2] < errors[0]
    assert errors[2] < 0.5 * np.linalg.norm(uniform - exact) / np.linalg.norm(exact)


def test_wht_attention_cost_is_linear_in_length():
    attention = WalshHadamardAttention(64, num_features=128)
    costs = [attention.multiply_adds(n) for n in (197, 785, 3137)]
    softmax = [softmax_attention_multiply_adds(n, 64) for n in (197, 785, 3137)]
    assert costs[2] / costs[0] == pytest.approx(3137 / 197, rel=1e-9)
    assert softmax[2] / softmax[0] == pytest.approx((3137 / 197) ** 2, rel=1e-9)
    assert costs[2] < softmax[2] / 10


def test_wht_attention_state_round_trip_and_errors():
    a = WalshHadamardAttention(10, num_features=20, seed=1)
    assert a.size == 12 and a.num_features == 24   # FWHT widths include 12·2^k
    b = WalshHadamardAttention(10, num_features=20, seed=2)
    b.load_state_dict(a.state_dict())
    q, k, v = tensors([(1, 1, 3, 10)] * 3, grad=False)
    np.testing.assert_array_equal(a(q, k, v).data, b(q, k, v).data)
    with pytest.raises(ValueError, match="head_dim"):
        a(*tensors([(1, 1, 3, 8)] * 3, grad=False))
    with pytest.raises(ValueError, match="do not fit"):
        a(*tensors([(1, 1, 3, 10), (1, 1, 4, 10), (1, 1, 5, 10)], grad=False))
    with pytest.raises(ValueError):
        WalshHadamardAttention(0)


def test_softmax_attention_matches_sdpa_and_gradcheck():
    q, k, v = tensors([(2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 2)], seed=7)
    np.testing.assert_allclose(softmax_attention(q, k, v).data, F.scaled_dot_product_attention(q, k, v).data,
                               rtol=1e-12, atol=1e-12)
    assert dreidel.gradcheck(softmax_attention, q, k, v)
    three = tensors([(3, 5, 4), (3, 6, 4), (3, 6, 2)], seed=8)   # a single leading axis works too
    assert dreidel.gradcheck(softmax_attention, *three)


@settings(max_examples=25, deadline=None)
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), n=st.integers(1, 5), k=st.integers(1, 5),
       m=st.integers(1, 5), seed=st.integers(0, 2 ** 16))
def test_batched_matmul_matches_numpy(lead, n, k, m, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(tuple(lead) + (n, k))
    b = rng.standard_normal(tuple(lead) + (k, m))
    np.testing.assert_allclose(batched_matmul(dreidel.tensor(a), dreidel.tensor(b)).data, np.matmul(a, b),
                               rtol=1e-12, atol=1e-12)


def test_batched_matmul_gradcheck_and_errors():
    a, b = tensors([(2, 3, 4), (2, 4, 2)], seed=9)
    assert dreidel.gradcheck(batched_matmul, a, b)
    with pytest.raises(ValueError, match="do not multiply"):
        batched_matmul(*tensors([(2, 3, 4), (3, 4, 2)], grad=False))
