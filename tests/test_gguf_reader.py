"""The GGUF reader of `importers.gguf_to_dreidel` on files written by the `gguf` package's GGUFWriter.

Every metadata value type (scalars, strings, arrays, nested arrays) and every supported tensor type
must read back as written, and agree with the gguf package's GGUFReader (metadata, shapes, offsets,
dequantised values); random files (hypothesis) too. Versions 2 and 3, custom alignment, lazy access,
unsupported tensor types.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType as V, GGUFWriter  # noqa: E402
from gguf import quants as ref_quants  # noqa: E402

from importers.gguf_to_dreidel import (GGML_TYPES, SUPPORTED_TYPES, GGUFError, GGUFFormatError,  # noqa: E402
                                       GGUFUnsupportedError, read_gguf)

from test_gguf_quants import TYPE_IDS, random_payload  # noqa: E402

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def write_gguf(path, metadata=(), tensors=(), alignment=None, arch="llama"):
    """A GGUF file: metadata as (key, value, value type[, element type]), tensors as (name, numpy
    shape, type name, raw bytes)."""
    writer = GGUFWriter(str(path), arch)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, value, vtype, *sub in metadata:
        writer.add_key_value(key, value, vtype, sub_type=sub[0] if sub else None)
    for name, shape, type_name, raw in tensors:
        kind = GGML_TYPES[TYPE_IDS[type_name]]
        byte_shape = (*shape[:-1], shape[-1] // kind.block_size * kind.type_size)
        writer.add_tensor(name, raw.reshape(byte_shape), raw_dtype=Q(kind.id))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def plain(value):
    """Metadata value with numpy arrays as lists, for comparing with what was written."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def flatten(value):
    if isinstance(value, (list, np.ndarray)):
        return [x for v in value for x in flatten(v)]
    return [value]


def check_against_gguf_reader(path, ours):
    """Metadata, tensor shapes, offsets and dequantised values agree with GGUFReader."""
    ref = GGUFReader(str(path))
    ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.metadata) == list(ref_fields)
    for key, field in ref_fields.items():
        # GGUFReader flattens nested arrays; compare flat sequences there.
        expected = field.contents()
        got = ours.metadata[key]
        if isinstance(got, (list, np.ndarray)):
            assert flatten(got) == flatten(expected), key
        else:
            assert got == expected and type(got) is type(expected), key
    assert ours.version == ref.fields["GGUF.version"].contents()
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert info.ne == tuple(int(n) for n in t.shape), t.name
        assert info.offset == t.data_offset and info.nbytes == t.n_bytes and info.type_id == int(t.tensor_type)
        if info.type_name in SUPPORTED_TYPES:
            with np.errstate(all="ignore"):
                expected = ref_quants.dequantize(t.data, t.tensor_type).astype(np.float32)
                got = ours.tensor(t.name)
            assert got.shape == expected.shape == info.shape
            np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


EVERY_VALUE_TYPE = [
    ("v.u8", 255, V.UINT8), ("v.i8", -128, V.INT8), ("v.u16", 65535, V.UINT16), ("v.i16", -32768, V.INT16),
    ("v.u32", 2**32 - 1, V.UINT32), ("v.i32", -2**31, V.INT32), ("v.f32", 0.15625, V.FLOAT32),
    ("v.bool.t", True, V.BOOL), ("v.bool.f", False, V.BOOL), ("v.str", "héllo ✓ 世界", V.STRING),
    ("v.str.empty", "", V.STRING), ("v.u64", 2**64 - 1, V.UINT64), ("v.i64", -2**63, V.INT64),
    ("v.f64", 1 / 3, V.FLOAT64),
    ("a.u8", [0, 7, 255], V.ARRAY, V.UINT8), ("a.i8", [-1, 5], V.ARRAY, V.INT8),
    ("a.u16", [1, 65535], V.ARRAY, V.UINT16), ("a.i16", [-300, 300], V.ARRAY, V.INT16),
    ("a.u32", [1, 2**32 - 1], V.ARRAY, V.UINT32), ("a.i32", [-7, 2**31 - 1], V.ARRAY, V.INT32),
    ("a.f32", [0.5, -2.25], V.ARRAY, V.FLOAT32), ("a.bool", [True, False, True], V.ARRAY, V.BOOL),
    ("a.str", ["a", "", "ü"], V.ARRAY, V.STRING), ("a.u64", [2**63, 3], V.ARRAY, V.UINT64),
    ("a.i64", [-2**63, 9], V.ARRAY, V.INT64), ("a.f64", [1e300, -1e-300], V.ARRAY, V.FLOAT64),
    ("a.nested", [[1, 2], [3], [4, 5, 6]], V.ARRAY), ("a.nested.str", [["x", "y"], ["z"]], V.ARRAY),
    ("a.nested.deep", [[[1.5], [2.5, 3.5]]], V.ARRAY),
]


def test_every_value_type_reads_back(tmp_path):
    path = write_gguf(tmp_path / "values.gguf", EVERY_VALUE_TYPE)
    with read_gguf(path) as f:
        assert f.metadata["general.architecture"] == "llama"
        for key, value, *_ in EVERY_VALUE_TYPE:
            assert plain(f.metadata[key]) == value, key
        assert isinstance(f.metadata["v.bool.t"], bool) and isinstance(f.metadata["v.u64"], int)
        assert f.metadata["a.u64"].dtype == np.uint64 and f.metadata["a.bool"].dtype == bool
        assert f.tensors == {}
        check_against_gguf_reader(path, f)


def _tensors(rng, names_types_shapes):
    return [(name, shape, t, random_payload(t, math.prod(shape) // GGML_TYPES[TYPE_IDS[t]].block_size, rng))
            for name, t, shape in names_types_shapes]


def test_every_supported_tensor_type_reads_back(tmp_path, rng):
    specs = [(f"t.{t.lower()}", t, (3, 2 * GGML_TYPES[TYPE_IDS[t]].block_size)) for t in SUPPORTED_TYPES]
    specs += [("t.vector", "F32", (7,)), ("t.4d", "Q8_0", (2, 1, 3, 32))]
    path = write_gguf(tmp_path / "tensors.gguf", tensors=_tensors(rng, specs))
    with read_gguf(path) as f:
        for name, t, shape in specs:
            assert f.tensors[name].shape == shape and f.tensors[name].type_name == t
            assert f.tensors[name].offset % f.alignment == 0
        check_against_gguf_reader(path, f)


def test_f32_and_f16_values_are_the_written_values(tmp_path, rng):
    a = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal((5,)).astype(np.float16)
    path = write_gguf(tmp_path / "plain.gguf", tensors=[("a", a.shape, "F32", a.view(np.uint8)),
                                                          ("b", b.shape, "F16", b.view(np.uint8))])
    with read_gguf(path) as f:
        np.testing.assert_array_equal(f.tensor("a"), a)
        np.testing.assert_array_equal(f.tensor("b"), b.astype(np.float32))


value_types = st.sampled_from([V.UINT8, V.INT8, V.UINT16, V.INT16, V.UINT32, V.INT32, V.FLOAT32, V.BOOL,
                               V.STRING, V.UINT64, V.INT64, V.FLOAT64])
INT_RANGES = {V.UINT8: (0, 255), V.INT8: (-128, 127), V.UINT16: (0, 2**16 - 1), V.INT16: (-2**15, 2**15 - 1),
              V.UINT32: (0, 2**32 - 1), V.INT32: (-2**31, 2**31 - 1), V.UINT64: (0, 2**64 - 1),
              V.INT64: (-2**63, 2**63 - 1)}


def scalar_of(vtype):
    if vtype in INT_RANGES:
        return st.integers(*INT_RANGES[vtype])
    if vtype == V.BOOL:
        return st.booleans()
    if vtype == V.STRING:
        return st.text(max_size=12)
    width = 32 if vtype == V.FLOAT32 else 64
    return st.floats(width=width, allow_nan=False)


@st.composite
def metadata_entries(draw):
    entries = []
    for i in range(draw(st.integers(0, 6))):
        vtype = draw(value_types)
        if draw(st.booleans()):
            entries.append((f"k{i}.array", draw(st.lists(scalar_of(vtype), min_size=1, max_size=5)), V.ARRAY, vtype))
        else:
            entries.append((f"k{i}", draw(scalar_of(vtype)), vtype))
    return entries


@st.composite
def tensor_specs(draw):
    specs = []
    for i in range(draw(st.integers(0, 4))):
        t = draw(st.sampled_from(SUPPORTED_TYPES + ("Q2_K", "IQ4_NL", "I32")))
        block = GGML_TYPES[TYPE_IDS[t]].block_size
        leading = draw(st.lists(st.integers(1, 3), max_size=3))
        specs.append((f"blk.{i}.w", t, (*leading, block * draw(st.integers(1, 2)))))
    return specs


@PROPERTY
@given(entries=metadata_entries(), specs=tensor_specs(), alignment=st.sampled_from([None, 1, 8, 64, 256]),
       seed=st.integers(0, 2**32 - 1))
def test_random_files_agree_with_gguf_reader(tmp_path, entries, specs, alignment, seed):
    path = write_gguf(tmp_path / "random.gguf", entries, _tensors(np.random.default_rng(seed), specs), alignment)
    with read_gguf(path) as f:
        assert f.alignment == (alignment or 32) and f.data_offset % f.alignment == 0
        for key, value, vtype, *element_type in entries:
            if V.FLOAT32 in (vtype, *element_type):  # written rounded to float32
                value = np.asarray(value, dtype=np.float32).tolist()
            assert plain(f.metadata[key]) == value, key
        check_against_gguf_reader(path, f)


def test_version_2_reads_like_version_3(tmp_path, rng):
    path = write_gguf(tmp_path / "v3.gguf", EVERY_VALUE_TYPE[:5], _tensors(rng, [("w", "Q4_1", (2, 64))]))
    data = bytearray(path.read_bytes())
    data[4:8] = (2).to_bytes(4, "little")
    v2 = tmp_path / "v2.gguf"
    v2.write_bytes(bytes(data))
    with read_gguf(path) as f3, read_gguf(v2) as f2:
        assert (f2.version, f3.version) == (2, 3)
        assert plain(f2.metadata) == plain(f3.metadata) and f2.tensors == f3.tensors
        np.testing.assert_array_equal(f2.tensor("w"), f3.tensor("w"))


@pytest.mark.parametrize("version, hint", [(1, ""), (4, ""), (0x03000000, "big-endian")])
def test_other_versions_are_refused(tmp_path, version, hint):
    path = write_gguf(tmp_path / "v.gguf")
    data = bytearray(path.read_bytes())
    data[4:8] = version.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFUnsupportedError, match=rf"(?s)v\.gguf.*version {version}.*{hint}"):
        read_gguf(path)


def test_unsupported_tensor_type_is_readable_raw_but_not_dequantised(tmp_path, rng):
    tensors = _tensors(rng, [("q2", "Q2_K", (2, 256)), ("ok", "Q8_0", (1, 32))])
    path = write_gguf(tmp_path / "q2k.gguf", tensors=tensors)
    with read_gguf(path) as f:
        assert f.unsupported_tensor_types() == {"q2": "Q2_K"}
        np.testing.assert_array_equal(f.raw("q2"), tensors[0][3])
        with pytest.raises(GGUFUnsupportedError, match=r"(?s)q2k\.gguf.*'q2'.*Q2_K"):
            f.tensor("q2")
        assert f.tensor("ok").shape == (1, 32)
        with pytest.raises(KeyError, match="missing"):
            f.tensor("missing")


def test_tensors_are_copies_and_the_file_closes(tmp_path, rng):
    path = write_gguf(tmp_path / "c.gguf", tensors=_tensors(rng, [("w", "Q4_0", (2, 32))]))
    f = read_gguf(path)
    w = f.tensor("w")
    out = np.empty((2, 32), np.float32)
    assert f.tensor("w", out=out) is out
    np.testing.assert_array_equal(out, w)
    with pytest.raises(ValueError, match="out must be"):
        f.tensor("w", out=np.empty((2, 31), np.float32))
    f.close()
    assert w.flags.owndata and np.isfinite(w).all()
    with pytest.raises(ValueError, match="closed"):
        f.tensor("w")


def test_errors_are_value_errors():
    assert issubclass(GGUFError, ValueError)
    assert issubclass(GGUFFormatError, GGUFError) and issubclass(GGUFUnsupportedError, GGUFError)
