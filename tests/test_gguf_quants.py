"""Dequantisers of `importers.gguf_to_dreidel` against the `gguf` package's reference (gguf.quants).

Random block payloads (every bit pattern of the quantised values) with finite scales, random
shapes; results must be bit-identical to the reference. Data quantised by the reference's own
quantisers must come back within one quantisation step.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

gguf = pytest.importorskip("gguf")
from gguf import quants as ref_quants  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: E402

from importers.gguf_to_dreidel import GGML_TYPES, SUPPORTED_TYPES, dequantize  # noqa: E402

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)

# Byte ranges holding float16 scales in each block (ggml-common.h); the rest is quantised payload.
F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q5_0": [0], "Q4_1": [0, 2], "Q5_1": [0, 2], "Q4_K": [0, 2],
              "Q5_K": [0, 2], "Q6_K": [208]}
TYPE_IDS = {t.name: t.id for t in GGML_TYPES.values()}


def test_type_table_matches_ggml():
    """Block sizes and bytes per block of every type we know agree with the gguf package's table."""
    for type_id, kind in GGML_TYPES.items():
        qtype = GGMLQuantizationType(type_id)
        assert qtype.name == kind.name
        assert GGML_QUANT_SIZES[qtype] == (kind.block_size, kind.type_size)


def _finite(words, exponent_mask, clear_bit):
    """Make float bit patterns finite: where the exponent is all ones, clear its top bit."""
    words[(words & exponent_mask) == exponent_mask] &= ~np.array(clear_bit, dtype=words.dtype)


def random_payload(name, n_blocks, rng):
    """Random bytes for `n_blocks` blocks of type `name`, with every scale a finite float."""
    kind = GGML_TYPES[TYPE_IDS[name]]
    raw = rng.integers(0, 256, size=(n_blocks, kind.type_size), dtype=np.uint8)
    if name in ("F16", "BF16"):
        mask = 0x7C00 if name == "F16" else 0x7F80
        _finite(raw.reshape(-1).view(np.uint16), mask, 0x4000)
    elif name == "F32":
        _finite(raw.reshape(-1).view(np.uint32), 0x7F800000, 0x40000000)
    for start in F16_FIELDS.get(name, []):
        scales = np.ascontiguousarray(raw[:, start:start + 2]).view(np.uint16)
        _finite(scales, 0x7C00, 0x4000)
        raw[:, start:start + 2] = scales.view(np.uint8)
    return raw.reshape(-1)


shapes = st.tuples(st.lists(st.integers(1, 4), min_size=0, max_size=3), st.integers(1, 3))


@pytest.mark.parametrize("name", SUPPORTED_TYPES)
@PROPERTY
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_dequantize_matches_reference(name, shape, seed):
    leading, row_blocks = shape
    kind = GGML_TYPES[TYPE_IDS[name]]
    rng = np.random.default_rng(seed)
    rows = int(np.prod(leading, dtype=np.int64))
    raw = random_payload(name, rows * row_blocks, rng)
    numpy_shape = (*leading, row_blocks * kind.block_size)
    with np.errstate(all="ignore"):  # huge scales overflow to inf in both implementations alike
        expected = ref_quants.dequantize(raw.reshape(*leading, row_blocks * kind.type_size), GGMLQuantizationType(kind.id))
        got = dequantize(raw, kind.id).reshape(numpy_shape)
    assert got.dtype == np.float32 and expected.shape == numpy_shape
    np.testing.assert_array_equal(got.view(np.uint32), expected.astype(np.float32).view(np.uint32))


def test_dequantize_in_chunks_matches_whole(monkeypatch):
    """Tensors larger than one chunk are split; the seams must not show."""
    from importers.gguf_to_dreidel import quants
    rng = np.random.default_rng(1)
    for name in ("Q4_1", "Q6_K", "F16"):
        kind = GGML_TYPES[TYPE_IDS[name]]
        raw = random_payload(name, 37, rng)
        whole = dequantize(raw, kind.id)
        monkeypatch.setattr(quants, "_CHUNK_VALUES", 3 * kind.block_size)
        chunked = dequantize(raw, kind.id)
        monkeypatch.undo()
        np.testing.assert_array_equal(whole.view(np.uint32), chunked.view(np.uint32))


# Quantisation steps relative to a block's largest magnitude (Q4_0's step is max/8, ...).
LEVELS = {"Q8_0": 127, "Q4_0": 15, "Q4_1": 15, "Q5_0": 31, "Q5_1": 31}


@pytest.mark.parametrize("name", sorted(LEVELS))
@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n_blocks=st.integers(1, 16), spread=st.floats(1e-3, 1e3))
def test_reference_quantised_data_round_trips(name, seed, n_blocks, spread):
    """Values quantised by the reference's quantiser come back within one quantisation step."""
    kind = GGML_TYPES[TYPE_IDS[name]]
    values = (np.random.default_rng(seed).standard_normal((n_blocks, kind.block_size)) * spread).astype(np.float32)
    packed = ref_quants.quantize(values, GGMLQuantizationType(kind.id))
    got = dequantize(packed.reshape(-1), kind.id).reshape(values.shape)
    step = 2 * np.abs(values).max(axis=1, keepdims=True) / LEVELS[name]
    assert np.all(np.abs(got - values) <= 1.05 * step)


@pytest.mark.parametrize("name", ["F16", "BF16"])
def test_half_precision_round_trips(name):
    values = np.random.default_rng(2).standard_normal(1000).astype(np.float32) * 100
    packed = ref_quants.quantize(values, GGMLQuantizationType(TYPE_IDS[name]))
    got = dequantize(packed.reshape(-1).view(np.uint8), TYPE_IDS[name])
    np.testing.assert_allclose(got, values, rtol=2 ** -8 if name == "BF16" else 2 ** -11)
