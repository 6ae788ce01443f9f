"""The tokenizer of a GGUF file, built from its `tokenizer.*` metadata, as llama.cpp builds it.

llama.cpp (src/llama-vocab.cpp) reads, for `tokenizer.ggml.model == "gpt2"` (byte-level BPE):
`tokenizer.ggml.tokens` (id → token string in GPT-2's byte→unicode alphabet), `.merges` ("a b" in
rank order), `.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte),
`.bos_token_id`/`.eos_token_id`, `.add_bos_token` (absent: no BOS for BPE vocabularies, except the
pre-tokenizers llama.cpp forces it for, which are not supported here) and `.pre`, which picks the
pre-tokenizer regexes; a missing or unknown `.pre` is an error here (llama.cpp falls back to a
"default" split that no supported model uses). Control tokens are matched in the text only when special tokens are parsed
(`allowed_special`); user-defined tokens always are (dreidel.tokenizers' special / added tokens).

Pre-tokenizers: "gpt-2" (and mpt, olmo, jais) is GPT-2's regex. "smollm" (SmolLM/SmolLM2, and
starcoder, refact, command-r, codeshell, exaone, minerva-7b) runs `\\p{N}` first, so every digit is a
piece of its own, then GPT-2's regex on the text between digits (Hugging Face: Digits(individual)
then ByteLevel).
"""
import numpy as np

from dreidel.tokenizers import ByteLevelBPE, GPT2PreTokenizer, bytes_to_unicode, char_class, scan_gpt2
from dreidel.tokenizers.pretokenize import NUMBER

__all__ = ["GGUFTokenizer", "SmolLMPreTokenizer", "tokenizer_from_gguf", "PRE_TOKENIZERS"]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# Byte symbols a vocabulary lacks (SmolLM2 has no token for 21 control bytes) map to this id, which
# encode() drops: llama.cpp emits a byte's token only when the vocabulary has one.
_MISSING_BYTE = -1


class SmolLMPreTokenizer:
    """llama.cpp's "smollm" split: each digit (\\p{N}) alone, GPT-2's split on the runs between."""

    def __call__(self, text):
        pieces, start = [], 0
        for i, ch in enumerate(text):
            if char_class(ch) == NUMBER:
                if start < i:
                    pieces.extend(scan_gpt2(text[start:i]))
                pieces.append(ch)
                start = i + 1
        if start < len(text):
            pieces.extend(scan_gpt2(text[start:]))
        return pieces

    def __repr__(self):
        return "SmolLMPreTokenizer()"


PRE_TOKENIZERS = {name: GPT2PreTokenizer for name in ("gpt-2", "mpt", "olmo", "jais")}
PRE_TOKENIZERS.update({name: SmolLMPreTokenizer for name in (
    "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b")})


class GGUFTokenizer(ByteLevelBPE):
    """A byte-level BPE with the file's BOS/EOS rules. `encode(text)` prepends BOS when the file says
    so (`add_bos_token`); `encode(text, add_special_tokens=False)` never does."""

    def __init__(self, vocab, merges, special_tokens=None, pre_tokenizer=None, added_tokens=None,
                 bos_token_id=None, eos_token_id=None, add_bos_token=False, pre="gpt-2"):
        super().__init__(vocab, merges, special_tokens, pre_tokenizer, added_tokens)
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.add_bos_token, self.pre = bool(add_bos_token), pre

    def encode(self, text, allowed_special="all", add_special_tokens=True):
        ids = [i for i in super().encode(text, allowed_special=allowed_special) if i != _MISSING_BYTE]
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def __repr__(self):
        return (f"GGUFTokenizer(vocab={len(self)}, merges={len(self.ranks)}, pre={self.pre!r}, "
                f"add_bos_token={self.add_bos_token})")


def tokenizer_from_gguf(metadata, source="GGUF file"):
    """A `GGUFTokenizer` from a GGUF file's metadata dict (keys `tokenizer.ggml.*`); `source` names
    the file in errors."""
    def get(key, default=None, required=False):
        value = metadata.get(key, default)
        if value is None and required:
            raise ValueError(f"{source}: metadata {key!r} is missing")
        return value

    model = get("tokenizer.ggml.model", required=True)
    if model != "gpt2":
        raise ValueError(f"{source}: tokenizer model {model!r} is not supported (only 'gpt2', byte-level BPE)")
    pre = get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"{source}: pre-tokenizer {pre!r} is not supported (supported: {', '.join(sorted(PRE_TOKENIZERS))})")
    tokens = list(get("tokenizer.ggml.tokens", required=True))
    merges = list(get("tokenizer.ggml.merges", required=True))
    types = np.asarray(get("tokenizer.ggml.token_type", [NORMAL] * len(tokens)))
    if types.shape != (len(tokens),) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{source}: tokenizer.ggml.tokens ({len(tokens)} entries) and token_type "
                         f"(shape {types.shape}) do not match, or tokens are not strings")
    vocab, special, added = {}, {}, {}
    for i, (token, kind) in enumerate(zip(tokens, types.tolist())):
        table = special if kind in (CONTROL, UNKNOWN) else added if kind == USER_DEFINED else vocab
        table[token] = i  # the last id wins for a duplicated string, as in llama.cpp's token_to_id
    for symbol in bytes_to_unicode().values():
        vocab.setdefault(symbol, _MISSING_BYTE)
    ids = {}
    for key in ("bos", "eos"):
        value = get(f"tokenizer.ggml.{key}_token_id")
        if value is not None and not 0 <= int(value) < len(tokens):
            raise ValueError(f"{source}: tokenizer.ggml.{key}_token_id = {value} is outside the vocabulary "
                             f"of {len(tokens)}")
        ids[key] = None if value is None else int(value)
    try:
        return GGUFTokenizer(vocab, merges, special, PRE_TOKENIZERS[pre](), added,
                             bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                             add_bos_token=bool(get("tokenizer.ggml.add_bos_token", False)), pre=pre)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
