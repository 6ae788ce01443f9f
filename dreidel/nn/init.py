"""Parameter initialisation in PyTorch's spelling (`nn.init.xavier_uniform_(layer.weight)`).

Every function fills its argument in place and returns it; draws come from `rng` or, by default,
dreidel's global generator, so `dreidel.manual_seed(s)` makes them repeatable. Fans follow PyTorch:
a weight of shape (out, in, *kernel) has fan_in = in·∏kernel and fan_out = out·∏kernel.
"""
import math

import numpy as np

from dreidel.random import generator
from dreidel.tensor import Tensor

_GAINS = {"linear": 1.0, "identity": 1.0, "sigmoid": 1.0, "conv1d": 1.0, "conv2d": 1.0, "conv3d": 1.0,
          "tanh": 5.0 / 3, "relu": math.sqrt(2.0), "selu": 3.0 / 4}


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity, as `torch.nn.init.calculate_gain`."""
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; known: {sorted(_GAINS) + ['leaky_relu']}")
    return _GAINS[nonlinearity]


def _array(tensor):
    if not isinstance(tensor, Tensor):
        raise TypeError(f"nn.init functions fill a Tensor or Parameter in place, got {type(tensor).__name__}")
    if tensor.data.dtype.kind != "f":
        raise TypeError(f"nn.init needs a floating tensor, got dtype {tensor.data.dtype}")
    return tensor.data


def _fans(tensor):
    shape = _array(tensor).shape
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a tensor with at least 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fill(tensor, values):
    data = _array(tensor)
    data[...] = values.astype(data.dtype, copy=False)
    return tensor


def uniform_(tensor, a=0.0, b=1.0, rng=None):
    return _fill(tensor, generator(rng).uniform(a, b, _array(tensor).shape))


def normal_(tensor, mean=0.0, std=1.0, rng=None):
    return _fill(tensor, generator(rng).normal(mean, std, _array(tensor).shape))


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, rng=None):
    """Normal(mean, std) redrawn until inside [a, b] (absolute bounds, as PyTorch)."""
    if not a < b:
        raise ValueError(f"trunc_normal_ needs a < b, got a={a}, b={b}")
    rng, shape = generator(rng), _array(tensor).shape
    values = rng.normal(mean, std, shape)
    for _ in range(100):
        outside = (values < a) | (values > b)
        if not outside.any():
            break
        values[outside] = rng.normal(mean, std, int(outside.sum()))
    else:
        raise ValueError(f"trunc_normal_: [{a}, {b}] is too far in the tail of Normal({mean}, {std})")
    return _fill(tensor, values)


def constant_(tensor, value):
    _array(tensor)[...] = value
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor, gain=1.0, rng=None):
    fan_in, fan_out = _fans(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, rng)


def xavier_normal_(tensor, gain=1.0, rng=None):
    fan_in, fan_out = _fans(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng)


def _kaiming_std(tensor, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(tensor)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, rng)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity), rng)
