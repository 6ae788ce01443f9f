"""Tokenizers implemented in dreidel (no `tokenizers` dependency): byte-level BPE and its
pluggable pre-tokenizers."""
from .bpe import ByteLevelBPE, bytes_to_unicode
from .pretokenize import GPT2PreTokenizer, char_class, scan_gpt2

__all__ = ["ByteLevelBPE", "bytes_to_unicode", "GPT2PreTokenizer", "char_class", "scan_gpt2"]
