"""Data for recasting: read a teacher's inputs from files, batch them, split them.

    data = load_data("sentences.txt", tokenizer="tokenizer.json")     # or a folder of WAVs, .npy, .png
    calibration, evaluation = data.split(eval_fraction=0.2, seed=0)   # disjoint, deterministic
    for batch in calibration.batches(32):                              # dict: input name -> array
        teacher(**batch)

Loaders (`load_data` picks one from the path):
- a text file, one sentence per line (blank lines skipped): WordPiece ids from a `tokenizer.json`
  (`input_ids`, `attention_mask`, `token_type_ids`, padded to the longest sentence of each batch), or,
  for a causal language model, its own tokenizer's ids packed into rows (`lm_text_data`);
- a folder of WAV files (Whisper): log-mel features from `dreidel.audio.log_mel_spectrogram`
  (`input_features` [N, 80, 3000]); a folder of `*_logmel.npy` files is read as features directly;
- images: a folder of `.png` files (8-bit gray, gray+alpha, RGB or RGBA, non-interlaced) or `.npy`
  arrays, or one `.npy` holding a batch [N, ...]; `pixel_values` as float32, PNGs scaled to [0, 1]
  and laid out [C, H, W].

`Samples.split` assigns every sample to exactly one part by a seeded permutation, so calibration and
evaluation never share a sample and the same seed always gives the same parts; each part's `role`
says which it is.
"""
import os
import struct
import wave
import zlib
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Input data that cannot be read: names the file and what is wrong with it."""


class Samples:
    """N samples of a teacher's inputs and how to batch them.

    `items` is a list (sentences, file paths or arrays); `collate(list_of_items)` turns a batch of
    them into a dict of input name -> numpy array. `role` is "all", "calibration" or "evaluation".
    """

    def __init__(self, items, collate, kind, source, role="all", input_names=None):
        if not items:
            raise DataError(f"{source}: no samples found")
        self.items, self.collate, self.kind, self.source, self.role = list(items), collate, kind, source, role
        self.input_names = input_names

    def __len__(self):
        return len(self.items)

    def __repr__(self):
        return f"Samples({self.kind}, {len(self)} from {self.source}, role={self.role})"

    def subset(self, indices, role=None):
        """The samples at `indices`, in that order."""
        return Samples([self.items[i] for i in indices], self.collate, self.kind, self.source,
                       role or self.role, self.input_names)

    def split(self, eval_fraction=0.2, seed=0):
        """(calibration, evaluation): disjoint parts by a seeded permutation, both non-empty."""
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        if len(self) < 2:
            raise DataError(f"{self.source}: {len(self)} sample cannot be split into calibration and evaluation")
        order = np.random.default_rng(seed).permutation(len(self))
        n_eval = min(len(self) - 1, max(1, int(round(eval_fraction * len(self)))))
        evaluation = sorted(order[:n_eval].tolist())
        calibration = sorted(order[n_eval:].tolist())
        return self.subset(calibration, "calibration"), self.subset(evaluation, "evaluation")

    def batches(self, batch_size, shuffle=False, seed=0, limit=None):
        """Yield dicts of input arrays, `batch_size` samples each (the last may be smaller).

        `shuffle` permutes the order with `seed`; `limit` stops after that many samples.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        if limit is not None:
            order = order[:limit]
        for first in range(0, len(order), batch_size):
            batch = self.collate([self.items[i] for i in order[first:first + batch_size]])
            if self.input_names is not None:
                batch = {name: value for name, value in batch.items() if name in self.input_names}
            yield batch

    def num_batches(self, batch_size, limit=None):
        n = len(self) if limit is None else min(limit, len(self))
        return -(-n // batch_size)

    def for_inputs(self, input_names):
        """The same samples, batches keeping only the inputs a teacher takes (e.g. an ONNX graph's)."""
        out = self.subset(range(len(self)))
        out.input_names = list(input_names)
        return out


# -- text ------------------------------------------------------------------------------------------
def read_sentences(path):
    """Lines of a UTF-8 text file, stripped, blank lines skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    return [line for line in lines if line]


def text_data(path, tokenizer, max_length=None):
    """One sentence per line, encoded by `tokenizer` (a WordPieceTokenizer or a tokenizer.json path)."""
    from dreidel.tokenizers.wordpiece import WordPieceTokenizer
    if not isinstance(tokenizer, WordPieceTokenizer):
        if tokenizer is None:
            raise DataError(f"{path}: text data needs a tokenizer (a tokenizer.json for BERT-style models)")
        tokenizer = WordPieceTokenizer.from_file(tokenizer)
    sentences = read_sentences(path)
    return Samples(sentences, lambda batch: tokenizer(batch, max_length=max_length), "text", os.fspath(path))


def lm_text_data(path, tokenizer, row_length=64):
    """One sentence per line for a causal language model: each batch's sentences are encoded by the
    model's own `tokenizer` (anything with `encode(text) -> ids`, e.g. a GGUF model's byte-level BPE),
    joined and cut into rows of `row_length` tokens (`input_ids` [rows, row_length], the tail that does
    not fill a row dropped; a batch shorter than one row is one shorter row), so no position is
    padding and no sentence crosses from one batch, or one calibration/evaluation part, into another."""
    if row_length < 2:
        raise ValueError(f"row_length must be at least 2, got {row_length}")
    if not callable(getattr(tokenizer, "encode", None)):
        raise DataError(f"{path}: language-model text needs the model's tokenizer (an object with encode())")
    sentences = read_sentences(path)

    def collate(batch):
        ids = [i for sentence in batch for i in tokenizer.encode(sentence + "\n")]
        rows = len(ids) // row_length
        if rows == 0:  # a short last batch: one shorter row rather than losing it
            if len(ids) < 2:
                raise DataError(f"{path}: a batch of {len(batch)} sentences holds {len(ids)} token; a "
                                f"language model needs at least 2")
            return {"input_ids": np.asarray(ids, np.int64)[None]}
        return {"input_ids": np.asarray(ids[:rows * row_length], np.int64).reshape(rows, row_length)}
    return Samples(sentences, collate, "lm-text", os.fspath(path))


# -- audio -----------------------------------------------------------------------------------------
def read_wav(path):
    """Mono float32 samples in [-1, 1) and the sample rate of a PCM WAV file (8/16/32-bit)."""
    try:
        with wave.open(os.fspath(path), "rb") as f:
            channels, width, rate, frames = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            raw = f.readframes(frames)
    except (wave.Error, EOFError) as error:
        raise DataError(f"{path}: not a PCM WAV file ({error})") from None
    kinds = {1: (np.uint8, 128.0, 128.0), 2: ("<i2", 0.0, 32768.0), 4: ("<i4", 0.0, 2147483648.0)}
    if width not in kinds:
        raise DataError(f"{path}: {8 * width}-bit samples are not supported (8, 16 or 32-bit PCM)")
    dtype, offset, scale = kinds[width]
    samples = (np.frombuffer(raw, dtype=dtype).astype(np.float32) - offset) / scale
    samples = samples[:len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    return samples.astype(np.float32), rate


def _log_mel(path):
    try:
        from dreidel.audio import log_mel_spectrogram
    except ImportError:
        raise DataError(f"{path}: WAV input needs dreidel.audio.log_mel_spectrogram (the native Whisper "
                        f"front end), which this build does not have; pass precomputed *_logmel.npy "
                        f"features instead") from None
    samples, rate = read_wav(path)
    if rate != 16000:
        raise DataError(f"{path}: sample rate {rate} Hz; Whisper needs 16000 Hz")
    features = np.asarray(log_mel_spectrogram(samples), dtype=np.float32)
    return features[None] if features.ndim == 2 else features


def _stack_features(batch):
    arrays = [_log_mel(item) if str(item).lower().endswith(".wav") else _read_npy(item) for item in batch]
    arrays = [a[None] if a.ndim == 2 else a for a in arrays]
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"audio features of different shapes in one batch: {sorted(shapes)}")
    return {"input_features": np.concatenate(arrays).astype(np.float32)}


def audio_data(folder):
    """A folder of WAVs (features computed per batch) or of `*_logmel.npy` features."""
    folder = Path(folder)
    wavs = sorted(folder.glob("*.wav"))
    mels = sorted(folder.glob("*_logmel.npy"))
    if not wavs and not mels:
        raise DataError(f"{folder}: no .wav or *_logmel.npy files")
    # features beside their WAV are used instead of recomputing them
    stems = {p.name[:-len("_logmel.npy")] for p in mels}
    items = mels + [w for w in wavs if w.stem not in stems]
    return Samples(sorted(items, key=lambda p: p.name), _stack_features, "audio", str(folder))


# -- images ----------------------------------------------------------------------------------------
def _read_npy(path):
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: not a readable .npy array ({error})") from None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> channels (gray, RGB, gray+alpha, RGBA)
_PNG_MAX_PIXELS = 1 << 26


def _unfilter(raw, height, width, channels, path):
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise DataError(f"{path}: image data holds {len(raw)} bytes, expected {height * (stride + 1)}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            current = line
        elif kind == 1:
            current = line.reshape(width, channels).cumsum(axis=0).reshape(-1) & 255
        elif kind == 2:
            current = (line + previous) & 255
        elif kind in (3, 4):
            # these depend on the reconstructed byte `channels` to the left: a per-byte loop
            current = np.zeros(stride, dtype=np.int32)
            for x in range(stride):
                left = current[x - channels] if x >= channels else 0
                if kind == 3:
                    predicted = (left + previous[x]) >> 1
                else:
                    up_left = previous[x - channels] if x >= channels else 0
                    p = left + previous[x] - up_left
                    pa, pb, pc = abs(p - left), abs(p - previous[x]), abs(p - up_left)
                    predicted = left if pa <= pb and pa <= pc else (previous[x] if pb <= pc else up_left)
                current[x] = (line[x] + predicted) & 255
        else:
            raise DataError(f"{path}: row {y} has unknown PNG filter type {kind}")
        out[y] = current
        previous = current
    return out.reshape(height, width, channels)


def read_png(path):
    """An 8-bit non-interlaced PNG as uint8 [H, W, C] (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)."""
    data = Path(path).read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise DataError(f"{path}: not a PNG file (bad signature)")
    position, header, compressed = len(_PNG_SIGNATURE), None, []
    while True:
        if position + 8 > len(data):
            raise DataError(f"{path}: truncated PNG (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if len(body) != length or position + 12 + length > len(data):
            raise DataError(f"{path}: truncated PNG chunk {kind!r}")
        crc = struct.unpack(">I", data[position + 8 + length:position + 12 + length])[0]
        if zlib.crc32(kind + body) != crc:
            raise DataError(f"{path}: PNG chunk {kind!r} fails its CRC check")
        position += 12 + length
        if kind == b"IHDR":
            if length != 13:
                raise DataError(f"{path}: IHDR chunk of {length} bytes, expected 13")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise DataError(f"{path}: PNG without an IHDR chunk")
    width, height, depth, colour, compression, filtering, interlace = header
    if colour not in _PNG_CHANNELS or depth != 8:
        raise DataError(f"{path}: PNG colour type {colour} at bit depth {depth} is not supported "
                        f"(8-bit gray, gray+alpha, RGB or RGBA are)")
    if interlace != 0:
        raise DataError(f"{path}: interlaced PNGs are not supported")
    if compression != 0 or filtering != 0:
        raise DataError(f"{path}: unknown PNG compression/filter method {compression}/{filtering}")
    if not 0 < width * height <= _PNG_MAX_PIXELS:
        raise DataError(f"{path}: PNG size {width}×{height} is empty or too large")
    channels = _PNG_CHANNELS[colour]
    expected = height * (width * channels + 1)
    decompressor = zlib.decompressobj()
    try:
        raw = decompressor.decompress(b"".join(compressed), expected + 1)  # bounded: never inflates a bomb
    except zlib.error as error:
        raise DataError(f"{path}: corrupt PNG image data ({error})") from None
    return _unfilter(raw, height, width, channels, path)


def read_image(path):
    """A PNG as float32 [C, H, W] in [0, 1], or a `.npy` array as float32 as stored."""
    if str(path).lower().endswith(".png"):
        return np.ascontiguousarray(read_png(path).transpose(2, 0, 1), dtype=np.float32) / 255
    array = _read_npy(path)
    if array.dtype.kind not in "fiu":
        raise DataError(f"{path}: array of dtype {array.dtype} is not numeric")
    return array.astype(np.float32)


def _stack_images(batch):
    arrays = [read_image(item) if isinstance(item, (str, Path)) else item for item in batch]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"images of different shapes in one batch: {sorted(shapes)}")
    return {"pixel_values": np.stack(arrays).astype(np.float32)}


def image_data(path):
    """A folder of `.png`/`.npy` images, or one `.npy` batch [N, ...]."""
    path = Path(path)
    if path.is_file():
        array = _read_npy(path)
        if array.ndim < 2 or array.dtype.kind not in "fiu":
            raise DataError(f"{path}: expected a numeric batch [N, ...], got {array.dtype} {array.shape}")
        return Samples(list(array.astype(np.float32)), _stack_images, "images", str(path))
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".npy"))
    if not files:
        raise DataError(f"{path}: no .png or .npy images")
    return Samples(files, _stack_images, "images", str(path))


def load_data(path, tokenizer=None, max_length=None):
    """Pick the loader from `path`: .txt → text, a folder of WAVs/log-mels → audio, else images.
    A tokenizer object with `encode` (a language model's own) makes text `lm_text_data` rows of
    `max_length` (default 64) tokens."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".txt":
            from dreidel.tokenizers.wordpiece import WordPieceTokenizer
            if callable(getattr(tokenizer, "encode", None)) and not isinstance(tokenizer, WordPieceTokenizer):
                return lm_text_data(path, tokenizer, max_length or 64)
            return text_data(path, tokenizer, max_length)
        if path.suffix.lower() == ".npy":
            return image_data(path)
        raise DataError(f"{path}: unknown data file type (a .txt of sentences, a .npy batch, or a folder)")
    if any(path.glob("*.wav")) or any(path.glob("*_logmel.npy")):
        return audio_data(path)
    return image_data(path)
