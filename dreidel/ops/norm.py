"""Normalisations: layer and RMS norm over trailing axes; batch, group and instance norm over channels."""
import numpy as np

from dreidel.ops._common import _channel_shape
from dreidel.tensor import Tensor, as_tensor, record


def _normalized_axes(x, normalized_shape):
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[x.ndim - len(normalized_shape):] != normalized_shape:
        raise ValueError(f"input shape {x.shape} does not end with normalized_shape {normalized_shape}")
    return tuple(range(x.ndim - len(normalized_shape), x.ndim))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """(x − mean) / sqrt(var + eps) · weight + bias over the trailing `normalized_shape` axes."""
    axes = _normalized_axes(x, normalized_shape)
    centred = x.data - x.data.mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + eps)
    normed = centred * inv_std
    out = normed * weight.data if weight is not None else normed
    if bias is not None:  # in place unless out is still `normed`, which the backward needs
        out = out + bias.data if out is normed else np.add(out, bias.data, out=out)
    lead = tuple(range(x.ndim - len(axes)))

    def backward(g):
        gn = g * weight.data if weight is not None else g
        gx = None
        if x.requires_grad:
            gx = inv_std * (gn - gn.mean(axis=axes, keepdims=True)
                            - normed * (gn * normed).mean(axis=axes, keepdims=True))
        gw = (g * normed).sum(axis=lead) if weight is not None and weight.requires_grad else None
        gb = g.sum(axis=lead) if bias is not None and bias.requires_grad else None
        return gx, gw, gb
    parents = (x,) + tuple(p for p in (weight, bias) if p is not None)
    return record(out, parents, lambda g: tuple(r for r, p in zip(backward(g), (x, weight, bias))
                                                 if p is not None))


def rms_norm(x, normalized_shape, weight=None, eps=1e-6):
    """x / sqrt(mean(x²) + eps) · weight over the trailing `normalized_shape` axes."""
    axes = _normalized_axes(x, normalized_shape)
    inv_rms = 1 / np.sqrt((x.data * x.data).mean(axis=axes, keepdims=True) + eps)
    normed = x.data * inv_rms
    out = normed * weight.data if weight is not None else normed
    lead = tuple(range(x.ndim - len(axes)))

    def backward(g):
        gn = g * weight.data if weight is not None else g
        gx = inv_rms * (gn - normed * (gn * normed).mean(axis=axes, keepdims=True)) if x.requires_grad else None
        gw = (g * normed).sum(axis=lead) if weight is not None and weight.requires_grad else None
        return (gx, gw) if weight is not None else (gx,)
    return record(out, (x,) if weight is None else (x, weight), backward)


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
    return record(out, parents, backward)


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
    return record(out.astype(x.dtype, copy=False), parents, backward)
