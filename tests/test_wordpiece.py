"""WordPiece tokenizer from tokenizer.json: hand-computed ids on the MiniLM (bert-base-uncased)
vocabulary, and property tests against an independent regex-based reference on small vocabularies."""
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dreidel.tokenizers.wordpiece import TokenizerError, WordPieceTokenizer

MINILM_TOKENIZER = Path(__file__).resolve().parents[1] / "bench" / "data" / "minilm_tokenizer.json"


@pytest.fixture(scope="module")
def minilm():
    return WordPieceTokenizer.from_file(MINILM_TOKENIZER)


@pytest.fixture(scope="module")
def vocab():
    return json.loads(MINILM_TOKENIZER.read_text())["model"]["vocab"]


# tokens written by hand from BERT's rules (lowercase, accents stripped, punctuation isolated,
# greedy longest-prefix word pieces), then looked up in the vocabulary file
HAND_TOKENIZED = [
    ("Hello, world!", ["hello", ",", "world", "!"]),
    ("The Café's naïve RÉSUMÉ.", ["the", "cafe", "'", "s", "naive", "resume", "."]),
    ("I [MASK] tokenization in 2023?", ["i", "[MASK]", "token", "##ization", "in", "202", "##3", "?"]),
    ("  tabs\tand\nnewlines  ", ["tab", "##s", "and", "new", "##lines"]),
    ("e-mail me@example.com", ["e", "-", "mail", "me", "@", "example", ".", "com"]),
]


@pytest.mark.parametrize("text,tokens", HAND_TOKENIZED)
def test_minilm_ids_match_hand_tokenization(minilm, vocab, text, tokens):
    expected = [vocab["[CLS]"]] + [vocab[t] for t in tokens] + [vocab["[SEP]"]]
    assert minilm.encode(text) == expected
    assert minilm.tokenize(text) == tokens


def test_known_bert_uncased_ids(minilm):
    # ids of bert-base-uncased as published in its vocab.txt (line number - 1)
    assert minilm.encode("hello world") == [101, 7592, 2088, 102]
    assert minilm.encode("the") == [101, 1996, 102]


def test_unknown_and_overlong_words_become_unk(minilm, vocab):
    assert minilm.encode("\u2603")[1:-1] == [vocab["[UNK]"]]  # a snowman is not in the vocabulary
    assert minilm.encode("a" * 101)[1:-1] == [vocab["[UNK]"]]  # longer than max_input_chars_per_word


def test_batch_padding_mask_truncation(minilm):
    batch = minilm(["a b c", "hello"])
    assert batch["input_ids"].dtype == np.int64 and batch["input_ids"].shape == (2, 5)
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert batch["input_ids"][1, 3:].tolist() == [0, 0]  # [PAD]
    assert not batch["token_type_ids"].any()
    long = minilm(["word " * 500])
    assert long["input_ids"].shape == (1, 128)  # the file's truncation length
    assert long["input_ids"][0, -1] == 102  # still ends with [SEP]
    assert minilm(["a"], padding=8)["input_ids"].shape == (1, 8)
    with pytest.raises(ValueError):
        minilm(["a b c"], padding=2)


def _write(tmp_path, spec):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    return path


def _spec(vocab, **changes):
    spec = {"normalizer": {"type": "BertNormalizer", "lowercase": True},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "BertProcessing", "cls": ["[CLS]", 1], "sep": ["[SEP]", 2]},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}}
    spec.update(changes)
    return spec


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        WordPieceTokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="junk.json"):
        WordPieceTokenizer.from_file(tmp_path / "junk.json")
    vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3}
    with pytest.raises(TokenizerError, match="not WordPiece"):
        WordPieceTokenizer.from_file(_write(tmp_path, _spec(vocab, model={"type": "BPE", "vocab": vocab})))
    with pytest.raises(TokenizerError, match="normalizer"):
        WordPieceTokenizer.from_file(_write(tmp_path, _spec(vocab, normalizer={"type": "Precompiled"})))
    with pytest.raises(TokenizerError, match="special token"):
        WordPieceTokenizer.from_file(_write(tmp_path, _spec({"[PAD]": 0, "[UNK]": 3})))


# -- properties against an independent reference ----------------------------------------------------
PIECES = ["a", "b", "ab", "abc", "ba", "c", "##a", "##b", "##c", "##bc", "##ca", "x", "##x", "!", "?"]


def _reference_ids(text, vocab):
    """BERT by another route: regexes for the pre-tokenizer, and the longest match at each position
    found by a longest-first regex alternation over the vocabulary."""
    text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    words = re.findall(r"[^\s!-/:-@\[-`{-~]+|[!-/:-@\[-`{-~]", text)
    starts = sorted((p for p in vocab if not p.startswith("##") and not p.startswith("[")), key=len, reverse=True)
    continues = sorted((p[2:] for p in vocab if p.startswith("##")), key=len, reverse=True)
    first = re.compile("|".join(map(re.escape, starts)))
    rest = re.compile("|".join(map(re.escape, continues)))
    ids = []
    for word in words:
        pieces, position, pattern = [], 0, first
        while position < len(word):
            match = pattern.match(word, position)
            if match is None:
                pieces = [vocab["[UNK]"]]
                break
            pieces.append(vocab[match.group() if pattern is first else "##" + match.group()])
            position, pattern = match.end(), rest
        ids.extend(pieces)
    return [vocab["[CLS]"]] + ids + [vocab["[SEP]"]]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3}
    vocab.update({p: i + 4 for i, p in enumerate(PIECES)})
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(json.dumps(_spec(vocab)))
    return WordPieceTokenizer.from_file(path), vocab


TEXT = st.text(alphabet="abcxABCáé !?.\t", max_size=40)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_matches_reference(small, text):
    tokenizer, vocab = small
    assert tokenizer.encode(text) == _reference_ids(text, vocab)


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_case_and_accents_do_not_matter(small, text):
    tokenizer, _ = small
    assert tokenizer.encode(text.upper()) == tokenizer.encode(text)
    assert tokenizer.encode(text.replace("á", "a").replace("é", "e")) == tokenizer.encode(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["ab", "abc", "ba", "bca", "x", "xx", "!", "cab"]), min_size=1, max_size=8))
def test_decode_inverts_encode_on_covered_words(small, words):
    tokenizer, _ = small
    text = " ".join(words)
    assert tokenizer.decode(tokenizer.encode(text)) == text
