"""PyTorch-style functional names over dreidel's ops, plus the losses.

`import dreidel.functional as F`; every function takes and returns Tensors.
"""
import builtins

import numpy as np

from dreidel.ops import (  # noqa: F401  (re-exported)
    abs, adaptive_avg_pool, add, avg_pool, avg_pool1d, avg_pool2d, avg_pool3d, batch_norm, cast, causal_mask, clip,
    concat, conv, conv1d, conv2d, conv3d, conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d, cos,
    cumsum, div, dropout, einsum, embedding, erf, exp, expand, flatten, gather_elements, gelu, getitem, group_norm,
    instance_norm, interpolate, layer_norm, linear, log, log_softmax, logsumexp, matmul, max, max_pool, max_pool1d,
    max_pool2d, max_pool3d, maximum, mean, min, minimum, mul, neg, pow, prelu, prod, relu, reshape, resize, rms_norm,
    scaled_dot_product_attention, scatter_nd, sigmoid, silu, sin, softmax, softplus, split, sqrt, squeeze, stack,
    sub, sum, swapaxes, take, tanh, tile, transpose, unsqueeze, var, where,
)
from dreidel import ops as _ops
from dreidel.tensor import Tensor, as_tensor

cat = concat
permute = transpose


_TORCH_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad(x, pad, mode="constant", value=0.0):
    """Padding in PyTorch's order, (last_before, last_after, second_last_before, ...); negative
    widths crop. Modes "constant", "reflect", "replicate", "circular" (see `ops.pad`)."""
    if mode not in _TORCH_PAD_MODES:
        raise ValueError(f"pad mode must be one of {tuple(_TORCH_PAD_MODES)}, got {mode!r}")
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad needs pairs for at most {x.ndim} axes, got {tuple(pad)}")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    return _ops.pad(x, widths, mode=_TORCH_PAD_MODES[mode], value=value)


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _target_like(target, input):
    """The target as a Tensor of the input's floating dtype (a float64 array would promote the loss)."""
    target = as_tensor(target, like=input)
    if target.dtype != input.dtype and target.dtype.kind == "f" and not target.requires_grad:
        target = Tensor(target.data.astype(input.dtype))
    return target


def _check_same_shape(input, target, name):
    if input.shape != target.shape:
        raise ValueError(f"{name}: input shape {input.shape} and target shape {target.shape} differ")


def mse_loss(input, target, reduction="mean"):
    target = _target_like(target, input)
    _check_same_shape(input, target, "mse_loss")
    diff = input - target
    return _reduce(diff * diff, reduction)


def l1_loss(input, target, reduction="mean"):
    target = _target_like(target, input)
    _check_same_shape(input, target, "l1_loss")
    return _reduce((input - target).abs(), reduction)


def cross_entropy(input, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Softmax cross-entropy from logits; class axis 1 as in PyTorch ((N, C) or (N, C, d1, ...)).

    `target` holds class indices; entries equal to `ignore_index` add nothing and are not counted in
    the mean. `label_smoothing` mixes the one-hot target with the uniform distribution.
    """
    target = np.asarray(target.data if isinstance(target, Tensor) else target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy target must hold class indices (integers), got {target.dtype}")
    if input.ndim < 1:
        raise ValueError("cross_entropy input needs a class axis")
    logits = input if input.ndim <= 2 else _ops.transpose(input, (0,) + tuple(range(2, input.ndim)) + (1,))
    classes = logits.shape[-1]
    logits = logits.reshape(-1, classes)
    flat = target.reshape(-1)
    if flat.shape[0] != logits.shape[0]:
        raise ValueError(f"cross_entropy: input {input.shape} and target {target.shape} do not match")
    keep = flat != ignore_index
    safe = np.where(keep, flat, 0)
    if np.any((safe < 0) | (safe >= classes)):
        raise IndexError(f"cross_entropy target out of range [0, {classes})")
    logp = log_softmax(logits, axis=-1)
    loss = -logp[np.arange(len(safe)), safe]
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * logp.mean(axis=-1)
    loss = loss * keep.astype(loss.dtype)
    if reduction == "mean":
        return loss.sum() / builtins.max(int(keep.sum()), 1)
    if reduction == "none":
        return loss.reshape(target.shape)
    return _reduce(loss, reduction)


def nll_loss(input, target, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities (N, C)."""
    target = np.asarray(target.data if isinstance(target, Tensor) else target).reshape(-1)
    keep = target != ignore_index
    safe = np.where(keep, target, 0)
    if np.any((safe < 0) | (safe >= input.shape[-1])):  # a negative index would silently wrap around
        raise IndexError(f"nll_loss target out of range [0, {input.shape[-1]})")
    loss = -input.reshape(-1, input.shape[-1])[np.arange(len(safe)), safe] * keep.astype(input.dtype)
    if reduction == "mean":
        return loss.sum() / builtins.max(int(keep.sum()), 1)
    return _reduce(loss, reduction)


def kl_div(input, target, reduction="batchmean", log_target=False):
    """KL(target ‖ model) with `input` the model's log-probabilities, as in PyTorch."""
    target = _target_like(target, input)
    _check_same_shape(input, target, "kl_div")
    if log_target:
        loss = target.exp() * (target - input)
    else:
        safe_log = Tensor(np.log(np.where(target.data > 0, target.data, 1)))
        loss = target * (safe_log - input)
    if reduction == "batchmean":
        return loss.sum() / input.shape[0]
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(input, target, reduction="mean"):
    target = _target_like(target, input)
    _check_same_shape(input, target, "binary_cross_entropy_with_logits")
    # softplus(x) − x·t, with softplus stable for large |x| and its gradient sigmoid(x) right at x = 0
    loss = softplus(input) - input * target
    return _reduce(loss, reduction)


def one_hot(indices, num_classes):
    indices = np.asarray(indices.data if isinstance(indices, Tensor) else indices)
    return Tensor(np.eye(num_classes, dtype=np.float32)[indices])
