"""Convolution, pooling, resampling and the channel normalisations, as differentiable engine ops.

Layout is PyTorch's: inputs (N, C, *spatial) with 1, 2 or 3 spatial axes, conv weights
(out, in/groups, *kernel), transposed-conv weights (in, out/groups, *kernel).

Convolution is im2col + one matrix product (depthwise convolution, one input channel per group,
is K multiply-adds of strided slices instead). The windows of the padded input are a strided view
(`sliding_window_view`, subsampled by stride and dilation), gathered once into columns
(groups, C/groups·K, N·P) and multiplied by the weight (groups, O/groups, C/groups·K):

    y[n, o, p] = Σ_{c, k} W[o, c, k] · x_pad[n, c, p·s + k·d] + b[o]

The backward gives the input gradient by col2im (the columns' gradient scattered back, one strided
slice per kernel offset: K^d additions) and the weight gradient by one matrix product. The
transposed convolution is the adjoint of convolution in its input, so its forward is the col2im
and its backward the im2col. The backward recomputes the columns from the padded input instead of
keeping them: they are K^d times larger than the input.

`padding` is an int, one int per spatial axis (both sides), or 2·d ints (begin..., end...) as in
ONNX's `pads`; convolutions also take "valid" and "same".
"""
import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from dreidel.tensor import Tensor, _result, as_tensor


# -- argument handling -------------------------------------------------------------------------------
def _tuple(value, d, name, minimum=1):
    values = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * d
    if len(values) != d:
        raise ValueError(f"{name} needs 1 or {d} values for {d} spatial axes, got {value}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name} values must be at least {minimum}, got {value}")
    return values


def _padding(padding, d, kernel=None, dilation=None):
    """Per-axis (begin, end) pairs from an int, d ints, 2·d ints (begin..., end...) or 'valid'/'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * d
        if padding == "same" and kernel is not None:
            totals = [dl * (k - 1) for k, dl in zip(kernel, dilation)]
            return [(t // 2, t - t // 2) for t in totals]
        raise ValueError(f"padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
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


# -- im2col / col2im on arrays ----------------------------------------------------------------------
def _windows(xp, kernel, stride, dilation, out_shape):
    """View (N, C, *out_shape, *kernel) of xp's receptive fields (no copy)."""
    d = len(kernel)
    extent = tuple(dl * (k - 1) + 1 for k, dl in zip(kernel, dilation))
    view = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + d)))
    index = ((slice(None), slice(None))
             + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_shape, stride))
             + tuple(slice(None, None, dl) for dl in dilation))
    return view[index]


def _im2col(xp, kernel, stride, dilation, out_shape, groups):
    """Columns (groups, C/groups·K, N·P): one row per (channel, kernel offset), one column per output
    position. Output positions innermost keeps the gathering copy's inner loop long."""
    n, c = xp.shape[:2]
    d = len(kernel)
    windows = _windows(xp, kernel, stride, dilation, out_shape)  # (N, C, *P, *K)
    order = (1,) + tuple(range(2 + d, 2 + 2 * d)) + (0,) + tuple(range(2, 2 + d))
    return windows.transpose(order).reshape(groups, (c // groups) * math.prod(kernel), n * math.prod(out_shape))


def _weight_matrix(w, groups):
    """Conv weight (O, C/g, *K) as (g, O/g, C/g·K)."""
    return w.reshape(groups, w.shape[0] // groups, -1)


def _output_matrix(g, groups):
    """Output-shaped (N, O, *P) array as (g, O/g, N·P)."""
    n, o = g.shape[:2]
    g = g.reshape(n, groups, o // groups, -1)
    return g.transpose(1, 2, 0, 3).reshape(groups, o // groups, -1)


def _conv_array(xp, w, stride, dilation, groups, out_shape):
    """Correlate padded input (N, C, *S) with weight (O, C/g, *K): output (N, O, *out_shape)."""
    n = xp.shape[0]
    cols = _im2col(xp, w.shape[2:], stride, dilation, out_shape, groups)
    out = np.matmul(_weight_matrix(w, groups), cols)  # (g, O/g, N·P)
    out = out.reshape(w.shape[0], n, -1)
    return np.ascontiguousarray(out.transpose(1, 0, 2)).reshape((n, w.shape[0]) + tuple(out_shape))


def _conv_input_grad(g, w, padded_shape, stride, dilation, groups):
    """Adjoint of `_conv_array` in its input (col2im): g (N, O, *P) → (N, C, *padded spatial)."""
    n, out_shape = g.shape[0], g.shape[2:]
    kernel, c = w.shape[2:], padded_shape[1]
    cols = np.matmul(_weight_matrix(w, groups).transpose(0, 2, 1), _output_matrix(g, groups))  # (g, C/g·K, N·P)
    cols = cols.reshape((c, math.prod(kernel), n) + tuple(out_shape))
    grad = np.zeros(padded_shape, dtype=cols.dtype)
    for i, offset in _offsets(kernel):
        grad[_offset_slices(offset, stride, dilation, out_shape)] += np.swapaxes(cols[:, i], 0, 1)
    return grad


def _conv_weight_grad(xp, g, kernel, stride, dilation, groups):
    """Gradient of the weight: (columns · output gradientᵀ)ᵀ, one matrix product (this orientation
    keeps the long N·P reduction where BLAS handles it well)."""
    cols = _im2col(xp, kernel, stride, dilation, g.shape[2:], groups)  # (g, C/g·K, N·P)
    gw = np.matmul(cols, _output_matrix(g, groups).transpose(0, 2, 1)).transpose(0, 2, 1)  # (g, O/g, C/g·K)
    return gw.reshape((g.shape[1], xp.shape[1] // groups) + tuple(kernel))


# Depthwise convolution (one input channel per group, the spatial stage of Conv3DSpectral) as K
# multiply-adds of strided slices: no column matrix, and no matrix products with a single row.
def _depthwise_array(xp, w, stride, dilation, out_shape):
    n, c = xp.shape[:2]
    taps = w.reshape(c, w.shape[0] // c, -1)  # (C, multiplier, K)
    out = np.zeros((n, c, taps.shape[1]) + tuple(out_shape), dtype=np.result_type(xp, w))
    spatial = (1,) * len(out_shape)
    for i, offset in _offsets(w.shape[2:]):
        out += taps[:, :, i].reshape((1,) + taps.shape[:2] + spatial) * \
            xp[_offset_slices(offset, stride, dilation, out_shape)][:, :, None]
    return out.reshape((n, w.shape[0]) + tuple(out_shape))


def _depthwise_input_grad(g, w, padded_shape, stride, dilation):
    n, c = padded_shape[:2]
    taps = w.reshape(c, w.shape[0] // c, -1)
    g = g.reshape((n, c, taps.shape[1]) + g.shape[2:])
    spatial = (1,) * (g.ndim - 3)
    grad = np.zeros(padded_shape, dtype=np.result_type(g, w))
    for i, offset in _offsets(w.shape[2:]):
        grad[_offset_slices(offset, stride, dilation, g.shape[3:])] += \
            (g * taps[:, :, i].reshape((1,) + taps.shape[:2] + spatial)).sum(axis=2)
    return grad


def _depthwise_weight_grad(xp, g, kernel, stride, dilation):
    n, c = xp.shape[:2]
    out_shape = g.shape[2:]
    g = g.reshape(n, c, g.shape[1] // c, -1)
    gw = np.zeros((c, g.shape[2], math.prod(kernel)), dtype=np.result_type(xp, g))
    for i, offset in _offsets(kernel):
        window = xp[_offset_slices(offset, stride, dilation, out_shape)].reshape(n, c, -1)
        gw[:, :, i] = np.einsum("ncmp,ncp->cm", g, window)
    return gw.reshape((c * g.shape[2], 1) + tuple(kernel))


def patch_rows(x, kernel_size, stride=1, padding=0, dilation=1):
    """The patches a convolution sees, as rows (N·P, C·K) in the weight's column order, so that the
    output at each position is W.reshape(O, -1) @ row (+ b). numpy in, numpy out (for K-FAC-style
    statistics; the differentiable op is `conv`)."""
    d = x.ndim - 2
    kernel, stride = _tuple(kernel_size, d, "kernel_size"), _tuple(stride, d, "stride")
    dilation = _tuple(dilation, d, "dilation")
    xp = _pad_array(x, _padding(padding, d, kernel, dilation))
    out_shape = _conv_out_shape(xp.shape[2:], kernel, stride, dilation, "conv")
    return _im2col(xp, kernel, stride, dilation, out_shape, 1)[0].T


def output_rows(grad):
    """An output-shaped (N, O, *P) array as rows (N·P, O) matching `patch_rows`."""
    return _output_matrix(grad, 1)[0].T


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


# -- convolution ------------------------------------------------------------------------------------
def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """N-d convolution (cross-correlation, as in PyTorch) of x (N, C, *S) with weight (O, C/groups, *K)."""
    d = _check_input(x, "conv")
    weight = as_tensor(weight, like=x)
    if weight.ndim != x.ndim:
        raise ValueError(f"conv: weight shape {weight.shape} does not match input shape {x.shape} "
                         f"(need (out, in/groups, *kernel) with {d} kernel axes)")
    groups = int(groups)
    if groups < 1 or x.shape[1] % groups or weight.shape[0] % groups:
        raise ValueError(f"conv: groups={groups} must divide input channels {x.shape[1]} and "
                         f"output channels {weight.shape[0]}")
    if weight.shape[1] * groups != x.shape[1]:
        raise ValueError(f"conv: weight shape {weight.shape} expects {weight.shape[1] * groups} input channels "
                         f"(groups={groups}), input has {x.shape[1]} (shape {x.shape})")
    if bias is not None:
        bias = as_tensor(bias, like=x)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"conv: bias shape {bias.shape}, expected ({weight.shape[0]},)")
    kernel = weight.shape[2:]
    stride = _tuple(stride, d, "stride")
    dilation = _tuple(dilation, d, "dilation")
    pads = _padding(padding, d, kernel, dilation)
    xp = _pad_array(x.data, pads)
    out_shape = _conv_out_shape(xp.shape[2:], kernel, stride, dilation, "conv")
    depthwise = groups > 1 and weight.shape[1] == 1
    if depthwise:
        out = _depthwise_array(xp, weight.data, stride, dilation, out_shape)
    else:
        out = _conv_array(xp, weight.data, stride, dilation, groups, out_shape)
    if bias is not None:
        out += bias.data.reshape(_bias_shape(d))

    def backward(g):
        gx = gw = gb = None
        if x.requires_grad:
            gx = _depthwise_input_grad(g, weight.data, xp.shape, stride, dilation) if depthwise else \
                _conv_input_grad(g, weight.data, xp.shape, stride, dilation, groups)
            gx = _crop(gx, pads)
        if weight.requires_grad:
            gw = _depthwise_weight_grad(xp, g, kernel, stride, dilation) if depthwise else \
                _conv_weight_grad(xp, g, kernel, stride, dilation, groups)
        if bias is not None and bias.requires_grad:
            gb = g.sum(axis=(0,) + tuple(range(2, 2 + d)))
        return (gx, gw) if bias is None else (gx, gw, gb)
    return _result(out, (x, weight) if bias is None else (x, weight, bias), backward)


def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """Transposed convolution of x (N, C_in, *L) with weight (C_in, C_out/groups, *K), as PyTorch.

    It is the adjoint of `conv` in its input with the same weight:
    ⟨conv(z, W), y⟩ = ⟨z, conv_transpose(y, W)⟩. Output size per axis:
    (L − 1)·s − pad_begin − pad_end + d·(k − 1) + output_padding + 1.
    """
    d = _check_input(x, "conv_transpose")
    weight = as_tensor(weight, like=x)
    groups = int(groups)
    if weight.ndim != x.ndim:
        raise ValueError(f"conv_transpose: weight shape {weight.shape} does not match input shape {x.shape}")
    if groups < 1 or weight.shape[0] % groups or weight.shape[0] != x.shape[1]:
        raise ValueError(f"conv_transpose: weight shape {weight.shape} (in, out/groups, *kernel) needs "
                         f"{weight.shape[0]} input channels divisible by groups={groups}, input shape {x.shape}")
    c_out = weight.shape[1] * groups
    if bias is not None:
        bias = as_tensor(bias, like=x)
        if bias.shape != (c_out,):
            raise ValueError(f"conv_transpose: bias shape {bias.shape}, expected ({c_out},)")
    kernel = weight.shape[2:]
    stride = _tuple(stride, d, "stride")
    dilation = _tuple(dilation, d, "dilation")
    output_padding = _tuple(output_padding, d, "output_padding", minimum=0)
    if any(op >= max(s, dl) for op, s, dl in zip(output_padding, stride, dilation)):
        raise ValueError(f"conv_transpose: output_padding {output_padding} must be smaller than stride "
                         f"{stride} or dilation {dilation}")
    pads = _padding(padding, d)
    in_shape = x.shape[2:]
    full = tuple((n - 1) * s + dl * (k - 1) + 1 + op
                 for n, s, dl, k, op in zip(in_shape, stride, dilation, kernel, output_padding))
    if any(f - b - e < 1 for f, (b, e) in zip(full, pads)):
        raise ValueError(f"conv_transpose: padding {padding} leaves no output (uncropped size {full})")
    padded_shape = (x.shape[0], c_out) + full
    out = _crop(_conv_input_grad(x.data, weight.data, padded_shape, stride, dilation, groups), pads)
    out = np.ascontiguousarray(out)
    if bias is not None:
        out += bias.data.reshape(_bias_shape(d))

    def backward(g):
        gx = gw = gb = None
        gp = _pad_array(g, pads)
        if x.requires_grad:
            gx = _conv_array(gp, weight.data, stride, dilation, groups, in_shape)
        if weight.requires_grad:
            gw = _conv_weight_grad(gp, x.data, kernel, stride, dilation, groups)
        if bias is not None and bias.requires_grad:
            gb = g.sum(axis=(0,) + tuple(range(2, 2 + d)))
        return (gx, gw) if bias is None else (gx, gw, gb)
    return _result(out, (x, weight) if bias is None else (x, weight, bias), backward)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    _check_input(x, "conv1d", (1,))
    return conv(x, weight, bias, stride, padding, dilation, groups)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    _check_input(x, "conv2d", (2,))
    return conv(x, weight, bias, stride, padding, dilation, groups)


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    _check_input(x, "conv3d", (3,))
    return conv(x, weight, bias, stride, padding, dilation, groups)


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    _check_input(x, "conv_transpose1d", (1,))
    return conv_transpose(x, weight, bias, stride, padding, output_padding, dilation, groups)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    _check_input(x, "conv_transpose2d", (2,))
    return conv_transpose(x, weight, bias, stride, padding, output_padding, dilation, groups)


def conv_transpose3d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    _check_input(x, "conv_transpose3d", (3,))
    return conv_transpose(x, weight, bias, stride, padding, output_padding, dilation, groups)


# -- pooling ----------------------------------------------------------------------------------------
def _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, what):
    """Kernel, stride, dilation, explicit pads, extra end pads (ceil_mode) and output shape."""
    d = _check_input(x, what)
    kernel = _tuple(kernel_size, d, "kernel_size")
    stride = kernel if stride is None or stride == () else _tuple(stride, d, "stride")
    dilation = _tuple(dilation, d, "dilation")
    pads = _padding(padding, d)
    out_shape, extra = [], []
    for size, k, s, dl, (b, e) in zip(x.shape[2:], kernel, stride, dilation, pads):
        extent = dl * (k - 1) + 1
        span = size + b + e - extent
        if span < 0:
            raise ValueError(f"{what}: window extent {extent} is larger than the padded input size "
                             f"{size + b + e} (input shape {x.shape})")
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + b:  # the last window must start inside input or begin pad
            o -= 1
        out_shape.append(o)
        extra.append(max(0, (o - 1) * s + extent - (size + b + e)))
    return kernel, stride, dilation, pads, extra, tuple(out_shape)


def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Maximum over each window (padding never wins); the gradient goes to the first maximum.

    With `return_indices` also returns, as PyTorch, each maximum's position as a flat index into its
    (sample, channel)'s spatial grid (int64, output-shaped).
    """
    kernel, stride, dilation, pads, extra, out_shape = _pool_geometry(
        x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool")
    all_pads = [(b, e + x_) for (b, e), x_ in zip(pads, extra)]
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    xp = _pad_array(x.data, all_pads, lowest)
    windows = _windows(xp, kernel, stride, dilation, out_shape)
    windows = windows.reshape(windows.shape[:2 + len(kernel)] + (-1,))
    arg = np.argmax(windows, axis=-1)
    out = np.take_along_axis(windows, arg[..., None], axis=-1)[..., 0]

    def backward(g):
        grad = np.zeros(xp.shape, dtype=g.dtype)
        for i, offset in _offsets(kernel):
            grad[_offset_slices(offset, stride, dilation, out_shape)] += np.where(arg == i, g, 0)
        return _crop(grad, all_pads),
    result = _result(out, (x,), backward)
    if not return_indices:
        return result
    offsets = np.unravel_index(arg, kernel)  # the winning kernel offset, per axis
    coords = []
    for axis, (offset, s, dl, (b, _)) in enumerate(zip(offsets, stride, dilation, pads)):
        start = (np.arange(out_shape[axis]) * s).reshape((-1,) + (1,) * (len(kernel) - axis - 1))
        coords.append(start + offset * dl - b)
    return result, Tensor(np.ravel_multi_index(tuple(coords), x.shape[2:]).astype(np.int64))


def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None, dilation=1):
    """Mean over each window, as PyTorch: with `count_include_pad` the zero padding counts in the
    divisor (the extra end positions added by `ceil_mode` never do). `dilation` (ONNX opset 19)
    spaces the window's taps; the divisor counts the taps that land on input (or counted padding)."""
    kernel, stride, dilation, pads, extra, out_shape = _pool_geometry(
        x, kernel_size, stride, padding, dilation, ceil_mode, "avg_pool")
    d = len(kernel)
    all_pads = [(b, e + x_) for (b, e), x_ in zip(pads, extra)]
    xp = _pad_array(x.data, all_pads)
    kernel_axes = tuple(range(2 + d, 2 + 2 * d))
    total = _windows(xp, kernel, stride, dilation, out_shape).sum(axis=kernel_axes)
    if divisor_override is not None:
        divisor = np.asarray(float(divisor_override), dtype=x.dtype)
    else:
        counted = np.ones((1, 1) + x.shape[2:], dtype=x.dtype)
        counted = _pad_array(counted, pads, 1.0 if count_include_pad else 0.0)
        counted = _pad_array(counted, [(0, e) for e in extra], 0.0)
        divisor = _windows(counted, kernel, stride, dilation, out_shape).sum(axis=kernel_axes)
    out = (total / divisor).astype(x.dtype, copy=False)

    def backward(g):
        share = g / divisor
        grad = np.zeros(xp.shape, dtype=g.dtype)
        for _, offset in _offsets(kernel):
            grad[_offset_slices(offset, stride, dilation, out_shape)] += share
        return _crop(grad, all_pads),
    return _result(out, (x,), backward)


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    _check_input(x, "max_pool1d", (1,))
    return max_pool(x, kernel_size, stride, padding, dilation, ceil_mode)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    _check_input(x, "max_pool2d", (2,))
    return max_pool(x, kernel_size, stride, padding, dilation, ceil_mode)


def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    _check_input(x, "max_pool3d", (3,))
    return max_pool(x, kernel_size, stride, padding, dilation, ceil_mode)


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    _check_input(x, "avg_pool1d", (1,))
    return avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    _check_input(x, "avg_pool2d", (2,))
    return avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def avg_pool3d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    _check_input(x, "avg_pool3d", (3,))
    return avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


# -- separable linear resampling: adaptive average pooling and interpolation --------------------------
def _separable(x, maps):
    """Apply one linear map per spatial axis: maps[i] is None (identity), ("repeat", r) or a matrix
    M (out, in) acting on axis 2 + i. The backward applies the transposes in reverse order."""

    def apply(array, axis, op, transpose):
        if op is None:
            return array
        if isinstance(op, tuple):  # nearest upsampling by an integer factor
            r = op[1]
            if not transpose:
                return np.repeat(array, r, axis=axis)
            shape = array.shape
            return array.reshape(shape[:axis] + (shape[axis] // r, r) + shape[axis + 1:]).sum(axis=axis + 1)
        matrix = op if transpose else op.T
        return np.moveaxis(np.moveaxis(array, axis, -1) @ matrix, -1, axis)

    out = x.data
    for i, op in enumerate(maps):
        out = apply(out, 2 + i, op, False)
    out = np.ascontiguousarray(out)

    def backward(g):
        for i in reversed(range(len(maps))):
            g = apply(g, 2 + i, maps[i], True)
        return g,
    return _result(out, (x,), backward)


def _output_size(value, d, name):
    sizes = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * d
    if len(sizes) != d or any(s < 1 for s in sizes):
        raise ValueError(f"{name} needs 1 or {d} positive sizes, got {value}")
    return sizes


def adaptive_avg_pool(x, output_size):
    """Average over the windows [floor(i·S/o), ceil((i+1)·S/o)) of each axis, as PyTorch."""
    d = _check_input(x, "adaptive_avg_pool")
    sizes = _output_size(output_size, d, "output_size")
    maps = []
    for n, o in zip(x.shape[2:], sizes):
        matrix = np.zeros((o, n), dtype=x.dtype)
        for i in range(o):
            start, stop = (i * n) // o, -(-((i + 1) * n) // o)
            matrix[i, start:stop] = 1 / (stop - start)
        maps.append(None if o == n else matrix)
    return _separable(x, maps)


_LINEAR_MODES = {"linear": 1, "bilinear": 2, "trilinear": 3}


def _source_scale(n_in, n_out, factor):
    # PyTorch maps outputs to sources by 1/scale_factor when a factor is given, else by in/out
    return 1 / factor if factor is not None else n_in / n_out


def _nearest_matrix(n_in, n_out, factor, exact, dtype):
    scale = _source_scale(n_in, n_out, factor)
    dst = np.arange(n_out)
    src = np.floor((dst + 0.5) * scale) if exact else np.floor(dst * scale)
    src = np.minimum(src.astype(np.int64), n_in - 1)
    matrix = np.zeros((n_out, n_in), dtype=dtype)
    matrix[dst, src] = 1
    return matrix


def _linear_matrix(n_in, n_out, factor, align_corners, dtype):
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = np.maximum((dst + 0.5) * _source_scale(n_in, n_out, factor) - 0.5, 0)
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(matrix, (np.arange(n_out), low), 1 - frac)
    np.add.at(matrix, (np.arange(n_out), high), frac)
    return matrix.astype(dtype)


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Resize the spatial axes like `torch.nn.functional.interpolate`.

    Modes "nearest" (source floor(dst/scale)), "nearest-exact" (floor((dst + ½)/scale)) and
    "linear"/"bilinear"/"trilinear" (separable linear interpolation, half-pixel centres unless
    `align_corners`). Each axis is one linear map, so the gradient is its transpose.
    """
    d = _check_input(x, "interpolate")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate needs exactly one of size and scale_factor")
    linear = mode in _LINEAR_MODES
    if not linear and mode not in ("nearest", "nearest-exact"):
        raise ValueError(f"interpolate mode must be nearest, nearest-exact, linear, bilinear or trilinear, "
                         f"got {mode!r}")
    if linear and _LINEAR_MODES[mode] != d:
        raise ValueError(f"interpolate mode {mode!r} needs {_LINEAR_MODES[mode]} spatial axes, "
                         f"input shape {x.shape} has {d}")
    if align_corners is not None and not linear:
        raise ValueError("align_corners only applies to the linear modes")
    if scale_factor is not None:
        factors = tuple(float(f) for f in scale_factor) if isinstance(scale_factor, (tuple, list)) \
            else (float(scale_factor),) * d
        if len(factors) != d or any(f <= 0 for f in factors):
            raise ValueError(f"scale_factor needs 1 or {d} positive values, got {scale_factor}")
        sizes = tuple(int(math.floor(n * f)) for n, f in zip(x.shape[2:], factors))
        if any(s < 1 for s in sizes):
            raise ValueError(f"scale_factor {scale_factor} leaves an empty output for input shape {x.shape}")
    else:
        sizes, factors = _output_size(size, d, "size"), (None,) * d
    maps = []
    for n_in, n_out, factor in zip(x.shape[2:], sizes, factors):
        if linear:
            maps.append(None if n_in == n_out and factor in (None, 1.0)
                        else _linear_matrix(n_in, n_out, factor, bool(align_corners), x.dtype))
        elif n_in == n_out and factor in (None, 1.0):
            maps.append(None)
        elif n_out % n_in == 0 and (factor is None or factor == n_out // n_in):
            maps.append(("repeat", n_out // n_in))  # integer nearest upsampling: both modes agree
        else:
            maps.append(_nearest_matrix(n_in, n_out, factor, mode == "nearest-exact", x.dtype))
    return _separable(x, maps)


# -- normalisation over channels --------------------------------------------------------------------
def _channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _normalize_affine(x, stats_shape, axes, weight, bias, eps):
    """Normalise x viewed as `stats_shape` over `axes` to zero mean and unit variance (biased), then
    scale and shift per channel (axis 1 of x): the core of batch, group and instance norm."""
    xs = x.data.reshape(stats_shape)
    centred = xs - xs.mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + eps)
    normed = (centred * inv_std).reshape(x.shape)
    out = normed * weight.data.reshape(_channel_shape(x)) if weight is not None else normed.copy()
    if bias is not None:
        out += bias.data.reshape(_channel_shape(x))
    not_channel = (0,) + tuple(range(2, x.ndim))

    def backward(g):
        gn = g * weight.data.reshape(_channel_shape(x)) if weight is not None else g
        grads = []
        if x.requires_grad:
            gn, ns = gn.reshape(stats_shape), normed.reshape(stats_shape)
            gx = inv_std * (gn - gn.mean(axis=axes, keepdims=True)
                            - ns * (gn * ns).mean(axis=axes, keepdims=True))
            grads.append(gx.reshape(x.shape))
        else:
            grads.append(None)
        if weight is not None:
            grads.append((g * normed).sum(axis=not_channel) if weight.requires_grad else None)
        if bias is not None:
            grads.append(g.sum(axis=not_channel) if bias.requires_grad else None)
        return tuple(grads)
    parents = (x,) + tuple(p for p in (weight, bias) if p is not None)
    return _result(out, parents, backward)


def _check_affine(x, weight, bias, what):
    params = []
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None:
            p = as_tensor(p, like=x)
            if p.shape != (x.shape[1],):
                raise ValueError(f"{what}: {name} shape {p.shape} does not match {x.shape[1]} channels "
                                 f"(input shape {x.shape})")
        params.append(p)
    return params


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Normalise each sample over groups of C/num_groups channels and all spatial positions."""
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"group_norm expects a Tensor (N, C, *), got shape {getattr(x, 'shape', None)}")
    if num_groups < 1 or x.shape[1] % num_groups:
        raise ValueError(f"group_norm: num_groups={num_groups} must divide the {x.shape[1]} channels")
    weight, bias = _check_affine(x, weight, bias, "group_norm")
    return _normalize_affine(x, (x.shape[0], num_groups, -1), (2,), weight, bias, eps)


def instance_norm(x, weight=None, bias=None, eps=1e-5):
    """Normalise each (sample, channel) over its spatial positions (no running statistics)."""
    if not isinstance(x, Tensor) or x.ndim < 3:
        raise ValueError(f"instance_norm expects a Tensor (N, C, *spatial), got shape {getattr(x, 'shape', None)}")
    weight, bias = _check_affine(x, weight, bias, "instance_norm")
    return _normalize_affine(x, (x.shape[0], x.shape[1], -1), (2,), weight, bias, eps)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalisation over (N, *spatial) per channel, as `torch.nn.functional.batch_norm`.

    Training (or no running statistics): normalise by the batch statistics, and update
    `running_mean`/`running_var` (Tensors or arrays, changed in place) as
    r ← (1 − momentum)·r + momentum·batch statistic (unbiased variance). Evaluation:
    y = (x − running_mean) / sqrt(running_var + eps) · weight + bias.
    """
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"batch_norm expects a Tensor (N, C, *), got shape {getattr(x, 'shape', None)}")
    weight, bias = _check_affine(x, weight, bias, "batch_norm")
    stats = [None if r is None else (r.data if isinstance(r, Tensor) else r) for r in (running_mean, running_var)]
    for r, name in zip(stats, ("running_mean", "running_var")):
        if r is not None and r.shape != (x.shape[1],):
            raise ValueError(f"batch_norm: {name} shape {r.shape} does not match {x.shape[1]} channels")
    axes = (0,) + tuple(range(2, x.ndim))
    if training or stats[0] is None or stats[1] is None:
        count = x.size // x.shape[1]
        if training and count < 2:
            raise ValueError(f"batch_norm in training needs more than one value per channel, input shape {x.shape}")
        if training and momentum is not None:
            mean = x.data.mean(axis=axes)
            var = x.data.var(axis=axes) * (count / max(count - 1, 1))
            if stats[0] is not None:
                stats[0][...] = (1 - momentum) * stats[0] + momentum * mean
            if stats[1] is not None:
                stats[1][...] = (1 - momentum) * stats[1] + momentum * var
        return _normalize_affine(x, x.shape, axes, weight, bias, eps)
    mean, var = stats
    inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype).reshape(_channel_shape(x))
    normed = (x.data - mean.reshape(_channel_shape(x))) * inv_std
    scale = inv_std * weight.data.reshape(_channel_shape(x)) if weight is not None else inv_std
    out = normed * weight.data.reshape(_channel_shape(x)) if weight is not None else normed
    if bias is not None:
        out = out + bias.data.reshape(_channel_shape(x))

    def backward(g):
        grads = [g * scale if x.requires_grad else None]
        if weight is not None:
            grads.append((g * normed).sum(axis=axes) if weight.requires_grad else None)
        if bias is not None:
            grads.append(g.sum(axis=axes) if bias.requires_grad else None)
        return tuple(grads)
    parents = (x,) + tuple(p for p in (weight, bias) if p is not None)
    return _result(out.astype(x.dtype, copy=False), parents, backward)


# -- activation with a learnt slope ------------------------------------------------------------------
def prelu(x, weight):
    """max(x, 0) + weight · min(x, 0), weight of one value or one per channel (axis 1)."""
    weight = as_tensor(weight, like=x)
    if weight.ndim != 1 or weight.shape[0] not in (1, x.shape[1] if x.ndim > 1 else 1):
        raise ValueError(f"prelu: weight shape {weight.shape} must be (1,) or (channels,) for input {x.shape}")
    slope = weight.data.reshape(_channel_shape(x)) if x.ndim > 1 and weight.shape[0] > 1 else weight.data
    positive = x.data > 0
    out = np.where(positive, x.data, slope * x.data)

    def backward(g):
        gx = np.where(positive, g, g * slope) if x.requires_grad else None
        gw = None
        if weight.requires_grad:
            contrib = np.where(positive, 0, g * x.data)
            if weight.shape[0] > 1:
                gw = contrib.sum(axis=(0,) + tuple(range(2, x.ndim)))
            else:
                gw = contrib.sum().reshape(1)
        return gx, gw
    return _result(out.astype(x.dtype, copy=False), (x, weight), backward)


__all__ = ["conv", "conv1d", "conv2d", "conv3d", "conv_transpose", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "max_pool", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool", "avg_pool1d",
           "avg_pool2d", "avg_pool3d", "adaptive_avg_pool", "interpolate", "group_norm", "instance_norm",
           "batch_norm", "prelu", "patch_rows", "output_rows"]
