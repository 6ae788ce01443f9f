"""Recasting data loaders: text, audio, images (PNG reader against an independent encoder), splits."""
import importlib.util
import struct
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dreidel import nn
from dreidel.recast.data import DataError, Samples, load_data, read_png, read_wav

TOKENIZER = Path(__file__).resolve().parents[1] / "bench" / "data" / "minilm_tokenizer.json"


# -- an independent PNG writer: every filter type, chosen per row ------------------------------------
def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filter_row(kind, row, previous, bpp):
    out = bytearray()
    for x, value in enumerate(row):
        a = row[x - bpp] if x >= bpp else 0
        b = previous[x]
        c = previous[x - bpp] if x >= bpp else 0
        predicted = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
        out.append((value - predicted) % 256)
    return bytes([kind]) + bytes(out)


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode_png(pixels, filters, colour=None, depth=8, interlace=0, split_idat=1):
    height, width, channels = pixels.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels] if colour is None else colour
    raw, previous = b"", [0] * (width * channels)
    for y in range(height):
        row = [int(v) for v in pixels[y].reshape(-1)]
        raw += _filter_row(filters[y % len(filters)], row, previous, channels)
        previous = row
    data = zlib.compress(raw)
    cut = max(1, len(data) // split_idat)
    idats = b"".join(_chunk(b"IDAT", data[i:i + cut]) for i in range(0, len(data), cut))
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"tEXt", b"k\x00v") + idats + _chunk(b"IEND", b"")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 2, 3, 4]),
       st.lists(st.integers(0, 4), min_size=1, max_size=5), st.integers(1, 3), st.integers(0, 2 ** 32 - 1))
def test_png_reader_inverts_an_independent_encoder(tmp_path_factory, height, width, channels, filters, split, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels)).astype(np.uint8)
    path = tmp_path_factory.mktemp("png") / "image.png"
    path.write_bytes(encode_png(pixels, filters, split_idat=split))
    np.testing.assert_array_equal(read_png(path), pixels)


def test_png_errors_name_the_file_and_the_problem(tmp_path):
    pixels = np.zeros((2, 2, 3), np.uint8)
    cases = {
        "bad signature": b"GIF89a....",
        "interlaced": encode_png(pixels, [0], interlace=1),
        "bit depth 16": encode_png(pixels, [0], depth=16),
        "colour type 3": encode_png(pixels[..., :1], [0], colour=3),
        "truncated": encode_png(pixels, [0])[:-20],
    }
    corrupt = bytearray(encode_png(pixels, [0]))
    corrupt[40] ^= 0xFF  # a byte inside the tEXt chunk: its CRC no longer matches
    cases["CRC"] = bytes(corrupt)
    for expected, payload in cases.items():
        path = tmp_path / "bad.png"
        path.write_bytes(payload)
        with pytest.raises(DataError, match="bad.png") as error:
            read_png(path)
        assert expected.split()[0].lower() in str(error.value).lower(), (expected, str(error.value))


def test_png_with_a_decompression_bomb_is_refused_without_inflating_it(tmp_path):
    header = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    bomb = zlib.compress(b"\x00" * (64 << 20))  # 64 MiB of zeros for a 4×4 image
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", bomb) + _chunk(b"IEND", b""))
    with pytest.raises(DataError, match="expected 20"):
        read_png(path)


def test_image_folder_batches_png_and_npy(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 6, 7, 3)).astype(np.uint8)
    for i, image in enumerate(images[:3]):
        (tmp_path / f"img_{i}.png").write_bytes(encode_png(image, [i % 5]))
    for i, image in enumerate(images[3:], 3):
        np.save(tmp_path / f"img_{i}.npy", image.transpose(2, 0, 1).astype(np.float32) / 255)
    data = load_data(tmp_path)
    assert data.kind == "images" and len(data) == 5
    batch = next(data.batches(5))["pixel_values"]
    assert batch.shape == (5, 3, 6, 7) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, images.transpose(0, 3, 1, 2) / 255, atol=1e-6)


def test_one_npy_batch_and_bad_npy(tmp_path):
    np.save(tmp_path / "batch.npy", np.arange(24, dtype=np.float32).reshape(4, 6))
    data = load_data(tmp_path / "batch.npy")
    assert len(data) == 4
    np.testing.assert_array_equal(next(data.batches(3))["pixel_values"], np.arange(18).reshape(3, 6))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="objects.npy"):
        load_data(tmp_path / "objects.npy")


# -- text -------------------------------------------------------------------------------------------
def test_text_file_batches_are_padded_per_batch(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("Hello, world!\n\n  a b  \nThe quick brown fox jumps over the lazy dog.\n")
    data = load_data(path, tokenizer=TOKENIZER)
    assert data.kind == "text" and len(data) == 3
    first, second = data.batches(2)
    assert first["input_ids"].shape == (2, 6)   # [CLS] hello , world ! [SEP]
    assert first["input_ids"][1].tolist() == [101, 1037, 1038, 102, 0, 0]
    assert first["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0]
    assert second["input_ids"].shape == (1, 12)
    only = next(data.for_inputs(["input_ids", "attention_mask"]).batches(3))
    assert set(only) == {"input_ids", "attention_mask"}
    with pytest.raises(DataError, match="tokenizer"):
        load_data(path)


class _ByteTokenizer:
    """A stand-in for a language model's own tokenizer: one id per UTF-8 byte."""
    def encode(self, text):
        return list(text.encode("utf-8"))


def test_language_model_text_is_packed_into_rows_of_whole_batches(tmp_path):
    sentences = ["Hello, world!", "The quick brown fox.", "Jumps over", "the lazy dog, twice over."]
    path = tmp_path / "lm.txt"
    path.write_text("\n\n".join(sentences) + "\n")
    data = load_data(path, tokenizer=_ByteTokenizer(), max_length=8)
    assert data.kind == "lm-text" and len(data) == 4
    first, second = data.batches(2)
    for batch, part in ((first, sentences[:2]), (second, sentences[2:])):
        stream = np.frombuffer("".join(s + "\n" for s in part).encode(), np.uint8).astype(np.int64)
        rows = len(stream) // 8
        assert batch["input_ids"].shape == (rows, 8)
        np.testing.assert_array_equal(batch["input_ids"].ravel(), stream[:rows * 8])
    short = next(load_data(path, tokenizer=_ByteTokenizer(), max_length=64).batches(1))
    assert short["input_ids"].tolist() == [list(b"Hello, world!\n")]
    one_token = type("OneToken", (), {"encode": lambda self, text: [7]})()
    with pytest.raises(DataError, match="at least 2"):
        next(load_data(path, tokenizer=one_token).batches(1))


def test_a_language_model_teacher_brings_its_own_tokenizer(tmp_path):
    from dreidel.recast.cli import load_samples
    path = tmp_path / "lm.txt"
    path.write_text("one sentence that is long enough " * 4 + "\nand another one\n")
    teacher = nn.Module()
    teacher.tokenizer = _ByteTokenizer()
    batch = next(load_samples(path, teacher).batches(2))   # 133 + 16 bytes: two rows of 64
    assert set(batch) == {"input_ids"} and batch["input_ids"].shape == (2, 64)


def test_text_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt"):
        load_data(path, tokenizer=TOKENIZER)


# -- audio ------------------------------------------------------------------------------------------
def _write_wav(path, samples, rate=16000, channels=1):
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples.astype("<i2").tobytes())


def test_read_wav_scales_and_mixes_down(tmp_path):
    stereo = np.array([[1000, 3000], [-32768, 32767], [0, 2]], dtype=np.int16)
    _write_wav(tmp_path / "s.wav", stereo.reshape(-1), rate=8000, channels=2)
    samples, rate = read_wav(tmp_path / "s.wav")
    assert rate == 8000
    np.testing.assert_allclose(samples, stereo.mean(axis=1) / 32768, atol=1e-7)
    (tmp_path / "junk.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(DataError, match="junk.wav"):
        read_wav(tmp_path / "junk.wav")


def test_logmel_folder_is_audio_and_wav_needs_the_front_end(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(tmp_path / f"clip_{i}_logmel.npy", rng.standard_normal((1, 80, 30)).astype(np.float32))
    data = load_data(tmp_path)
    assert data.kind == "audio" and len(data) == 3
    assert next(data.batches(2))["input_features"].shape == (2, 80, 30)
    _write_wav(tmp_path / "speech.wav", np.zeros(1600, np.int16))
    data = load_data(tmp_path)
    assert len(data) == 4
    if importlib.util.find_spec("dreidel.audio") is None:
        with pytest.raises(DataError, match="dreidel.audio"):
            list(data.batches(4))


# -- splits -----------------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.integers(2, 300), st.floats(0.01, 0.99), st.integers(0, 1000))
def test_split_is_disjoint_covering_and_repeatable(n, fraction, seed):
    data = Samples(list(range(n)), lambda batch: {"x": np.array(batch)}, "test", "range")
    calibration, evaluation = data.split(fraction, seed)
    assert calibration.role == "calibration" and evaluation.role == "evaluation"
    assert len(calibration) and len(evaluation)
    assert set(calibration.items).isdisjoint(evaluation.items)
    assert sorted(calibration.items + evaluation.items) == list(range(n))
    again = data.split(fraction, seed)
    assert again[0].items == calibration.items and again[1].items == evaluation.items


def test_seeded_shuffled_batches_cover_every_sample_once():
    data = Samples(list(range(10)), lambda batch: {"x": np.array(batch)}, "test", "range")
    seen = np.concatenate([b["x"] for b in data.batches(3, shuffle=True, seed=4)])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    assert np.array_equal(seen, np.concatenate([b["x"] for b in data.batches(3, shuffle=True, seed=4)]))
    assert sum(len(b["x"]) for b in data.batches(4, limit=6)) == 6


def test_missing_or_empty_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "nothing")
    with pytest.raises(DataError, match="no .png or .npy"):
        load_data(tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no samples"):
        load_data(tmp_path / "empty.txt", tokenizer=TOKENIZER)
