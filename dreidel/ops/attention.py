"""Attention: scaled dot-product attention composed of engine ops, and the fused unmasked
softmax attention on per-head 2-D GEMMs."""
import math

import numpy as np

from dreidel import kernels
from dreidel.ops.linalg import _bmm, matmul
from dreidel.ops.math import dropout, softmax, where
from dreidel.ops.shape import swapaxes, unsqueeze
from dreidel.random import generator
from dreidel.tensor import Tensor, is_grad_enabled, record


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
    Unmasked, without dropout and with no gradient to record, it takes the blocked inference path
    of `softmax_attention`.
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
    plain = mask is None and not causal and not grouped and not return_weights and not (dropout_p and training)
    if plain and not (is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)):
        return Tensor(_attention_inference(query.data, key.data, value.data, scale,
                                           np.result_type(query.data, key.data, value.data)))

    if grouped:  # (N, H, L, D) → (N, H_kv, H/H_kv, L, D) against (N, H_kv, 1, S, D): no copies of k and v
        group = heads // kv_heads
        q = query.reshape(query.shape[0], kv_heads, group, length, query.shape[-1])
        k, v = unsqueeze(key, 2), unsqueeze(value, 2)
    else:
        q, k, v = query, key, value
    scores = matmul(q, swapaxes(k, -1, -2)) * scale

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
        scores = where(allowed, scores, np.finfo(scores.dtype).min)
    weights = softmax(scores, axis=-1)
    if dropout_p and training:
        weights = dropout(weights, dropout_p, training=True, rng=generator(rng))
    out = matmul(weights, v)
    if grouped:
        out = out.reshape(query.shape[:-1] + (value.shape[-1],))
        weights = weights.reshape(scores_shape)
    return (out, weights) if return_weights else out


# Score block size (elements): 256 query rows of Whisper's 1500 keys measured fastest there; shorter
# sequences (ViT's 257 tokens) fit in one block.
_BLOCK_ELEMENTS = 256 * 1536
# Up to this many query rows (cached decoding steps) all heads go through one stacked matmul: the
# per-head loop's Python overhead (~10 µs a head) outweighs products this small.
_FEW_QUERIES = 4


def _output_buffer(lead, length, width, dtype):
    """(..., L, d_v) output; for (N, H) leading axes a view of a (N, L, H, d_v) buffer, so merging
    the heads afterwards (transpose + reshape) is free."""
    if len(lead) == 2:
        return np.empty((lead[0], length, lead[1], width), dtype=dtype).transpose(0, 2, 1, 3)
    return np.empty(lead + (length, width), dtype=dtype)


def _attention_inference(q, k, v, scale, dtype):
    """softmax(q kᵀ·scale) v without a graph: per head and block of query rows, scores → in-place
    softmax → product, so the (L, S) weights are never materialised (nothing needs them for a
    backward). The scale goes on the (rows, d) query block, not the (rows, S) scores."""
    lead, length, key_length = q.shape[:-2], q.shape[-2], k.shape[-2]
    if length <= _FEW_QUERIES:  # decoding steps: one stacked product for all heads, no Python loop
        qs = q if scale == 1 else np.multiply(q, scale, dtype=dtype)
        scores = np.matmul(qs, np.swapaxes(k, -1, -2), dtype=dtype)
        kernels.softmax(scores, axis=-1, out=scores)
        return np.matmul(scores, v, dtype=dtype)
    out = _output_buffer(lead, length, v.shape[-1], dtype)
    blocks = -(-length * key_length // _BLOCK_ELEMENTS)
    rows = max(1, -(-length // max(blocks, 1)))  # equal blocks: no thin remainder
    scores = np.empty((rows, key_length), dtype=dtype)
    block = np.empty((rows, v.shape[-1]), dtype=dtype)
    for index in np.ndindex(*lead):
        kt, vh, qh, oh = k[index].T, v[index], q[index], out[index]
        for start in range(0, length, rows):
            stop = min(start + rows, length)
            s, o = scores[:stop - start], block[:stop - start]
            qb = qh[start:stop] if scale == 1 else np.multiply(qh[start:stop], scale, dtype=dtype)
            np.matmul(qb, kt, out=s)
            kernels.softmax(s, axis=-1, out=s)
            np.matmul(s, vh, out=o)
            oh[start:stop] = o  # assigned, not out=: matmul into a strided view is ~5x slower
    return out


def softmax_attention(query, key, value, scale=None):
    """softmax(q kᵀ · scale) v per (batch, head), no mask: q (..., L, d), k (..., S, d), v (..., S, d_v);
    `scale` defaults to 1/sqrt(d). What `scaled_dot_product_attention` computes without a mask, on
    per-head 2-D GEMMs and the fused softmax kernels.

    Forward: S = q kᵀ·scale, P = softmax(S), O = P v. Backward: dP = dO vᵀ, dv = Pᵀ dO,
    dS = P ⊙ (dP − Σ dP ⊙ P)·scale, dq = dS k, dk = dSᵀ q. The output is handed back as a
    (..., L, d_v) view of a (N, L, H, d_v) buffer when the input has 4 axes, so merging the heads
    afterwards (transpose + reshape) is free. Without a gradient to record (no_grad, or no input
    requiring grad) it takes a blocked path that never materialises the weights.
    """
    for t, name in ((query, "query"), (key, "key"), (value, "value")):
        if not isinstance(t, Tensor) or t.ndim < 2:
            raise TypeError(f"softmax_attention: {name} must be a Tensor with at least 2 axes")
    q, k, v = query.data, key.data, value.data
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"softmax attention: shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit")
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    dtype = np.result_type(q, k, v)
    if not (is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)):
        return Tensor(_attention_inference(q, k, v, scale, dtype))
    scores = _bmm(q, k, transpose_b=True, dtype=dtype)
    scores *= scale
    weights = kernels.softmax(scores, axis=-1, out=scores)
    lead = q.shape[:-2]
    out = _output_buffer(lead, q.shape[-2], v.shape[-1], dtype)
    for index in np.ndindex(*lead):  # assigned, not out=: matmul into a strided view is ~5x slower
        out[index] = weights[index] @ v[index]

    def backward(grad):
        grad_weights = _bmm(grad, v, transpose_b=True, dtype=weights.dtype)
        gv = _bmm(weights, grad, transpose_a=True) if value.requires_grad else None
        grad_scores = kernels.softmax_backward(grad_weights, weights, axis=-1)
        grad_scores *= scale
        gq = _bmm(grad_scores, k) if query.requires_grad else None
        gk = _bmm(grad_scores, q, transpose_a=True) if key.requires_grad else None
        return gq, gk, gv
    return record(out, (query, key, value), backward)


__all__ = ["scaled_dot_product_attention", "causal_mask", "softmax_attention"]
