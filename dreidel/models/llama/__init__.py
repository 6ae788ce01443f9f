"""Llama-family decoders (SmolLM2, TinyLlama, ...): config, model, generation, GGUF tokenizer, chat.

    from dreidel.models.llama import LlamaConfig
"""
from dreidel.models.llama.config import LlamaConfig

__all__ = ["LlamaConfig"]
