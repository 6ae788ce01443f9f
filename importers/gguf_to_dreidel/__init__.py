"""Import GGUF files (llama.cpp's format): a reader, dequantisers, and Llama models.

    from importers.gguf_to_dreidel import load_gguf, load_llama, read_gguf
    model = load_llama("SmolLM2-135M-Instruct.Q4_1.gguf")                     # a LlamaForCausalLM
    config, state, tokenizer = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")   # or its parts
    with read_gguf("model.gguf") as f:                                        # any architecture
        f.metadata["general.architecture"], f.tensors["token_embd.weight"].shape
        embedding = f.tensor("token_embd.weight")                             # float32, numpy shape

The reader handles GGUF v2/v3 (memory-mapped, lazy); tensors of type F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K dequantise to float32. Errors all derive from `GGUFError`
(a ValueError) and name the file: `GGUFFormatError` for malformed files, `GGUFUnsupportedError`
listing every unsupported feature (architecture, tensor types, ...) at once.
"""
from dreidel.models.llama import LlamaConfig, LlamaForCausalLM
from dreidel.models.llama.tokenizer import tokenizer_from_gguf
from importers.gguf_to_dreidel.errors import GGUFError, GGUFFormatError, GGUFUnsupportedError
from importers.gguf_to_dreidel.llama import SUPPORTED_ARCHITECTURES, hf_name, permute_rows, unpermute_rows
from importers.gguf_to_dreidel.quants import GGML_TYPES, SUPPORTED_TYPES, dequantize
from importers.gguf_to_dreidel.reader import GGUFFile, TensorInfo, read_gguf
from importers.gguf_to_dreidel import llama as _llama


def load_gguf(path):
    """Read a Llama-family GGUF file: `(config, state_dict, tokenizer)`.

    `config` is a `dreidel.models.llama.LlamaConfig` (context length, rope theta, RMS eps, heads,
    kv heads, vocab, sizes, tied embeddings, bos/eos ids, chat template); `state_dict` maps Hugging
    Face names (`model.layers.0.self_attn.q_proj.weight`, ...) to float32 arrays with q/k rows in
    the Hugging Face rotary layout; `tokenizer` is a `dreidel.models.llama.tokenizer.GGUFTokenizer`
    built from the file's `tokenizer.*` metadata.
    Raises `GGUFUnsupportedError` listing every unsupported feature before dequantising anything.
    """
    with read_gguf(path) as gguf:
        problems = _llama.unsupported_features(gguf)
        if problems:
            raise GGUFUnsupportedError(gguf.label, problems)
        fields = _llama.config_fields(gguf)
        try:  # the config and tokenizer check their values (and name the file) before any dequantising
            config, tokenizer = LlamaConfig(**fields), tokenizer_from_gguf(gguf.metadata, source=gguf.label)
        except ValueError as exc:
            raise GGUFFormatError(str(exc) if gguf.label in str(exc) else f"{gguf.label}: {exc}") from None
        return config, _llama.state_dict(gguf, fields), tokenizer


def load_llama(path, linear=None, ffn=None):
    """A ready `LlamaForCausalLM` from a Llama-family GGUF file: weights dequantised to float32,
    `model.tokenizer` (and its chat template) from the file's metadata. `linear=` / `ffn=` build a
    student with other layers, as `LlamaForCausalLM(config, linear=..., ffn=...)` does."""
    config, state, tokenizer = load_gguf(path)
    model = LlamaForCausalLM(config, linear=linear, ffn=ffn)
    model.load_weights(state, f"{path}: tensors")
    model.tokenizer = tokenizer
    return model


__all__ = ["load_gguf", "load_llama", "read_gguf", "GGUFFile", "TensorInfo", "GGUFError", "GGUFFormatError",
           "GGUFUnsupportedError", "GGML_TYPES", "SUPPORTED_TYPES", "SUPPORTED_ARCHITECTURES", "dequantize",
           "hf_name", "permute_rows", "unpermute_rows"]
