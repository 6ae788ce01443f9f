"""Reductions: sum, mean, max, min, var, logsumexp."""
import builtins

import numpy as np

from dreidel.ops._common import _axis_arg, _expand_reduced, _normalize_axis, _squeeze_axes
from dreidel.tensor import record


# -- reductions ------------------------------------------------------------------------------------
def sum(x, axis=None, keepdims=False):
    return record(np.sum(x.data, axis=_axis_arg(axis), keepdims=keepdims), (x,),
                   lambda g: (_expand_reduced(g, x.shape, axis, keepdims),))


def mean(x, axis=None, keepdims=False):
    axes = _normalize_axis(axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    return record(np.mean(x.data, axis=axes, keepdims=keepdims), (x,),
                   lambda g: (_expand_reduced(g, x.shape, axis, keepdims) / count,))


def _extremum(x, axis, keepdims, pick):
    out = pick(x.data, axis=_axis_arg(axis), keepdims=True)

    def backward(g):
        hit = (x.data == out).astype(g.dtype)  # ties share the gradient evenly
        share = hit / hit.sum(axis=_axis_arg(axis), keepdims=True)
        return _expand_reduced(g, x.shape, axis, keepdims) * share,
    return record(out if keepdims else _squeeze_axes(out, axis, x.ndim), (x,), backward)


def max(x, axis=None, keepdims=False):
    return _extremum(x, axis, keepdims, np.max)


def min(x, axis=None, keepdims=False):
    return _extremum(x, axis, keepdims, np.min)


def var(x, axis=None, keepdims=False, correction=1):
    """Variance over axes; `correction=1` is the unbiased estimate (PyTorch's default)."""
    axes = _normalize_axis(axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    centred = x.data - x.data.mean(axis=axes, keepdims=True)
    denominator = builtins.max(count - correction, 0)
    out = (centred * centred).sum(axis=axes, keepdims=keepdims) / denominator
    return record(out, (x,),
                   lambda g: (_expand_reduced(g, x.shape, axis, keepdims) * 2 * centred / denominator,))


def logsumexp(x, axis=-1, keepdims=False):
    axis = _axis_arg(axis)
    peak = np.max(x.data, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)
    total = np.log(np.sum(np.exp(x.data - peak), axis=axis, keepdims=True)) + peak

    def backward(g):
        return _expand_reduced(g, x.shape, axis, keepdims) * np.exp(x.data - total),
    return record(total if keepdims else np.squeeze(total, axis=axis), (x,), backward)
