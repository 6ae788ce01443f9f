"""Max, average and adaptive average pooling over 1, 2 or 3 spatial axes."""
import numpy as np

from dreidel.ops._spatial import (_check_input, _crop, _offset_slices, _offsets, _pad_array, _padding, _tuple,
                                  _windows)
from dreidel.ops.resample import _output_size, _separable
from dreidel.tensor import Tensor, record


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
    `padding` may differ per side (2·d ints (begin..., end...) or d (begin, end) pairs); `ceil_mode`
    follows PyTorch and ONNX (a last window must start inside the input or its begin padding).

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
    result = record(out, (x,), backward)
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
    """Mean over each window, as PyTorch and ONNX AveragePool: with `count_include_pad` the zero
    padding counts in the divisor (the extra end positions added by `ceil_mode` never do). `padding`
    may differ per side: 2·d ints (begin..., end...) or d (begin, end) pairs. `dilation` (ONNX opset 19)
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
        divisor = np.maximum(divisor, 1)  # a window on uncounted padding only (ONNX allows it) averages to 0
    out = (total / divisor).astype(x.dtype, copy=False)

    def backward(g):
        share = g / divisor
        grad = np.zeros(xp.shape, dtype=g.dtype)
        for _, offset in _offsets(kernel):
            grad[_offset_slices(offset, stride, dilation, out_shape)] += share
        return _crop(grad, all_pads),
    return record(out, (x,), backward)


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
