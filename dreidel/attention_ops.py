"""Scaled dot-product attention as an engine-level op, composed of differentiable ops."""
import math

import numpy as np

from dreidel import ops
from dreidel.random import generator
from dreidel.tensor import Tensor


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


__all__ = ["scaled_dot_product_attention", "causal_mask"]
