"""Elementwise arithmetic, elementwise functions and activations (softmax, dropout, prelu, casts)."""
import math

import numpy as np

from dreidel import kernels as _kernels
from dreidel.ops._common import _channel_shape, _pair
from dreidel.random import generator
from dreidel.tensor import Tensor, as_tensor, record


# -- elementwise arithmetic ------------------------------------------------------------------------
def add(a, b):
    a, b = _pair(a, b)
    return record(a.data + b.data, (a, b), lambda g: (g, g))


def sub(a, b):
    a, b = _pair(a, b)
    return record(a.data - b.data, (a, b), lambda g: (g, -g))


def mul(a, b):
    a, b = _pair(a, b)
    return record(a.data * b.data, (a, b),
                   lambda g: (g * b.data if a.requires_grad else None,
                              g * a.data if b.requires_grad else None))


def div(a, b):
    a, b = _pair(a, b)
    out = a.data / b.data
    return record(out, (a, b),
                   lambda g: (g / b.data if a.requires_grad else None,
                              -g * out / b.data if b.requires_grad else None))


def pow(a, b):
    a, b = _pair(a, b)
    out = a.data ** b.data

    def backward(g):
        ga = g * b.data * a.data ** (b.data - 1) if a.requires_grad else None
        gb = None
        if b.requires_grad:
            safe = np.where(a.data > 0, a.data, 1)
            gb = g * out * np.log(safe)
        return ga, gb
    return record(out, (a, b), backward)


def neg(x):
    return record(-x.data, (x,), lambda g: (-g,))


def maximum(a, b):
    a, b = _pair(a, b)
    pick_a = a.data >= b.data  # ties send the gradient to a, like numpy's choice of value
    return record(np.maximum(a.data, b.data), (a, b), lambda g: (g * pick_a, g * ~pick_a))


def minimum(a, b):
    a, b = _pair(a, b)
    pick_a = a.data <= b.data
    return record(np.minimum(a.data, b.data), (a, b), lambda g: (g * pick_a, g * ~pick_a))


def where(condition, a, b):
    condition = condition.data if isinstance(condition, Tensor) else np.asarray(condition)
    a, b = _pair(a, b)
    return record(np.where(condition, a.data, b.data), (a, b),
                   lambda g: (np.where(condition, g, 0), np.where(condition, 0, g)))


def clip(x, min=None, max=None):
    inside = np.ones(x.shape, dtype=bool)
    if min is not None:
        inside &= x.data >= min
    if max is not None:
        inside &= x.data <= max
    return record(np.clip(x.data, min, max), (x,), lambda g: (g * inside,))


# -- elementwise functions -------------------------------------------------------------------------
def exp(x):
    out = np.exp(x.data)
    return record(out, (x,), lambda g: (g * out,))


def log(x):
    return record(np.log(x.data), (x,), lambda g: (g / x.data,))


def sqrt(x):
    out = np.sqrt(x.data)
    return record(out, (x,), lambda g: (g / (2 * out),))


def abs(x):
    return record(np.abs(x.data), (x,), lambda g: (g * np.sign(x.data),))


def sin(x):
    return record(np.sin(x.data), (x,), lambda g: (g * np.cos(x.data),))


def cos(x):
    return record(np.cos(x.data), (x,), lambda g: (-g * np.sin(x.data),))


def tanh(x):
    out = np.tanh(x.data)
    return record(out, (x,), lambda g: (g * (1 - out * out),))


def _sigmoid(v):
    """σ(v) = ½·(1 + tanh(v/2)): no overflow for any v, one transcendental, no branches."""
    out = np.array(v, dtype=v.dtype if v.dtype.kind == "f" else np.float64)  # a copy, also for 0-d
    out *= 0.5
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def sigmoid(x):
    out = _sigmoid(x.data)
    return record(out, (x,), lambda g: (g * out * (1 - out),))


def softplus(x):
    """log(1 + eˣ) = max(x, 0) + log1p(e^−|x|) (no overflow); its derivative is sigmoid(x)."""
    out = np.maximum(x.data, 0) + np.log1p(np.exp(-np.abs(x.data)))
    return record(out, (x,), lambda g: (g * _sigmoid(x.data),))


def relu(x):
    return record(np.maximum(x.data, 0), (x,), lambda g: (g * (x.data > 0),))


def silu(x):
    s = _sigmoid(x.data)
    return record(x.data * s, (x,), lambda g: (g * s * (1 + x.data * (1 - s)),))


_erf_float64 = np.frompyfunc(math.erf, 1, 1)


def _erf_array(v):
    if v.dtype == np.float64:
        return np.asarray(_erf_float64(v), dtype=np.float64)  # a 0-d input gives back a Python float
    # Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, at float32's resolution
    a = np.abs(v)
    t = 1 / (1 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (np.sign(v) * (1 - poly * np.exp(-a * a))).astype(v.dtype)


def erf(x):
    two_over_root_pi = 2 / math.sqrt(math.pi)
    return record(_erf_array(x.data), (x,),
                   lambda g: (g * two_over_root_pi * np.exp(-x.data * x.data),))


def gelu(x, approximate="none"):
    """GELU, exact (erf) or tanh form, on the fused Cython kernels."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    # reshape: the kernels hand a 0-d input back as shape (1,)
    out = _kernels.gelu(x.data, approximate=approximate).reshape(x.shape)
    return record(out, (x,), lambda g: (
        _kernels.gelu_backward(g, x.data, approximate=approximate).reshape(x.shape),))


# -- probabilities and dropout ----------------------------------------------------------------------
def _softmax_kernel_ok(a, axis):
    """The fused kernel covers float32/float64, one int axis of nonzero length (numpy raises
    for the rest, and keeps doing so)."""
    return (a.dtype in (np.float32, np.float64) and isinstance(axis, (int, np.integer)) and -a.ndim <= axis < a.ndim and a.shape[axis] > 0)


def softmax(x, axis=-1):
    """y = exp(x − max x) / Σ exp(x − max x) along axis; backward y ⊙ (g − Σ g ⊙ y).
    Runs on the fused Cython kernels for float arrays (same values, same NaN/-inf behaviour)."""
    if _softmax_kernel_ok(x.data, axis):
        out = _kernels.softmax(x.data, axis=axis)

        def backward(g):
            if g.shape == out.shape and g.dtype == out.dtype:
                return (_kernels.softmax_backward(g, out, axis=axis),)
            return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)
        return record(out, (x,), backward)
    shifted = x.data - np.max(x.data, axis=axis, keepdims=True)
    out = np.exp(shifted)
    out /= out.sum(axis=axis, keepdims=True)
    return record(out, (x,), lambda g: (out * (g - (g * out).sum(axis=axis, keepdims=True)),))


def log_softmax(x, axis=-1):
    shifted = x.data - np.max(x.data, axis=axis, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return record(out, (x,), lambda g: (g - np.exp(out) * g.sum(axis=axis, keepdims=True),))


def dropout(x, p=0.5, training=True, rng=None):
    """Zero each element with probability p and scale the rest by 1/(1-p) (identity when not training).

    `rng` defaults to dreidel's global generator, so `dreidel.random.manual_seed` makes masks repeatable."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    keep = generator(rng).random(x.shape, dtype=np.float64 if x.dtype == np.float64 else np.float32) >= p
    mask = keep.astype(x.dtype) / (1 - p)
    return record(x.data * mask, (x,), lambda g: (g * mask,))


def _cast(x, dtype):
    return record(x.data.astype(dtype), (x,), lambda g: (g.astype(x.dtype),))


def cast(x, dtype):
    """Change dtype; differentiable between floating dtypes."""
    return _cast(x, dtype) if np.dtype(dtype).kind == "f" and x.dtype.kind == "f" else Tensor(x.data.astype(dtype))


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
    return record(out.astype(x.dtype, copy=False), (x, weight), backward)
