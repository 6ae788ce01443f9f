"""StaticKVCache against a reference that concatenates arrays, and inside MultiHeadAttention
(step-by-step decoding with the cache == one causal pass over the whole sequence)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dreidel
from dreidel import nn
from dreidel.nn.kv_cache import LayerKVCache, StaticKVCache


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_matches_a_concatenating_reference(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 10**6)))
    n, heads, dim = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5))
    capacity = data.draw(st.integers(1, 12))
    cache = LayerKVCache(capacity)
    ref_k = np.zeros((n, heads, 0, dim), np.float32)
    ref_v = np.zeros((n, heads, 0, dim + 1), np.float32)
    for _ in range(data.draw(st.integers(1, 6))):
        action = data.draw(st.sampled_from(["append", "append", "select"]))
        rows = ref_k.shape[0]
        if action == "select" and rows and cache.length:
            idx = data.draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=rows))
            cache.index_select(idx)
            ref_k, ref_v = ref_k[idx], ref_v[idx]
            continue
        steps = data.draw(st.integers(1, 3))
        k = rng.standard_normal((rows, heads, steps, dim)).astype(np.float32)
        v = rng.standard_normal((rows, heads, steps, dim + 1)).astype(np.float32)
        if ref_k.shape[2] + steps > capacity:
            with pytest.raises(ValueError, match="capacity"):
                cache.append(k, v)
            continue
        key, value = cache.append(dreidel.tensor(k), v)
        ref_k, ref_v = np.concatenate([ref_k, k], 2), np.concatenate([ref_v, v], 2)
        np.testing.assert_array_equal(key.numpy(), ref_k)
        np.testing.assert_array_equal(value.numpy(), ref_v)
        assert cache.length == ref_k.shape[2]


def test_writes_in_place_and_returns_views():
    cache = StaticKVCache(2, capacity=8)
    first = cache[0].append(np.ones((2, 3, 1, 4), np.float32), np.ones((2, 3, 1, 4), np.float32))[0].numpy()
    second = cache[0].append(np.zeros((2, 3, 1, 4), np.float32), np.zeros((2, 3, 1, 4), np.float32))[0].numpy()
    assert np.shares_memory(first, second) and second.shape == (2, 3, 2, 4)
    assert cache.length == 2 and cache[1].length == 0 and cache.batch_size == 2
    with pytest.raises(ValueError, match="cannot write"):
        cache[0].append(np.ones((3, 3, 1, 4), np.float32), np.ones((3, 3, 1, 4), np.float32))
    with pytest.raises(IndexError, match="out of range"):
        cache.select_rows([5])
    with pytest.raises(ValueError, match="capacity"):
        LayerKVCache(0)
    cache.reset()
    assert cache.length == 0 and cache[0].key is None


def test_select_rows_then_reorder_shrink_the_batch():
    rng = np.random.default_rng(0)
    cache = StaticKVCache(1, capacity=4)
    k = rng.standard_normal((4, 2, 3, 5)).astype(np.float32)
    cache[0].append(k, k)
    cache.select_rows([3, 1])
    cache.reorder([1, 1])
    np.testing.assert_array_equal(cache[0].key.numpy(), k[[1, 1]])
    step = rng.standard_normal((2, 2, 1, 5)).astype(np.float32)
    key, _ = cache[0].append(step, step)
    np.testing.assert_array_equal(key.numpy(), np.concatenate([k[[1, 1]], step], 2))


def test_static_cache_stores_once():
    cache = StaticKVCache(1, static=True)
    k = np.arange(24, dtype=np.float32).reshape(2, 1, 3, 4)
    cache[0].append(k, k + 1)
    assert cache[0].static and cache[0].length == 3
    with pytest.raises(ValueError, match="already filled"):
        cache[0].append(k, k)
    cache.select_rows([1])
    np.testing.assert_array_equal(cache[0].value.numpy(), k[[1]] + 1)


@pytest.mark.parametrize("kv_heads,rotary", [(4, False), (2, True)])
def test_cached_decoding_equals_one_causal_pass(kv_heads, rotary):
    rng = np.random.default_rng(1)
    attn = nn.MultiHeadAttention(16, 4, num_kv_heads=kv_heads, causal=True, rotary=rotary or None,
                                 rng=np.random.default_rng(2))
    x = dreidel.tensor(rng.standard_normal((3, 7, 16)).astype(np.float32))
    with dreidel.no_grad():
        full = attn(x).numpy()
        cache = StaticKVCache(1, capacity=10)
        parts = [attn(x[:, :3], cache=cache[0]).numpy()]  # a prompt of 3, then one token at a time
        parts += [attn(x[:, t:t + 1], cache=cache[0]).numpy() for t in range(3, 7)]
    np.testing.assert_allclose(np.concatenate(parts, 1), full, atol=1e-5)
    assert cache.length == 7
