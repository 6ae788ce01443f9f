"""Matrix products: matmul, linear."""
import numpy as np

from dreidel.ops._common import _pair
from dreidel.tensor import record


# -- linear algebra --------------------------------------------------------------------------------
def _product(A, B):
    """A @ B, as one GEMM when a stack of matrices meets a single matrix (numpy would loop)."""
    if A.ndim > 2 and B.ndim == 2:
        return (A.reshape(-1, A.shape[-1]) @ B).reshape(A.shape[:-1] + (B.shape[1],))
    return A @ B


def matmul(a, b):
    """Batched, broadcasting matrix product with numpy's 1-D rules."""
    a, b = _pair(a, b)
    A, B = a.data, b.data
    out = _product(A, B)

    def backward(g):
        if A.ndim == 1 and B.ndim == 1:
            return g * B, g * A
        ga = gb = None
        if A.ndim == 1:  # (k) @ (..., k, m)
            ga = (g[..., None, :] @ np.swapaxes(B, -1, -2))[..., 0, :] if a.requires_grad else None
            gb = A[:, None] * g[..., None, :] if b.requires_grad else None
        elif B.ndim == 1:  # (..., n, k) @ (k)
            ga = g[..., :, None] * B if a.requires_grad else None
            gb = (np.swapaxes(A, -1, -2) @ g[..., None])[..., 0] if b.requires_grad else None
        else:
            if a.requires_grad:
                ga = _product(g, np.swapaxes(B, -1, -2))
            if b.requires_grad:
                if B.ndim == 2:  # shared weight: one large product instead of a batch of small ones
                    gb = A.reshape(-1, A.shape[-1]).T @ g.reshape(-1, g.shape[-1])
                else:
                    gb = np.swapaxes(A, -1, -2) @ g
        return ga, gb
    return record(out, (a, b), backward)


def linear(x, weight, bias=None):
    """y = x Wᵀ + b with W of shape (out_features, in_features), as in PyTorch."""
    X, W = x.data, weight.data
    if W.ndim != 2 or X.ndim < 1 or X.shape[-1] != W.shape[1]:
        raise ValueError(f"linear: input {X.shape} does not fit weight {W.shape} (out_features, in_features)")
    if bias is not None and bias.shape != (W.shape[0],):
        raise ValueError(f"linear: bias {bias.shape} does not fit weight {W.shape}")
    # one 2-D product: numpy's N-D matmul loops over small products, far slower than a single GEMM
    X2 = X.reshape(-1, X.shape[-1])
    out = X2 @ W.T
    if bias is not None:
        out += bias.data
    out = out.reshape(X.shape[:-1] + (W.shape[0],))

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])
        gx = (g2 @ W).reshape(X.shape) if x.requires_grad else None
        gw = g2.T @ X2 if weight.requires_grad else None
        gb = g2.sum(0) if bias is not None and bias.requires_grad else None
        return gx, gw, gb
    parents = (x, weight) if bias is None else (x, weight, bias)
    return record(out, parents, backward)


# numpy's matmul on stacks of small matrices (one per head) does not reach BLAS: measured 72 ms for
# (6, 257, 64) @ (6, 64, 257) against 7 ms for a Python loop of six 2-D products.
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


def batched_matmul(a, b):
    """Differentiable a (..., n, k) @ b (..., k, m) with equal leading axes, as one 2-D GEMM per
    matrix (see `_bmm`)."""
    A, B = a.data, b.data
    if A.ndim < 2 or A.shape[:-2] != B.shape[:-2] or A.shape[-1] != B.shape[-2]:
        raise ValueError(f"batched_matmul: shapes {A.shape} and {B.shape} do not multiply (same leading axes needed)")

    def backward(grad):
        ga = _bmm(grad, B, transpose_b=True) if a.requires_grad else None
        gb = _bmm(A, grad, transpose_a=True) if b.requires_grad else None
        return ga, gb
    return record(_bmm(A, B), (a, b), backward)
