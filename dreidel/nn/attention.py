"""Multi-head attention: self and cross attention, masks, grouped-query heads, rotary positions and a
key/value cache for generation, with pluggable projection layers.

Everything here is composed of engine ops (matmul, softmax, where, concat, ...), so gradients come
from their backwards.
"""
import math

import numpy as np

from dreidel import ops
from dreidel.ops.attention import _mask_array, causal_mask, scaled_dot_product_attention  # noqa: F401
from dreidel.tensor import Tensor
from dreidel.nn.module import Module
from dreidel.nn.layers import Linear


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
        angles = np.asarray(positions, dtype=np.float64)[..., None] * self.inv_freq
        angles = np.concatenate([angles, angles], axis=-1)
        return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)

    def forward(self, x, offset=0, positions=None):
        """Rotate x (..., L, head_dim) for positions offset … offset + L − 1, or the given `positions`:
        (L,) shared, or (N, L) per sequence for x (N, H, L, head_dim) (e.g. left-padded batches)."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"RotaryEmbedding({self.head_dim}) got input shape {x.shape}")
        positions = np.arange(offset, offset + x.shape[-2]) if positions is None else np.asarray(positions)
        if positions.shape[-1] != x.shape[-2] or positions.ndim > 2 or (positions.ndim == 2 and (
                x.ndim != 4 or positions.shape[0] != x.shape[0])):
            raise ValueError(f"rotary positions of shape {positions.shape} do not fit input {x.shape} "
                             f"(need (L,) or (N, L) for (N, H, L, D))")
        cos, sin = self.cos_sin(positions, x.dtype)
        if positions.ndim == 2:  # (N, L, D) → (N, 1, L, D): one set of positions per sequence, all heads
            cos, sin = cos[:, None], sin[:, None]
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
                causal=None, need_weights=False, position_offset=None, position_ids=None):
        """query (N, L, E); key/value (N, S, kdim/vdim), default: self-attention on query.

        key_padding_mask (N, S_total) boolean, True = padding (ignored). attn_mask (L, S_total) or
        (N, H, L, S_total): boolean True = not allowed (torch.nn.MultiheadAttention's convention), or
        floating, added to the scores. `cache` (KVCache) is updated in place; rotary positions then
        start at its length (or at `position_offset`); `position_ids` (L,) or (N, L) gives them
        explicitly (for the queries and the new keys). Returns the output (N, L, E), and the attention
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
                k = self.rotary(k, offset=offset, positions=position_ids)
            if cache is not None:
                k, v = cache.append(k, v)
        if self.rotary is not None:
            q = self.rotary(q, offset=offset, positions=position_ids)

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
