"""The Resize converter over the engine's `ops.resize` (nearest, n-linear and cubic, with ONNX's
coordinate transformations); here only the attributes are checked and the output sizes worked out."""
import numpy as np

from dreidel import ops
from importers.onnx_to_dreidel.errors import OnnxImportError
from importers.onnx_to_dreidel.registry import array, as_tensor, checked_shape, is_tensor, register

_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@register("Resize", since=11)
def resize(node):
    mode = node.attr("mode", "nearest")
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    nearest = node.attr("nearest_mode", "round_prefer_floor")
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    cubic_a, exclude_outside = node.attr("cubic_coeff_a", -0.75), bool(node.attr("exclude_outside", 0))
    if mode not in ("nearest", "linear", "cubic") or nearest not in _NEAREST_MODES or node.attr("antialias", 0) \
            or policy not in ("stretch", "not_larger", "not_smaller") or transform == "tf_crop_and_resize":
        raise OnnxImportError(f"{node}: Resize with mode={mode!r}, coordinate_transformation_mode={transform!r}, "
                              f"nearest_mode={nearest!r} (antialias / aspect-ratio policies) is not supported")
    attr_axes = node.attr("axes")

    def run(x, roi=None, scales=None, sizes=None):
        x_t = as_tensor(x)
        axes = list(range(x_t.ndim)) if attr_axes is None else [a % x_t.ndim for a in attr_axes]
        scales = None if scales is None or np.size(array(scales)) == 0 else \
            np.asarray(array(scales), dtype=np.float64).reshape(-1)
        size = None
        if sizes is not None and np.size(array(sizes)):
            size = [int(v) for v in np.asarray(array(sizes)).reshape(-1)]
            scales = None
            if policy != "stretch":  # one scale for all axes, the one that fits (or covers) the sizes
                ratios = [n / x_t.shape[a] for n, a in zip(size, axes)]
                scales = [min(ratios) if policy == "not_larger" else max(ratios)] * len(axes)
                size = [int(np.floor(x_t.shape[a] * scales[0] + 0.5)) for a in axes]
        elif scales is not None:
            size = None
        else:
            raise OnnxImportError(f"{node}: Resize needs scales or sizes")
        final = list(x_t.shape)
        for i, a in enumerate(axes):
            final[a] = size[i] if size is not None else int(np.floor(x_t.shape[a] * scales[i]))
        checked_shape(final, "Resize")
        out = ops.resize(x_t, size=size, scale_factor=scales, mode=mode, coordinate_transformation_mode=transform,
                         nearest_mode=nearest, cubic_coeff_a=cubic_a, exclude_outside=exclude_outside, axes=axes)
        return out if is_tensor(x) else out.data
    return run
