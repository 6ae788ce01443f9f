"""The Resize converter: nearest, (n-)linear and cubic, with ONNX's coordinate transformations."""
import numpy as np

from dreidel import ops
from dreidel.tensor import Tensor
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import array, checked_shape, is_tensor, register


def _source_coordinates(n_in, n_out, scale, mode):
    """Where each output position samples the input along one axis (ONNX coordinate transforms)."""
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
    raise OnnxImportError(f"Resize coordinate_transformation_mode {mode!r} is not supported")


_NEAREST = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
            "floor": np.floor, "ceil": np.ceil}


@register("Resize", since=11)
def resize(node):
    """Nearest and (n-)linear resizing, separable: per axis a gather (nearest) or two gathers and a
    blend (linear), so gradients flow back to the input through `take`."""
    mode = node.attr("mode", "nearest")
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    nearest = node.attr("nearest_mode", "round_prefer_floor")
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    cubic_a, exclude_outside = node.attr("cubic_coeff_a", -0.75), bool(node.attr("exclude_outside", 0))
    if mode not in ("nearest", "linear", "cubic") or nearest not in _NEAREST or node.attr("antialias", 0) \
            or policy not in ("stretch", "not_larger", "not_smaller") or transform == "tf_crop_and_resize":
        raise OnnxImportError(f"{node}: Resize with mode={mode!r}, coordinate_transformation_mode={transform!r}, "
                              f"nearest_mode={nearest!r} (antialias / aspect-ratio policies) is not supported")
    attr_axes = node.attr("axes")

    def run(x, roi=None, scales=None, sizes=None):
        x_t = x if is_tensor(x) else Tensor(np.asarray(x))
        ndim = x_t.ndim
        axes = list(range(ndim)) if attr_axes is None else [a % ndim for a in attr_axes]
        scales = None if scales is None or np.size(np.asarray(array(scales))) == 0 else \
            np.asarray(array(scales), dtype=np.float64).reshape(-1)
        if sizes is not None and np.size(array(sizes)):
            out_sizes = [int(v) for v in np.asarray(array(sizes)).reshape(-1)]
            scales = [o / x_t.shape[a] for o, a in zip(out_sizes, axes)]
            if policy != "stretch":  # one scale for all axes, the one that fits (or covers) the sizes
                scale = min(scales) if policy == "not_larger" else max(scales)
                scales = [scale] * len(axes)
                out_sizes = [int(np.floor(x_t.shape[a] * scale + 0.5)) for a in axes]
        elif scales is not None:
            out_sizes = [int(np.floor(x_t.shape[a] * s)) for a, s in zip(axes, scales)]
        else:
            raise OnnxImportError(f"{node}: Resize needs scales or sizes")
        final = list(x_t.shape)
        for a, n in zip(axes, out_sizes):
            final[a] = n
        checked_shape(final, "Resize")
        out = x_t
        for axis, n_out, scale in zip(axes, out_sizes, scales):
            n_in = x_t.shape[axis]
            if n_out == n_in and scale == 1.0:
                continue
            source = _source_coordinates(n_in, n_out, scale, transform)
            if mode == "nearest":
                index = np.clip(_NEAREST[nearest](source), 0, n_in - 1).astype(np.int64)
                out = ops.take(out, index, axis=axis)
                continue
            if mode == "cubic":
                out = _cubic_axis(out, axis, source, n_in, cubic_a, exclude_outside)
                continue
            source = np.clip(source, 0, n_in - 1)
            low = np.floor(source).astype(np.int64)
            high = np.minimum(low + 1, n_in - 1)
            shape = [1] * ndim
            shape[axis] = n_out
            weight = (source - low).reshape(shape).astype(out.dtype)
            out = ops.take(out, low, axis=axis) * Tensor(1 - weight) + ops.take(out, high, axis=axis) * Tensor(weight)
        return out if is_tensor(x) else out.data
    return run


def _cubic_axis(x, axis, source, n_in, a, exclude_outside):
    """Keys' cubic convolution (coefficient a) along one axis: 4 taps around each source point,
    edge-replicated, or dropped and renormalised outside the input with exclude_outside."""
    base = np.floor(source)
    t = source - base
    distances = [t + 1, t, 1 - t, 2 - t]
    weights = []
    for d in distances:  # |d| ≤ 1: (a+2)|d|³ − (a+3)|d|² + 1; 1 < |d| < 2: a|d|³ − 5a|d|² + 8a|d| − 4a
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        weights.append(np.where(d <= 1, near, far))
    taps = [base.astype(np.int64) + k for k in (-1, 0, 1, 2)]
    if exclude_outside:
        weights = [np.where((tap >= 0) & (tap < n_in), w, 0.0) for tap, w in zip(taps, weights)]
        total = sum(weights)
        weights = [w / total for w in weights]
    shape = [1] * x.ndim
    shape[axis] = len(source)
    out = None
    for tap, w in zip(taps, weights):
        part = ops.take(x, np.clip(tap, 0, n_in - 1), axis=axis) * Tensor(w.reshape(shape).astype(x.dtype))
        out = part if out is None else out + part
    return out
