"""Llama-family decoders (SmolLM2, TinyLlama, ...): config, model, generation, GGUF tokenizer, chat.

    from dreidel.models.llama import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig(...), linear=..., ffn=...)    # dense or student layers
    from importers.gguf_to_dreidel import load_llama                   # pretrained, from a GGUF file
"""
from dreidel.models.llama.config import LlamaConfig
from dreidel.models.llama.model import LlamaForCausalLM, LlamaModel, WeightMappingError

__all__ = ["LlamaConfig", "LlamaForCausalLM", "LlamaModel", "WeightMappingError"]
