"""Resampling as separable linear maps, a few taps per output (the gradient is the transpose):
`interpolate` (PyTorch semantics, spatial axes) and `resize` (ONNX Resize, any axes)."""
import math

import numpy as np

from dreidel.ops._spatial import _check_input
from dreidel.tensor import record


def _apply_taps(array, axis, taps):
    """out[..., j, ...] = Σ_t w_t[j] · array[..., idx_t[j], ...] along `axis` (w None: one tap of weight 1)."""
    idx, w = taps
    shape = [1] * array.ndim
    shape[axis] = idx.shape[1]
    out = None
    for t in range(idx.shape[0]):
        part = np.take(array, idx[t], axis=axis)
        if w is not None:
            part *= w[t].astype(array.dtype, copy=False).reshape(shape)
        out = part if out is None else np.add(out, part, out=out)
    return out


def _adjoint_taps(g, axis, taps, n_in):
    """The transpose of `_apply_taps`: each output's gradient goes back to its taps, weighted. Source
    indices rise with the output position, so each tap's sums are segment sums (`reduceat`)."""
    idx, w = taps
    moved = np.moveaxis(g, axis, 0)
    out = np.zeros((n_in,) + moved.shape[1:], dtype=g.dtype)
    column = (-1,) + (1,) * (moved.ndim - 1)
    for t in range(idx.shape[0]):
        part = moved if w is None else moved * w[t].astype(g.dtype, copy=False).reshape(column)
        i = idx[t]
        if np.all(i[1:] >= i[:-1]):
            starts = np.flatnonzero(np.concatenate([[True], i[1:] != i[:-1]]))
            out[i[starts]] += np.add.reduceat(part, starts, axis=0)
        else:
            np.add.at(out, i, part)
    return np.moveaxis(out, 0, axis)


def _separable(x, maps, axes=None):
    """Apply one linear map per axis (`axes`, default the spatial axes 2, 3, ...): None (identity),
    ("repeat", r) (nearest upsampling by an integer factor), ("taps", idx, w, n_in) (`_apply_taps`) or a
    matrix M (out, in). The backward applies the transposes in reverse order."""
    axes = tuple(range(2, 2 + len(maps))) if axes is None else tuple(axes)

    def apply(array, axis, op, transpose):
        if op is None:
            return array
        if isinstance(op, tuple) and op[0] == "repeat":
            r = op[1]
            if not transpose:
                return np.repeat(array, r, axis=axis)
            shape = array.shape
            return array.reshape(shape[:axis] + (shape[axis] // r, r) + shape[axis + 1:]).sum(axis=axis + 1)
        if isinstance(op, tuple):
            _, idx, w, n_in = op
            return _adjoint_taps(array, axis, (idx, w), n_in) if transpose else _apply_taps(array, axis, (idx, w))
        matrix = op if transpose else op.T
        return np.moveaxis(np.moveaxis(array, axis, -1) @ matrix, -1, axis)

    out = x.data
    for axis, op in zip(axes, maps):
        out = apply(out, axis, op, False)
    out = np.ascontiguousarray(out)

    def backward(g):
        for axis, op in reversed(list(zip(axes, maps))):
            g = apply(g, axis, op, True)
        return g,
    return record(out, (x,), backward)


# -- taps: which input positions each output position reads, and with what weights ---------------------
_ROUNDING = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
             "floor": np.floor, "ceil": np.ceil}


def _nearest_taps(src, n_in, rounding="floor"):
    idx = np.clip(_ROUNDING[rounding](src), 0, n_in - 1).astype(np.int64)
    return ("taps", idx[None], None, n_in)


def _linear_taps(src, n_in):
    src = np.clip(src, 0, n_in - 1)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    return ("taps", np.stack([low, high]), np.stack([1 - frac, frac]), n_in)


def _cubic_taps(src, n_in, a=-0.75, exclude_outside=False):
    """Keys' cubic convolution with coefficient `a`: 4 taps around each source point, clamped to the
    edge, or (exclude_outside) dropped outside the input and the rest renormalised."""
    base = np.floor(src)
    t = src - base
    weights = []
    for d in (t + 1, t, 1 - t, 2 - t):  # |d| ≤ 1: (a+2)|d|³ − (a+3)|d|² + 1; 1 < |d| < 2: a|d|³ − 5a|d|² + 8a|d| − 4a
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        weights.append(np.where(d <= 1, near, far))
    taps = np.stack([base.astype(np.int64) + k for k in (-1, 0, 1, 2)])
    weights = np.stack(weights)
    if exclude_outside:
        weights = np.where((taps >= 0) & (taps < n_in), weights, 0.0)
        weights = weights / weights.sum(axis=0)
    return ("taps", np.clip(taps, 0, n_in - 1), weights, n_in)


def _output_size(value, d, name):
    sizes = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * d
    if len(sizes) != d or any(s < 1 for s in sizes):
        raise ValueError(f"{name} needs 1 or {d} positive sizes, got {value}")
    return sizes


_LINEAR_MODES = {"linear": 1, "bilinear": 2, "trilinear": 3, "bicubic": 2}


def _source_scale(n_in, n_out, factor):
    # PyTorch maps outputs to sources by 1/scale_factor when a factor is given, else by in/out
    return 1 / factor if factor is not None else n_in / n_out


def _torch_source(n_in, n_out, factor, mode, align_corners):
    """PyTorch's source coordinate of every output position along one axis."""
    dst = np.arange(n_out, dtype=np.float64)
    scale = _source_scale(n_in, n_out, factor)
    if mode == "nearest":
        return dst * scale
    if mode == "nearest-exact":
        return (dst + 0.5) * scale
    if align_corners:
        return dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    src = (dst + 0.5) * scale - 0.5
    return src if mode == "bicubic" else np.maximum(src, 0)


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Resize the spatial axes like `torch.nn.functional.interpolate`.

    Modes "nearest" (source floor(dst/scale)), "nearest-exact" (floor((dst + ½)/scale)),
    "linear"/"bilinear"/"trilinear" (separable linear interpolation, half-pixel centres unless
    `align_corners`) and "bicubic" (Keys a = −0.75, edge clamped). Each axis is one linear map
    (a few taps per output), so the gradient is its transpose.
    """
    d = _check_input(x, "interpolate")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate needs exactly one of size and scale_factor")
    linear = mode in _LINEAR_MODES
    if not linear and mode not in ("nearest", "nearest-exact"):
        raise ValueError(f"interpolate mode must be nearest, nearest-exact, linear, bilinear, trilinear or bicubic, "
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
        if n_in == n_out and factor in (None, 1.0):
            maps.append(None)
        elif not linear and n_out % n_in == 0 and (factor is None or factor == n_out // n_in):
            maps.append(("repeat", n_out // n_in))  # integer nearest upsampling: both modes agree
        else:
            src = _torch_source(n_in, n_out, factor, mode, bool(align_corners))
            maps.append(_cubic_taps(src, n_in) if mode == "bicubic" else
                        _linear_taps(src, n_in) if linear else _nearest_taps(src, n_in))
    return _separable(x, maps)


# -- ONNX Resize ---------------------------------------------------------------------------------------
def _onnx_source(n_in, n_out, scale, mode):
    """ONNX Resize's coordinate_transformation_mode: the input coordinate of each output position."""
    x = np.arange(n_out, dtype=np.float64)
    if mode == "asymmetric":
        return x / scale
    if mode == "align_corners":  # the resized length is n_in · scale, possibly fractional
        length = n_in * scale
        return np.zeros(n_out) if length == 1 else x * (n_in - 1) / (length - 1)
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out)
    if mode == "half_pixel_symmetric":
        adjustment = n_out / (scale * n_in)
        return n_in / 2 * (1 - adjustment) + (x + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    raise ValueError(f"resize: coordinate_transformation_mode must be one of {_ONNX_COORDINATES}, got {mode!r}")


_ONNX_COORDINATES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric")


def resize(x, size=None, scale_factor=None, mode="nearest", coordinate_transformation_mode="half_pixel",
           nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75, exclude_outside=False, axes=None):
    """Resize any axes as ONNX Resize (opset 11–19): separable, a few taps per output, so the gradient
    is the transpose.

    `axes` (default: every axis) are resized to `size` (one length per axis) or by `scale_factor`
    (output length floor(n · scale)); given both, `size` sets the lengths and `scale_factor` the
    scales the coordinate transform uses (ONNX's keep_aspect_ratio_policy). Modes "nearest" (with
    `nearest_mode` round_prefer_floor, round_prefer_ceil, floor, ceil), "linear" (n-linear) and
    "cubic" (Keys with `cubic_coeff_a`, edge clamped, or renormalised inside with
    `exclude_outside`). `coordinate_transformation_mode`: half_pixel, half_pixel_symmetric,
    pytorch_half_pixel, align_corners, asymmetric (tf_crop_and_resize is not supported).
    """
    if mode not in ("nearest", "linear", "cubic"):
        raise ValueError(f"resize mode must be 'nearest', 'linear' or 'cubic', got {mode!r}")
    if nearest_mode not in _ROUNDING:
        raise ValueError(f"resize nearest_mode must be one of {tuple(_ROUNDING)}, got {nearest_mode!r}")
    if coordinate_transformation_mode not in _ONNX_COORDINATES:
        raise ValueError(f"resize: coordinate_transformation_mode must be one of {_ONNX_COORDINATES}, "
                         f"got {coordinate_transformation_mode!r}")
    axes = list(range(x.ndim)) if axes is None else [int(a) for a in axes]
    if any(not -x.ndim <= a < x.ndim for a in axes) or len({a % x.ndim for a in axes}) != len(axes):
        raise ValueError(f"resize: axes {axes} are not distinct axes of a tensor with {x.ndim} axes")
    axes = [a % x.ndim for a in axes]
    if size is None and scale_factor is None:
        raise ValueError("resize needs size or scale_factor")
    scales = None if scale_factor is None else [float(s) for s in np.reshape(scale_factor, -1)]
    if scales is not None and (len(scales) != len(axes) or any(not s > 0 for s in scales)):
        raise ValueError(f"resize: scale_factor needs {len(axes)} positive values, got {scale_factor}")
    if size is not None:
        sizes = [int(n) for n in np.reshape(size, -1)]
        if len(sizes) != len(axes) or any(n < 1 for n in sizes):
            raise ValueError(f"resize: size needs {len(axes)} positive lengths, got {size}")
        scales = scales or [n / x.shape[a] for n, a in zip(sizes, axes)]
    else:
        sizes = [int(math.floor(x.shape[a] * s)) for a, s in zip(axes, scales)]
        if any(n < 1 for n in sizes):
            raise ValueError(f"resize: scale_factor {scale_factor} leaves an empty output for input shape {x.shape}")
    if any(x.shape[a] < 1 for a in axes):
        raise ValueError(f"resize: cannot resize the empty axes of shape {x.shape}")
    maps = []
    for axis, n_out, scale in zip(axes, sizes, scales):
        n_in = x.shape[axis]
        if n_out == n_in and scale == 1.0:
            maps.append(None)
            continue
        src = _onnx_source(n_in, n_out, scale, coordinate_transformation_mode)
        maps.append(_nearest_taps(src, n_in, nearest_mode) if mode == "nearest" else
                    _linear_taps(src, n_in) if mode == "linear" else
                    _cubic_taps(src, n_in, float(cubic_coeff_a), bool(exclude_outside)))
    return _separable(x, maps, axes)
