"""Differentiable spectral ops on the last axis: the Walsh–Hadamard transform, permutations, the
fused spectral block, and the two spectral layers' kernels (`linear_wht`, `spectral_stack`), all on
the numpy/Cython kernels in `dreidel.kernels`.

H is symmetric (see `dreidel.kernels`), so every backward is again a forward transform:
d/dx H x = Hᵀ = H.
"""
import numpy as np

from dreidel import kernels
from dreidel.tensor import as_tensor, record

__all__ = ["fwht", "permute", "permute_inverse", "spectral_block", "linear_wht", "spectral_stack"]


def _perm_array(perm):
    perm = getattr(perm, "data", perm)  # a Tensor of indices is fine too
    return np.ascontiguousarray(perm)


def fwht(x, normalized=True):
    """Walsh-Hadamard transform along the last axis (natural order; 1/sqrt(n) when
    normalized, which makes it orthonormal and its own inverse). Differentiable."""
    x, normalized = as_tensor(x), bool(normalized)
    return record(kernels.fwht(x.data, normalized), (x,), lambda g: (kernels.fwht(g, normalized),))


def permute(x, perm):
    """``x[..., perm]``, differentiable in x (perm: integer permutation of range(n))."""
    x, perm = as_tensor(x), _perm_array(perm)
    return record(kernels.permute(x.data, perm), (x,),
                  lambda g: (kernels.permute_inverse(g, perm, validate=False),))


def permute_inverse(x, perm):
    """Inverse of ``permute``: ``out[..., perm] = x``. Differentiable in x."""
    x, perm = as_tensor(x), _perm_array(perm)
    return record(kernels.permute_inverse(x.data, perm), (x,),
                  lambda g: (kernels.permute(g, perm, validate=False),))


def spectral_block(x, perm, d, normalized=True):
    """y = H(x[..., perm] * d) along the last axis, fused; differentiable in x and d
    (d's gradient is summed over the batch)."""
    x = as_tensor(x)
    d = as_tensor(d, like=x)
    perm, normalized = _perm_array(perm), bool(normalized)

    def backward(g):
        gx, gd = kernels.spectral_block_backward(g, x.data, perm, d.data, normalized, validate=False)
        return (gx if x.requires_grad else None), (gd if d.requires_grad else None)
    return record(kernels.spectral_block(x.data, perm, d.data, normalized), (x, d), backward)


def _padded_rows(a, N, dtype):
    """Rows of `a` zero-padded to width N in `dtype`, C-contiguous (no copy when already so)."""
    if a.shape[1] == N:
        return np.ascontiguousarray(a, dtype=dtype)
    out = np.zeros((a.shape[0], N), dtype=dtype)
    out[:, :a.shape[1]] = a
    return out


def linear_wht(x, d, bias, size, out_features):
    """y = trunc(H · pad(x ⊙ d)) + b over the last axis: `LinearWHT`'s op (H orthonormal of width
    `size`, trunc keeping `out_features`). Differentiable in x, d and bias. Returns (y, X) with X the
    input rows (rows, in) as the forward used them (the layer's curvature statistics need them)."""
    n_in, n_out, N = d.shape[0], int(out_features), int(size)
    lead = x.shape[:-1]
    X = x.data.reshape(-1, n_in)
    dtype = np.result_type(X.dtype, d.dtype)
    y = kernels.fwht_(_padded_rows(X * d.data, N, dtype), normalized=True)
    y = y if n_out == N else np.ascontiguousarray(y[:, :n_out])
    if bias is not None:
        y += bias.data

    def backward(g):
        gz = _padded_rows(g.reshape(-1, n_out), N, dtype)
        gz = kernels.fwht_(gz.copy() if np.may_share_memory(gz, g) else gz, normalized=True)[:, :n_in]
        gx = (gz * d.data).reshape(lead + (n_in,)) if x.requires_grad else None
        gd = np.einsum("bn,bn->n", gz, X) if d.requires_grad else None
        gb = g.reshape(-1, n_out).sum(axis=0) if bias is not None and bias.requires_grad else None
        return gx, gd, gb

    parents = (x, d) if bias is None else (x, d, bias)
    return record(y.reshape(lead + (n_out,)), parents, backward), X


def spectral_stack(x, perms, d, bias, out_features, save):
    """K Walsh–Hadamard blocks z₀ = pad(x), z_k = H(P_k z_{k−1} ⊙ d_k), y = trunc(z_K) + b in one kernel
    call each way: `DeepSpectralLinear`'s op. `perms` (K, N) intc permutations (validated by the
    caller), d (K, N), bias (out,) or None. `save` keeps the block inputs for the backward
    (else it recomputes them tile by tile from x). Returns (y, saved), saved None unless `save`."""
    n_in, n_out = x.shape[-1], int(out_features)
    lead = x.shape[:-1]
    dtype = np.result_type(x.dtype, d.dtype)
    D = d.data if d.dtype == dtype else d.data.astype(dtype)
    B = None if bias is None else bias.data
    X = x.data.reshape(-1, n_in).astype(dtype, copy=False)
    # z_0 is X itself: the backward reads it from X instead of a saved copy
    y, saved = kernels.spectral_stack(X, perms, D, n_out, B, save=save, validate=False, save_input=False)

    def backward(g):
        need_x = x.requires_grad
        # g keeps its leading shape so gx is allocated in x's shape: an owning array the autograd
        # adopts as x.grad (a reshaped view would be copied, a full extra pass at width 4096)
        gx, gd = kernels.spectral_stack_backward(g.reshape(lead + (n_out,)), saved, perms, D, n_in,
                                                 need_x=need_x, x=X, validate=False)
        gb = g.reshape(-1, n_out).sum(axis=0) if bias is not None and bias.requires_grad else None
        return gx, gd, gb

    parents = (x, d) if bias is None else (x, d, bias)
    return record(y.reshape(lead + (n_out,)), parents, backward), saved
