"""Llama-family GGUF files -> (config fields, Hugging Face state dict): names, shapes, Q/K rows.

llama.cpp's converter (convert_hf_to_gguf.py, `LlamaModel.permute`) reorders the rows of q_proj
and k_proj within each head so that ggml's interleaved ("GPT-J") rotary embedding, which rotates
pairs (2i, 2i+1), reproduces Hugging Face's "rotate_half" embedding, which rotates pairs
(i, i + head_dim/2). `unpermute_rows` inverts it, giving the rows the Hugging Face layout that
dreidel's RotaryEmbedding expects.
"""
import re

import numpy as np

from dreidel.models.llama.tokenizer import PRE_TOKENIZERS
from importers.gguf_to_dreidel.errors import GGUFFormatError

SUPPORTED_ARCHITECTURES = ("llama",)

_TOP_LEVEL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_PER_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_TOP_NAME = re.compile(r"(\w+)\.(weight|bias)")


def hf_name(gguf_name):
    """The Hugging Face Llama parameter name of a GGUF tensor name, or None when there is none."""
    match = _LAYER_NAME.fullmatch(gguf_name)
    if match:
        layer, part, kind = match.groups()
        if part in _PER_LAYER and str(int(layer)) == layer:
            return f"model.layers.{layer}.{_PER_LAYER[part]}.{kind}"
        return None
    match = _TOP_NAME.fullmatch(gguf_name)
    if match and match.group(1) in _TOP_LEVEL:
        return f"{_TOP_LEVEL[match.group(1)]}.{match.group(2)}"
    return None


def permute_rows(weight, n_heads):
    """llama.cpp's converter permutation (HF -> GGUF) of the rows of a q/k projection (or bias):
    within each head, row (half h, index i) moves to row 2i + h."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_rows(weight, n_heads):
    """Inverse of `permute_rows` (GGUF -> HF): within each head, row 2i + h moves back to row
    h * head_dim/2 + i."""
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _get(gguf, key, kind, default=None, required=True):
    """Metadata value `key`: a positive int (`kind` int) or positive float (`kind` float)."""
    value = gguf.metadata.get(key, default)
    if value is None:
        if required:
            raise GGUFFormatError(f"{gguf.label}: metadata {key!r} is missing")
        return None
    kinds = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        raise GGUFFormatError(f"{gguf.label}: metadata {key!r} = {value!r} is not a positive {kind.__name__}")
    return value if kind is int else _decimal(value)


def _decimal(value):
    """A float32 metadata value as the shortest decimal that rounds to it (1e-05, not
    9.999999747e-06): the value the converter read from the Hugging Face config."""
    single = np.float32(value)
    return float(str(single)) if float(single) == value else float(value)


def unsupported_features(gguf):
    """Everything in this file that the Llama importer cannot handle (architecture, tensor types,
    tensors without a Hugging Face name, tokenizer, rope scaling, per-layer head counts), as messages."""
    problems = []
    arch = gguf.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        problems.append(f"architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    for name, type_name in gguf.unsupported_tensor_types().items():
        problems.append(f"tensor {name!r} has unsupported type {type_name}")
    for name in gguf.tensors:
        if hf_name(name) is None:
            problems.append(f"tensor {name!r} has no Hugging Face Llama counterpart")
    problems += _tokenizer_problems(gguf.metadata)
    if arch in SUPPORTED_ARCHITECTURES:
        scaling = gguf.metadata.get(f"{arch}.rope.scaling.type", "none")
        if scaling != "none":
            problems.append(f"rope scaling {scaling!r}")
        for key in ("attention.head_count", "attention.head_count_kv", "feed_forward_length"):
            if isinstance(gguf.metadata.get(f"{arch}.{key}"), (list, np.ndarray)):
                problems.append(f"per-layer {arch}.{key}")
        meta = gguf.metadata
        head_dim = meta.get(f"{arch}.attention.key_length")
        if head_dim is None and isinstance(meta.get(f"{arch}.embedding_length"), int) \
                and isinstance(meta.get(f"{arch}.attention.head_count"), int) and meta[f"{arch}.attention.head_count"] > 0:
            head_dim = meta[f"{arch}.embedding_length"] // meta[f"{arch}.attention.head_count"]
        for key in ("rope.dimension_count", "attention.value_length"):
            value = meta.get(f"{arch}.{key}", head_dim)
            if value != head_dim:
                problems.append(f"{arch}.{key} = {value} differs from the head size {head_dim}")
    return problems


def _tokenizer_problems(metadata):
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        return [f"tokenizer model {model!r} (supported: 'gpt2', byte-level BPE)"]
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        return [f"pre-tokenizer {pre!r} (supported: {', '.join(sorted(PRE_TOKENIZERS))})"]
    return []


def config_fields(gguf):
    """Hugging Face LlamaConfig fields from a llama-architecture file's metadata (and tensors)."""
    meta, key = gguf.metadata, "llama.{}".format
    heads = _get(gguf, key("attention.head_count"), int)
    hidden = _get(gguf, key("embedding_length"), int)
    kv_heads = _get(gguf, key("attention.head_count_kv"), int, default=heads)
    if heads % kv_heads:
        raise GGUFFormatError(f"{gguf.label}: {heads} attention heads are not a multiple of {kv_heads} kv heads")
    vocab = meta.get(key("vocab_size"))
    if vocab is None:  # older files: the vocabulary is the token list (or the embedding's rows)
        vocab = (len(meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in meta
                 else gguf.tensors["token_embd.weight"].shape[0] if "token_embd.weight" in gguf.tensors else None)
    return dict(
        vocab_size=_get(gguf, key("vocab_size"), int, default=vocab),
        hidden_size=hidden,
        intermediate_size=_get(gguf, key("feed_forward_length"), int),
        num_hidden_layers=_get(gguf, key("block_count"), int),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=_get(gguf, key("attention.key_length"), int, default=hidden // heads or None),
        max_position_embeddings=_get(gguf, key("context_length"), int),
        rope_theta=_get(gguf, key("rope.freq_base"), float, default=10000.0),
        rms_norm_eps=_get(gguf, key("attention.layer_norm_rms_epsilon"), float),
        tie_word_embeddings="output.weight" not in gguf.tensors,
        attention_bias=any(n.startswith("blk.") and ".attn_" in n and n.endswith(".bias") for n in gguf.tensors),
        bos_token_id=_token_id(gguf, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_token_id(gguf, "tokenizer.ggml.eos_token_id"),
        chat_template=_string(gguf, "tokenizer.chat_template"),
    )


def _token_id(gguf, key):
    value = gguf.metadata.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise GGUFFormatError(f"{gguf.label}: metadata {key!r} = {value!r} is not a token id")
    return value


def _string(gguf, key):
    value = gguf.metadata.get(key)
    if value is not None and not isinstance(value, str):
        raise GGUFFormatError(f"{gguf.label}: metadata {key!r} is not a string")
    return value


def expected_shapes(fields):
    """Hugging Face name -> shape for every parameter a Llama with these config fields may have
    (q/k/v/o biases only with attention_bias), in Hugging Face's parameter order."""
    hidden, inter, d = fields["hidden_size"], fields["intermediate_size"], fields["head_dim"]
    q, kv = fields["num_attention_heads"] * d, fields["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (fields["vocab_size"], hidden)}
    for i in range(fields["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj, rows, cols in (("q_proj", q, hidden), ("k_proj", kv, hidden), ("v_proj", kv, hidden),
                                 ("o_proj", hidden, q)):
            shapes[f"{p}self_attn.{proj}.weight"] = (rows, cols)
            shapes[f"{p}self_attn.{proj}.bias"] = (rows,)
        shapes.update({p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    shapes["model.norm.weight"] = (hidden,)
    if not fields["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (fields["vocab_size"], hidden)
    return shapes


def state_dict(gguf, fields):
    """Hugging Face name -> float32 array for every tensor, Q/K rows un-permuted; shapes checked."""
    shapes = expected_shapes(fields)
    names = {hf_name(n): n for n in gguf.tensors}
    wrong = [f"{g} ({n}): shape {gguf.tensors[g].shape}, config says {shapes.get(n)}"
             for n, g in names.items() if shapes.get(n) != gguf.tensors[g].shape]
    missing = [n for n in shapes if n not in names and (fields["attention_bias"] or not n.endswith(".bias"))]
    if wrong or missing:
        raise GGUFFormatError(f"{gguf.label}: tensors do not match the metadata's Llama config: "
                              + "; ".join(wrong + [f"{n} missing" for n in missing]))
    heads = {"q_proj": fields["num_attention_heads"], "k_proj": fields["num_key_value_heads"]}
    result = {}
    for name in (n for n in shapes if n in names):
        array = gguf.tensor(names[name])
        projection = name.split(".")[-2]
        if projection in heads:
            array = np.ascontiguousarray(unpermute_rows(array, heads[projection]))
        result[name] = array
    return result
