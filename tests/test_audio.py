"""dreidel.audio: WAV reading against the stdlib `wave` writer and scipy's reader, resampling
against exact sines, log-mel against the shared Whisper features and filterbank."""
import struct
import time
import wave

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.io import wavfile

from dreidel.audio import WavError, log_mel_spectrogram, mel_filters, read_wav, resample
from shared_data import shared_path


def write_pcm(path, ints, width, rate, channels):
    """Integer PCM through Python's own `wave` writer (8-bit is unsigned there, as in the format)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 1:
            data = (ints + 128).astype(np.uint8).tobytes()
        elif width == 3:
            data = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints.reshape(-1))
        else:
            data = ints.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
        w.writeframes(data)


@given(width=st.sampled_from([1, 2, 3, 4]), channels=st.integers(1, 3), frames=st.integers(1, 40),
       rate=st.sampled_from([8000, 16000, 44100]), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_pcm_matches_the_written_integers(tmp_path_factory, width, channels, frames, rate, seed):
    bits = 8 * width
    ints = np.random.default_rng(seed).integers(-(1 << (bits - 1)), 1 << (bits - 1), (frames, channels))
    path = tmp_path_factory.mktemp("wav") / "x.wav"
    write_pcm(path, ints, width, rate, channels)
    samples, got_rate = read_wav(path)
    expected = (ints / float(1 << (bits - 1))).mean(axis=1)
    assert got_rate == rate and samples.dtype == np.float32
    np.testing.assert_allclose(samples, expected, rtol=1e-6, atol=1e-7)
    if width != 3:  # scipy reads the same integers independently
        _, ref = wavfile.read(path)
        ref = ref.reshape(frames, channels).astype(np.float64)
        ref = (ref - 128) / 128 if width == 1 else ref / float(1 << (bits - 1))
        np.testing.assert_allclose(samples, ref.mean(axis=1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_wav(tmp_path, dtype):
    data = np.random.default_rng(0).uniform(-1, 1, (50, 2)).astype(dtype)
    wavfile.write(tmp_path / "f.wav", 22050, data)
    samples, rate = read_wav(tmp_path / "f.wav")
    assert rate == 22050
    np.testing.assert_allclose(samples, data.mean(axis=1), rtol=1e-6, atol=1e-7)


def riff(fmt_body, data, extra_chunks=b""):
    fmt = b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body
    chunk = b"data" + struct.pack("<I", len(data)) + data
    body = b"WAVE" + extra_chunks + fmt + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


def fmt_chunk(tag, channels, rate, bits):
    return struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)


def test_extensible_and_odd_chunks(tmp_path):
    ints = np.array([0, 1000, -1000, 32767], np.int16)
    guid = struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    ext = fmt_chunk(0xFFFE, 1, 16000, 16) + struct.pack("<HHI", 22, 16, 4) + guid
    odd = b"LIST" + struct.pack("<I", 3) + b"abc" + b"\x00"  # odd-sized chunk padded to even
    (tmp_path / "e.wav").write_bytes(riff(ext, ints.tobytes(), odd))
    samples, rate = read_wav(tmp_path / "e.wav")
    np.testing.assert_array_equal(samples, ints / 32768.0)


@pytest.mark.parametrize("blob,message", [
    (b"", "not a RIFF"),
    (b"RIFF\x00\x00\x00\x00WAVE", "no fmt chunk"),
    (riff(fmt_chunk(0x55, 1, 16000, 16), b"\x00" * 8), "MPEG layer 3"),
    (riff(fmt_chunk(2, 1, 16000, 4), b"\x00" * 8), "ADPCM"),
    (riff(fmt_chunk(1, 1, 16000, 16), b""), "no audio samples"),
    (riff(fmt_chunk(1, 1, 16000, 12), b"\x00" * 8), "12 bits"),
    (riff(fmt_chunk(3, 1, 16000, 16), b"\x00" * 8), "float sample size"),
    (riff(fmt_chunk(1, 1, 16000, 16), b"\x00" * 100)[:60], "truncated data"),
    (riff(fmt_chunk(1, 1, 16000, 16), b"\x00" * 100)[:30], "truncated fmt"),
    (b"OggS" + b"\x00" * 40, "not a RIFF"),
])
def test_bad_files_name_the_file(tmp_path, blob, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(blob)
    with pytest.raises(WavError, match=message) as err:
        read_wav(path)
    assert "bad.wav" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(WavError, match="nothere.wav"):
        read_wav(tmp_path / "nothere.wav")


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_440hz_tone_resamples_to_the_exact_sine(rate):
    t = np.arange(rate) / rate
    out = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), rate, 16000)
    assert len(out) == 16000
    exact = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(out - exact)[1000:-1000].max() < 1e-5


def tone_gain_db(freq, rate=44100):
    t = np.arange(rate) / rate
    out = resample(np.sin(2 * np.pi * freq * t).astype(np.float32), rate, 16000)[2000:-2000]
    return 20 * np.log10(np.sqrt(2 * np.mean(out.astype(np.float64) ** 2)) + 1e-30)


def test_passband_and_stop_band():
    for freq in (100, 3000, 6000, 7200):
        assert abs(tone_gain_db(freq)) < 0.1, freq
    for freq in (8160, 9000, 12000, 20000):   # would alias into the band without the filter
        assert tone_gain_db(freq) < -90, freq


def test_streaming_wav_without_a_data_size(tmp_path):
    ints = np.array([5, -7, 300], np.int16)
    blob = bytearray(riff(fmt_chunk(1, 1, 16000, 16), ints.tobytes()))
    blob[40:44] = b"\xff\xff\xff\xff"  # the data chunk's size field, as pipes write it
    (tmp_path / "s.wav").write_bytes(bytes(blob))
    np.testing.assert_array_equal(read_wav(tmp_path / "s.wav")[0], ints / 32768.0)


def test_resample_errors():
    with pytest.raises(ValueError, match="1-D"):
        resample(np.zeros((2, 3)), 8000)
    with pytest.raises(ValueError, match="positive"):
        resample(np.zeros(3), 0)
    with pytest.raises(ValueError, match="256:1"):
        resample(np.zeros(3), 4_000_000_000)


def test_mel_filters_match_whisper():
    reference = np.load(shared_path("onnx", "whisper-tiny-en", "mel_filters.npy"), allow_pickle=False)
    assert np.abs(mel_filters(80) - reference).max() <= 1e-6


def test_log_mel_matches_the_shared_features():
    clips = [shared_path("onnx", "whisper-tiny-en", "clips", f"clip_{i}.wav") for i in range(3)]
    start = time.perf_counter()
    batch = log_mel_spectrogram(clips)
    print(f"log-mel of 3 clips (30 s windows): {time.perf_counter() - start:.3f} s")
    assert batch.shape == (3, 80, 3000) and batch.dtype == np.float32
    for i, clip in enumerate(clips):
        reference = np.load(shared_path("onnx", "whisper-tiny-en", "clips", f"clip_{i}_logmel.npy"),
                            allow_pickle=False)[0]
        assert np.abs(batch[i] - reference).max() <= 1e-4
        np.testing.assert_array_equal(log_mel_spectrogram(clip), batch[i])


def reference_log_mel(x):
    """The recipe written out directly: explicit DFT matrix in float64, frame loop."""
    x = np.concatenate([x, np.zeros(480000 - len(x))]) if len(x) < 480000 else x[:480000]
    x = np.pad(x.astype(np.float64), 200, mode="reflect")
    n = np.arange(400)
    window = 0.5 * (1 - np.cos(2 * np.pi * n / 400))
    dft = np.exp(-2j * np.pi * np.outer(np.arange(201), n) / 400)
    frames = np.stack([x[i * 160:i * 160 + 400] * window for i in range(3000)])
    power = np.abs(frames @ dft.T) ** 2
    log = np.log10(np.maximum(power @ mel_filters(80).astype(np.float64).T, 1e-10)).T
    return (np.maximum(log, log.max() - 8) + 4) / 4


def test_log_mel_against_a_direct_formula_and_trimming():
    rng = np.random.default_rng(3)
    long = (0.1 * rng.standard_normal(480000 + 5000)).astype(np.float32)
    short = (0.3 * np.sin(np.arange(12345) * 0.05)).astype(np.float32)
    got = log_mel_spectrogram([long, short])
    assert np.abs(got[0] - reference_log_mel(long)).max() < 1e-4
    assert np.abs(got[1] - reference_log_mel(short)).max() < 1e-4
    np.testing.assert_array_equal(got[0], log_mel_spectrogram(long[:480000]))
