"""3-D UNet for volumetric segmentation, spectral or dense, built through layer factories.

    x (N, C_in, D, H, W) → stem conv → [block, pool] × (L − 1) → block (bottleneck)
    → [up ×2, merge with the encoder's skip, block] × (L − 1) → 1×1×1 head → logits (N, K, D, H, W)

A block is (conv 3×3×3 → InstanceNorm → ReLU) × 2; pooling is MaxPool3d(2). Channels per level are
`config.channels` (c_0, …, c_{L−1}); each side of the volume must be divisible by 2^(L−1).

The same class gives both twins; only the factories differ (`spectral_factories()`, `dense_factories()`):

| role | spectral | dense |
| --- | --- | --- |
| `conv(c_in, c_out)` 3×3×3 | `nn.Conv3DSpectral`: depthwise 3-D + `LinearWHT` channel mixing | `nn.Conv3d` |
| `up(c_in, c_out)` ×2 | `SpectralConvTranspose3d`: depthwise transposed 2×2×2, stride 2 + `LinearWHT` | `nn.ConvTranspose3d(k=2, s=2)` |
| `mix(c_in, c_out)` 1×1×1 (after a concatenated skip) | `ChannelMix(LinearWHT)` | `nn.Conv3d(k=1)` |

Both keep the stem (the first conv, from the C_in input channels) and the head dense: with one input
channel a depthwise conv followed by mixing is rank one (every channel a multiple of the same
filter response), and the head's K × c_0 weights are too few to matter.

Upsampling: a transposed spectral convolution rather than WHT-domain interpolation. Zero-filling a
signal's Walsh–Hadamard spectrum to twice its length and transforming back only copies samples:
in natural (Hadamard) order it tiles the signal ([1 2 3 4] → [1 2 3 4 1 2 3 4]), interleaving the
zeros repeats each sample ([1 1 2 2 3 3 4 4], nearest-neighbour upsampling; the Walsh functions are
piecewise constant). Neither is learnable nor smoother than `nn.Upsample`. The depthwise transposed
2×2×2 kernel learns the sub-voxel pattern per channel, and the block mirrors the dense twin's
ConvTranspose3d one to one (the dense kernel W[c, o, k] factored as M[o, c]·w_c[k]), so the
comparison is like for like.

Skips: `config.skip = "concat"` concatenates the upsampled and the encoder features (2c channels) and
mixes them back to c with `mix`; `"add"` sums them (no parameters).

Training helpers here: `dice_ce_loss` (soft Dice + cross-entropy), `dice_scores` (hard Dice of
predictions), `sliding_window_inference` (overlapping windows blended with Gaussian or linear
weights), `count_multiply_adds`, and `parameter_groups` (the spatial / mixing / other split the
curvature-aware optimisers use).
"""
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from dreidel import functional as F
from dreidel import nn
from dreidel.tensor import Tensor, no_grad


# -- configuration ---------------------------------------------------------------------------------
@dataclass
class UNet3DConfig:
    """Sizes and options of a UNet3D.

    `channels` per resolution level (the last one is the bottleneck), `skip` "concat" or "add",
    `variant` "spectral" or "dense" (which factories the model uses when none are given).
    """
    in_channels: int = 1
    num_classes: int = 4
    channels: tuple = (8, 16, 32)
    skip: str = "concat"
    variant: str = "spectral"
    eps: float = 1e-5

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) < 1 or any(c < 1 for c in self.channels):
            raise ValueError(f"UNet3DConfig.channels must be one or more positive integers, got {self.channels}")
        for name in ("in_channels", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"UNet3DConfig.{name} must be a positive integer, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"UNet3DConfig.num_classes must be at least 2, got {self.num_classes}")
        if self.skip not in ("concat", "add"):
            raise ValueError(f"UNet3DConfig.skip must be 'concat' or 'add', got {self.skip!r}")
        if self.variant not in ("spectral", "dense"):
            raise ValueError(f"UNet3DConfig.variant must be 'spectral' or 'dense', got {self.variant!r}")

    @property
    def divisor(self):
        """Each spatial side must be a multiple of this (2 per pooling)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"UNet3DConfig got unknown fields {sorted(unknown)}")
        return cls(**values)


# -- spectral layers -------------------------------------------------------------------------------
class ChannelMix(nn.Module):
    """A per-voxel channel map: `layer` (any (in, out) module over the last axis, LinearWHT by
    default) applied to (N, C, *spatial) with channels moved last and back."""

    def __init__(self, in_channels, out_channels, bias=True, layer=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.layer = (layer or nn.LinearWHT)(in_channels, out_channels, bias=bias)

    def forward(self, x):
        if x.ndim < 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"ChannelMix expects (N, {self.in_channels}, *spatial), got shape {x.shape}")
        last = x.ndim - 1
        y = self.layer(F.transpose(x, (0,) + tuple(range(2, x.ndim)) + (1,)))
        return F.transpose(y, (0, last) + tuple(range(1, last)))

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}"


class SpectralConvTranspose3d(nn.Module):
    """×2 upsampling: a depthwise transposed 3-D convolution (kernel 2, stride 2) then LinearWHT mixing.

    y[n, :, 2i + a, 2j + b, 2k + e] = Mix(x[n, :, i, j, k] ⊙ w[:, a, b, e]): with kernel = stride the
    windows do not overlap, so the depthwise stage is one broadcast product and a reshape (no
    col2im); `depthwise.weight` has ConvTranspose3d's layout (C, 1, 2, 2, 2) and initialisation.
    Cost per output voxel: C (depthwise) + the mixing layer's multiply-adds.
    """

    def __init__(self, in_channels, out_channels, bias=True, mixing=None, rng=None, dtype=np.float32):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.depthwise = nn.ConvTranspose3d(in_channels, in_channels, 2, stride=2, groups=in_channels,
                                            bias=False, rng=rng, dtype=dtype)
        self.mixing = ChannelMix(in_channels, out_channels, bias, mixing)

    def forward(self, x):
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"SpectralConvTranspose3d expects (N, {self.in_channels}, D, H, W), got {x.shape}")
        n, c, d, h, w = x.shape
        taps = self.depthwise.weight.reshape(1, c, 1, 2, 1, 2, 1, 2)
        y = (x.reshape(n, c, d, 1, h, 1, w, 1) * taps).reshape(n, c, 2 * d, 2 * h, 2 * w)
        return self.mixing(y)

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}"


# -- factories -------------------------------------------------------------------------------------
def spectral_factories():
    """The seeds' spectral layers: {"conv", "up", "mix"} factories (c_in, c_out) → Module."""
    return {"conv": lambda i, o: nn.Conv3DSpectral(i, o, 3, padding=1, bias=False),
            "up": lambda i, o: SpectralConvTranspose3d(i, o),
            "mix": lambda i, o: ChannelMix(i, o, bias=False)}


def dense_factories():
    """The dense twin: Conv3d, ConvTranspose3d and 1×1×1 Conv3d."""
    return {"conv": lambda i, o: nn.Conv3d(i, o, 3, padding=1, bias=False),
            "up": lambda i, o: nn.ConvTranspose3d(i, o, 2, stride=2),
            "mix": lambda i, o: nn.Conv3d(i, o, 1, bias=False)}


def _dense_stem(i, o):
    return nn.Conv3d(i, o, 3, padding=1, bias=False)


# -- the model -------------------------------------------------------------------------------------
class ConvBlock(nn.Module):
    """(conv → InstanceNorm3d(affine) → ReLU) × 2; `first` builds the first conv (default `conv`).
    The convs have no bias: the normalisation that follows would remove it."""

    def __init__(self, in_channels, out_channels, conv, first=None, eps=1e-5):
        super().__init__()
        self.conv1 = (first or conv)(in_channels, out_channels)
        self.norm1 = nn.InstanceNorm3d(out_channels, eps=eps, affine=True)
        self.conv2 = conv(out_channels, out_channels)
        self.norm2 = nn.InstanceNorm3d(out_channels, eps=eps, affine=True)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class UNet3D(nn.Module):
    """3-D UNet (see the module docstring): `UNet3D(config)` builds the variant `config.variant`;
    pass `conv=`, `up=`, `mix=` factories (c_in, c_out) → Module to replace any role, and
    `stem=` for the first conv (dense Conv3d by default in both variants).

    Parameter names: `encoder.{l}.conv1…norm2` per level (the last level is the bottleneck),
    `decoder.{l}.up`, `decoder.{l}.mix` (concat skips), `decoder.{l}.block`, `head`.
    """

    def __init__(self, config=None, conv=None, up=None, mix=None, stem=None):
        super().__init__()
        self.config = config = config or UNet3DConfig()
        base = spectral_factories() if config.variant == "spectral" else dense_factories()
        conv, up, mix = conv or base["conv"], up or base["up"], mix or base["mix"]
        ch = config.channels
        self.encoder = nn.ModuleList(
            [ConvBlock(config.in_channels if l == 0 else ch[l - 1], ch[l], conv,
                       first=(stem or _dense_stem) if l == 0 else None, eps=config.eps) for l in range(len(ch))])
        self.pool = nn.MaxPool3d(2)
        decoder = []
        for l in reversed(range(len(ch) - 1)):
            level = nn.Module()
            level.up = up(ch[l + 1], ch[l])
            if config.skip == "concat":
                level.mix = mix(2 * ch[l], ch[l])
            level.block = ConvBlock(ch[l], ch[l], conv, eps=config.eps)
            decoder.append(level)
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Conv3d(ch[0], config.num_classes, 1)

    def forward(self, x):
        if not isinstance(x, Tensor):
            x = Tensor(np.asarray(x, dtype=np.float32))
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet3D expects (N, {cfg.in_channels}, D, H, W), got shape {x.shape}")
        if any(s % cfg.divisor for s in x.shape[2:]):
            raise ValueError(f"UNet3D with {len(cfg.channels)} levels needs spatial sides divisible by "
                             f"{cfg.divisor}, got shape {x.shape}")
        skips = []
        for l, block in enumerate(self.encoder):
            x = block(x if l == 0 else self.pool(x))
            skips.append(x)
        skips.pop()  # the bottleneck's output is x itself
        for level in self.decoder:
            x, skip = level.up(x), skips.pop()
            if cfg.skip == "concat":
                x = level.mix(F.concat([x, skip], axis=1))
            else:
                x = x + skip
            x = level.block(x)
        return self.head(x)

    def parameter_groups(self):
        """{"spatial": depthwise kernels, "mixing": LinearWHT diagonals and biases, "other": the rest
        (stem, dense convs, norms, head)}; every parameter in exactly one group, in model order.
        The dense twin has no spatial or mixing parameters: all of it is "other"."""
        groups = {"spatial": [], "mixing": [], "other": []}
        role = {}
        for module in self.modules():
            if isinstance(module, nn.LinearWHT):
                for p in module.parameters():
                    role[id(p)] = "mixing"
            if isinstance(module, (nn.Conv3DSpectral, SpectralConvTranspose3d)):
                role[id(module.depthwise.weight)] = "spatial"
        for p in self.parameters():
            groups[role.get(id(p), "other")].append(p)
        return groups


# -- cost ------------------------------------------------------------------------------------------
def count_multiply_adds(model, input_shape):
    """Multiply-adds of one forward pass on an input of `input_shape` (N, C, D, H, W), counted on
    the layers that do them: convolutions (dense, grouped, transposed: output voxels × C_out ×
    C_in/groups × kernel volume, by input voxels for transposed), the depthwise ×2 upsampling (C per
    output voxel), LinearWHT (its `multiply_adds()` per voxel) and Linear. Norms, activations and
    pooling (O(1) per value) are not counted."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            voxels = math.prod(inputs[0].shape[2:] if module._transposed else output.shape[2:])
            per = module.out_channels * (module.in_channels // module.groups) * math.prod(module.kernel_size)
            total[0] += inputs[0].shape[0] * voxels * per
        elif isinstance(module, nn.LinearWHT):
            total[0] += math.prod(inputs[0].shape[:-1]) * module.multiply_adds()
        elif isinstance(module, nn.Linear):
            total[0] += math.prod(inputs[0].shape[:-1]) * module.in_features * module.out_features
        elif isinstance(module, SpectralConvTranspose3d):
            total[0] += inputs[0].size * 8  # the broadcast depthwise stage (ConvTranspose3d not called)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with no_grad():
            model(Tensor(np.zeros(input_shape, dtype=np.float32)))
    finally:
        for h in handles:
            h.remove()
    return int(total[0])


# -- losses and metrics ----------------------------------------------------------------------------
def _check_labels(logits, target, name):
    target = np.asarray(target.data if isinstance(target, Tensor) else target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"{name}: target must hold class indices (integers), got {target.dtype}")
    if logits.ndim < 3 or target.shape != (logits.shape[0],) + logits.shape[2:]:
        raise ValueError(f"{name}: logits (N, K, *spatial) {logits.shape} and target (N, *spatial) "
                         f"{target.shape} do not match")
    if target.size and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(f"{name}: target values must be in [0, {logits.shape[1]}), "
                         f"got [{target.min()}, {target.max()}]")
    return target


def dice_ce_loss(logits, target, dice_weight=1.0, ce_weight=1.0, include_background=False, smooth=1e-5):
    """Soft Dice + cross-entropy of logits (N, K, *spatial) against class indices (N, *spatial).

        p = softmax(logits, axis=1),  y = one_hot(target)
        Dice_k = (2 Σ p_k y_k + s) / (Σ p_k + Σ y_k + s)    (sums over the batch and all voxels)
        loss = dice_weight · (1 − mean_k Dice_k) + ce_weight · CE(logits, target)

    The Dice is the batch Dice (one ratio per class over the whole batch), which stays defined for
    patches where a class is absent; the mean is over classes 1..K−1 unless `include_background`.
    """
    target = _check_labels(logits, target, "dice_ce_loss")
    k = logits.shape[1]
    onehot = np.moveaxis(np.eye(k, dtype=logits.dtype)[target], -1, 1)  # (N, K, *spatial)
    probs = F.softmax(logits, axis=1)
    axes = (0,) + tuple(range(2, logits.ndim))
    intersection = (probs * onehot).sum(axis=axes)
    denominator = probs.sum(axis=axes) + onehot.sum(axis=axes)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    if not include_background:
        dice = dice[1:]
    loss = dice_weight * (1 - dice.mean())
    if ce_weight:
        loss = loss + ce_weight * F.cross_entropy(logits, target)
    return loss


def dice_scores(prediction, target, num_classes):
    """Hard Dice 2|P ∩ T| / (|P| + |T|) per foreground class (1..K−1) of integer label maps, per
    volume: an array (N, K − 1), NaN where a class is absent from both."""
    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape:
        raise ValueError(f"dice_scores: prediction {prediction.shape} and target {target.shape} differ")
    n = prediction.shape[0]
    p, t = prediction.reshape(n, -1), target.reshape(n, -1)
    scores = np.full((n, num_classes - 1), np.nan)
    for c in range(1, num_classes):
        pc, tc = p == c, t == c
        size = pc.sum(axis=1) + tc.sum(axis=1)
        both = (pc & tc).sum(axis=1)
        present = size > 0
        scores[present, c - 1] = 2 * both[present] / size[present]
    return scores


# -- sliding-window inference ----------------------------------------------------------------------
def _starts(size, window, step):
    """Window starts covering [0, size): every `step`, the last one flush with the end."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, step)) + [size - window]
    return sorted(set(starts))


def window_weights(patch_size, blend="gaussian", sigma_scale=0.125):
    """Blending weights (D, H, W) for one window: "gaussian" (σ = sigma_scale · side, centred, as
    nnU-Net), "linear" (a tent, highest at the centre, > 0 at the border) or "constant"."""
    axes = []
    for n in patch_size:
        centre = (n - 1) / 2
        pos = np.arange(n, dtype=np.float64)
        if blend == "gaussian":
            w = np.exp(-0.5 * ((pos - centre) / (sigma_scale * n)) ** 2)
        elif blend == "linear":
            w = 1 - np.abs(pos - centre) / (centre + 1)
        elif blend == "constant":
            w = np.ones(n)
        else:
            raise ValueError(f"blend must be 'gaussian', 'linear' or 'constant', got {blend!r}")
        axes.append(w / w.max())
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(weights, 1e-3)  # every voxel of a window keeps some weight (no division by 0)


def sliding_window_inference(model, volume, patch_size, overlap=0.5, blend="gaussian", batch_size=4):
    """Model outputs (N, K, D, H, W) for volumes larger than the training patch.

    Windows of `patch_size` (an int or 3 ints) step by round(patch · (1 − overlap)) along each axis,
    the last flush with the end, so every voxel is covered; each window's output is weighted by
    `window_weights(patch_size, blend)` and the overlapping outputs averaged with those weights:
    out = Σ_w weight·model(window) / Σ_w weight. A volume smaller than the patch along an axis is
    zero-padded to it (and cropped back). Windows run `batch_size` at a time, in eval mode and
    without the graph. When one window covers the volume this is exactly `model(volume)`.
    """
    x = np.asarray(volume.data if isinstance(volume, Tensor) else volume)
    if x.ndim != 5:
        raise ValueError(f"sliding_window_inference expects volumes (N, C, D, H, W), got shape {x.shape}")
    patch = tuple(int(p) for p in patch_size) if isinstance(patch_size, (tuple, list)) else (int(patch_size),) * 3
    if len(patch) != 3 or any(p < 1 for p in patch):
        raise ValueError(f"patch_size needs 1 or 3 positive sizes, got {patch_size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    spatial = x.shape[2:]
    pads = [(0, max(p - s, 0)) for p, s in zip(patch, spatial)]
    x = np.pad(x, [(0, 0), (0, 0)] + pads) if any(e for _, e in pads) else x
    full = x.shape[2:]
    steps = [max(1, int(round(p * (1 - overlap)))) for p in patch]
    corners = [(a, b, c) for a in _starts(full[0], patch[0], steps[0])
               for b in _starts(full[1], patch[1], steps[1]) for c in _starts(full[2], patch[2], steps[2])]
    weights = window_weights(patch, blend).astype(np.float32)
    was_training = model.training
    model.eval()
    out = norm = None
    try:
        with no_grad():
            for n in range(x.shape[0]):
                for i in range(0, len(corners), batch_size):
                    chunk = corners[i:i + batch_size]
                    windows = np.stack([x[n, :, a:a + patch[0], b:b + patch[1], c:c + patch[2]]
                                        for a, b, c in chunk])
                    y = model(Tensor(np.ascontiguousarray(windows))).data
                    if out is None:
                        out = np.zeros((x.shape[0], y.shape[1]) + full, dtype=np.float32)
                        norm = np.zeros(full, dtype=np.float32)
                    for (a, b, c), yw in zip(chunk, y):
                        region = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
                        out[(n, slice(None)) + region] += yw * weights
                        if n == 0:
                            norm[region] += weights
    finally:
        model.train(was_training)
    out /= norm
    return out[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


__all__ = ["UNet3DConfig", "UNet3D", "ConvBlock", "ChannelMix", "SpectralConvTranspose3d", "spectral_factories",
           "dense_factories", "count_multiply_adds", "dice_ce_loss", "dice_scores", "window_weights",
           "sliding_window_inference"]
