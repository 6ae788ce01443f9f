"""Attention: the functional scaled dot-product attention and MultiHeadAttention (masks, grouped-query
heads, rotary positions, the key/value cache, pluggable projections).

The references are plain numpy written here: explicit softmax, key/value heads repeated with
np.repeat, rotary as complex multiplication.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dreidel
from dreidel import Tensor, nn
from dreidel.nn.attention import (KVCache, MultiHeadAttention, RotaryEmbedding, causal_mask,
                                  scaled_dot_product_attention)


def t64(rng, *shape, grad=True):
    return Tensor(rng.standard_normal(shape), requires_grad=grad)


def reference_attention(q, k, v, allowed=None, additive=None, scale=None):
    """q (N, H, L, D), k/v (N, H_kv, S, D): heads repeated, softmax written out."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = q @ np.swapaxes(k, -1, -2) * (scale if scale is not None else 1 / np.sqrt(q.shape[-1]))
    if additive is not None:
        scores = scores + additive
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    with np.errstate(invalid="ignore"):  # fully masked rows become NaN here; callers compare the others
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
    return weights @ v


def reference_rotary(x, positions, base=10000.0):
    """Feature i pairs with i + D/2; the pair as a complex number turns by position · base^(−2i/D)."""
    half = x.shape[-1] // 2
    z = x[..., :half] + 1j * x[..., half:]
    angles = np.asarray(positions)[:, None] * base ** (-2 * np.arange(half) / x.shape[-1])
    z = z * np.exp(1j * angles)
    return np.concatenate([z.real, z.imag], axis=-1)


def reference_mha(m, query, key, value, allowed=None, offset=0):
    """MultiHeadAttention with dense projections, in numpy."""
    def project(layer, x):
        y = x @ layer.weight.data.T
        return y + layer.bias.data if layer.bias is not None else y

    def heads(x, h):
        return x.reshape(x.shape[0], x.shape[1], h, m.head_dim).transpose(0, 2, 1, 3)
    q = heads(project(m.q_proj, query), m.num_heads)
    k = heads(project(m.k_proj, key), m.num_kv_heads)
    v = heads(project(m.v_proj, value), m.num_kv_heads)
    if m.rotary is not None:
        q = reference_rotary(q, np.arange(offset, offset + q.shape[2]))
        k = reference_rotary(k, np.arange(k.shape[2]))
    out = reference_attention(q, k, v, allowed)
    out = out.transpose(0, 2, 1, 3).reshape(query.shape[0], query.shape[1], -1)
    return project(m.out_proj, out)


# -- functional ------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(length=st.integers(1, 5), key_length=st.integers(1, 6), heads=st.sampled_from([(2, 2), (4, 2), (4, 1)]),
       causal=st.booleans(), masked=st.booleans(), seed=st.integers(0, 2**16))
def test_sdpa_matches_numpy(length, key_length, heads, causal, masked, seed):
    rng = np.random.default_rng(seed)
    h, h_kv = heads
    q = rng.standard_normal((2, h, length, 4))
    k, v = rng.standard_normal((2, h_kv, key_length, 4)), rng.standard_normal((2, h_kv, key_length, 3))
    mask = rng.random((2, 1, length, key_length)) > 0.3 if masked else None
    allowed = np.ones((2, h, length, key_length), bool)
    if masked:
        allowed &= mask
    if causal:
        allowed &= np.arange(key_length)[None, :] <= np.arange(length)[:, None] + key_length - length
    got = scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), mask=mask, causal=causal).data
    assert got.shape == (2, h, length, 3)
    visible = allowed.any(-1)
    want = reference_attention(q, k, v, allowed)
    np.testing.assert_allclose(got[visible], want[visible], atol=1e-12)
    # a query that may see nothing averages all values instead of producing NaN
    np.testing.assert_allclose(got[~visible], np.broadcast_to(np.repeat(v, h // h_kv, 1).mean(2, keepdims=True),
                                                              got.shape)[~visible], atol=1e-12)


def test_sdpa_additive_mask_and_scale(rng):
    q, k, v = rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((1, 2, 5, 4))
    bias = rng.standard_normal((3, 5))
    got = scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), mask=bias, scale=0.3).data
    np.testing.assert_allclose(got, reference_attention(q, k, v, additive=bias, scale=0.3), atol=1e-12)


def test_causal_mask_is_bottom_right_aligned():
    np.testing.assert_array_equal(causal_mask(3, 3), np.tril(np.ones((3, 3), bool)))
    np.testing.assert_array_equal(causal_mask(2, 4), [[1, 1, 1, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize("length,key_length", [(3, 3), (2, 4), (4, 2)])
@pytest.mark.parametrize("heads", [(2, 2), (4, 2)])
def test_sdpa_gradcheck(rng, length, key_length, heads):
    h, h_kv = heads
    q, k, v = t64(rng, 2, h, length, 3), t64(rng, 2, h_kv, key_length, 3), t64(rng, 2, h_kv, key_length, 2)
    mask = rng.random((2, 1, 1, key_length)) > 0.3
    mask[..., 0] = True
    assert dreidel.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask=mask, causal=True), q, k, v)
    assert dreidel.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v), q, k, v)


def test_sdpa_bad_shapes(rng):
    q, k = Tensor(rng.standard_normal((1, 3, 2, 4))), Tensor(rng.standard_normal((1, 2, 5, 4)))
    with pytest.raises(ValueError, match="grouped-query"):
        scaled_dot_product_attention(q, k, k)
    with pytest.raises(ValueError, match="do not fit"):
        scaled_dot_product_attention(q, Tensor(rng.standard_normal((1, 3, 5, 3))), Tensor(np.zeros((1, 3, 5, 3))))
    with pytest.raises(ValueError, match="mask shape"):
        scaled_dot_product_attention(q, q, q, mask=np.ones((2, 3), bool))


# -- rotary ---------------------------------------------------------------------------------------------
def test_rotary_matches_complex_rotation_and_is_relative(rng):
    rotary = RotaryEmbedding(8, base=100.0)
    x = rng.standard_normal((2, 3, 5, 8))
    got = rotary(Tensor(x), offset=4).data
    np.testing.assert_allclose(got, reference_rotary(x, np.arange(4, 9), base=100.0), atol=1e-12)
    np.testing.assert_allclose(rotary(Tensor(x), positions=np.arange(4, 9)).data, got)
    # ⟨R_m q, R_n k⟩ depends on m − n only
    q, k = rng.standard_normal((1, 1, 1, 8)), rng.standard_normal((1, 1, 1, 8))
    dot = lambda m, n: float(np.sum(rotary(Tensor(q), offset=m).data * rotary(Tensor(k), offset=n).data))  # noqa
    assert dot(7, 3) == pytest.approx(dot(4, 0)) and dot(7, 3) != pytest.approx(dot(3, 3))
    assert dreidel.gradcheck(lambda x: rotary(x, offset=2), t64(rng, 1, 2, 3, 8))
    with pytest.raises(ValueError):
        RotaryEmbedding(5)


# -- MultiHeadAttention -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kv_heads,rotary,causal", [(None, False, False), (2, True, True), (1, False, True)])
def test_mha_self_attention_matches_numpy_and_gradcheck(rng, kv_heads, rotary, causal):
    m = MultiHeadAttention(8, 4, num_kv_heads=kv_heads, causal=causal, rotary=rotary or None, rng=rng).double()
    x = t64(rng, 2, 5, 8)
    allowed = np.tril(np.ones((5, 5), bool)) if causal else None
    np.testing.assert_allclose(m(x).data, reference_mha(m, x.data, x.data, x.data, allowed), atol=1e-12)
    assert dreidel.gradcheck(lambda x, *p: m(x), x, *m.parameters())


@pytest.mark.parametrize("length,key_length", [(3, 5), (4, 4), (5, 2)])
def test_mha_cross_attention_with_padding_gradcheck(rng, length, key_length):
    m = MultiHeadAttention(6, 2, kdim=4, vdim=5, rng=rng).double()
    query, key, value = t64(rng, 2, length, 6), t64(rng, 2, key_length, 4), t64(rng, 2, key_length, 5)
    padding = np.zeros((2, key_length), bool)
    padding[1, -1] = True  # the second sequence's last key is padding
    out = m(query, key, value, key_padding_mask=padding)
    allowed = ~padding[:, None, None, :]
    np.testing.assert_allclose(out.data, reference_mha(m, query.data, key.data, value.data, allowed), atol=1e-12)
    assert dreidel.gradcheck(lambda q, k, v, *p: m(q, k, v, key_padding_mask=padding), query, key, value,
                             *m.parameters())


def test_mha_attn_mask_conventions(rng):
    m = MultiHeadAttention(4, 2, rng=rng).double()
    x = t64(rng, 1, 3, 4, grad=False)
    blocked = np.array([[False, True, True], [False, False, True], [False, False, False]])  # True = not allowed
    np.testing.assert_allclose(m(x, attn_mask=blocked).data, m(x, causal=True).data, atol=1e-12)
    additive = np.where(blocked, -1e30, 0.0)
    np.testing.assert_allclose(m(x, attn_mask=additive).data, m(x, causal=True).data, atol=1e-12)
    out, weights = m(x, need_weights=True, causal=True)
    assert weights.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(weights.data.sum(-1), 1)
    assert np.all(weights.data[..., blocked] == 0)
    with pytest.raises(ValueError, match="key_padding_mask"):
        m(x, key_padding_mask=np.zeros((1, 2), bool))
    with pytest.raises(ValueError, match="attn_mask"):
        m(x, attn_mask=np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="expects query"):
        m(t64(rng, 1, 3, 5))


@pytest.mark.parametrize("kv_heads,rotary", [(None, False), (2, True), (1, True)])
def test_cached_decoding_equals_full_recomputation(rng, kv_heads, rotary):
    m = MultiHeadAttention(8, 4, num_kv_heads=kv_heads, causal=True, rotary=rotary or None, rng=rng).double()
    x = rng.standard_normal((2, 6, 8))
    full = m(Tensor(x)).data
    cache = KVCache()
    pieces = [m(Tensor(x[:, :3]), cache=cache).data]  # prompt, then one token at a time
    for i in range(3, 6):
        pieces.append(m(Tensor(x[:, i:i + 1]), cache=cache).data)
    assert cache.length == 6 and cache.key.shape == (2, kv_heads or 4, 6, 2)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-12)


def test_cache_with_padding_mask_and_gradient(rng):
    m = MultiHeadAttention(4, 2, causal=True, rotary=True, rng=rng).double()
    x = rng.standard_normal((2, 4, 4))
    padding = np.zeros((2, 4), bool)
    padding[0, 0] = True  # left padding of the first sequence
    full = m(Tensor(x), key_padding_mask=padding).data
    cache = KVCache()
    first = m(Tensor(x[:, :2]), key_padding_mask=padding[:, :2], cache=cache).data
    rest = [m(Tensor(x[:, i:i + 1]), key_padding_mask=padding[:, :i + 1], cache=cache).data for i in (2, 3)]
    np.testing.assert_allclose(np.concatenate([first] + rest, axis=1)[:, 1:], full[:, 1:], atol=1e-12)
    # the gradient of a cached step reaches the cached keys' inputs through the cache
    step = t64(rng, 2, 1, 4)
    cache = KVCache()
    prompt = t64(rng, 2, 2, 4)
    m(prompt, cache=cache)
    assert dreidel.gradcheck(lambda s, p: m(s, cache=_refilled(m, p)), step, prompt)


def _refilled(m, prompt):
    cache = KVCache()
    m(prompt, cache=cache)
    return cache


def test_left_padded_batch_with_position_ids_equals_unpadded_runs(rng):
    m = MultiHeadAttention(8, 4, num_kv_heads=2, causal=True, rotary=True, rng=rng).double()
    short, long = rng.standard_normal((1, 3, 8)), rng.standard_normal((1, 5, 8))
    batch = np.concatenate([np.concatenate([np.zeros((1, 2, 8)), short], axis=1), long])  # left-pad the short one
    padding = np.array([[True, True, False, False, False], [False] * 5])
    positions = np.array([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])  # Hugging Face: cumsum(mask) − 1, pads clipped
    out = m(Tensor(batch), key_padding_mask=padding, position_ids=positions).data
    np.testing.assert_allclose(out[0, 2:], m(Tensor(short)).data[0], atol=1e-12)
    np.testing.assert_allclose(out[1], m(Tensor(long)).data[0], atol=1e-12)
    with pytest.raises(ValueError, match="positions"):
        m(Tensor(batch), position_ids=positions[:, :3])


def test_static_cross_attention_cache(rng):
    m = MultiHeadAttention(6, 3, rng=rng).double()
    encoder = rng.standard_normal((2, 7, 6))
    queries = rng.standard_normal((2, 3, 6))
    want = m(Tensor(queries), Tensor(encoder)).data
    cache = KVCache(static=True)
    got = [m(Tensor(queries[:, i:i + 1]), Tensor(encoder) if i == 0 else None, cache=cache).data for i in range(3)]
    assert cache.length == 7
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=1e-12)


def test_pluggable_projections(rng):
    built = []

    def factory(in_features, out_features, bias):
        layer = nn.Linear(in_features, out_features, bias=bias, rng=rng, dtype=np.float64)
        built.append((in_features, out_features, bias))
        return layer
    m = MultiHeadAttention(8, 4, num_kv_heads=2, projection=factory, key_bias=False)
    assert built == [(8, 8, True), (8, 4, False), (8, 4, True), (8, 8, True)]
    assert [name for name, _ in m.named_children()] == ["q_proj", "k_proj", "v_proj", "out_proj"]
    assert set(m.state_dict()) == {"q_proj.weight", "q_proj.bias", "k_proj.weight", "v_proj.weight", "v_proj.bias",
                                   "out_proj.weight", "out_proj.bias"}
    x = t64(rng, 1, 3, 8)
    np.testing.assert_allclose(m(x).data, reference_mha(m, x.data, x.data, x.data), atol=1e-12)


def test_spectral_projection(rng):
    spectral = pytest.importorskip("dreidel.nn.spectral")
    if not hasattr(spectral, "LinearWHT"):
        pytest.skip("LinearWHT not available yet")
    x = t64(rng, 1, 2, 8)
    for factory, cls in ((lambda i, o, b: spectral.LinearWHT(i, o, bias=b), spectral.LinearWHT),
                         (lambda i, o, b: spectral.DeepSpectralLinear(i, o, depth=2, bias=b),
                          spectral.DeepSpectralLinear)):
        m = MultiHeadAttention(8, 2, causal=True, projection=factory).double()
        assert all(isinstance(getattr(m, name), cls) for name in ("q_proj", "k_proj", "v_proj", "out_proj"))
        assert m(x).shape == (1, 2, 8)
        # the projections' own parameters are gradchecked in their tests; here the gradient through them
        assert dreidel.gradcheck(lambda x: m(x), x, projections=1)


def test_bad_construction():
    with pytest.raises(ValueError, match="divide"):
        MultiHeadAttention(8, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="rotary"):
        MultiHeadAttention(8, 2, rotary=RotaryEmbedding(2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lead,length,key_length", [((2, 3), 1500, 600), ((), 257, 5), ((4,), 1, 513),
                                                      ((2, 3), 1, 40), ((1, 6), 4, 1500), ((3,), 5, 7)])
def test_inference_attention_matches_the_reference(rng, dtype, lead, length, key_length):
    """The no-graph paths (several equal query blocks, one block; up to _FEW_QUERIES query rows:
    all heads in one stacked product, as cached decoding steps) of softmax_attention and
    scaled_dot_product_attention against the numpy reference, also on strided head views (the
    (N, L, H, D) → (N, H, L, D) split)."""
    from dreidel.ops import softmax_attention
    q = rng.standard_normal(lead + (length, 16)).astype(dtype)
    k = rng.standard_normal(lead + (key_length, 16)).astype(dtype)
    v = rng.standard_normal(lead + (key_length, 8)).astype(dtype)
    if len(lead) == 2:  # heads as strided views, as the models pass them
        q = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
        k = np.ascontiguousarray(k.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    r = lambda a: a.astype(np.float64).reshape((-1, 1) + a.shape[-2:])  # noqa: E731
    want = reference_attention(r(q), r(k), r(v), scale=0.3).reshape(lead + (length, 8))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    with dreidel.no_grad():
        got = softmax_attention(Tensor(q), Tensor(k), Tensor(v), scale=0.3)
    assert got.dtype == dtype and not got.requires_grad
    np.testing.assert_allclose(got.data, want, rtol=tol, atol=tol)
    got = scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), scale=0.3).data  # no input requires grad
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    got = softmax_attention(Tensor(q), Tensor(k), Tensor(v, requires_grad=True), scale=0.3)  # the graph path
    assert got.requires_grad
    np.testing.assert_allclose(got.data, want, rtol=tol, atol=tol)
