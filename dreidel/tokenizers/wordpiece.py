"""WordPiece (BERT-style) tokenization read from a Hugging Face `tokenizer.json`, in pure Python.

    tok = WordPieceTokenizer.from_file("tokenizer.json")
    batch = tok(["Hello, world!", "Another sentence."])      # dict of int64 arrays [N, L]
    batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]

Follows the file: the normalizer (BertNormalizer: clean text, pad CJK characters, strip accents,
lowercase; or a Sequence of Lowercase/NFD/NFC/NFKC/NFKD/StripAccents), the pre-tokenizer
(BertPreTokenizer: split on whitespace and isolate every punctuation character; Whitespace,
WhitespaceSplit, Punctuation or a Sequence of them), the WordPiece model (greedy longest match,
`##` continuation, `[UNK]` for words that cannot be covered or are too long), the post-processor
([CLS] … [SEP] from TemplateProcessing or BertProcessing) and the truncation length. Special tokens
from `added_tokens` written literally in the text (e.g. "[MASK]") map to their ids.
"""
import json
import os
import unicodedata

import numpy as np


class TokenizerError(ValueError):
    """A tokenizer file is missing, malformed or uses a feature this tokenizer does not implement."""


def _is_punctuation(char):
    # BERT's definition: every non-alphanumeric ASCII symbol, plus Unicode's P* categories
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_control(char):
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf", "Cn", "Co", "Cs")


def _is_chinese(code):
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF
            or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F)


def _strip_accents(text):
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def _bert_normalizer(spec):
    clean, chinese = spec.get("clean_text", True), spec.get("handle_chinese_chars", True)
    lowercase = spec.get("lowercase", True)
    strip = spec.get("strip_accents")
    strip = lowercase if strip is None else strip  # Hugging Face: unset follows `lowercase`

    def normalize(text):
        if clean:
            text = "".join(" " if c.isspace() else c for c in text
                           if not (ord(c) in (0, 0xFFFD) or _is_control(c)))
        if chinese:
            text = "".join(f" {c} " if _is_chinese(ord(c)) else c for c in text)
        if strip:
            text = _strip_accents(text)
        if lowercase:
            text = text.lower()
        return text
    return normalize


def _normalizer(spec):
    if spec is None:
        return lambda text: text
    kind = spec.get("type")
    if kind == "BertNormalizer":
        return _bert_normalizer(spec)
    if kind == "Sequence":
        steps = [_normalizer(s) for s in spec.get("normalizers", [])]

        def normalize(text):
            for step in steps:
                text = step(text)
            return text
        return normalize
    simple = {"Lowercase": str.lower, "StripAccents": _strip_accents,
              "NFD": lambda t: unicodedata.normalize("NFD", t), "NFC": lambda t: unicodedata.normalize("NFC", t),
              "NFKD": lambda t: unicodedata.normalize("NFKD", t), "NFKC": lambda t: unicodedata.normalize("NFKC", t)}
    if kind in simple:
        return simple[kind]
    raise TokenizerError(f"normalizer {kind!r} is not supported (BertNormalizer, Sequence, "
                         f"{', '.join(simple)} are)")


def _split_whitespace_and_punctuation(text):
    words, current = [], []
    for char in text:
        if char.isspace() or _is_punctuation(char):
            if current:
                words.append("".join(current))
                current = []
            if not char.isspace():
                words.append(char)
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def _split_whitespace_then_word_runs(text):
    # Hugging Face's `Whitespace`: the regex \w+|[^\w\s]+
    words = []
    for chunk in text.split():
        current, kind = [], None
        for char in chunk:
            word_char = char.isalnum() or char == "_"
            if current and word_char != kind:
                words.append("".join(current))
                current = []
            current.append(char)
            kind = word_char
        if current:
            words.append("".join(current))
    return words


def _pre_tokenizer(spec):
    """A function text -> words; a Sequence applies each step to every word of the previous one."""
    if spec is None:
        return str.split
    kind = spec.get("type")
    simple = {"BertPreTokenizer": _split_whitespace_and_punctuation, "WhitespaceSplit": str.split,
              "Whitespace": _split_whitespace_then_word_runs, "Punctuation": _split_whitespace_and_punctuation}
    if kind in simple:
        return simple[kind]
    if kind == "Sequence":
        steps = [_pre_tokenizer(step) for step in spec.get("pretokenizers", [])]

        def pre_tokenize(text):
            words = [text]
            for step in steps:
                words = [piece for word in words for piece in step(word)]
            return words
        return pre_tokenize
    raise TokenizerError(f"pre-tokenizer {kind!r} is not supported ({', '.join(simple)} and Sequence are)")


class WordPieceTokenizer:
    """A BERT-style WordPiece tokenizer; build it with `from_file(tokenizer.json)`.

    `__call__(texts, max_length=None, padding="longest")` returns `input_ids`, `attention_mask` and
    `token_type_ids` as int64 arrays [N, L]; `encode(text)` returns one sentence's ids.
    """

    def __init__(self, vocab, unk_token="[UNK]", prefix="##", max_input_chars_per_word=100, normalizer=None,
                 pre_tokenizer=None, cls_token="[CLS]", sep_token="[SEP]", pad_id=0, max_length=None,
                 special_tokens=(), source="tokenizer"):
        self.vocab, self.source = dict(vocab), source
        for token in (unk_token, cls_token, sep_token):
            if token is not None and token not in self.vocab:
                raise TokenizerError(f"{source}: special token {token!r} is not in the vocabulary")
        self.unk_id = self.vocab[unk_token]
        self.cls_id = None if cls_token is None else self.vocab[cls_token]
        self.sep_id = None if sep_token is None else self.vocab[sep_token]
        self.prefix, self.max_chars, self.pad_id = prefix, max_input_chars_per_word, pad_id
        self.normalize = _normalizer(normalizer)
        self.pre_tokenize = _pre_tokenizer(pre_tokenizer)
        self.max_length = max_length
        # longest first, so "[MASK]x" never matches a shorter special token that is its prefix
        self.special_tokens = sorted((t for t in special_tokens if t in self.vocab), key=len, reverse=True)
        self.id_to_token = {i: t for t, i in self.vocab.items()}

    @classmethod
    def from_file(cls, path):
        """Read a Hugging Face `tokenizer.json` whose model is WordPiece; clear errors otherwise."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                spec = json.load(f)
        except FileNotFoundError:
            raise TokenizerError(f"{path}: tokenizer file not found") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TokenizerError(f"{path}: not a JSON tokenizer file ({error})") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise TokenizerError(f"{path}: no 'model' section (is this a Hugging Face tokenizer.json?)")
        model = spec["model"]
        if model.get("type") != "WordPiece":
            raise TokenizerError(f"{path}: model type {model.get('type')!r} is not WordPiece")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not vocab or \
                not all(isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in vocab.items()):
            raise TokenizerError(f"{path}: the WordPiece vocabulary must map strings to non-negative ids")
        cls_token, sep_token = cls._special_pair(spec.get("post_processor"), path)
        padding = spec.get("padding") or {}
        truncation = spec.get("truncation") or {}
        specials = [t["content"] for t in spec.get("added_tokens", []) if t.get("special")]
        return cls(vocab, unk_token=model.get("unk_token", "[UNK]"),
                   prefix=model.get("continuing_subword_prefix", "##"),
                   max_input_chars_per_word=model.get("max_input_chars_per_word", 100),
                   normalizer=spec.get("normalizer"), pre_tokenizer=spec.get("pre_tokenizer"),
                   cls_token=cls_token, sep_token=sep_token, pad_id=padding.get("pad_id", vocab.get("[PAD]", 0)),
                   max_length=truncation.get("max_length"), special_tokens=specials, source=path)

    @staticmethod
    def _special_pair(post, path):
        if post is None:
            return None, None
        kind = post.get("type")
        if kind == "BertProcessing":
            return post["cls"][0], post["sep"][0]
        if kind == "TemplateProcessing":
            single = post.get("single", [])
            names = [item.get("SpecialToken", {}).get("id") if "SpecialToken" in item else "$A" for item in single]
            if len(names) == 3 and names[1] == "$A":
                return names[0], names[2]
            if names == ["$A"]:
                return None, None
        raise TokenizerError(f"{path}: post-processor {kind!r} with this template is not supported "
                             f"(expected [CLS] $A [SEP])")

    # -- encoding ------------------------------------------------------------------------------
    def _word_pieces(self, word):
        if len(word) > self.max_chars:
            return [self.unk_id]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    pieces.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:  # no piece covers this position: the whole word is unknown
                return [self.unk_id]
            start = end
        return pieces

    def _split_specials(self, text):
        if not self.special_tokens:
            return [(text, False)]
        parts, start, i = [], 0, 0
        while i < len(text):
            for token in self.special_tokens:
                if text.startswith(token, i):
                    parts.append((text[start:i], False))
                    parts.append((token, True))
                    i += len(token)
                    start = i
                    break
            else:
                i += 1
        parts.append((text[start:], False))
        return parts

    def tokenize(self, text):
        """The WordPiece tokens of one text (no [CLS]/[SEP])."""
        return [self.id_to_token[i] for i in self._ids(text)]

    def _ids(self, text):
        if not isinstance(text, str):
            raise TypeError(f"texts must be str, got {type(text).__name__}")
        ids = []
        for part, special in self._split_specials(text):
            if special:
                ids.append(self.vocab[part])
                continue
            for word in self.pre_tokenize(self.normalize(part)):
                ids.extend(self._word_pieces(word))
        return ids

    def encode(self, text, max_length=None):
        """One text's ids with [CLS]/[SEP], truncated to `max_length` (default: the file's)."""
        ids = self._ids(text)
        max_length = self.max_length if max_length is None else max_length
        specials = (self.cls_id is not None) + (self.sep_id is not None)
        if max_length is not None:
            if max_length <= specials:
                raise ValueError(f"max_length={max_length} leaves no room for text beside the special tokens")
            ids = ids[:max_length - specials]
        return ([self.cls_id] if self.cls_id is not None else []) + ids + \
            ([self.sep_id] if self.sep_id is not None else [])

    def __call__(self, texts, max_length=None, padding="longest"):
        """Encode a list of texts: int64 `input_ids`, `attention_mask`, `token_type_ids` [N, L].

        `padding`: "longest" (pad to the longest text of the batch) or an int (pad every row to it).
        """
        if isinstance(texts, str):
            texts = [texts]
        encoded = [self.encode(t, max_length) for t in texts]
        if not encoded:
            raise ValueError("no texts to encode")
        longest = max(len(e) for e in encoded)
        if padding == "longest":
            width = longest
        elif isinstance(padding, int) and padding >= longest:
            width = padding
        else:
            raise ValueError(f"padding must be 'longest' or an int ≥ the longest encoding ({longest}), "
                             f"got {padding!r}")
        ids = np.full((len(encoded), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, :len(e)] = e
            mask[row, :len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    def decode(self, ids):
        """Tokens joined back into text (continuation pieces glued, special tokens dropped)."""
        skip = {self.cls_id, self.sep_id, self.pad_id}
        words = []
        for i in ids:
            if int(i) in skip:
                continue
            token = self.id_to_token.get(int(i), "[UNK]")
            if token.startswith(self.prefix) and words:
                words[-1] += token[len(self.prefix):]
            else:
                words.append(token)
        return " ".join(words)
