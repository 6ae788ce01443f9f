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
from dreidel import kernels
from dreidel.nn.module import Module
from dreidel.nn.spectral import fwht_multiply_adds
from dreidel.ops.attention import softmax_attention
from dreidel.ops.linalg import batched_matmul  # noqa: F401  (imported from here by callers)
from dreidel.ops.spectral import fwht
from dreidel.tensor import Tensor


class WalshHadamardAttention(Module):
    """Attention kernel (q, k, v) ↦ φ(q̃)(φ(k̃)ᵀv) / (φ(q̃)(φ(k̃)ᵀ1)) with FWHT random features.

    `WalshHadamardAttention(head_dim, num_features=None, seed=0)`: `num_features` m (default 2 × the
    transform width n, n the smallest supported FWHT width ≥ head_dim) is rounded up to a multiple
    of n. `forward(query, key, value)` takes (..., L, d), (..., S, d), (..., S, d_v) Tensors and
    returns (..., L, d_v), like `F.scaled_dot_product_attention` without masks. See the module
    docstring for the formula and its cost.
    """

    def __init__(self, head_dim, num_features=None, seed=0, dtype=np.float32):
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
        mixed = fwht(F.unsqueeze(padded, -2) * signs, normalized=False)  # (..., L, B, n): rows ±1
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


__all__ = ["WalshHadamardAttention", "softmax_attention", "softmax_attention_multiply_adds", "batched_matmul"]
