"""Hash-sparse autograd: the linear map restricted to the neurons an ALSH layer selects."""
import numpy as np

from dreidel.hashing import add_rows, gather_columns, scatter_columns
from dreidel.tensor import record


def sparse_linear(x, weight, bias, active):
    """y[:, j] = x · weight[j] + bias[j] for j in `active` (sorted unique int64 ids), 0 elsewhere.

    One gather of the active rows and one matrix product for the whole batch. Backward touches
    only the active rows: grad_x = g_A W_A, grad_W[A] += g_Aᵀ x, grad_b[A] = Σ_batch g_A.
    x is (B, in). The weight gradient is accumulated into `weight.grad` directly (a lazily zeroed
    array of which only the active rows are written) instead of being returned to the engine,
    which would copy a full dense (out, in) gradient on every backward.
    """
    n_out = weight.shape[0]
    w_active = np.take(weight.data, active, axis=0)
    y_active = x.data @ w_active.T
    if bias is not None:
        y_active += bias.data[active]
    out = scatter_columns(y_active, active, n_out)

    def backward(g):
        g_active = gather_columns(np.ascontiguousarray(g, dtype=y_active.dtype), active)
        grad_x = g_active @ w_active if x.requires_grad else None
        if weight.requires_grad:
            grad_w = g_active.T @ x.data
            if weight.grad is None:
                # fresh pages fault on first touch; faulting from one thread avoids contention
                weight.grad = np.zeros(weight.shape, dtype=weight.dtype)
                weight.grad[active] = grad_w
            elif weight.grad.flags.c_contiguous and weight.grad.flags.writeable:
                add_rows(weight.grad, active, grad_w)
            else:
                weight.grad = weight.grad.copy()
                weight.grad[active] += grad_w
        grad_b = None
        if bias is not None and bias.requires_grad:
            grad_b = np.zeros(n_out, dtype=bias.dtype)
            grad_b[active] = g_active.sum(axis=0)
        return (grad_x, None) + ((grad_b,) if bias is not None else ())

    parents = (x, weight) if bias is None else (x, weight, bias)
    return record(out, parents, backward)
