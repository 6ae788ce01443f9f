"""Differentiable spectral operations (Walsh-Hadamard transform, permutations, the fused
spectral block) on dreidel Tensors, built on the numpy kernels in ``dreidel.kernels``.

All act on the last axis. H is symmetric (see ``dreidel.kernels``), so every backward is again a
forward transform: d/dx H x = H^T = H.
"""
import numpy as np

from dreidel import kernels
from dreidel.tensor import Function

__all__ = ["fwht", "permute", "permute_inverse", "spectral_block",
           "FWHTFunction", "PermuteFunction", "PermuteInverseFunction", "SpectralBlockFunction"]


def _perm_array(perm):
    perm = getattr(perm, "data", perm)            # a Tensor of indices is fine too
    return np.ascontiguousarray(perm)


class FWHTFunction(Function):
    @staticmethod
    def forward(ctx, x, normalized=True):
        ctx.normalized = bool(normalized)
        return kernels.fwht(x, ctx.normalized)

    @staticmethod
    def backward(ctx, grad):
        return kernels.fwht(grad, ctx.normalized), None


class PermuteFunction(Function):
    @staticmethod
    def forward(ctx, x, perm):
        ctx.perm = _perm_array(perm)
        return kernels.permute(x, ctx.perm)

    @staticmethod
    def backward(ctx, grad):
        return kernels.permute_inverse(grad, ctx.perm, validate=False), None


class PermuteInverseFunction(Function):
    @staticmethod
    def forward(ctx, x, perm):
        ctx.perm = _perm_array(perm)
        return kernels.permute_inverse(x, ctx.perm)

    @staticmethod
    def backward(ctx, grad):
        return kernels.permute(grad, ctx.perm, validate=False), None


class SpectralBlockFunction(Function):
    @staticmethod
    def forward(ctx, x, perm, d, normalized=True):
        ctx.perm = _perm_array(perm)
        ctx.normalized = bool(normalized)
        x = np.asarray(x)
        d = np.asarray(d)
        ctx.save_for_backward(x, d)
        return kernels.spectral_block(x, ctx.perm, d, ctx.normalized)

    @staticmethod
    def backward(ctx, grad):
        x, d = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        need_d = len(ctx.needs_input_grad) > 2 and ctx.needs_input_grad[2]
        if not (need_x or need_d):
            return None, None, None, None
        gx, gd = kernels.spectral_block_backward(grad, x, ctx.perm, d, ctx.normalized,
                                                 validate=False)
        return (gx if need_x else None), None, (gd if need_d else None), None


def fwht(x, normalized=True):
    """Walsh-Hadamard transform along the last axis (natural order; 1/sqrt(n) when
    normalized, which makes it orthonormal and its own inverse). Differentiable."""
    return FWHTFunction.apply(x, normalized)


def permute(x, perm):
    """``x[..., perm]``, differentiable in x (perm: integer permutation of range(n))."""
    return PermuteFunction.apply(x, perm)


def permute_inverse(x, perm):
    """Inverse of ``permute``: ``out[..., perm] = x``. Differentiable in x."""
    return PermuteInverseFunction.apply(x, perm)


def spectral_block(x, perm, d, normalized=True):
    """y = H(x[..., perm] * d) along the last axis, fused; differentiable in x and d
    (d's gradient is summed over the batch)."""
    return SpectralBlockFunction.apply(x, perm, d, normalized)
