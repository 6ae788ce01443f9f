"""Resampling of the spatial axes (interpolate) as separable linear maps: the gradient is the transpose."""
import math

import numpy as np

from dreidel.ops._spatial import _check_input
from dreidel.tensor import record


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
    return record(out, (x,), backward)


def _output_size(value, d, name):
    sizes = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * d
    if len(sizes) != d or any(s < 1 for s in sizes):
        raise ValueError(f"{name} needs 1 or {d} positive sizes, got {value}")
    return sizes


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
