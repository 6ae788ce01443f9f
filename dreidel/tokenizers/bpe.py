"""Byte-level byte-pair encoding (GPT-2, Whisper, Llama-3-style tokenizers), numpy-free and
dependency-free: encode text to ids and decode ids to text."""
import json
from pathlib import Path

from .pretokenize import GPT2PreTokenizer

__all__ = ["ByteLevelBPE", "bytes_to_unicode"]


def bytes_to_unicode():
    """GPT-2's table byte → printable character: printable Latin-1 bytes map to themselves, the
    other 68 bytes to code points 256, 257, … in byte order (so no piece contains whitespace or
    control characters)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ByteLevelBPE:
    """A byte-level BPE tokenizer.

    Args:
        vocab: ``{token string: id}`` for the BPE vocabulary (token strings in the byte→unicode
            alphabet of :func:`bytes_to_unicode`).
        merges: merge rules in priority order, each ``"a b"`` or ``(a, b)``.
        special_tokens: added tokens, ``{content: id}`` (or a list of ``(content, id)``); they are
            matched in the raw text *before* pre-tokenization, longest first, and are never split.
        pre_tokenizer: a callable ``text -> list[str]`` (default :class:`GPT2PreTokenizer`).
        added_tokens: further added tokens ``{content: id}`` that are matched like special tokens
            but always allowed and kept by ``decode(skip_special_tokens=True)``.

    ``encode(text, allowed_special=...)`` controls which special tokens may be matched: ``"all"``
    (default), a collection of token strings, or ``()``/``None`` (their text is then encoded as
    ordinary text).  Merges are applied by rank with a per-piece cache, so repeated words cost one
    dictionary lookup.
    """

    def __init__(self, vocab, merges, special_tokens=None, pre_tokenizer=None, added_tokens=None):
        self.vocab = dict(vocab)
        self.ranks = {}
        for rank, merge in enumerate(merges):
            pair = tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge)
            if len(pair) != 2:
                raise ValueError(f"BPE merge #{rank} {merge!r} is not a pair of symbols")
            self.ranks.setdefault(pair, rank)
        special = dict(special_tokens.items() if isinstance(special_tokens, dict) else special_tokens or ())
        added = dict(added_tokens or {})
        self.special_tokens = {str(k): int(v) for k, v in special.items()}
        self.added_tokens = {str(k): int(v) for k, v in added.items()}
        self.pre_tokenizer = pre_tokenizer if pre_tokenizer is not None else GPT2PreTokenizer()
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        missing = [c for c in self.byte_encoder.values() if c not in self.vocab]
        if missing:
            raise ValueError(f"byte-level BPE vocabulary lacks {len(missing)} of the 256 byte symbols, "
                             f"e.g. {missing[:5]}")
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.id_to_token.update({i: t for t, i in {**self.added_tokens, **self.special_tokens}.items()})
        self.special_ids = frozenset(self.special_tokens.values())
        self._added_ids = frozenset(self.added_tokens.values()) | self.special_ids
        self._cache = {}

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_tokenizer_json(cls, path, pre_tokenizer=None):
        """Build from a Hugging Face ``tokenizer.json`` whose model is BPE over byte-level symbols.

        Added tokens flagged ``special`` become special tokens, the others always-allowed added
        tokens.  ``pre_tokenizer`` overrides the default GPT-2 split (this reader does not interpret
        the file's ``pre_tokenizer`` section beyond checking it is byte-level when no override is
        given)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read tokenizer JSON ({err})") from err
        model = data.get("model") or {}
        if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
            raise ValueError(f"{path}: model is not a BPE model with vocab and merges")
        if pre_tokenizer is None:
            kinds = _pre_tokenizer_types(data.get("pre_tokenizer"))
            if kinds != ["ByteLevel"]:
                raise ValueError(f"{path}: pre-tokenizer {kinds} is not plain ByteLevel; pass pre_tokenizer=")
        special, added = {}, {}
        for token in data.get("added_tokens", []):
            (special if token.get("special") else added)[token["content"]] = token["id"]
        return cls(model["vocab"], model["merges"], special, pre_tokenizer, added)

    # ---- encoding ----------------------------------------------------------------------------
    def _bpe(self, piece):
        """Ids of one pre-tokenized piece (already in the byte→unicode alphabet)."""
        ids = self._cache.get(piece)
        if ids is not None:
            return ids
        symbols = list(piece)
        ranks = self.ranks
        while len(symbols) > 1:
            best, best_rank = None, None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            merged, i, joined = [], 0, best[0] + best[1]
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == best[0] and symbols[i + 1] == best[1]:
                    merged.append(joined)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        try:
            ids = tuple(self.vocab[s] for s in symbols)
        except KeyError as err:
            raise ValueError(f"BPE symbol {err.args[0]!r} (from piece {piece!r}) is not in the vocabulary") from None
        if len(self._cache) < 200_000:
            self._cache[piece] = ids
        return ids

    def _encode_ordinary(self, text, out):
        table = self.byte_encoder
        for piece in self.pre_tokenizer(text):
            out.extend(self._bpe("".join(table[b] for b in piece.encode("utf-8"))))

    def encode(self, text, allowed_special="all"):
        """Token ids of ``text``.  Special tokens in ``allowed_special`` (``"all"``, a collection of
        strings, or ``()``/``None`` for none) are matched as single ids; other text is
        pre-tokenized and BPE-encoded."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        else:
            allowed = set(allowed_special or ())
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise ValueError(f"allowed_special names unknown special tokens {sorted(unknown)}")
        matchable = sorted(allowed | set(self.added_tokens), key=len, reverse=True)
        table = {**self.added_tokens, **{t: self.special_tokens[t] for t in allowed}}
        out, start, i = [], 0, 0
        firsts = {t[0] for t in matchable if t}
        while i < len(text):
            if text[i] in firsts:
                hit = next((t for t in matchable if t and text.startswith(t, i)), None)
                if hit:
                    self._encode_ordinary(text[start:i], out)
                    out.append(table[hit])
                    i += len(hit)
                    start = i
                    continue
            i += 1
        self._encode_ordinary(text[start:], out)
        return out

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens=False):
        """Text of token ids: byte symbols are joined and decoded as UTF-8 (invalid sequences become
        U+FFFD); added tokens are emitted verbatim, special ones dropped if ``skip_special_tokens``."""
        parts, pending = [], []
        for i in ids:
            i = int(i)
            token = self.id_to_token.get(i)
            if token is None:
                raise ValueError(f"token id {i} is not in the vocabulary (size {len(self)})")
            if i in self._added_ids:
                if pending:
                    parts.append(bytes(pending).decode("utf-8", errors="replace"))
                    pending = []
                if not (skip_special_tokens and i in self.special_ids):
                    parts.append(token)
            else:
                pending.extend(self.byte_decoder[c] for c in token)
        if pending:
            parts.append(bytes(pending).decode("utf-8", errors="replace"))
        return "".join(parts)

    def token_to_id(self, token):
        """Id of a token string (BPE symbol, added or special token)."""
        for table in (self.special_tokens, self.added_tokens, self.vocab):
            if token in table:
                return table[token]
        raise KeyError(f"token {token!r} is not in the vocabulary")

    def __len__(self):
        return max(self.id_to_token) + 1

    def __repr__(self):
        return (f"ByteLevelBPE(vocab={len(self.vocab)}, merges={len(self.ranks)}, "
                f"special_tokens={len(self.special_tokens)}, pre_tokenizer={self.pre_tokenizer!r})")


def _pre_tokenizer_types(spec):
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [k for s in spec.get("pretokenizers", []) for k in _pre_tokenizer_types(s)]
    return [spec.get("type")]
