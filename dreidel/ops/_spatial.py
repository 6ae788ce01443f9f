"""Argument handling and strided-window helpers shared by convolution, pooling and resampling.

Layout is PyTorch's: inputs (N, C, *spatial) with 1, 2 or 3 spatial axes. `padding` is an int, one
int per spatial axis (both sides), or 2·d ints (begin..., end...) as in ONNX's `pads`; convolutions
also take "valid" and "same".
"""
import itertools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dreidel.tensor import Tensor


# -- argument handling -------------------------------------------------------------------------------
def _tuple(value, d, name, minimum=1):
    values = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * d
    if len(values) != d:
        raise ValueError(f"{name} needs 1 or {d} values for {d} spatial axes, got {value}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name} values must be at least {minimum}, got {value}")
    return values


def _padding(padding, d, kernel=None, dilation=None):
    """Per-axis (begin, end) pairs from an int, d ints, 2·d ints (begin..., end...), d (begin, end)
    pairs, or 'valid'/'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * d
        if padding == "same" and kernel is not None:
            totals = [dl * (k - 1) for k, dl in zip(kernel, dilation)]
            return [(t // 2, t - t // 2) for t in totals]
        raise ValueError(f"padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
    if isinstance(padding, (tuple, list)) and padding and all(isinstance(p, (tuple, list)) for p in padding):
        pairs = [tuple(int(v) for v in p) for p in padding]  # ((begin, end), ...) per axis
        if len(pairs) != d or any(len(p) != 2 or min(p) < 0 for p in pairs):
            raise ValueError(f"padding needs {d} non-negative (begin, end) pairs for {d} spatial axes, got {padding}")
        return pairs
    values = tuple(int(p) for p in padding) if isinstance(padding, (tuple, list)) else (int(padding),) * d
    if any(p < 0 for p in values):
        raise ValueError(f"padding must be non-negative, got {padding}")
    if len(values) == d:
        return [(p, p) for p in values]
    if len(values) == 2 * d:
        return list(zip(values[:d], values[d:]))
    raise ValueError(f"padding needs 1, {d} or {2 * d} values for {d} spatial axes, got {padding}")


def _check_input(x, name, dims=(1, 2, 3)):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects a Tensor, got {type(x).__name__}")
    if x.ndim - 2 not in dims:
        raise ValueError(f"{name} expects input (N, C, *spatial) with {dims} spatial axes, got shape {x.shape}")
    return x.ndim - 2


def _pad_array(x, pads, value=0.0):
    if not any(b or e for b, e in pads):
        return x
    return np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads], constant_values=value)


def _crop(array, pads):
    """Undo `_pad_array` (drop `pads` from the spatial axes)."""
    return array[(slice(None), slice(None)) + tuple(slice(b, array.shape[2 + i] - e)
                                                    for i, (b, e) in enumerate(pads))]


def _offset_slices(offset, stride, dilation, out_shape):
    """The padded-input positions that kernel offset `offset` touches, as one strided slice per axis."""
    return (slice(None), slice(None)) + tuple(
        slice(k * dl, k * dl + (o - 1) * s + 1, s) for k, s, dl, o in zip(offset, stride, dilation, out_shape))


def _offsets(kernel):
    """(index, offset tuple) for every kernel offset, in the row-major order of the weight."""
    return enumerate(itertools.product(*(range(k) for k in kernel)))


# -- strided windows -----------------------------------------------------------------------------------
def _windows(xp, kernel, stride, dilation, out_shape):
    """View (N, C, *out_shape, *kernel) of xp's receptive fields (no copy)."""
    d = len(kernel)
    extent = tuple(dl * (k - 1) + 1 for k, dl in zip(kernel, dilation))
    view = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + d)))
    index = ((slice(None), slice(None))
             + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_shape, stride))
             + tuple(slice(None, None, dl) for dl in dilation))
    return view[index]


def _conv_out_shape(padded, kernel, stride, dilation, what):
    out = []
    for size, k, s, dl in zip(padded, kernel, stride, dilation):
        extent = dl * (k - 1) + 1
        if extent > size:
            raise ValueError(f"{what}: kernel extent {extent} (kernel {k}, dilation {dl}) is larger than "
                             f"the padded input size {size}")
        out.append((size - extent) // s + 1)
    return tuple(out)


def _bias_shape(d):
    return (1, -1) + (1,) * d
