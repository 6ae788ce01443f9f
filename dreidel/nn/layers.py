"""The everyday layers: containers, dense, embedding, normalisation, dropout, activations, losses."""
from collections import OrderedDict

import numpy as np

from dreidel import functional as F
from dreidel.random import generator
from dreidel.nn.module import Module, Parameter, check_dtype


def uniform_parameter(shape, bound, rng=None, dtype=np.float32):
    return Parameter(generator(rng).uniform(-bound, bound, shape).astype(dtype))


# -- containers ------------------------------------------------------------------------------------
class Sequential(Module):
    """Modules applied in order; `Sequential(a, b)` or `Sequential(OrderedDict(name=module))`."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            for name, module in modules[0].items():
                setattr(self, name, module)
        else:
            for i, module in enumerate(modules):
                setattr(self, str(i), module)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x

    def __getitem__(self, index):
        if isinstance(index, slice):  # a slice of a Sequential is a Sequential, as in PyTorch
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleList(Module):
    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module):
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for module in modules:
            self.append(module)
        return self

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __setitem__(self, index, module):
        setattr(self, str(index % len(self)), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleDict(Module):
    def __init__(self, modules=None):
        super().__init__()
        for name, module in (modules or {}).items():
            setattr(self, name, module)

    def __getitem__(self, name):
        return self._modules[name]

    def __setitem__(self, name, module):
        setattr(self, name, module)

    def __contains__(self, name):
        return name in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()


class Identity(Module):
    def forward(self, x):
        return x


class Flatten(Module):
    """Flatten dims start_dim … end_dim into one (default: all but the batch dim), as torch.nn.Flatten."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# -- dense and embedding ---------------------------------------------------------------------------
def squared_column_sums(x):
    """(Σ_rows x², number of rows) of x seen as (rows, last dim), in float64: the input energy a
    layer's Gauss–Newton diagonal is built from."""
    rows = np.asarray(getattr(x, "data", x)).reshape(-1, x.shape[-1]).astype(np.float64)
    return np.sum(rows ** 2, axis=0), rows.shape[0]


class Linear(Module):
    """y = x Wᵀ + b, W of shape (out_features, in_features); PyTorch's initialisation."""

    _input_kind = "float"

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        dtype = check_dtype(dtype, type(self).__name__)
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear needs positive sizes, got {in_features} → {out_features}")
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / np.sqrt(in_features)
        self.weight = uniform_parameter((out_features, in_features), bound, rng, dtype)
        self.bias = uniform_parameter((out_features,), bound, rng, dtype) if bias else None

    capture_curvature = False  # class defaults: `from_weights` skips __init__
    _curvature = None

    @classmethod
    def from_weights(cls, weight, bias=None):
        """A Linear holding copies of `weight` (out, in) and `bias`."""
        weight = np.asarray(weight)
        if weight.ndim != 2 or min(weight.shape) < 1:
            raise ValueError(f"Linear.from_weights needs a 2-D (out_features, in_features) weight, got {weight.shape}")
        if bias is not None and np.shape(bias) != weight.shape[:1]:
            raise ValueError(f"Linear.from_weights: bias {np.shape(bias)} does not fit weight {weight.shape}")
        # no __init__: a random initialisation would be thrown away and would draw from the global generator
        layer = cls.__new__(cls)
        Module.__init__(layer)
        layer.out_features, layer.in_features = weight.shape
        layer.weight = Parameter(weight)  # Parameter copies
        layer.bias = None if bias is None else Parameter(np.asarray(bias, dtype=layer.weight.dtype))
        return layer

    def forward(self, x):
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expected last dimension {self.in_features}, got input shape {x.shape}")
        if self.capture_curvature:
            self._curvature = squared_column_sums(x)
        return F.linear(x, self.weight, self.bias)

    def gauss_newton_diagonal(self):
        """Diagonal of JᵀJ for the last forward batch (needs `capture_curvature = True`):
        GN(W_ji) = Σ_s x_si² for every output j, GN(b_j) = batch size."""
        if self._curvature is None:
            raise RuntimeError("no curvature captured: set layer.capture_curvature = True and run a forward pass")
        sum_x2, batch = self._curvature
        result = {self.weight: np.broadcast_to(sum_x2, self.weight.shape).copy()}
        if self.bias is not None:
            result[self.bias] = np.full(self.out_features, float(batch))
        return result

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    _input_kind = "index"

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, rng=None, dtype=np.float32):
        dtype = check_dtype(dtype, type(self).__name__)
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        weight = generator(rng).standard_normal((num_embeddings, embedding_dim)).astype(dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.weight = Parameter(weight)

    def forward(self, indices):
        return F.embedding(indices, self.weight, padding_idx=self.padding_idx)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


# -- normalisation and dropout ---------------------------------------------------------------------
class LayerNorm(Module):
    _input_kind = "float"

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32):
        dtype = check_dtype(dtype, type(self).__name__)
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.weight = Parameter(np.ones(self.normalized_shape, dtype)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype)) if elementwise_affine and bias else None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class RMSNorm(Module):
    _input_kind = "float"

    def __init__(self, normalized_shape, eps=1e-6, elementwise_affine=True, dtype=np.float32):
        dtype = check_dtype(dtype, type(self).__name__)
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.weight = Parameter(np.ones(self.normalized_shape, dtype)) if elementwise_affine else None

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class Dropout(Module):
    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.rng = p, rng

    def forward(self, x):
        return F.dropout(x, self.p, self.training, rng=generator(self.rng))

    def extra_repr(self):
        return f"p={self.p}"


# -- activations -----------------------------------------------------------------------------------
class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class SiLU(Module):
    def forward(self, x):
        return F.silu(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Softmax(Module):
    def __init__(self, axis=-1):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return F.softmax(x, self.axis)


# -- losses ----------------------------------------------------------------------------------------
class MSELoss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)


class L1Loss(MSELoss):
    def forward(self, input, target):
        return F.l1_loss(input, target, self.reduction)


class CrossEntropyLoss(Module):
    def __init__(self, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
        super().__init__()
        self.ignore_index, self.label_smoothing, self.reduction = ignore_index, label_smoothing, reduction

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.ignore_index, self.label_smoothing, self.reduction)


class KLDivLoss(Module):
    def __init__(self, reduction="batchmean", log_target=False):
        super().__init__()
        self.reduction, self.log_target = reduction, log_target

    def forward(self, input, target):
        return F.kl_div(input, target, self.reduction, self.log_target)
