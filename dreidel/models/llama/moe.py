"""A SwiGLU FFN that computes only the intermediate neurons likely to matter for each token.

    y = Σ_{j ∈ A(x)} down[:, j] · silu(gate_j · x) · (up_j · x)

`HashRoutedFFN.from_dense(mlp, active_fraction)` keeps the dense weights and picks A(x) per token:

- `router="hash"`: the gate-projection rows are hashed into the SimHash (or DWTA) tables of
  `dreidel.nn.ALSHSparseDense` (asymmetric MIPS transform; the layer *is* the gate projection), the
  token's normed hidden state is hashed the same way and the neurons sharing most of its buckets
  are taken, at most `active_fraction · intermediate` of them. A large gate_j · x means a large
  silu(gate_j · x); a negative one gives at most |silu| = 0.28, so the gate rows are the natural keys.
- `router="experts"`: MoEfication-style experts: neurons are clustered by co-activation
  (k-means on their normalised |silu(gate)·up| over calibration tokens), a linear router fitted by
  least squares predicts each expert's total |activation| from x, and the best-scoring experts
  covering `active_fraction` of the neurons are computed.
- `router="oracle"`: the true top neurons by |silu(gate)·up| (computes gate and up densely, so it is
  never faster; it measures what the fraction costs when routing is perfect).

Only gate·up of the active neurons is evaluated and only their down-projection columns are used.
SwiGLU activations are not ReLU-sparse, so quality falls with the fraction; see bench/llama.py.
"""
import numpy as np

import dreidel
import dreidel.functional as F
from dreidel import nn

__all__ = ["HashRoutedFFN", "moefy", "ffn_inputs"]

ROUTERS = ("hash", "experts", "oracle")


def _silu(x):
    return x / (1 + np.exp(-x))


class HashRoutedFFN(nn.Module):
    """SwiGLU FFN over a per-token subset of its intermediate neurons (see the module docstring).

    Parameters keep Hugging Face's names (`gate_proj.weight`, `up_proj.weight`, `down_proj.weight`);
    `gate_proj` is an `nn.ALSHSparseDense` (its hash tables are the router). After a forward,
    `active_fraction` is the mean fraction of neurons computed per token."""

    def __init__(self, hidden_size, intermediate_size, active_fraction=0.25, router="hash", hash="simhash",
                 bits=5, tables=48, experts=48, seed=0):
        super().__init__()
        if router not in ROUTERS:
            raise ValueError(f"HashRoutedFFN: router must be one of {ROUTERS}, got {router!r}")
        if not 0 < active_fraction <= 1:
            raise ValueError(f"HashRoutedFFN: active_fraction must be in (0, 1], got {active_fraction}")
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.router, self.target_fraction = router, float(active_fraction)
        self.max_active = max(1, int(round(active_fraction * intermediate_size)))
        self.gate_proj = nn.ALSHSparseDense(hidden_size, intermediate_size, hash=hash, bits=bits, tables=tables,
                                            max_active=self.max_active, bias=False, seed=seed)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.n_experts = int(experts)
        self.expert_of = None      # (intermediate,) expert id of each neuron ("experts" router)
        self.router_weight = None  # (experts, hidden) least-squares router
        self.active_fraction = 0.0
        self._down_t = self._down_source = None

    @classmethod
    def from_dense(cls, mlp, active_fraction=0.25, router="hash", inputs=None, **kwargs):
        """Copy a dense SwiGLU FFN (`LlamaMLP`: gate_proj, up_proj, down_proj Linear layers).
        `inputs` (tokens, hidden): calibration FFN inputs, needed by the "experts" router."""
        gate, up, down = (np.asarray(getattr(mlp, n).weight.numpy()) for n in ("gate_proj", "up_proj", "down_proj"))
        layer = cls(gate.shape[1], gate.shape[0], active_fraction, router, **kwargs)
        for module, weight in ((layer.gate_proj, gate), (layer.up_proj, up), (layer.down_proj, down)):
            if module.weight.shape != weight.shape:
                raise ValueError(f"HashRoutedFFN.from_dense: weight {weight.shape} does not fit {module.weight.shape}")
            module.weight.data = np.array(weight)
        if router == "experts":
            if inputs is None:
                raise ValueError("HashRoutedFFN.from_dense: router='experts' needs calibration `inputs` (tokens, hidden)")
            layer.fit_experts(np.asarray(inputs, dtype=gate.dtype).reshape(-1, layer.hidden_size))
        return layer

    # ---- routing -------------------------------------------------------------------------------
    def activations(self, x):
        """Dense silu(gate·x)·(up·x), (tokens, intermediate), numpy (the reference routing aims at)."""
        x = np.asarray(x, dtype=self.up_proj.weight.dtype)
        return _silu(x @ self.gate_proj.weight.data.T) * (x @ self.up_proj.weight.data.T)

    def fit_experts(self, inputs, iterations=15, seed=0):
        """Cluster neurons by co-activation over `inputs` and fit the least-squares router."""
        act = np.abs(self.activations(inputs)).astype(np.float64)        # (tokens, I)
        profile = act.T / (np.linalg.norm(act, axis=0)[:, None] + 1e-12)  # (I, tokens) unit rows
        rng = np.random.default_rng(seed)
        centres = profile[rng.choice(len(profile), self.n_experts, replace=False)]
        for _ in range(iterations):  # spherical k-means
            assign = np.argmax(profile @ centres.T, axis=1)
            for e in range(self.n_experts):
                members = profile[assign == e]
                centres[e] = members.sum(0) if len(members) else profile[rng.integers(len(profile))]
            centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-12
        self.expert_of = np.argmax(profile @ centres.T, axis=1)
        target = np.stack([act[:, self.expert_of == e].sum(1) for e in range(self.n_experts)], axis=1)
        design = np.concatenate([inputs.astype(np.float64), np.ones((len(inputs), 1))], axis=1)
        solution, *_ = np.linalg.lstsq(design, target, rcond=None)
        self.router_weight = solution.T.astype(np.float32)                 # (experts, hidden + 1)

    def select(self, row):
        """Active neuron ids (sorted int64) for one token's FFN input `row` (hidden,)."""
        row = np.asarray(row, dtype=self.up_proj.weight.dtype).reshape(1, -1)
        if self.router == "hash":
            return self.gate_proj.select_active(row)
        if self.router == "oracle":
            act = np.abs(self.activations(row)[0])
            return np.sort(np.argpartition(-act, self.max_active - 1)[:self.max_active]).astype(np.int64)
        if self.expert_of is None:
            raise RuntimeError("HashRoutedFFN: router='experts' has no experts yet; call fit_experts(inputs)")
        scores = self.router_weight[:, :-1] @ row[0] + self.router_weight[:, -1]
        sizes = np.bincount(self.expert_of, minlength=self.n_experts)
        order = np.argsort(-scores)
        count = int(np.searchsorted(np.cumsum(sizes[order]), self.max_active) + 1)
        chosen = np.zeros(self.n_experts, dtype=bool)
        chosen[order[:count]] = True
        return np.flatnonzero(chosen[self.expert_of]).astype(np.int64)

    def recall(self, inputs, k=None):
        """Mean fraction of each token's true top-k neurons by |silu(gate)·up| that the router
        selects (k defaults to the active budget), and the mean active fraction."""
        inputs = np.asarray(inputs, dtype=self.up_proj.weight.dtype).reshape(-1, self.hidden_size)
        k = self.max_active if k is None else int(k)
        act = np.abs(self.activations(inputs))
        hits, sizes = [], []
        for row, a in zip(inputs, act):
            active = self.select(row)
            top = np.argpartition(-a, k - 1)[:k]
            hits.append(np.isin(top, active).mean())
            sizes.append(active.size)
        return float(np.mean(hits)), float(np.mean(sizes)) / self.intermediate_size

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, x):
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.hidden_size)
        data = rows.numpy()
        actives = [self.select(r) for r in data]
        self.active_fraction = float(np.mean([a.size for a in actives])) / self.intermediate_size
        if not dreidel.is_grad_enabled():
            return dreidel.tensor(self._forward_numpy(data, actives).reshape(lead + (self.hidden_size,)))
        outs = []
        for i, active in enumerate(actives):  # differentiable path: the same sums through engine ops
            r = rows[i:i + 1]
            h = F.silu(F.linear(r, self.gate_proj.weight[active])) * F.linear(r, self.up_proj.weight[active])
            outs.append(F.linear(h, self.down_proj.weight[:, active]))
        return F.concat(outs, axis=0).reshape(lead + (self.hidden_size,))

    def _forward_numpy(self, data, actives):
        w = self.down_proj.weight.data
        if self._down_source is not w:  # columns of down_proj as contiguous rows: one gather per token
            self._down_t, self._down_source = np.ascontiguousarray(w.T), w
        gate, up = self.gate_proj.weight.data, self.up_proj.weight.data
        out = np.empty((len(data), self.hidden_size), dtype=w.dtype)
        for i, (row, active) in enumerate(zip(data, actives)):
            h = _silu(gate[active] @ row) * (up[active] @ row)
            out[i] = h @ self._down_t[active]
        return out

    def extra_repr(self):
        return (f"{self.hidden_size} → {self.intermediate_size}, router={self.router!r}, "
                f"active_fraction≤{self.target_fraction}")


class _Recorder(nn.Module):
    """Wraps a module and appends its outputs (as 2-D numpy arrays) to a list."""

    def __init__(self, inner, store):
        super().__init__()
        self.inner, self.store = inner, store

    def forward(self, x):
        y = self.inner(x)
        self.store.append(y.numpy().reshape(-1, y.shape[-1]).copy())
        return y


def ffn_inputs(model, input_ids):
    """Per layer, the FFN inputs (post-attention RMSNorm outputs, (tokens, hidden)) of one dense
    forward over `input_ids` — calibration data for `moefy(..., router="experts")`."""
    captured, originals = {}, []
    for i, layer in enumerate(model.model.layers):
        originals.append((layer, layer.post_attention_layernorm))
        layer.post_attention_layernorm = _Recorder(layer.post_attention_layernorm, captured.setdefault(i, []))
    try:
        with dreidel.no_grad():
            model(np.asarray(input_ids).reshape(1, -1))
    finally:
        for layer, norm in originals:
            layer.post_attention_layernorm = norm
    return [np.concatenate(captured[i]) for i in range(len(model.model.layers))]


def moefy(model, active_fraction, router="hash", calibration_ids=None, **kwargs):
    """Replace every layer's `mlp` of a LlamaForCausalLM by `HashRoutedFFN.from_dense` (in place);
    returns the dense FFNs so they can be put back (`restore(model, dense)`)."""
    inputs = ffn_inputs(model, calibration_ids) if router == "experts" else [None] * len(model.model.layers)
    dense = []
    for layer, x in zip(model.model.layers, inputs):
        dense.append(layer.mlp)
        layer.mlp = HashRoutedFFN.from_dense(layer.mlp, active_fraction, router, inputs=x, **kwargs)
    return dense


def restore(model, dense):
    """Put back the dense FFNs `moefy` returned."""
    for layer, mlp in zip(model.model.layers, dense):
        layer.mlp = mlp
