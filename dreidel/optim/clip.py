"""Gradient clipping, in place on `.grad`, as `torch.nn.utils.clip_grad_norm_` / `clip_grad_value_`."""
import math

import numpy as np

from dreidel.tensor import Tensor


def _grads(parameters):
    parameters = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients together so their joint `norm_type`-norm is at most `max_norm`.

    total = ‖(‖g₁‖, ‖g₂‖, …)‖ (= the norm of all gradients concatenated); if total > max_norm every
    gradient is multiplied by max_norm / (total + 1e-6). Returns total (a float, before clipping).
    `norm_type` may be any p ≥ 1 or `inf`.
    """
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not max_norm >= 0 or math.isnan(max_norm):
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    if not (norm_type >= 1 or math.isinf(norm_type)):
        raise ValueError(f"norm_type must be >= 1 or inf, got {norm_type}")
    params = _grads(parameters)
    if not params:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(np.max(np.abs(p.grad))) if p.grad.size else 0.0 for p in params)
    else:
        norms = [np.linalg.norm(p.grad.astype(np.float64).ravel(), ord=norm_type) for p in params]
        total = float(np.linalg.norm(np.array(norms), ord=norm_type))
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise RuntimeError(f"the total norm of the gradients is {total}; "
                               "pass error_if_nonfinite=False to clip anyway")
        return total
    coefficient = max_norm / (total + 1e-6)
    if coefficient < 1:
        for p in params:
            p.grad *= p.grad.dtype.type(coefficient)
    return total


def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient entry into [−clip_value, clip_value] in place."""
    clip_value = float(clip_value)
    if not clip_value >= 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for p in _grads(parameters):
        np.clip(p.grad, -clip_value, clip_value, out=p.grad)
