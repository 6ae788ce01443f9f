"""Hostile and damaged GGUF files: a clean `GGUFError` naming the file, fast, with bounded memory.

A small valid file (written by the gguf package's GGUFWriter) is truncated at every length and has
random bytes overwritten (hypothesis); random headers and hand-built files with absurd counts,
sizes, offsets, nesting, types and layouts must fail with the right error class. Every attempt
runs under a wall-clock limit and `tracemalloc` (numpy's buffers are traced too): parsing and
dequantising may allocate only in proportion to the file's size, never what a header claims.
"""
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from timeouts import time_limit

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q, GGUFValueType as V, GGUFWriter  # noqa: E402

from importers.gguf_to_dreidel import GGUFError, GGUFFormatError, GGUFUnsupportedError, read_gguf  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TIME_LIMIT_S = 10
# Dequantised float32 can be up to ~8x the bytes of 4-bit data; Python objects for metadata cost a
# few times their encoded size. Anything beyond this bound comes from trusting a header.
MEMORY_FACTOR, MEMORY_SLACK = 32, 1 << 20


def read_everything(path):
    """Open `path` and dequantise every supported tensor (the whole attack surface)."""
    with read_gguf(path) as f:
        unsupported = f.unsupported_tensor_types()
        return {name: f.tensor(name) for name in f.tensors if name not in unsupported}


def attempt(path):
    """read_everything(path) under a time limit and a memory bound; returns the tensors or the
    GGUFError raised (anything else propagates and fails the test)."""
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with time_limit(TIME_LIMIT_S):
            try:
                result = read_everything(path)
            except GGUFError as exc:
                assert str(path) in str(exc), f"error does not name the file: {exc}"
                result = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= MEMORY_FACTOR * size + MEMORY_SLACK, f"{peak} bytes allocated for a {size}-byte file"
    return result


def valid_file(path):
    writer = GGUFWriter(str(path), "llama")
    writer.add_key_value("general.name", "fuzz ✓", V.STRING)
    writer.add_key_value("llama.block_count", 1, V.UINT32)
    writer.add_key_value("x.f64", 2.5, V.FLOAT64)
    writer.add_key_value("x.flags", [True, False], V.ARRAY, sub_type=V.BOOL)
    writer.add_key_value("tokenizer.ggml.tokens", ["a", "bc", "<s>"], V.ARRAY)
    writer.add_key_value("x.nested", [[1, 2], [3]], V.ARRAY)
    rng = np.random.default_rng(0)
    writer.add_tensor("w.f32", rng.standard_normal((2, 3)).astype(np.float32))
    q = rng.integers(0, 256, (2, 20), dtype=np.uint8)
    q[:, 0:4] = np.array([0.5, 0.25], np.float16).view(np.uint8)  # finite d and m
    writer.add_tensor("w.q4_1", q, raw_dtype=Q.Q4_1)
    k = rng.integers(0, 256, (1, 210), dtype=np.uint8)
    k[:, 208:210] = np.array([0.125], np.float16).view(np.uint8)
    writer.add_tensor("w.q6_k", k, raw_dtype=Q.Q6_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    path = valid_file(tmp_path_factory.mktemp("gguf") / "valid.gguf")
    with read_gguf(path) as f:
        end = max(i.offset + i.nbytes for i in f.tensors.values())
    return path.read_bytes(), end, read_everything(path)


def test_truncation_at_every_length(valid, tmp_path):
    data, end, expected = valid
    path = tmp_path / "truncated.gguf"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        result = attempt(path)
        if length < end:
            assert isinstance(result, GGUFFormatError), (length, result)
        else:  # only alignment padding after the last tensor is gone
            assert set(result) == set(expected)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
def test_overwritten_bytes(valid, tmp_path, edits):
    data = bytearray(valid[0])
    for position, value in edits:
        data[position % len(data)] = value
    path = tmp_path / "flipped.gguf"
    path.write_bytes(bytes(data))
    attempt(path)


@FUZZ
@given(version=st.sampled_from([2, 3]), tail=st.binary(min_size=0, max_size=300))
def test_random_headers(tmp_path, version, tail):
    path = tmp_path / "random.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", version) + tail)
    result = attempt(path)
    assert isinstance(result, (GGUFError, dict))


# ---- hand-built files -------------------------------------------------------------------------

def s(text):
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key, vtype, payload):
    return s(key) + struct.pack("<I", vtype) + payload


def tensor_info(name, ne, ggml_type, offset):
    return s(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", ggml_type, offset)


def build(kvs=(), infos=(), data=b"", n_kv=None, n_tensors=None, alignment=32, magic=b"GGUF", version=3):
    head = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    return body + b"\0" * (-len(body) % alignment) + data


U32, STR, ARR, BOOL = 4, 8, 9, 7
F32_4 = tensor_info("w", [4], 0, 0)

HOSTILE = {
    "empty": (b"", GGUFFormatError, "too short"),
    "wrong magic": (build(magic=b"GGML"), GGUFFormatError, "not a GGUF file"),
    "header cut": (b"GGUF\x03\x00\x00\x00\x01", GGUFFormatError, "truncated"),
    "huge tensor count": (build(n_tensors=2**64 - 1), GGUFFormatError, "tensor count"),
    "huge kv count": (build(n_kv=2**63), GGUFFormatError, "metadata entry count"),
    "huge key length": (build([struct.pack("<Q", 2**64 - 1) + b"k"]), GGUFFormatError, "length count"),
    "huge string": (build([kv("k", STR, struct.pack("<Q", 2**40) + b"abc")]), GGUFFormatError, "length count"),
    "huge u8 array": (build([kv("k", ARR, struct.pack("<IQ", 0, 2**62) + b"\0" * 64)]), GGUFFormatError,
                      "element count"),
    "huge string array": (build([kv("k", ARR, struct.pack("<IQ", STR, 2**50) + s("x") * 4)]), GGUFFormatError,
                          "element count"),
    "deep nesting": (build([kv("k", ARR, struct.pack("<IQ", ARR, 1) * 1000 + struct.pack("<IQ", 0, 0))]),
                     GGUFFormatError, "nested deeper"),
    "unknown value type": (build([kv("k", 13, b"\0" * 8)]), GGUFFormatError, "unknown value type 13"),
    "unknown array element type": (build([kv("k", ARR, struct.pack("<IQ", 99, 1))]), GGUFFormatError,
                                   "unknown value type 99"),
    "bool of value 2": (build([kv("k", BOOL, b"\x02")]), GGUFFormatError, "bool of value 2"),
    "bool array of value 7": (build([kv("k", ARR, struct.pack("<IQ", BOOL, 2) + b"\x01\x07")]), GGUFFormatError,
                              "bool values"),
    "key not UTF-8": (build([kv(b"\xff\xfe", U32, b"\0" * 4)]), GGUFFormatError, "not UTF-8"),
    "duplicate key": (build([kv("k", U32, b"\0" * 4)] * 2), GGUFFormatError, "appears twice"),
    "alignment 0": (build([kv("general.alignment", U32, struct.pack("<I", 0))]), GGUFFormatError, "power of two"),
    "alignment 48": (build([kv("general.alignment", U32, struct.pack("<I", 48))]), GGUFFormatError, "power of two"),
    "alignment a string": (build([kv("general.alignment", STR, s("32"))]), GGUFFormatError, "power of two"),
    "5 dims": (build(infos=[tensor_info("w", [1] * 5, 0, 0)]), GGUFFormatError, "5 dims"),
    "n_dims huge": (build(infos=[s("w") + struct.pack("<I", 2**32 - 1)]), GGUFFormatError, "dims"),
    "huge dims": (build(infos=[tensor_info("w", [2**32, 2**32, 2**32, 2**32], 0, 0)], data=b"\0" * 64),
                  GGUFFormatError, "outside the file"),
    "unknown tensor types": (build(infos=[tensor_info("a", [32], 4, 0), tensor_info("b", [32], 99, 64)]),
                             GGUFUnsupportedError, "(?s)'a'.*type id 4.*'b'.*type id 99"),
    "row not whole blocks": (build(infos=[tensor_info("w", [33], 8, 0)], data=b"\0" * 64), GGUFFormatError,
                             "not a multiple of the Q8_0 block size"),
    "misaligned offset": (build(infos=[tensor_info("w", [4], 0, 4)], data=b"\0" * 64), GGUFFormatError,
                          "not a multiple of the alignment"),
    "offset outside": (build(infos=[tensor_info("w", [4], 0, 2**63)], data=b"\0" * 64), GGUFFormatError,
                       "outside the file"),
    "data cut": (build(infos=[F32_4], data=b"\0" * 15), GGUFFormatError, "outside the file"),
    "no data section": (build(infos=[F32_4])[:-1], GGUFFormatError, "outside the file"),
    "overlap": (build(infos=[tensor_info("a", [16], 0, 0), tensor_info("b", [4], 0, 32)], data=b"\0" * 64),
                GGUFFormatError, "'a' and 'b' overlap"),
    "duplicate tensor": (build(infos=[F32_4, tensor_info("w", [4], 0, 32)], data=b"\0" * 64), GGUFFormatError,
                         "'w' appears twice"),
    "tensor name not UTF-8": (build(infos=[tensor_info(b"\xc3", [4], 0, 0)], data=b"\0" * 16), GGUFFormatError,
                              "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_file(tmp_path, case):
    data, error, message = HOSTILE[case]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    result = attempt(path)
    assert isinstance(result, error), result
    assert pytest.raises(error, read_everything, path).match(message)


def test_hand_built_files_parse_when_valid(tmp_path):
    """The builder itself is right: the same pieces without the damage read back as intended."""
    values = np.arange(4, dtype=np.float32)
    path = tmp_path / "ok.gguf"
    path.write_bytes(build([kv("k", U32, struct.pack("<I", 7)), kv("e", ARR, struct.pack("<IQ", STR, 0)),
                            kv("n", ARR, struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", 0, 2) + b"\x05\x06")],
                           [F32_4, tensor_info("zero", [0, 3], 2, 0)], values.tobytes()))
    with read_gguf(path) as f:
        assert f.metadata["k"] == 7 and f.metadata["e"] == []
        assert [a.tolist() for a in f.metadata["n"]] == [[5, 6]]
        np.testing.assert_array_equal(f.tensor("w"), values)
        assert f.tensor("zero").shape == (3, 0)


@FUZZ
@given(where=st.integers(0, 10**6), value=st.sampled_from([2**64 - 1, 2**63, 2**40, 2**32, 2**32 - 1, 10**6, 0])
       | st.integers(0, 2**64 - 1), header=st.booleans())
def test_huge_counts_and_lengths(valid, tmp_path, where, value, header):
    """A random u64 written over a header count or any 8 bytes of the metadata / tensor infos
    (string lengths, array counts, dims, offsets)."""
    data, end, _ = valid
    info_end = data.index(b"w.q6_k") + 64
    position = 8 + 8 * (where % 2) if header else where % (info_end - 8)
    damaged = bytearray(data)
    damaged[position:position + 8] = struct.pack("<Q", value)
    path = tmp_path / "counts.gguf"
    path.write_bytes(bytes(damaged))
    attempt(path)
