"""Convolution, pooling, resampling and channel-normalisation layers, PyTorch-style.

Inputs are (N, C, *spatial); weights have PyTorch's shapes and initialisation (uniform in
±1/sqrt(fan_in), fan_in = in_channels/groups · prod(kernel_size)), so state_dicts carry over.
"""
import math

import numpy as np

from dreidel import ops
from dreidel.ops._spatial import _padding, _tuple
from dreidel.tensor import Tensor, no_grad
from dreidel.nn.module import Module, Parameter
from dreidel.nn.layers import uniform_parameter
from dreidel.nn.spectral import LinearWHT


def _check_dims(x, d, name):
    if x.ndim != d + 2:
        raise ValueError(f"{name} expects input (N, C, {', '.join('LHW'[-d:] if d < 3 else 'DHW')}) with "
                         f"{d + 2} axes, got shape {x.shape}")


def _check_channels(x, channels, name):
    if x.shape[1] != channels:
        raise ValueError(f"{name} expects {channels} channels on axis 1, got input shape {x.shape}")


# -- convolution ------------------------------------------------------------------------------------
class _ConvNd(Module):
    _dims = None
    _transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", output_padding=0, rng=None, dtype=np.float32):
        super().__init__()
        d = self._dims
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"{type(self).__name__} needs positive channel counts, "
                             f"got {in_channels} → {out_channels}")
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        if padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported, got {padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple(kernel_size, d, "kernel_size")
        self.stride = _tuple(stride, d, "stride")
        self.dilation = _tuple(dilation, d, "dilation")
        self.padding = padding if isinstance(padding, str) else (
            tuple(padding) if isinstance(padding, (tuple, list)) else (int(padding),) * d)
        _padding(self.padding, d, self.kernel_size, self.dilation)  # validate now, not at first call
        self.output_padding = _tuple(output_padding, d, "output_padding", minimum=0)
        if self._transposed:
            shape = (in_channels, out_channels // groups) + self.kernel_size
        else:
            shape = (out_channels, in_channels // groups) + self.kernel_size
        bound = 1 / math.sqrt(shape[1] * math.prod(self.kernel_size))  # PyTorch's fan_in
        self.weight = uniform_parameter(shape, bound, rng, dtype)
        self.bias = uniform_parameter((out_channels,), bound, rng, dtype) if bias else None

    @classmethod
    def from_weights(cls, weight, bias=None, **kwargs):
        """A layer holding copies of `weight` (PyTorch layout) and `bias`; other arguments as the constructor."""
        weight = np.asarray(weight)
        if weight.ndim != cls._dims + 2:
            raise ValueError(f"{cls.__name__}.from_weights needs a {cls._dims + 2}-axis weight, got {weight.shape}")
        groups = kwargs.get("groups", 1)
        if cls._transposed:
            in_channels, out_channels = weight.shape[0], weight.shape[1] * groups
        else:
            in_channels, out_channels = weight.shape[1] * groups, weight.shape[0]
        layer = cls(in_channels, out_channels, weight.shape[2:], bias=bias is not None, dtype=weight.dtype, **kwargs)
        layer.weight.data = np.array(weight, copy=True)
        if bias is not None:
            bias = np.asarray(bias, dtype=weight.dtype)
            if bias.shape != (out_channels,):
                raise ValueError(f"{cls.__name__}.from_weights: bias shape {bias.shape}, expected ({out_channels},)")
            layer.bias.data = bias.copy()
        return layer

    def forward(self, x):
        _check_dims(x, self._dims, type(self).__name__)
        _check_channels(x, self.in_channels, type(self).__name__)
        if self._transposed:
            return ops.conv_transpose(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                    self.dilation, self.groups)
        return ops.conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")


class Conv1d(_ConvNd):
    _dims = 1


class Conv2d(_ConvNd):
    _dims = 2


class Conv3d(_ConvNd):
    _dims = 3


class _ConvTransposeNd(_ConvNd):
    _transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", rng=None, dtype=np.float32):
        if isinstance(padding, str):
            raise ValueError("transposed convolutions take numeric padding only")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, output_padding, rng, dtype)


class ConvTranspose1d(_ConvTransposeNd):
    _dims = 1


class ConvTranspose2d(_ConvTransposeNd):
    _dims = 2


class ConvTranspose3d(_ConvTransposeNd):
    _dims = 3


class Conv3DSpectral(Module):
    """Depthwise 3-D convolution followed by channel mixing with a spectral linear layer.

    y = Mix(DepthwiseConv3d(x)): each channel c is convolved with its own kernel w_c (in_channels ×
    kernel_size³ weights), then at every voxel the channel vector is mixed by `LinearWHT(in, out)`
    (y = H(pad(v) ⊙ d) truncated, H the orthonormal Walsh–Hadamard transform) instead of a dense
    out × in matrix. `mixing` is a factory (in_features, out_features, bias) → Module applied over the
    last axis, LinearWHT by default; any dense or spectral layer works.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 mixing=None, rng=None, dtype=np.float32):
        super().__init__()
        self.depthwise = Conv3d(in_channels, in_channels, kernel_size, stride, padding, dilation,
                                groups=in_channels, bias=False, rng=rng, dtype=dtype)
        if mixing is None:
            self.mixing = LinearWHT(in_channels, out_channels, bias=bias, rng=rng, dtype=dtype)
        else:
            self.mixing = mixing(in_channels, out_channels, bias).to(dtype)
        self.in_channels, self.out_channels = in_channels, out_channels

    @classmethod
    def from_dense(cls, weight, bias=None, inputs=None, stride=1, padding=0, dilation=1, mixing=None):
        """Approximate a dense Conv3d (weight (O, C, *k), bias) by depthwise kernels and a mixing layer.

        Stage 1 (exact optimum of the separable form W[o, c, k] ≈ M[o, c]·w_c[k]): per input channel
        c, the best rank-1 approximation of the slice W[:, c, :] (O × K) by SVD gives the depthwise
        kernel w_c (unit norm) and the column M[:, c] = s_c·u_c. Stage 2: the mixing layer is fitted to
        the dense M by its own `from_dense` (LinearWHT's closed form by default; `mixing` is a class
        with `from_dense(weight, bias, inputs)`), on the depthwise outputs of `inputs` (N, C, *S) if
        given. Exact when W is itself of the layer's form. `layer.fit_report["relative_error"]` is
        ‖W − Ŵ‖/‖W‖ for the whole kernel.
        """
        weight = np.asarray(weight)
        if weight.ndim != 5:
            raise ValueError(f"Conv3DSpectral.from_dense needs a Conv3d weight (out, in, kd, kh, kw), "
                             f"got {weight.shape}")
        out_channels, in_channels, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
        slices = np.moveaxis(weight.reshape(out_channels, in_channels, -1).astype(np.float64), 1, 0)  # (C, O, K)
        u, sv, vt = np.linalg.svd(slices, full_matrices=False)
        taps = vt[:, 0, :]  # (C, K)
        columns = u[:, :, 0] * sv[:, :1]  # (C, O): M[:, c]
        mixing = mixing or LinearWHT
        layer = cls(in_channels, out_channels, kernel, stride, padding, dilation, bias=True,
                    mixing=lambda i, o, b: mixing(i, o, bias=b), dtype=weight.dtype)
        layer.depthwise.weight.data = taps.reshape((in_channels, 1) + kernel).astype(weight.dtype)
        mix_inputs = None
        if inputs is not None:
            with no_grad():
                z = layer.depthwise(inputs if isinstance(inputs, Tensor) else Tensor(np.asarray(inputs)))
            mix_inputs = np.moveaxis(z.data, 1, -1).reshape(-1, in_channels)
        layer.mixing = mixing.from_dense(columns.T.astype(weight.dtype), bias, inputs=mix_inputs)
        # the kernel the fitted layer computes: Ŵ[o, c, k] = M̂[o, c]·w_c[k], M̂ read off the mixing layer
        with no_grad():
            eye = np.eye(in_channels, dtype=weight.dtype)
            offset = layer.mixing(Tensor(np.zeros((1, in_channels), weight.dtype))).data
            fitted = (layer.mixing(Tensor(eye)).data - offset).T  # (O, C)
        approx = fitted[:, :, None] * taps[None]
        norm = max(np.linalg.norm(weight), 1e-30)
        layer.fit_report = {
            "relative_error": float(np.linalg.norm(approx - weight.reshape(out_channels, in_channels, -1)) / norm),
            "separable_relative_error": float(np.sqrt(np.sum(sv[:, 1:] ** 2)) / norm)}
        return layer

    def forward(self, x):
        _check_dims(x, 3, "Conv3DSpectral")
        _check_channels(x, self.in_channels, "Conv3DSpectral")
        y = self.depthwise(x)
        y = self.mixing(ops.transpose(y, (0, 2, 3, 4, 1)))  # channels last for the mixing layer
        return ops.transpose(y, (0, 4, 1, 2, 3))

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}"


# -- pooling and resampling -------------------------------------------------------------------------
class _MaxPoolNd(Module):
    _dims = None

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x):
        _check_dims(x, self._dims, type(self).__name__)
        return ops.max_pool(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool1d(_MaxPoolNd):
    _dims = 1


class MaxPool2d(_MaxPoolNd):
    _dims = 2


class MaxPool3d(_MaxPoolNd):
    _dims = 3


class _AvgPoolNd(Module):
    _dims = None

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.ceil_mode = kernel_size, stride, padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, x):
        _check_dims(x, self._dims, type(self).__name__)
        return ops.avg_pool(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                          self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool1d(_AvgPoolNd):
    _dims = 1


class AvgPool2d(_AvgPoolNd):
    _dims = 2


class AvgPool3d(_AvgPoolNd):
    _dims = 3


class _AdaptiveAvgPoolNd(Module):
    _dims = None

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        _check_dims(x, self._dims, type(self).__name__)
        return ops.adaptive_avg_pool(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    _dims = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    _dims = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    _dims = 3


class Upsample(Module):
    """Resize by `scale_factor` or to `size`; modes nearest, nearest-exact, linear, bilinear, trilinear."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        super().__init__()
        if (size is None) == (scale_factor is None):
            raise ValueError("Upsample needs exactly one of size and scale_factor")
        self.size, self.scale_factor, self.mode, self.align_corners = size, scale_factor, mode, align_corners

    def forward(self, x):
        return ops.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners)

    def extra_repr(self):
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, mode={self.mode!r}"


# -- normalisation ----------------------------------------------------------------------------------
class _BatchNorm(Module):
    """y = (x − mean) / sqrt(var + eps) · weight + bias per channel; batch statistics in training
    (running averages updated), running statistics in evaluation."""
    _dims = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def _check(self, x):
        if x.ndim - 2 not in self._dims:
            raise ValueError(f"{type(self).__name__} expects input with {[d + 2 for d in self._dims]} axes, "
                             f"got shape {x.shape}")
        _check_channels(x, self.num_features, type(self).__name__)

    def forward(self, x):
        self._check(x)
        use_batch = self.training or not self.track_running_stats
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data = self.num_batches_tracked.data + 1
            if momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked.data)
        return ops.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=use_batch, momentum=momentum, eps=self.eps)

    @classmethod
    def from_weights(cls, weight=None, bias=None, running_mean=None, running_var=None, eps=1e-5, momentum=0.1):
        """A layer holding copies of the given affine parameters and running statistics (ONNX
        BatchNormalization: scale, B, input_mean, input_var)."""
        given = [np.asarray(a) for a in (weight, bias, running_mean, running_var) if a is not None]
        if not given:
            raise ValueError(f"{cls.__name__}.from_weights needs at least one array")
        shapes = {a.shape for a in given}
        if len(shapes) != 1 or len(given[0].shape) != 1:
            raise ValueError(f"{cls.__name__}.from_weights: arrays must be 1-D of one length, got {sorted(shapes)}")
        dtype = given[0].dtype if given[0].dtype.kind == "f" else np.float32
        tracked = running_mean is not None or running_var is not None
        layer = cls(given[0].shape[0], eps=eps, momentum=momentum, affine=weight is not None or bias is not None,
                    track_running_stats=tracked, dtype=dtype)
        for name, value in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                            ("running_var", running_var)):
            if value is not None:
                getattr(layer, name).data = np.array(value, dtype=dtype, copy=True)
        return layer

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm1d(_BatchNorm):
    _dims = (0, 1)


class BatchNorm2d(_BatchNorm):
    _dims = (2,)


class BatchNorm3d(_BatchNorm):
    _dims = (3,)


class _InstanceNorm(_BatchNorm):
    """Each (sample, channel) normalised over its spatial positions. With `track_running_stats` the
    running averages of the per-instance statistics are kept and used in evaluation, as PyTorch."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False,
                 dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)

    def forward(self, x):
        self._check(x)
        if self.track_running_stats and not self.training:
            return ops.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps)
        if self.track_running_stats:
            flat = x.data.reshape(x.shape[0], x.shape[1], -1)
            count = flat.shape[-1]
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked.data + 1)
            self.num_batches_tracked.data = self.num_batches_tracked.data + 1
            mean = flat.mean(axis=(0, 2))
            var = (flat.var(axis=2) * count / max(count - 1, 1)).mean(axis=0)
            self.running_mean.data[...] = (1 - momentum) * self.running_mean.data + momentum * mean
            self.running_var.data[...] = (1 - momentum) * self.running_var.data + momentum * var
        return ops.instance_norm(x, self.weight, self.bias, self.eps)


class InstanceNorm1d(_InstanceNorm):
    _dims = (1,)


class InstanceNorm2d(_InstanceNorm):
    _dims = (2,)


class InstanceNorm3d(_InstanceNorm):
    _dims = (3,)


class GroupNorm(Module):
    """Normalise each sample over groups of channels (and all positions), then scale/shift per channel."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide num_channels={num_channels}")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.weight = Parameter(np.ones(num_channels, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_channels, dtype)) if affine else None

    def forward(self, x):
        if x.ndim < 2:
            raise ValueError(f"GroupNorm expects input (N, C, *), got shape {x.shape}")
        _check_channels(x, self.num_channels, "GroupNorm")
        return ops.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class PReLU(Module):
    """max(x, 0) + a · min(x, 0) with a learnt slope a: one shared or one per channel (axis 1)."""

    def __init__(self, num_parameters=1, init=0.25, dtype=np.float32):
        super().__init__()
        if num_parameters < 1:
            raise ValueError(f"num_parameters must be positive, got {num_parameters}")
        self.num_parameters = num_parameters
        self.weight = Parameter(np.full(num_parameters, init, dtype))

    @classmethod
    def from_weights(cls, weight):
        weight = np.asarray(weight)
        weight = weight.reshape(-1) if weight.dtype.kind == "f" else weight.reshape(-1).astype(np.float32)
        layer = cls(weight.shape[0], dtype=weight.dtype)
        layer.weight.data = weight.copy()
        return layer

    def forward(self, x):
        return ops.prelu(x, self.weight)

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Conv3DSpectral",
           "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
           "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "Upsample", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "GroupNorm", "PReLU"]
