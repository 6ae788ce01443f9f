"""Whisper encoder-decoder in dreidel, with Hugging Face parameter names.

    model.encoder: conv1 (k3) → GELU → conv2 (k3, stride 2) → GELU → + sinusoidal positions
                   → pre-LN blocks (self_attn, fc1/fc2) → layer_norm
    model.decoder: embed_tokens + embed_positions → pre-LN blocks (causal self_attn, encoder_attn,
                   fc1/fc2) → layer_norm → logits = hidden · embed_tokensᵀ (tied: one parameter)

Every projection (attention q/k/v/out and the MLP's fc1/fc2) is built by the `linear(in, out, bias)`
factory (default dense `nn.Linear`), so a spectral, low-rank or hash-sparse student is this same class.
"""
import math
import shutil
from pathlib import Path

import numpy as np

import dreidel
import dreidel.functional as F
from dreidel import nn, ops
from dreidel.models.weights import WeightMappingError, load_named_weights
from dreidel.nn.kv_cache import StaticKVCache

from .config import WhisperConfig

__all__ = ["Whisper", "WhisperModel", "WhisperEncoder", "WhisperDecoder", "sinusoids", "WeightMappingError"]

_SIDE_FILES = ("tokenizer.json", "preprocessor_config.json")


def sinusoids(length, channels, max_timescale=10000):
    """Whisper's fixed encoder positions: [sin | cos] of geometric timescales, (length, channels)."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inverse = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inverse[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def _dense(rng):
    return lambda in_features, out_features, bias=True: nn.Linear(in_features, out_features, bias=bias, rng=rng)


def _gelu(config):
    return "none" if config.activation_function == "gelu" else "tanh"


class WhisperAttention(nn.MultiHeadAttention):
    """Whisper's attention (HF names q_proj/k_proj/v_proj/out_proj, no k_proj bias).

    Like Hugging Face, q is scaled right after its projection, so the (L, S) scores need no extra
    pass; without a causal mask (the encoder, cross-attention, single-token decoding steps) it is
    `ops.softmax_attention` (blocked and weight-free at inference), otherwise
    `F.scaled_dot_product_attention`.  `cache` is a
    `LayerKVCache` (static for cross-attention)."""

    def split_heads(self, x):
        n, length = x.shape[:2]
        if length == 1:  # a decoding step: moving a length-1 axis is a reshape, no transpose op
            return x.reshape(n, self.num_heads, 1, self.head_dim)
        return F.transpose(x.reshape(n, length, self.num_heads, self.head_dim), (0, 2, 1, 3))

    def forward(self, x, states=None, cache=None):
        n, length = x.shape[:2]
        q = self.split_heads(self.q_proj(x) * self.scale)
        if cache is not None and cache.static and cache.key is not None:
            k, v = cache.key, cache.value
        else:
            source = x if states is None else states
            k, v = self.split_heads(self.k_proj(source)), self.split_heads(self.v_proj(source))
            if cache is not None:
                k, v = cache.append(k, v)
        if self.causal and length > 1:
            out = F.scaled_dot_product_attention(q, k, v, causal=True, scale=1.0)
        else:
            out = ops.softmax_attention(q, k, v, scale=1.0)
        if length > 1:
            out = F.transpose(out, (0, 2, 1, 3))
        out = out.reshape(n, length, self.num_heads * self.head_dim)
        return self.out_proj(out)


class _Block(nn.Module):
    """A pre-LN transformer block; with `cross=True` it also attends to the encoder output."""

    def __init__(self, d_model, heads, ffn_dim, linear, approximate, causal=False, cross=False):
        super().__init__()
        self.self_attn = WhisperAttention(d_model, heads, causal=causal, key_bias=False, projection=linear)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        if cross:
            self.encoder_attn = WhisperAttention(d_model, heads, key_bias=False, projection=linear)
            self.encoder_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = linear(d_model, ffn_dim, True)
        self.fc2 = linear(ffn_dim, d_model, True)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.approximate = approximate

    def forward(self, x, encoder_hidden_states=None, self_cache=None, cross_cache=None):
        x = x + self.self_attn(self.self_attn_layer_norm(x), cache=self_cache)
        if hasattr(self, "encoder_attn"):
            x = x + self.encoder_attn(self.encoder_attn_layer_norm(x), encoder_hidden_states, cache=cross_cache)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x)), approximate=self.approximate))

class WhisperEncoder(nn.Module):
    """Log-mel features (N, num_mel_bins, 2·max_source_positions) → hidden states (N, T, d_model)."""

    def __init__(self, config, linear, rng=None):
        super().__init__()
        d = config.d_model
        self.conv1 = nn.Conv1d(config.num_mel_bins, d, 3, padding=1, rng=rng)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1, rng=rng)
        self.embed_positions = nn.Embedding(config.max_source_positions, d, rng=rng)
        self.embed_positions.weight.data = sinusoids(config.max_source_positions, d)
        self.embed_positions.weight.requires_grad_(False)  # fixed, as in Whisper
        self.layers = nn.ModuleList([_Block(d, config.encoder_attention_heads, config.encoder_ffn_dim, linear,
                                            _gelu(config)) for _ in range(config.encoder_layers)])
        self.layer_norm = nn.LayerNorm(d)
        self.approximate = _gelu(config)

    def forward(self, input_features):
        x = input_features if isinstance(input_features, dreidel.Tensor) else dreidel.tensor(
            np.asarray(input_features, np.float32))
        if x.ndim != 3 or x.shape[1] != self.conv1.in_channels:
            raise ValueError(f"Whisper encoder expects features (N, {self.conv1.in_channels}, frames), got {x.shape}")
        x = F.gelu(self.conv1(x), approximate=self.approximate)
        x = F.gelu(self.conv2(x), approximate=self.approximate)
        x = F.transpose(x, (0, 2, 1))
        if x.shape[1] > self.embed_positions.weight.shape[0]:
            raise ValueError(f"Whisper encoder: {x.shape[1]} positions exceed max_source_positions "
                             f"{self.embed_positions.weight.shape[0]}")
        x = x + self.embed_positions.weight[:x.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class WhisperDecoder(nn.Module):
    """Token ids (N, L) and encoder states (N, T, d) → hidden states (N, L, d), optionally cached."""

    def __init__(self, config, linear, rng=None):
        super().__init__()
        d = config.d_model
        self.embed_tokens = nn.Embedding(config.vocab_size, d, rng=rng)
        self.embed_positions = nn.Embedding(config.max_target_positions, d, rng=rng)
        self.layers = nn.ModuleList([_Block(d, config.decoder_attention_heads, config.decoder_ffn_dim, linear,
                                            _gelu(config), causal=True, cross=True)
                                     for _ in range(config.decoder_layers)])
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, input_ids, encoder_hidden_states=None, self_cache=None, cross_cache=None):
        ids = np.asarray(input_ids.numpy() if isinstance(input_ids, dreidel.Tensor) else input_ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"Whisper decoder expects integer input_ids (N, L), got {ids.dtype} {ids.shape}")
        start = self_cache.length if self_cache is not None else 0
        if start + ids.shape[1] > self.embed_positions.weight.shape[0]:
            raise ValueError(f"Whisper decoder: positions up to {start + ids.shape[1]} exceed "
                             f"max_target_positions {self.embed_positions.weight.shape[0]}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.embed_tokens.weight.shape[0]):
            raise ValueError(f"Whisper decoder: token ids must lie in [0, {self.embed_tokens.weight.shape[0]})")
        x = self.embed_tokens(ids) + self.embed_positions.weight[start:start + ids.shape[1]]
        for i, layer in enumerate(self.layers):
            x = layer(x, encoder_hidden_states,
                      self_cache[i] if self_cache is not None else None,
                      cross_cache[i] if cross_cache is not None else None)
        return self.layer_norm(x)


class WhisperModel(nn.Module):
    def __init__(self, config, linear, rng=None):
        super().__init__()
        self.encoder = WhisperEncoder(config, linear, rng)
        self.decoder = WhisperDecoder(config, linear, rng)


class Whisper(nn.Module):
    """Whisper for speech recognition (HF `WhisperForConditionalGeneration` names under `model.`).

    `linear(in_features, out_features, bias)` builds every projection (default `nn.Linear`); `rng`
    seeds the default initialisation.  `forward(input_features, decoder_input_ids)` gives logits;
    `loss` the teacher-forced cross-entropy; `generate` / `transcribe` decode (see decoding.py).
    """

    def __init__(self, config=None, linear=None, rng=None):
        super().__init__()
        self.config = config if config is not None else WhisperConfig()
        self.model = WhisperModel(self.config, linear if linear is not None else _dense(rng), rng)
        self.tokenizer = None
        self._embedding_layout()

    # ---- computation ---------------------------------------------------------------------------
    def encode(self, input_features):
        """Encoder hidden states (N, T, d_model) of log-mel features (N, mels, frames)."""
        return self.model.encoder(input_features)

    def logits(self, hidden):
        """Output projection, tied to the token embedding (see `_embedding_layout`)."""
        return F.linear(hidden, self.model.decoder.embed_tokens.weight)

    def _embedding_layout(self):
        """Keep the (vocab, d) embedding in column-major memory: its transpose, which the output
        projection multiplies by, is then a contiguous (d, vocab) matrix, which BLAS reads two to
        three times faster for the few rows of a decoding step; row lookups barely notice."""
        weight = self.model.decoder.embed_tokens.weight
        weight.data = np.asfortranarray(weight.data)

    def decode(self, input_ids, encoder_hidden_states=None, self_cache=None, cross_cache=None, last_only=False):
        """Logits (N, L, V) of the next token at every position (only the last one if `last_only`)."""
        hidden = self.model.decoder(input_ids, encoder_hidden_states, self_cache, cross_cache)
        if last_only:
            hidden = hidden[:, -1:]
        return self.logits(hidden)

    def forward(self, input_features, decoder_input_ids):
        return self.decode(decoder_input_ids, self.encode(input_features))

    def loss(self, input_features, token_ids, ignore_index=-100):
        """Teacher-forced cross-entropy: position t predicts token t+1 of `token_ids` (N, L);
        targets equal to `ignore_index` (padding) do not count."""
        ids = np.asarray(token_ids)
        inputs = np.where(ids[:, :-1] == ignore_index, self.config.pad_token_id, ids[:, :-1])
        logits = self.forward(input_features, inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                               ignore_index=ignore_index)

    def new_caches(self, capacity):
        """(self-attention cache with `capacity` positions, cross-attention cache) for decoding."""
        layers = self.config.decoder_layers
        return StaticKVCache(layers, capacity=capacity), StaticKVCache(layers, static=True)

    # ---- decoding ------------------------------------------------------------------------------
    def generate(self, input_features, beam_size=1, max_new_tokens=None, use_cache=True):
        """Token ids (prompt + generated + end) per clip, greedy (beam_size=1) or beam search."""
        from .decoding import beam_search, greedy
        if beam_size > 1:
            return beam_search(self, input_features, beam_size, max_new_tokens=max_new_tokens)
        return greedy(self, input_features, max_new_tokens=max_new_tokens, use_cache=use_cache)

    def transcribe(self, audio, beam_size=1, batch_size=8, progress=False):
        """Transcribe WAV paths or 16 kHz sample arrays: a list of {"text", "token_ids"} per clip.

        A single path/array gives a single dict.  Clips are decoded `batch_size` at a time (one
        encoder call and one decode loop per batch)."""
        from .decoding import transcribe
        return transcribe(self, audio, beam_size=beam_size, batch_size=batch_size, progress=progress)

    # ---- weights -------------------------------------------------------------------------------
    def load_weights(self, state, source="weights"):
        """Copy a {HF name: array} dict into the model, after checking it names exactly the model's
        tensors with the right shapes (`proj_out.weight`, if present, must equal the embedding)."""
        load_named_weights(self, state, source, tied=("proj_out.weight", "model.decoder.embed_tokens.weight"))
        self._embedding_layout()

    @classmethod
    def from_onnx(cls, encoder_path, decoder_path, config=None, linear=None):
        """Whisper from an `optimum` export's `encoder_model.onnx` + `decoder_model.onnx`.

        Initializers are read with the ONNX importer's loader; MatMul weights (stored transposed
        under exporter names like `onnx::MatMul_448`) are named after the MatMul node's scope in the
        graph.  `config` defaults to the folder's config.json (+ generation_config.json); the
        folder's tokenizer.json, if any, becomes `model.tokenizer`."""
        from .onnx_weights import read_onnx_weights
        encoder_path, decoder_path = Path(encoder_path), Path(decoder_path)
        if config is None:
            config = WhisperConfig.from_json(encoder_path.parent / "config.json")
        model = cls(config, linear=linear)
        state = {}
        state.update(read_onnx_weights(encoder_path, "model.encoder.", config))
        state.update(read_onnx_weights(decoder_path, "model.decoder.", config))
        model.load_weights(state, f"ONNX initializers of {encoder_path.name} + {decoder_path.name}")
        model._load_tokenizer(encoder_path.parent)
        return model

    def save_pretrained(self, folder):
        """Write `config.json` and `model.safetensors` (HF names; dense models only) into `folder`,
        plus the tokenizer when the model has one."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder)
        dreidel.save(self.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})
        if self.tokenizer is not None and getattr(self, "_tokenizer_file", None):
            if Path(self._tokenizer_file).resolve() != (folder / "tokenizer.json").resolve():
                shutil.copyfile(self._tokenizer_file, folder / "tokenizer.json")

    @classmethod
    def from_pretrained(cls, folder, linear=None):
        """Load a folder with `config.json` + `model.safetensors` (this class's save_pretrained, or a
        Hugging Face Whisper checkpoint's safetensors with the same names)."""
        folder = Path(folder)
        config = WhisperConfig.from_json(folder / "config.json")
        model = cls(config, linear=linear)
        state = dreidel.load(folder / "model.safetensors")
        model.load_weights(state, f"{folder / 'model.safetensors'}")
        model._load_tokenizer(folder)
        return model

    @classmethod
    def load(cls, folder, linear=None):
        """A saved dreidel/HF checkpoint folder (model.safetensors) or an ONNX export folder."""
        folder = Path(folder)
        if (folder / "model.safetensors").is_file():
            return cls.from_pretrained(folder, linear=linear)
        if (folder / "encoder_model.onnx").is_file() and (folder / "decoder_model.onnx").is_file():
            return cls.from_onnx(folder / "encoder_model.onnx", folder / "decoder_model.onnx", linear=linear)
        raise FileNotFoundError(f"{folder}: neither model.safetensors nor encoder_model.onnx + decoder_model.onnx")

    def _load_tokenizer(self, folder):
        from dreidel.tokenizers import ByteLevelBPE
        path = Path(folder) / "tokenizer.json"
        if path.is_file():
            self.tokenizer = ByteLevelBPE.from_tokenizer_json(path)
            self._tokenizer_file = str(path)
