"""Llama-family decoder (SmolLM2, TinyLlama, Llama 2/3 shapes) with Hugging Face parameter names.

    x = embed_tokens(ids)
    per layer:  x = x + o_proj(attention(rope(q_proj(rms(x))), rope(k_proj(…)), v_proj(…)))
                x = x + mlp(rms(x)),   mlp(h) = down_proj(silu(gate_proj(h)) · up_proj(h))
    logits = lm_head(norm(x))            (lm_head = embed_tokens when the embeddings are tied)

Attention is grouped-query (num_key_value_heads ≤ num_attention_heads) with rotary positions in the
Hugging Face "rotate_half" layout. Every projection is built by `linear(in, out, bias)` (dense
`nn.Linear` by default; DeepSpectralLinear, LowRankLinear, … fit) and every feed-forward block by
`ffn(hidden_size, intermediate_size, linear)` (default `LlamaMLP`), so compressed or sparse variants
plug in without touching the model. Generation uses a `StaticKVCache` preallocated to the context
length: one forward for the whole prompt, then one token per step.
"""
import numpy as np

import dreidel
import dreidel.functional as F
from dreidel import nn
from dreidel.models.weights import WeightMappingError, load_named_weights
from dreidel.nn.kv_cache import StaticKVCache

from .config import LlamaConfig

__all__ = ["LlamaMLP", "LlamaAttention", "LlamaDecoderLayer", "LlamaModel", "LlamaForCausalLM", "WeightMappingError"]


def dense_linear(rng=None):
    """The default `linear=` factory: `nn.Linear(in, out, bias)`."""
    return lambda in_features, out_features, bias: nn.Linear(in_features, out_features, bias=bias, rng=rng)


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward: down_proj(silu(gate_proj(x)) · up_proj(x)), no biases."""

    def __init__(self, hidden_size, intermediate_size, linear=None):
        super().__init__()
        linear = linear if linear is not None else dense_linear()
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.gate_proj = linear(hidden_size, intermediate_size, False)
        self.up_proj = linear(hidden_size, intermediate_size, False)
        self.down_proj = linear(intermediate_size, hidden_size, False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaAttention(nn.Module):
    """Causal grouped-query self-attention with rotary q/k (HF names q_proj, k_proj, v_proj, o_proj).

    `forward(x, cache=None)`: x (N, L, hidden); with a `LayerKVCache` the new keys/values are written
    into it and the queries (positions cache.length …) attend over everything stored."""

    def __init__(self, config, linear, rotary):
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = linear(config.hidden_size, self.num_heads * self.head_dim, bias)
        self.k_proj = linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias)
        self.v_proj = linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias)
        self.o_proj = linear(self.num_heads * self.head_dim, config.hidden_size, bias)
        self.rotary = rotary  # shared by all layers: parameter-free

    def _heads(self, x, heads):
        n, length = x.shape[:2]
        return F.transpose(x.reshape(n, length, heads, self.head_dim), (0, 2, 1, 3))

    def forward(self, x, cache=None):
        n, length = x.shape[:2]
        offset = cache.length if cache is not None else 0
        q = self.rotary(self._heads(self.q_proj(x), self.num_heads), offset=offset)
        k = self.rotary(self._heads(self.k_proj(x), self.num_kv_heads), offset=offset)
        v = self._heads(self.v_proj(x), self.num_kv_heads)
        if cache is not None:
            k, v = cache.append(k, v)
        # a single new query may see every stored key: no mask needed
        out = F.scaled_dot_product_attention(q, k, v, causal=length > 1)
        out = F.transpose(out, (0, 2, 1, 3)).reshape(n, length, self.num_heads * self.head_dim)
        return self.o_proj(out)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm residual block: attention then feed-forward, each after an RMSNorm."""

    def __init__(self, config, linear, ffn, rotary):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, linear, rotary)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = ffn(config.hidden_size, config.intermediate_size, linear)

    def forward(self, x, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and the final norm (Hugging Face's `model.` prefix)."""

    def __init__(self, config, linear, ffn, rng=None):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, rng=rng)
        self.embed_tokens.weight.data *= 0.02  # HF's initializer_range; N(0, 1) rows would swamp the norms
        rotary = nn.RotaryEmbedding(config.head_dim, base=config.rope_theta)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, linear, ffn, rotary)
                                     for _ in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids, cache=None):
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, None if cache is None else cache[i])
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    """A Llama language model: `forward(input_ids (N, L), cache=None) -> logits (N, L, vocab)`.

    `linear(in, out, bias)` builds every projection and `ffn(hidden, intermediate, linear)` every
    feed-forward block. `lm_head` exists only when the embeddings are not tied. `tokenizer` and
    `chat_template` are attached by `importers.gguf_to_dreidel.load_llama` (None otherwise)."""

    def __init__(self, config=None, linear=None, ffn=None, rng=None):
        super().__init__()
        self.config = config if config is not None else LlamaConfig()
        linear = linear if linear is not None else dense_linear(rng)
        ffn = ffn if ffn is not None else LlamaMLP
        self.model = LlamaModel(self.config, linear, ffn, rng=rng)
        self.lm_head = None if self.config.tie_word_embeddings else linear(
            self.config.hidden_size, self.config.vocab_size, False)
        self.tokenizer = None
        self._frozen_projection = None  # set only inside generate()

    # ---- computation ---------------------------------------------------------------------------
    def logits(self, hidden):
        """Output projection: `lm_head`, or the token embedding when tied. During `generate` (weights
        frozen) a contiguous transposed copy of the embedding is used: BLAS streams (hidden, vocab)
        ~1.6× faster than the transpose of (vocab, hidden) for one decode row (measured here). It
        is never kept past the call, since in-place optimizer steps would make it stale."""
        if self.lm_head is not None:
            return self.lm_head(hidden)
        if self._frozen_projection is not None and not dreidel.is_grad_enabled():
            h = hidden.numpy()
            out = h.reshape(-1, h.shape[-1]) @ self._frozen_projection
            return dreidel.tensor(out.reshape(h.shape[:-1] + (-1,)))
        return F.linear(hidden, self.model.embed_tokens.weight)

    def forward(self, input_ids, cache=None, last_only=False):
        """Logits (N, L, vocab) of the next token at every position (only the last if `last_only`).
        With a cache (`new_cache`), `input_ids` continue the sequence it holds."""
        ids = np.asarray(input_ids.numpy() if isinstance(input_ids, dreidel.Tensor) else input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"LlamaForCausalLM expects integer token ids (N, L), got {ids.dtype} {ids.shape}")
        start = cache.length if cache is not None else 0
        if start + ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {start + ids.shape[1]} positions exceeds the context length "
                             f"{self.config.max_position_embeddings}")
        hidden = self.model(ids, cache)
        if last_only:
            hidden = hidden[:, -1:]
        return self.logits(hidden)

    def loss(self, token_ids):
        """Next-token cross-entropy of `token_ids` (N, L): position t predicts token t+1."""
        ids = np.asarray(token_ids)
        logits = self.forward(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    def new_cache(self, capacity=None):
        """A KV cache for all layers, preallocated (at its first write) to `capacity` positions
        (default: the context length)."""
        capacity = self.config.max_position_embeddings if capacity is None else int(capacity)
        if not 0 < capacity <= self.config.max_position_embeddings:
            raise ValueError(f"cache capacity {capacity} must be in 1 … {self.config.max_position_embeddings}")
        return StaticKVCache(self.config.num_hidden_layers, capacity=capacity)

    def generate(self, input_ids, **options):
        """See `dreidel.models.llama.generate.generate` (greedy / sampling, stop tokens, streaming)."""
        from .generate import generate
        return generate(self, input_ids, **options)

    # ---- weights -------------------------------------------------------------------------------
    def load_weights(self, state, source="weights"):
        """Copy a {HF name: array} dict into the model after checking that it names exactly the
        model's tensors with the right shapes. A tied model accepts (and checks) `lm_head.weight`
        equal to the embedding. Modules that are not dense Linear layers load through their own
        `state_dict` names, so `linear=` factories must keep `weight` for this to apply."""
        load_named_weights(self, state, source, tied=None if self.lm_head is not None else
                           ("lm_head.weight", "model.embed_tokens.weight"), contiguous=True)
