"""Byte-level BPE and the GPT-2 pre-tokenizer: against Python's `re` running GPT-2's regex with the
Unicode classes spelled out, against the ids stored with the shared Whisper clips, and round trips."""
import json
import re
import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

from dreidel.tokenizers import ByteLevelBPE, GPT2PreTokenizer, bytes_to_unicode, scan_gpt2
from shared_data import shared_path

PROMPT = "<|startoftranscript|><|notimestamps|>"

# An alphabet mixing every class: ASCII, accented and CJK letters, non-ASCII digits, exotic spaces,
# symbols, apostrophes (for the contractions) and emoji.
ALPHABET = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \t\n\r'\"?!.,-_@#"
            "éüßÆ中文ж٣²Ⅻ\xa0\u2003\u3000€©😀́")


def reference_regex(alphabet):
    """GPT-2's pattern for Python's `re`, with \\p{L}, \\p{N}, \\s replaced by explicit character
    sets of the alphabet's characters (classified by unicodedata, whitespace by Unicode's
    White_Space list)."""
    white = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(map(chr, range(0x2000, 0x200b)))
    letters = "".join(c for c in alphabet if unicodedata.category(c).startswith("L"))
    numbers = "".join(c for c in alphabet if unicodedata.category(c).startswith("N"))
    L, N, S = (re.escape(x) for x in (letters, numbers, white))
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+")


REFERENCE = reference_regex(ALPHABET)


@given(st.text(alphabet=ALPHABET, max_size=60))
@settings(max_examples=400, deadline=None)
def test_gpt2_split_matches_the_regex(text):
    assert scan_gpt2(text) == REFERENCE.findall(text)


def test_gpt2_split_examples():
    assert GPT2PreTokenizer()("Hello world's  end!\n\n  42x") == \
        ["Hello", " world", "'s", " ", " end", "!", "\n\n ", " 42", "x"]
    assert scan_gpt2("  ") == ["  "] and scan_gpt2("") == []


def test_bytes_to_unicode_is_a_bijection_onto_printables():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(not c.isspace() and c.isprintable() for c in table.values())


@pytest.fixture(scope="module")
def whisper_tokenizer():
    return ByteLevelBPE.from_tokenizer_json(shared_path("onnx", "whisper-tiny-en", "tokenizer.json"))


def test_reference_ids_of_the_spoken_texts(whisper_tokenizer):
    clips = json.loads(shared_path("onnx", "whisper-tiny-en", "transcripts.json").read_text())["clips"]
    for clip in clips:
        ids = whisper_tokenizer.encode(PROMPT + " " + clip["reference_text"] + "<|endoftext|>")
        assert ids == clip["reference_token_ids"]
        text = whisper_tokenizer.decode(clip["expected_token_ids"], skip_special_tokens=True).strip()
        assert text == clip["expected_text"]
        assert whisper_tokenizer.decode(whisper_tokenizer.encode(clip["reference_text"])) == clip["reference_text"]


def test_calibration_texts_and_teacher_texts(whisper_tokenizer):
    clips = json.loads(shared_path("onnx", "whisper-tiny-en", "calib", "index.json").read_text())["clips"]
    for clip in clips:
        assert whisper_tokenizer.encode(PROMPT + " " + clip["text"] + "<|endoftext|>") == clip["spoken_token_ids"]
        assert whisper_tokenizer.decode(clip["teacher_token_ids"], skip_special_tokens=True).strip() == \
            clip["teacher_text"]


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_round_trip_of_random_unicode(text):
    tok = _tokenizer()
    assert tok.decode(tok.encode(text)) == text


_CACHE = {}


def _tokenizer():
    if "tok" not in _CACHE:
        _CACHE["tok"] = ByteLevelBPE.from_tokenizer_json(shared_path("onnx", "whisper-tiny-en", "tokenizer.json"))
    return _CACHE["tok"]


def test_special_tokens_allowed_or_disallowed(whisper_tokenizer):
    tok = whisper_tokenizer
    assert tok.encode("<|endoftext|>") == [50256]
    plain = tok.encode("<|endoftext|>", allowed_special=())
    assert 50256 not in plain and tok.decode(plain) == "<|endoftext|>"
    assert tok.encode("a<|notimestamps|>", allowed_special={"<|notimestamps|>"}) == tok.encode("a") + [50362]
    assert tok.decode([50257, 50362, 383, 50256], skip_special_tokens=True) == " The"
    with pytest.raises(ValueError, match="unknown special"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.decode([10**6])


def tiny_tokenizer():
    """A hand-made vocabulary: 256 byte symbols, merges 'l l' then 'h e' then 'he ll'."""
    table = bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(table[b] for b in range(256))}
    for token in ("ll", "he", "hell", "Ġw"):
        vocab[token] = len(vocab)
    merges = ["l l", ("h", "e"), "he ll", "Ġ w"]
    return ByteLevelBPE(vocab, merges, special_tokens={"<s>": 300}), vocab


def test_plain_arguments_and_merge_priority():
    tok, vocab = tiny_tokenizer()
    # "hello" -> h e l l o: 'l l' (rank 0) first, then 'h e', then 'he ll'.
    assert tok.encode("hello") == [vocab["hell"], vocab["o"]]
    assert tok.encode("<s> w") == [300, vocab["Ġw"]]
    assert tok.decode(tok.encode("héllo <s>")) == "héllo <s>"
    with pytest.raises(ValueError, match="byte symbols"):
        ByteLevelBPE({"a": 0}, [])
    with pytest.raises(ValueError, match="not a pair"):
        ByteLevelBPE(vocab, ["a b c"])


def test_bad_tokenizer_json_names_the_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "WordPiece"}}')
    with pytest.raises(ValueError, match="tokenizer.json"):
        ByteLevelBPE.from_tokenizer_json(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        ByteLevelBPE.from_tokenizer_json(path)


def test_pre_tokenizer_is_pluggable():
    tok, vocab = tiny_tokenizer()
    # A variant that splits every digit apart (what some Llama-family tokenizers do).
    digits = ByteLevelBPE(vocab, ["l l"], pre_tokenizer=lambda text: [p for q in scan_gpt2(text) for p in
                                                                      (list(q) if q.isdigit() else [q])])
    assert digits.encode("12") == [vocab["1"], vocab["2"]]
    assert digits.decode(digits.encode("ab 123 ll")) == "ab 123 ll"
