"""Multi-head attention: self and cross attention, masks, grouped-query heads, rotary positions and a
key/value cache for generation, with pluggable projection layers.

Everything here is composed of engine ops (matmul, softmax, where, concat, ...), so gradients come
from their backwards.
"""
import math

import numpy as np

from dreidel import ops
from dreidel.random import generator
from dreidel.tensor import Tensor, as_tensor
from dreidel.nn.module import Module
from dreidel.nn.layers import Linear


def _mask_array(mask):
    return mask.data if isinstance(mask, Tensor) else np.asarray(mask)


def causal_mask(query_length, key_length):
    """Boolean (L, S) mask, True where query i may see key j: j ≤ i + (S − L).

    The queries are taken to be the last L positions of the S keys (bottom-right alignment), which is
    what cached decoding needs; for L = S it is the usual lower triangle.
    """
    return np.arange(key_length)[None, :] <= np.arange(query_length)[:, None] + (key_length - query_length)


def scaled_dot_product_attention(query, key, value, mask=None, causal=False, scale=None, dropout_p=0.0,
                                 training=True, rng=None, return_weights=False):
    """softmax(q kᵀ · scale + mask) v over the last two axes.

    query (..., H, L, D), key (..., H_kv, S, D), value (..., H_kv, S, D_v); with H_kv < H (grouped-query
    attention, H_kv dividing H, 4-D inputs) query head h uses key/value head h // (H / H_kv).
    `mask` broadcasts to (..., H, L, S): boolean True = may attend (PyTorch's SDPA convention), or
    floating and added to the scores. `causal` hides key j from query i when j > i + S − L.
    `scale` defaults to 1/sqrt(D). A query that may see no key at all gets uniform weights instead of
    NaN. Returns the output (..., H, L, D_v), and the weights (..., H, L, S) if `return_weights`.
    """
    for t, name in ((query, "query"), (key, "key"), (value, "value")):
        if not isinstance(t, Tensor) or t.ndim < 2:
            raise TypeError(f"scaled_dot_product_attention: {name} must be a Tensor with at least 2 axes")
    if query.shape[-1] != key.shape[-1] or key.shape[:-1] != value.shape[:-1]:
        raise ValueError(f"scaled_dot_product_attention: shapes query {query.shape}, key {key.shape}, "
                         f"value {value.shape} do not fit (need matching head sizes and key/value lengths)")
    heads, kv_heads = (query.shape[-3], key.shape[-3]) if query.ndim >= 3 else (1, 1)
    length, key_length = query.shape[-2], key.shape[-2]
    grouped = heads != kv_heads
    if grouped:
        if query.ndim != 4 or heads % kv_heads:
            raise ValueError(f"grouped-query attention needs 4-D (N, H, L, D) inputs with key/value heads dividing "
                             f"query heads, got query {query.shape} and key {key.shape}")
    elif query.shape[:-2] != key.shape[:-2]:
        raise ValueError(f"scaled_dot_product_attention: batch/head axes of query {query.shape} and key "
                         f"{key.shape} differ")
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores_shape = query.shape[:-1] + (key_length,)

    if grouped:  # (N, H, L, D) → (N, H_kv, H/H_kv, L, D) against (N, H_kv, 1, S, D): no copies of k and v
        group = heads // kv_heads
        q = query.reshape(query.shape[0], kv_heads, group, length, query.shape[-1])
        k, v = ops.unsqueeze(key, 2), ops.unsqueeze(value, 2)
    else:
        q, k, v = query, key, value
    scores = ops.matmul(q, ops.swapaxes(k, -1, -2)) * scale

    allowed = None
    if causal:
        allowed = causal_mask(length, key_length)
    additive = None
    if mask is not None:
        mask = _mask_array(mask)
        try:
            fits = np.broadcast_shapes(mask.shape, scores_shape) == scores_shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"attention mask shape {mask.shape} does not broadcast to the scores' shape "
                             f"{scores_shape}")
        if mask.dtype == bool:
            allowed = mask if allowed is None else allowed & mask
        else:
            additive = mask
    if grouped:
        def grouped_view(m):  # (…, H, L, S) → (N, H_kv, H/H_kv, L, S) like the grouped scores
            return np.broadcast_to(m, scores_shape).reshape(scores.shape)
        allowed = grouped_view(allowed) if allowed is not None else None
        additive = grouped_view(additive) if additive is not None else None
    if additive is not None:
        scores = scores + Tensor(additive.astype(scores.dtype, copy=False))
    if allowed is not None:
        scores = ops.where(allowed, scores, np.finfo(scores.dtype).min)
    weights = ops.softmax(scores, axis=-1)
    if dropout_p and training:
        weights = ops.dropout(weights, dropout_p, training=True, rng=generator(rng))
    out = ops.matmul(weights, v)
    if grouped:
        out = out.reshape(query.shape[:-1] + (value.shape[-1],))
        weights = weights.reshape(scores_shape)
    return (out, weights) if return_weights else out


class RotaryEmbedding(Module):
    """Rotary position embedding in the Llama / Hugging Face "rotate_half" convention.

    Feature pairs (i, i + D/2) of a head at position p are rotated by the angle p · base^(−2i/D):
    x ↦ x·cos + rotate_half(x)·sin with rotate_half(x) = (−x₂, x₁). `inv_freq` (numpy, D/2) is a
    plain attribute, not state, and may be replaced for scaled variants.
    """

    def __init__(self, head_dim, base=10000.0):
        super().__init__()
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        self.head_dim, self.base = head_dim, base
        self.inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)

    def cos_sin(self, positions, dtype=np.float32):
        angles = np.outer(np.asarray(positions, dtype=np.float64), self.inv_freq)
        angles = np.concatenate([angles, angles], axis=-1)
        return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)

    def forward(self, x, offset=0, positions=None):
        """Rotate x (..., L, head_dim) for positions offset … offset + L − 1 (or the given `positions`)."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"RotaryEmbedding({self.head_dim}) got input shape {x.shape}")
        positions = np.arange(offset, offset + x.shape[-2]) if positions is None else positions
        cos, sin = self.cos_sin(positions, x.dtype)
        half = self.head_dim // 2
        rotated = ops.concat([-x[..., half:], x[..., :half]], axis=-1)
        return x * Tensor(cos) + rotated * Tensor(sin)

    def extra_repr(self):
        return f"{self.head_dim}, base={self.base}"


class KVCache:
    """Keys and values (N, H_kv, S, D) of the positions seen so far, after projection and rotary.

    Pass one to `MultiHeadAttention.forward(..., cache=...)`: for self-attention each call appends the
    new keys/values and attends over all of them; with `static=True` (cross-attention) the first call
    stores the projected encoder keys/values and later calls reuse them.
    """

    def __init__(self, static=False):
        self.static = static
        self.key = self.value = None

    @property
    def length(self):
        return 0 if self.key is None else self.key.shape[-2]

    def append(self, key, value):
        if self.key is None:
            self.key, self.value = key, value
        else:
            if key.shape[:2] != self.key.shape[:2]:
                raise ValueError(f"KVCache holds keys {self.key.shape}, cannot append {key.shape}")
            self.key = ops.concat([self.key, key], axis=2)
            self.value = ops.concat([self.value, value], axis=2)
        return self.key, self.value

    def reset(self):
        self.key = self.value = None

    def __repr__(self):
        return f"KVCache(length={self.length}, static={self.static})"


def _dense(rng, dtype):
    return lambda in_features, out_features, bias: Linear(in_features, out_features, bias=bias, rng=rng, dtype=dtype)


class MultiHeadAttention(Module):
    """Multi-head attention over batch-first inputs (N, L, E), with Hugging Face's layer names.

        q = q_proj(query), k = k_proj(key), v = v_proj(value), split into heads of size head_dim
        head_h = softmax(q_h k_gᵀ · scale + mask) v_g, g = h // (num_heads / num_kv_heads)
        out = out_proj(concat_h head_h)

    `projection(in_features, out_features, bias)` builds the four projections (dense `Linear` by
    default; LinearWHT, DeepSpectralLinear or any module mapping the last axis works). `rotary`:
    None, True (RotaryEmbedding(head_dim)) or a RotaryEmbedding, applied to q and k. `causal` masks
    future keys. `key_bias`/`out_bias` default to `bias` (Whisper has no k_proj bias).
    """

    def __init__(self, embed_dim, num_heads, num_kv_heads=None, bias=True, causal=False, rotary=None,
                 projection=None, kdim=None, vdim=None, head_dim=None, dropout=0.0, scale=None, key_bias=None,
                 out_bias=None, rng=None, dtype=np.float32):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads}")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
            head_dim = embed_dim // num_heads
        self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim = embed_dim, num_heads, num_kv_heads, head_dim
        self.causal, self.dropout, self.rng = causal, dropout, rng
        self.scale = 1 / math.sqrt(head_dim) if scale is None else scale
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        make = projection if projection is not None else _dense(rng, dtype)
        self.q_proj = make(embed_dim, num_heads * head_dim, bias)
        self.k_proj = make(self.kdim, num_kv_heads * head_dim, bias if key_bias is None else key_bias)
        self.v_proj = make(self.vdim, num_kv_heads * head_dim, bias)
        self.out_proj = make(num_heads * head_dim, embed_dim, bias if out_bias is None else out_bias)
        if rotary is True:
            rotary = RotaryEmbedding(head_dim)
        if rotary not in (None, False) and not isinstance(rotary, RotaryEmbedding):
            raise TypeError(f"rotary must be None, True or a RotaryEmbedding, got {type(rotary).__name__}")
        if rotary and rotary.head_dim != head_dim:
            raise ValueError(f"rotary embedding size {rotary.head_dim} does not match head_dim {head_dim}")
        self.rotary = rotary or None

    def _heads(self, x, heads):
        n, length = x.shape[:2]
        return ops.transpose(x.reshape(n, length, heads, self.head_dim), (0, 2, 1, 3))

    def forward(self, query, key=None, value=None, key_padding_mask=None, attn_mask=None, cache=None,
                causal=None, need_weights=False, position_offset=None):
        """query (N, L, E); key/value (N, S, kdim/vdim), default: self-attention on query.

        key_padding_mask (N, S_total) boolean, True = padding (ignored). attn_mask (L, S_total) or
        (N, H, L, S_total): boolean True = not allowed (torch.nn.MultiheadAttention's convention), or
        floating, added to the scores. `cache` (KVCache) is updated in place; rotary positions then
        start at its length (or at `position_offset`). Returns the output (N, L, E), and the attention
        weights (N, H, L, S_total) if `need_weights`.
        """
        if query.ndim != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"MultiHeadAttention expects query (N, L, {self.embed_dim}), got {query.shape}")
        causal = self.causal if causal is None else causal
        n, length = query.shape[:2]
        key = query if key is None else key
        value = key if value is None else value
        offset = position_offset if position_offset is not None else (
            cache.length if cache is not None and not cache.static else 0)

        q = self._heads(self.q_proj(query), self.num_heads)
        if cache is not None and cache.static and cache.key is not None:
            k, v = cache.key, cache.value
        else:
            if key.ndim != 3 or key.shape[0] != n or value.shape[:2] != key.shape[:2]:
                raise ValueError(f"key {key.shape} and value {value.shape} must be (N={n}, S, features)")
            k = self._heads(self.k_proj(key), self.num_kv_heads)
            v = self._heads(self.v_proj(value), self.num_kv_heads)
            if self.rotary is not None:
                k = self.rotary(k, offset=offset)
            if cache is not None:
                k, v = cache.append(k, v)
        if self.rotary is not None:
            q = self.rotary(q, offset=offset)

        key_length = k.shape[2]
        allowed, additive = None, None  # boolean: True = may attend; floating: added to the scores
        if key_padding_mask is not None:
            pad = _mask_array(key_padding_mask)
            if pad.dtype != bool or pad.shape != (n, key_length):
                raise ValueError(f"key_padding_mask must be boolean (N, S) = ({n}, {key_length}), "
                                 f"got {pad.dtype} {pad.shape}")
            allowed = ~pad[:, None, None, :]
        if attn_mask is not None:
            am = _mask_array(attn_mask)
            if am.ndim not in (2, 4) or am.shape[-1] != key_length:
                raise ValueError(f"attn_mask must be (L, S) or (N, H, L, S) with S = {key_length}, got {am.shape}")
            if am.dtype == bool:
                allowed = ~am if allowed is None else allowed & ~am
            else:
                additive = am
        mask = allowed
        if additive is not None:
            mask = additive if allowed is None else np.where(allowed, additive, np.finfo(q.dtype).min)
        out = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, scale=self.scale,
                                           dropout_p=self.dropout, training=self.training, rng=self.rng,
                                           return_weights=need_weights)
        if need_weights:
            out, weights = out
        out = ops.transpose(out, (0, 2, 1, 3)).reshape(n, length, self.num_heads * self.head_dim)
        out = self.out_proj(out)
        return (out, weights) if need_weights else out

    def extra_repr(self):
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, causal={self.causal}")


__all__ = ["MultiHeadAttention", "RotaryEmbedding", "KVCache", "scaled_dot_product_attention", "causal_mask"]
