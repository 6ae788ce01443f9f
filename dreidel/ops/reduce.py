"""Reductions: sum, mean, max, min, argmax, argmin, var, logsumexp, prod; and the scan cumsum.

Each takes numpy's `axis=`/`keepdims=` or PyTorch's `dim=`/`keepdim=`."""
import builtins

import numpy as np

from dreidel.ops._common import _axis_arg, _expand_reduced, _normalize_axis, _squeeze_axes
from dreidel.tensor import Tensor, record


# -- reductions ------------------------------------------------------------------------------------
# Each takes numpy's `axis`/`keepdims` or PyTorch's `dim`/`keepdim` (keywords; one spelling at a time).
def _axes(axis, keepdims, dim, keepdim, what):
    if dim is not None:
        if axis is not None:
            raise TypeError(f"{what}: pass axis or dim, not both")
        axis = dim
    if keepdim is not None:
        keepdims = keepdim
    return _axis_arg(axis), bool(keepdims)


def sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Sum over `axis`/`dim` (None: all axes; an int or a tuple)."""
    axis, keepdims = _axes(axis, keepdims, dim, keepdim, "sum")
    return record(np.sum(x.data, axis=axis, keepdims=keepdims), (x,),
                  lambda g: (_expand_reduced(g, x.shape, axis, keepdims),))


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Mean over `axis`/`dim` (None: all axes; an int or a tuple)."""
    axis, keepdims = _axes(axis, keepdims, dim, keepdim, "mean")
    axes = _normalize_axis(axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    return record(np.mean(x.data, axis=axes, keepdims=keepdims), (x,),
                  lambda g: (_expand_reduced(g, x.shape, axis, keepdims) / count,))


def _extremum(x, axis, keepdims, pick):
    out = pick(x.data, axis=axis, keepdims=True)

    def backward(g):
        hit = (x.data == out).astype(g.dtype)  # ties share the gradient evenly
        share = hit / hit.sum(axis=axis, keepdims=True)
        return _expand_reduced(g, x.shape, axis, keepdims) * share,
    return record(out if keepdims else _squeeze_axes(out, axis, x.ndim), (x,), backward)


def _extremum_with_indices(x, dim, keepdim, pick, arg, what):
    """PyTorch's `max(dim=d)`/`min(dim=d)`: (values, indices of the first extremum, int64)."""
    axis = _dim(dim, x.ndim, what)
    values = _extremum(x, axis, keepdim, pick)
    indices = arg(x.data, axis=axis, keepdims=keepdim) if x.ndim else np.zeros((), np.int64)
    return values, Tensor(np.asarray(indices, dtype=np.int64))


def max(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Maximum over `axis` (None: all; an int or a tuple); ties share the gradient. With PyTorch's
    `dim=` (one int) returns (values, indices) like `torch.max(x, dim)`."""
    if dim is not None and axis is None and isinstance(dim, (int, np.integer)):
        return _extremum_with_indices(x, dim, bool(keepdim), np.max, np.argmax, "max")
    axis, keepdims = _axes(axis, keepdims, dim, keepdim, "max")
    return _extremum(x, axis, keepdims, np.max)


def min(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Minimum over `axis` (None: all; an int or a tuple); ties share the gradient. With PyTorch's
    `dim=` (one int) returns (values, indices) like `torch.min(x, dim)`."""
    if dim is not None and axis is None and isinstance(dim, (int, np.integer)):
        return _extremum_with_indices(x, dim, bool(keepdim), np.min, np.argmin, "min")
    axis, keepdims = _axes(axis, keepdims, dim, keepdim, "min")
    return _extremum(x, axis, keepdims, np.min)


def argmax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the first maximum along `axis`/`dim` (None: of the flattened tensor), int64, no gradient."""
    axis, keepdims = _axes(axis, keepdims, dim, keepdim, "argmax")
    return Tensor(np.asarray(np.argmax(x.data, axis=axis, keepdims=keepdims), dtype=np.int64))


def argmin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the first minimum along `axis`/`dim` (None: of the flattened tensor), int64, no gradient."""
    axis, keepdims = _axes(axis, keepdims, dim, keepdim, "argmin")
    return Tensor(np.asarray(np.argmin(x.data, axis=axis, keepdims=keepdims), dtype=np.int64))


def var(x, axis=None, keepdims=False, correction=1, *, dim=None, keepdim=None):
    """Variance over axes; `correction=1` is the unbiased estimate (PyTorch's default)."""
    axis, keepdims = _axes(axis, keepdims, dim, keepdim, "var")
    axes = _normalize_axis(axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    centred = x.data - x.data.mean(axis=axes, keepdims=True)
    denominator = builtins.max(count - correction, 0)
    out = (centred * centred).sum(axis=axes, keepdims=keepdims) / denominator
    return record(out, (x,),
                   lambda g: (_expand_reduced(g, x.shape, axis, keepdims) * 2 * centred / denominator,))


def logsumexp(x, axis=-1, keepdims=False, *, dim=None, keepdim=None):
    """log Σ exp(x) over `axis`/`dim` (default the last axis), stable for large values."""
    if dim is not None:
        axis = None
    axis, keepdims = _axes(axis, keepdims, dim, keepdim, "logsumexp")
    peak = np.max(x.data, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)
    total = np.log(np.sum(np.exp(x.data - peak), axis=axis, keepdims=True)) + peak

    def backward(g):
        return _expand_reduced(g, x.shape, axis, keepdims) * np.exp(x.data - total),
    return record(total if keepdims else np.squeeze(total, axis=axis), (x,), backward)


def _dim(dim, ndim, what):
    """One axis, checked (a 0-d input has the single axis 0 or -1)."""
    size = builtins.max(ndim, 1)
    if not isinstance(dim, (int, np.integer)) or not -size <= dim < size:
        raise ValueError(f"{what}: dim {dim!r} is out of range for a tensor with {ndim} axes")
    return int(dim) % size


def _scan(v, axis, exclusive, reverse):
    """Prefix sums along `axis` (suffix sums when `reverse`; excluding the element itself when `exclusive`)."""
    v = np.flip(v, axis) if reverse else v
    out = np.cumsum(v, axis=axis, dtype=v.dtype)
    if exclusive:
        shifted = np.zeros_like(out)
        index = [slice(None)] * out.ndim
        index[axis] = slice(1, None)
        shifted[tuple(index)] = np.delete(out, -1, axis=axis) if out.shape[axis] else out
        out = shifted
    return np.flip(out, axis) if reverse else out


def cumsum(x, dim, exclusive=False, reverse=False):
    """Cumulative sum along `dim`, as ONNX CumSum: out[i] = Σ_{j ≤ i} x[j] (j < i when `exclusive`;
    j ≥ i, resp. j > i, when `reverse`). The gradient is the opposite scan: the adjoint of a prefix
    sum is the suffix sum."""
    axis = _dim(dim, x.ndim, "cumsum")
    exclusive, reverse = bool(exclusive), bool(reverse)
    if x.ndim == 0:  # one element: its own sum, or nothing before it
        return record(np.zeros_like(x.data) if exclusive else x.data.copy(), (x,),
                      lambda g: (np.zeros_like(g) if exclusive else g,))
    return record(_scan(x.data, axis, exclusive, reverse), (x,),
                  lambda g: (_scan(g, axis, exclusive, not reverse),))


def _exclusive_cumprod(v, reverse):
    """Products of the elements before each one along the last axis (after it when `reverse`)."""
    v = v[..., ::-1] if reverse else v
    out = np.ones_like(v)
    if v.shape[-1] > 1:
        out[..., 1:] = np.cumprod(v[..., :-1], axis=-1)
    return out[..., ::-1] if reverse else out


def prod(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    """Product over `dim` (None: all axes; an int or a tuple). The gradient of x_i is the product of
    the other elements, computed from prefix and suffix products, so it stays right where x has zeros."""
    dim, keepdim = _axes(dim, keepdim, axis, keepdims, "prod")
    axes = _normalize_axis(dim, x.ndim)
    out = np.prod(x.data, axis=axes, keepdims=keepdim)
    kept = [a for a in range(x.ndim) if a not in axes]

    def backward(g):
        moved = np.transpose(x.data, kept + list(axes))  # reduced axes last, flattened into one
        flat = moved.reshape(moved.shape[:len(kept)] + (-1,))
        others = _exclusive_cumprod(flat, False) * _exclusive_cumprod(flat, True)
        others = np.transpose(others.reshape(moved.shape), np.argsort(kept + list(axes)))
        return _expand_reduced(g, x.shape, axes, keepdim) * others,
    return record(out, (x,), backward)
