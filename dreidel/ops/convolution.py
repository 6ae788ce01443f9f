"""Convolution and transposed convolution, as differentiable engine ops.

Layout is PyTorch's: inputs (N, C, *spatial) with 1, 2 or 3 spatial axes, conv weights
(out, in/groups, *kernel), transposed-conv weights (in, out/groups, *kernel).

Convolution is im2col + one matrix product (depthwise convolution, one input channel per group,
is a Cython kernel instead). The windows of the padded input are a strided view
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

from dreidel import kernels
from dreidel.ops._spatial import (_bias_shape, _check_input, _conv_out_shape, _crop, _offset_slices, _offsets,
                                  _pad_array, _padding, _tuple, _windows)
from dreidel.tensor import as_tensor, record


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


# Depthwise convolution (one input channel per group, the spatial stage of Conv3DSpectral): the
# Cython kernels (dreidel.kernels.depthwise_conv*), OpenMP over batch × channels; no column matrix
# and no matrix products with a single row.
def _common_float(*arrays):
    dtype = np.result_type(*arrays)
    dtype = dtype if dtype in (np.float32, np.float64) else np.float64
    return [np.asarray(a, dtype=dtype) for a in arrays]


def _depthwise_array(xp, w, stride, dilation, out_shape):
    return kernels.depthwise_conv(*_common_float(xp, w), stride, dilation)  # (N, C·M, *out_shape)


def _depthwise_input_grad(g, w, padded_shape, stride, dilation):
    return kernels.depthwise_conv_input_grad(*_common_float(g, w), padded_shape, stride, dilation)


def _depthwise_weight_grad(xp, g, kernel, stride, dilation):
    return kernels.depthwise_conv_weight_grad(*_common_float(xp, g), kernel, stride, dilation)


# Transposed convolution as one GEMM per image + flat col2im: Y = Wᵀ x gives every tap's
# contribution (C_out, K, L); tap k lands in output phase r = (k·dl − b) mod s at phase index
# m = p + δ_k. With the input zero-padded at the end of every spatial axis but the first, all of a
# phase's shifts are one flat offset and each tap is one contiguous add (wrapped reads hit the
# zero columns or fall outside Y and are skipped); each phase then is one strided copy into out.
def _flat_plan(size, out_spatial, pads, kernel, stride, dilation, limit=1.25):
    """Per axis: taps [(phase, δ)], phase sizes M_r; the padding P per axis; None if it costs
    more than `limit` times the GEMM columns (then col2im is cheaper)."""
    plans, padded = [], []
    for a, (n, o, (b, _), k, s, dl) in enumerate(zip(size, out_spatial, pads, kernel, stride, dilation)):
        taps = [((t * dl - b) % s, (t * dl - b - (t * dl - b) % s) // s) for t in range(k)]
        phase_sizes = [-(-(o - r) // s) for r in range(s)]
        plans.append((taps, phase_sizes))
        deltas = [dt for _, dt in taps]
        padded.append(n if a == 0 else n + max(0, max(deltas), max(phase_sizes) - n - min(deltas)))
    if math.prod(padded) > limit * math.prod(size):
        return None
    return plans, padded


def _conv_transpose_flat(x, w, out_spatial, pads, stride, dilation, groups, plan):
    plans, padded = plan
    n, c_in = x.shape[:2]
    d, og, kernel, size = len(stride), w.shape[1], tuple(w.shape[2:]), x.shape[2:]
    dtype = np.result_type(x, w)
    if tuple(padded) != tuple(size):
        xp = np.zeros((n, c_in) + tuple(padded), dtype=x.dtype)
        xp[(slice(None), slice(None)) + tuple(slice(0, m) for m in size)] = x
    else:
        xp = x
    rows = (max(size[0], max(plans[0][1])),) + tuple(padded[1:])  # the phase buffer's shape
    pitch = [math.prod(padded[a + 1:]) for a in range(d)]
    y_len, t_len = math.prod(padded), math.prod(rows)
    phases = {}
    for i, ks in enumerate(itertools.product(*(range(k) for k in kernel))):
        phase = tuple(plans[a][0][k][0] for a, k in enumerate(ks))
        phases.setdefault(phase, []).append((i, sum(plans[a][0][k][1] * pitch[a] for a, k in enumerate(ks))))
    every = len(phases) == math.prod(stride)  # else some phase gets no tap: it stays zero
    out = (np.empty if every else np.zeros)((n, groups * og) + tuple(out_spatial), dtype=dtype)
    cg = c_in // groups
    wt = w.reshape(groups, cg, og * math.prod(kernel)).transpose(0, 2, 1)  # (g, C_out/g·K, C_in/g)
    buffer = np.empty((groups * og, t_len), dtype=dtype)
    for j in range(n):
        y = np.matmul(wt, xp[j].reshape(groups, cg, y_len)).reshape(groups * og, math.prod(kernel), y_len)
        for phase, taps in phases.items():
            sizes = tuple(plans[a][1][r] for a, r in enumerate(phase))
            if min(sizes) <= 0:
                continue
            buffer.fill(0)
            for k, off in taps:
                lo, hi = max(0, off), min(t_len, y_len + off)
                if lo < hi:
                    buffer[:, lo:hi] += y[:, k, lo - off:hi - off]
            out[(j, slice(None)) + tuple(slice(r, None, s) for r, s in zip(phase, stride))] = \
                buffer.reshape((-1,) + rows)[(slice(None),) + tuple(slice(0, m) for m in sizes)]
    return out


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
    return record(out, (x, weight) if bias is None else (x, weight, bias), backward)


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
    out_spatial = tuple(f - b - e for f, (b, e) in zip(full, pads))
    # per-image GEMMs of few columns ran slower than col2im's one batched GEMM (ViT head, b8, 256 columns)
    plan = _flat_plan(in_shape, out_spatial, pads, kernel, stride, dilation) \
        if x.shape[0] == 1 or math.prod(in_shape) >= 512 else None
    if plan is not None:
        out = _conv_transpose_flat(x.data, weight.data, out_spatial, pads, stride, dilation, groups, plan)
    else:
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
    return record(out, (x, weight) if bias is None else (x, weight, bias), backward)


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
