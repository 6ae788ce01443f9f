"""Matrix products: matmul, linear, batched_matmul, einsum."""
from collections import Counter

import numpy as np

from dreidel.ops._common import _pair
from dreidel.tensor import Tensor, as_tensor, record


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


def _einsum_terms(equation, ranks):
    """Explicit subscripts per operand (an ellipsis spelled out with spare letters) and the output's."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"einsum equation {equation!r} names {len(terms)} operands, got {len(ranks)}")
    used = set(equation) - set(".,->")
    if any(not c.isalpha() for c in used):
        raise ValueError(f"einsum equation {equation!r}: subscripts must be letters")
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in used]
    for t, rank in zip(terms, ranks):
        named = len(t.replace("...", ""))
        if named > rank or ("..." not in t and named != rank):
            raise ValueError(f"einsum equation {equation!r}: term {t!r} does not fit an operand of rank {rank}")
    width = max([rank - len(t.replace("...", "")) for t, rank in zip(terms, ranks) if "..." in t] or [0])
    ellipsis = "".join(spare[:width])
    terms = [t.replace("...", ellipsis[width - (rank - len(t.replace("...", ""))):]) if "..." in t else t
             for t, rank in zip(terms, ranks)]
    if arrow:
        out = rhs.replace("...", ellipsis)
    else:  # implicit output: the ellipsis, then the letters used once, alphabetically
        counts = Counter("".join(terms))
        out = ellipsis + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ellipsis))
    return terms, out


def einsum(equation, *operands):
    """Einstein summation, as `numpy.einsum`/ONNX Einsum (explicit or implicit output, ellipses).

    The gradient of operand i is the einsum of the output gradient with the other operands, broadcast
    over the letters only operand i carries (it sums them, so they do not change the product).
    Gradients through a term with a repeated letter (a diagonal) are refused with a clear error."""
    like = next((o for o in operands if isinstance(o, Tensor) and o.dtype.kind == "f"), None)
    tensors = [as_tensor(o, like=like) for o in operands]
    terms, out = _einsum_terms(equation, [t.ndim for t in tensors])
    result = np.asarray(np.einsum(",".join(terms) + "->" + out, *[t.data for t in tensors]))
    for t, term in zip(tensors, terms):
        if t.requires_grad and len(set(term)) != len(term):
            raise ValueError(f"einsum {equation!r}: no gradient through the repeated subscripts of {term!r}")

    def backward(g):
        grads = []
        for i, (t, term) in enumerate(zip(tensors, terms)):
            if not t.requires_grad:
                grads.append(None)
                continue
            others = [(terms[j], tensors[j].data) for j in range(len(terms)) if j != i]
            available = set(out).union(*[set(o) for o, _ in others])
            kept = "".join(c for c in term if c in available)
            partial = np.einsum(",".join([out] + [o for o, _ in others]) + "->" + kept, g, *[a for _, a in others])
            # letters only this operand carries come back as size 1 and broadcast; an ellipsis axis it
            # broadcast (size 1 here, larger elsewhere) stays large and the engine sums it down
            shape = [partial.shape[kept.index(c)] if c in available else 1 for c in term]
            target = [n if c in available else t.shape[k] for k, (c, n) in enumerate(zip(term, shape))]
            grads.append(np.broadcast_to(partial.reshape(shape), target))
        return tuple(grads)
    dtype = like.dtype if like is not None else result.dtype
    return record(result.astype(dtype, copy=False), tensors, backward)
