"""Walsh–Hadamard attention: linearised attention whose random feature map is a fast Walsh–Hadamard
transform, linear in the sequence length instead of quadratic.

Softmax attention computes, per head, out_i = Σ_j exp(q_i·k_j/√d) v_j / Σ_j exp(q_i·k_j/√d): every
query meets every key, O(L²·d). Write κ(q, k) = exp(q·k) for the scaled vectors q̃ = q·d^(−1/4),
k̃ = k·d^(−1/4). With random vectors w of identity covariance, E_w[φ_w(q̃) φ_w(k̃)] ≈ κ(q̃, k̃) for
the positive feature φ_w(x) = exp(w·x − ‖x‖²/2) (exact for Gaussian w: the Performer/FAVOR+
estimator). Here the m feature vectors are the rows of B stacked randomised Hadamard blocks

    W = [H D_1; H D_2; …; H D_B] (restricted to the first d columns),

H the unnormalised Walsh–Hadamard matrix of width n ≥ d (entries ±1, so every w_i has entries ±1,
E[w wᵀ] = I, and the rows within a block are orthogonal), D_b fixed random ±1 diagonals (a buffer,
saved with the state). W x is B fast transforms of the zero-padded x, n·log₂n additions each,
never a matrix product. Then with φ(X) applied row by row (X of shape (L, d)):

    out = φ(Q̃) (φ(K̃)ᵀ V) / (φ(Q̃) (φ(K̃)ᵀ 1))        (division row by row)

which needs only the (m, d_v) summary φ(K̃)ᵀV and the (m,) sum φ(K̃)ᵀ1: no (L, L) matrix. For
numerical range each φ(q̃_i) is divided by its own largest feature and φ(K̃) by its largest entry
over all keys; both constants cancel in the ratio (and are treated as constants by autograd, which
leaves the gradient exact).

Cost per head (multiply-adds): the features 2·L·(B·n·log₂n + m) (transforms and exponentials), the
summaries L·m·(d_v + 1), the outputs L·m·(d_v + 1) — O(L·m·d) in all, against softmax attention's
2·L²·d (+ L² exponentials). It is an approximation of softmax attention (with ±1 rather than
Gaussian w, and m finite), better as m grows: compare the two with `dreidel.nn.wht_attention`'s
tests and `bench/vision.py`.
"""
import numpy as np

from dreidel import functional as F
from dreidel import kernels, spectral
from dreidel.nn.module import Module, check_dtype
from dreidel.nn.spectral import fwht_multiply_adds
from dreidel.tensor import Function, Tensor, is_grad_enabled


# -- stacked matrix products as loops of 2-D GEMMs ---------------------------------------------------
# numpy's matmul on stacks of small matrices (one per head) does not reach BLAS: measured 72 ms for
# (6, 257, 64) @ (6, 64, 257) against 7 ms for a Python loop of six 2-D products. Until the engine's
# matmul does this itself, the attention kernels here loop.
def _bmm(a, b, transpose_a=False, transpose_b=False, dtype=None):
    """a @ b over matching leading axes, one 2-D BLAS product per matrix (views, no copies)."""
    lead = a.shape[:-2]
    if transpose_a:
        a = np.swapaxes(a, -1, -2)
    if transpose_b:
        b = np.swapaxes(b, -1, -2)
    out = np.empty(lead + (a.shape[-2], b.shape[-1]), dtype=dtype or np.result_type(a, b))
    for index in np.ndindex(*lead):
        np.matmul(a[index], b[index], out=out[index])
    return out


def _lead_matches(a, b, what):
    if a.ndim < 2 or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"{what}: shapes {a.shape} and {b.shape} do not multiply (same leading axes needed)")


class BatchedMatMul(Function):
    """a (..., n, k) @ b (..., k, m) with equal leading axes, as 2-D GEMMs (see `_bmm`)."""

    @staticmethod
    def forward(ctx, a, b):
        _lead_matches(a, b, "batched_matmul")
        ctx.save_for_backward(a, b)
        return _bmm(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        ga = _bmm(grad, b, transpose_b=True) if ctx.needs_input_grad[0] else None
        gb = _bmm(a, grad, transpose_a=True) if ctx.needs_input_grad[1] else None
        return ga, gb


def batched_matmul(a, b):
    """Differentiable a @ b for stacks of matrices with the same leading axes."""
    return BatchedMatMul.apply(a, b)


class SoftmaxAttentionFunction(Function):
    """softmax(q kᵀ · scale) v per (batch, head), no mask: q (..., L, d), k (..., S, d), v (..., S, d_v).

    Forward: S = q kᵀ·scale (2-D GEMMs), P = softmax(S) (the fused kernel), O = P v. Backward:
    dP = dO vᵀ, dv = Pᵀ dO, dS = P ⊙ (dP − Σ dP ⊙ P)·scale, dq = dS k, dk = dSᵀ q. The output is
    handed back as a (..., L, d_v) view of a (N, L, H, d_v) buffer when the input has 4 axes, so
    merging the heads afterwards (transpose + reshape) is free.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale=None):
        if q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
            raise ValueError(f"softmax attention: shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit")
        scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
        dtype = np.result_type(q, k, v)
        scores = _bmm(q, k, transpose_b=True, dtype=dtype)
        scores *= scale
        weights = kernels.softmax(scores, axis=-1, out=scores)
        lead = q.shape[:-2]
        if len(lead) == 2:  # (N, H, L, d_v) as a view of (N, L, H, d_v)
            buffer = np.empty((lead[0], q.shape[-2], lead[1], v.shape[-1]), dtype=dtype)
            out = buffer.transpose(0, 2, 1, 3)
        else:
            out = np.empty(lead + (q.shape[-2], v.shape[-1]), dtype=dtype)
        for index in np.ndindex(*lead):  # assigned, not out=: matmul into a strided view is ~5x slower
            out[index] = weights[index] @ v[index]
        ctx.scale = scale
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(q, k, v, weights)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, weights = ctx.saved_tensors
        grad_weights = _bmm(grad, v, transpose_b=True, dtype=weights.dtype)
        gv = _bmm(weights, grad, transpose_a=True) if ctx.needs_input_grad[2] else None
        grad_scores = kernels.softmax_backward(grad_weights, weights, axis=-1)
        grad_scores *= ctx.scale
        gq = _bmm(grad_scores, k) if ctx.needs_input_grad[0] else None
        gk = _bmm(grad_scores, q, transpose_a=True) if ctx.needs_input_grad[1] else None
        return gq, gk, gv


def softmax_attention(query, key, value, scale=None):
    """softmax(q kᵀ/√d) v over the last two axes (no mask), as `F.scaled_dot_product_attention`
    computes it, on per-head 2-D GEMMs and the fused softmax kernels; differentiable."""
    for t, name in ((query, "query"), (key, "key"), (value, "value")):
        if not isinstance(t, Tensor) or t.ndim < 2:
            raise TypeError(f"softmax_attention: {name} must be a Tensor with at least 2 axes")
    return SoftmaxAttentionFunction.apply(query, key, value, scale=scale)


class WalshHadamardAttention(Module):
    """Attention kernel (q, k, v) ↦ φ(q̃)(φ(k̃)ᵀv) / (φ(q̃)(φ(k̃)ᵀ1)) with FWHT random features.

    `WalshHadamardAttention(head_dim, num_features=None, seed=0)`: `num_features` m (default 2 × the
    transform width n, n the smallest supported FWHT width ≥ head_dim) is rounded up to a multiple
    of n. `forward(query, key, value)` takes (..., L, d), (..., S, d), (..., S, d_v) Tensors and
    returns (..., L, d_v), like `F.scaled_dot_product_attention` without masks. See the module
    docstring for the formula and its cost.
    """

    def __init__(self, head_dim, num_features=None, seed=0, dtype=np.float32):
        dtype = check_dtype(dtype, type(self).__name__)
        super().__init__()
        if int(head_dim) < 1:
            raise ValueError(f"WalshHadamardAttention needs a positive head_dim, got {head_dim}")
        self.head_dim = int(head_dim)
        self.size = kernels.next_supported_size(self.head_dim)
        num_features = 2 * self.size if num_features is None else int(num_features)
        if num_features < 1:
            raise ValueError(f"WalshHadamardAttention needs num_features ≥ 1, got {num_features}")
        self.blocks = -(-num_features // self.size)
        self.num_features = self.blocks * self.size
        rng = np.random.default_rng(seed)
        self.register_buffer("signs", rng.choice(np.array([-1.0, 1.0]), size=(self.blocks, self.size)).astype(dtype))

    def features(self, x, over_axes):
        """φ(x·d^(−1/4)) for x (..., L, d) → (..., L, m), divided by its maximum over `over_axes`."""
        x = x * (self.head_dim ** -0.25)
        padded = x if self.size == self.head_dim else F.pad(x, (0, self.size - self.head_dim))
        signs = self.signs if self.signs.dtype == x.dtype else Tensor(self.signs.data.astype(x.dtype))
        mixed = spectral.fwht(F.unsqueeze(padded, -2) * signs, normalized=False)  # (..., L, B, n): rows ±1
        projections = mixed.reshape(x.shape[:-1] + (self.num_features,))
        logits = projections - (x * x).sum(axis=-1, keepdims=True) * 0.5
        peak = np.max(logits.data, axis=over_axes, keepdims=True)  # cancels in the ratio: a constant
        return F.exp(logits - Tensor(peak))

    def forward(self, query, key, value):
        for t, name in ((query, "query"), (key, "key"), (value, "value")):
            if not isinstance(t, Tensor) or t.ndim < 2:
                raise TypeError(f"WalshHadamardAttention: {name} must be a Tensor with at least 2 axes")
        if query.shape[-1] != self.head_dim or key.shape[-1] != self.head_dim:
            raise ValueError(f"WalshHadamardAttention({self.head_dim}): query {query.shape} and key {key.shape} "
                             f"must end with head_dim {self.head_dim}")
        if key.shape[:-1] != value.shape[:-1] or query.shape[:-2] != key.shape[:-2]:
            raise ValueError(f"WalshHadamardAttention: shapes query {query.shape}, key {key.shape}, value "
                             f"{value.shape} do not fit (same batch axes, same key/value lengths)")
        phi_q = self.features(query, -1)            # one constant per query
        phi_k = self.features(key, (-2, -1))        # one constant for all keys of a head
        summary = batched_matmul(F.swapaxes(phi_k, -1, -2), value)   # (..., m, d_v)
        normaliser = F.sum(phi_k, axis=-2, keepdims=True)            # (..., 1, m)
        numerator = batched_matmul(phi_q, summary)                   # (..., L, d_v)
        denominator = (phi_q * normaliser).sum(axis=-1, keepdims=True)
        return numerator / denominator

    def multiply_adds(self, length, key_length=None, value_dim=None):
        """Per head, following the module docstring's count."""
        key_length = length if key_length is None else key_length
        value_dim = self.head_dim if value_dim is None else value_dim
        per_token = self.blocks * fwht_multiply_adds(self.size) + self.num_features
        return ((length + key_length) * per_token + key_length * self.num_features * (value_dim + 1)
                + length * self.num_features * (value_dim + 1))

    def extra_repr(self):
        return f"head_dim={self.head_dim}, num_features={self.num_features}, blocks={self.blocks}, size={self.size}"


def softmax_attention_multiply_adds(length, head_dim, key_length=None, value_dim=None):
    """Per head: q kᵀ (L·S·d), the exponentials (L·S), weights·v (L·S·d_v)."""
    key_length = length if key_length is None else key_length
    value_dim = head_dim if value_dim is None else value_dim
    return length * key_length * (head_dim + 1 + value_dim)


__all__ = ["WalshHadamardAttention", "softmax_attention", "softmax_attention_multiply_adds", "batched_matmul",
           "BatchedMatMul", "SoftmaxAttentionFunction"]
