"""Pre-tokenizers: split text into pieces before byte-level BPE runs on each piece.

A pre-tokenizer is any callable ``text -> list[str]`` whose pieces concatenate back to ``text``.
:class:`ByteLevelBPE` takes one as its ``pre_tokenizer=`` argument, so a model family with another
split rule (SmolLM2's, say) plugs in its own without touching the BPE.

GPT-2's rule is the regular expression

    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

whose Unicode classes Python's ``re`` lacks, so :class:`GPT2PreTokenizer` implements it as a
scanner over ``unicodedata`` categories: letters are categories ``L*``, numbers ``N*``, whitespace
is Unicode's White_Space property.  The helpers :func:`char_class` and :func:`scan_gpt2` are public
so that variants can reuse the classification.
"""
import unicodedata

__all__ = ["GPT2PreTokenizer", "char_class", "scan_gpt2", "WHITESPACE", "LETTER", "NUMBER", "OTHER"]

LETTER, NUMBER, WHITESPACE, OTHER = "L", "N", "S", "O"

# Unicode White_Space (what \s means in the Rust/Oniguruma regex engines the reference uses).
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000")

_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def char_class(ch, _cache={}):
    """The GPT-2 regex class of one character: LETTER (\\p{L}), NUMBER (\\p{N}), WHITESPACE (\\s)
    or OTHER."""
    kind = _cache.get(ch)
    if kind is None:
        if ch in _WHITE_SPACE:
            kind = WHITESPACE
        else:
            major = unicodedata.category(ch)[0]
            kind = LETTER if major == "L" else NUMBER if major == "N" else OTHER
        _cache[ch] = kind
    return kind


def _run_end(classes, start, kind):
    end = start
    while end < len(classes) and classes[end] == kind:
        end += 1
    return end


def scan_gpt2(text, contractions=_CONTRACTIONS):
    """Split ``text`` exactly as GPT-2's pre-tokenizer regex does (see the module docstring).

    ``contractions`` are tried first at every position, case-sensitively, like the regex."""
    classes = [char_class(c) for c in text]
    pieces, i, n = [], 0, len(text)
    while i < n:
        if text[i] == "'":
            hit = next((c for c in contractions if text.startswith(c, i)), None)
            if hit:
                pieces.append(hit)
                i += len(hit)
                continue
        # ` ?X+` for X in letters, numbers, other: an optional single space glued to the run after it.
        start = i + 1 if text[i] == " " and i + 1 < n and classes[i + 1] != WHITESPACE else i
        kind = classes[start]
        if kind != WHITESPACE:
            end = _run_end(classes, start, kind)
            pieces.append(text[i:end])
            i = end
            continue
        # `\s+(?!\S)|\s+`: a whitespace run, leaving its last character to the word that follows.
        end = _run_end(classes, i, WHITESPACE)
        if end < n and end - i > 1:
            end -= 1
        pieces.append(text[i:end])
        i = end
    return pieces


class GPT2PreTokenizer:
    """GPT-2's pre-tokenizer (Whisper's too): contractions, letter runs, number runs, runs of other
    symbols (each optionally led by one space) and whitespace runs.  Call it on a string to get the
    pieces; ``"".join(pieces) == text`` always."""

    def __call__(self, text):
        return scan_gpt2(text)

    def __repr__(self):
        return "GPT2PreTokenizer()"
