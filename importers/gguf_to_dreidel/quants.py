"""ggml tensor types and vectorised numpy dequantisers (block layouts of ggml-common.h).

Every quantised type stores a tensor's rows as blocks of `block_size` values packed in `type_size`
bytes; a row's length (ne[0]) is a multiple of `block_size`. A dequantiser maps a (n_blocks,
type_size) uint8 array to (n_blocks, block_size) float32 values, computing in float32 in the same
order as ggml's reference C code so results match it bit for bit.
"""
from typing import NamedTuple

import numpy as np


class GGMLType(NamedTuple):
    """A ggml tensor type: its id in GGUF files, name, values per block, bytes per block."""
    id: int
    name: str
    block_size: int
    type_size: int


# Every type id ggml has assigned (removed ids 4, 5, 31-33, 36-38 stay unknown), so unsupported
# tensors can be named and their byte extent checked.
GGML_TYPES = {t.id: t for t in (
    GGMLType(0, "F32", 1, 4), GGMLType(1, "F16", 1, 2), GGMLType(2, "Q4_0", 32, 18),
    GGMLType(3, "Q4_1", 32, 20), GGMLType(6, "Q5_0", 32, 22), GGMLType(7, "Q5_1", 32, 24),
    GGMLType(8, "Q8_0", 32, 34), GGMLType(9, "Q8_1", 32, 40), GGMLType(10, "Q2_K", 256, 84),
    GGMLType(11, "Q3_K", 256, 110), GGMLType(12, "Q4_K", 256, 144), GGMLType(13, "Q5_K", 256, 176),
    GGMLType(14, "Q6_K", 256, 210), GGMLType(15, "Q8_K", 256, 292), GGMLType(16, "IQ2_XXS", 256, 66),
    GGMLType(17, "IQ2_XS", 256, 74), GGMLType(18, "IQ3_XXS", 256, 98), GGMLType(19, "IQ1_S", 256, 50),
    GGMLType(20, "IQ4_NL", 32, 18), GGMLType(21, "IQ3_S", 256, 110), GGMLType(22, "IQ2_S", 256, 82),
    GGMLType(23, "IQ4_XS", 256, 136), GGMLType(24, "I8", 1, 1), GGMLType(25, "I16", 1, 2),
    GGMLType(26, "I32", 1, 4), GGMLType(27, "I64", 1, 8), GGMLType(28, "F64", 1, 8),
    GGMLType(29, "IQ1_M", 256, 56), GGMLType(30, "BF16", 1, 2), GGMLType(34, "TQ1_0", 256, 54),
    GGMLType(35, "TQ2_0", 256, 66), GGMLType(39, "MXFP4", 32, 17),
)}


def _f16(blocks, start):
    """The float16 at byte `start` of every block, as a (n_blocks, 1) float32 column."""
    return blocks[:, start:start + 2].copy().view("<f2").astype(np.float32)


def _nibbles(packed):
    """(n, k) packed bytes -> (n, 2, k): low nibbles, then high nibbles (ggml's element order)."""
    return np.stack([packed & 0x0F, packed >> 4], axis=1)


def _f32(blocks, out):
    out[:, 0] = blocks.reshape(-1).view("<f4")


def _f16_type(blocks, out):
    out[:, 0] = blocks.reshape(-1).view("<f2")


def _bf16(blocks, out):
    # bfloat16 is the top half of a float32.
    out.view(np.uint32)[:, 0] = blocks.reshape(-1).view("<u2").astype(np.uint32) << 16


def _q8_0(blocks, out):  # d: f16, qs: int8[32]; x = q * d
    np.multiply(blocks[:, 2:].view(np.int8), _f16(blocks, 0), out=out)


def _q4_0(blocks, out):  # d: f16, qs: 16 bytes of two 4-bit values; x = (q - 8) * d
    q = _nibbles(blocks[:, 2:18]).reshape(-1, 32).view(np.int8) - np.int8(8)
    np.multiply(q, _f16(blocks, 0), out=out)


def _q4_1(blocks, out):  # d, m: f16, qs[16]; x = q * d + m
    np.multiply(_nibbles(blocks[:, 4:20]).reshape(-1, 32), _f16(blocks, 0), out=out)
    out += _f16(blocks, 2)


def _five_bit(qh, qs):
    """Q5 values: 4 low bits from the nibbles of `qs`, the fifth from bit j of the 32-bit `qh`."""
    high = np.unpackbits(qh, axis=1, bitorder="little")
    return _nibbles(qs).reshape(-1, 32) | (high << 4)


def _q5_0(blocks, out):  # d: f16, qh: u32, qs[16]; x = (q - 16) * d
    q = _five_bit(blocks[:, 2:6], blocks[:, 6:22]).view(np.int8) - np.int8(16)
    np.multiply(q, _f16(blocks, 0), out=out)


def _q5_1(blocks, out):  # d, m: f16, qh: u32, qs[16]; x = q * d + m
    np.multiply(_five_bit(blocks[:, 4:8], blocks[:, 8:24]), _f16(blocks, 0), out=out)
    out += _f16(blocks, 2)


def _k_scales(blocks):
    """Q4_K/Q5_K: 8 sub-block scales and mins, 6 bits each, packed in the 12 bytes at offset 4,
    already multiplied by the super-block's d and dmin: (n, 8, 1) float32 each."""
    s = blocks[:, 4:16]
    scale = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    minimum = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    d = _f16(blocks, 0) * scale.astype(np.float32)
    m = _f16(blocks, 2) * minimum.astype(np.float32)
    return d[:, :, None], m[:, :, None]


def _q4_k(blocks, out):  # d, dmin, scales[12], qs[128]: 8 sub-blocks of 32; x = d_j * q - m_j
    d, m = _k_scales(blocks)
    # 4 chunks of 32 bytes; sub-block 2c is chunk c's low nibbles, 2c+1 its high nibbles.
    q = _nibbles(blocks[:, 16:144].reshape(-1, 4, 32)).swapaxes(1, 2).reshape(-1, 8, 32)
    np.subtract(d * q, m, out=out.reshape(-1, 8, 32))


def _q5_k(blocks, out):  # d, dmin, scales[12], qh[32], qs[128]; sub-block j's fifth bit is bit j of qh
    d, m = _k_scales(blocks)
    low = _nibbles(blocks[:, 48:176].reshape(-1, 4, 32)).swapaxes(1, 2).reshape(-1, 8, 32)
    high = (blocks[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    np.subtract(d * (low | (high << 4)), m, out=out.reshape(-1, 8, 32))


def _q6_k(blocks, out):  # ql[128], qh[64], scales int8[16], d: f16; x = d * s_j * (q - 32)
    # Two halves of 128 values; in each, value 32k + l takes its low 4 bits from ql[l + 32(k % 2)]
    # (low nibble for k < 2, high for k >= 2) and its top 2 bits from bits 2k of qh[l].
    low = _nibbles(blocks[:, 0:128].reshape(-1, 2, 2, 32)).swapaxes(1, 2).reshape(-1, 2, 4, 32)
    high = (blocks[:, 128:192].reshape(-1, 2, 1, 32) >> np.arange(0, 8, 2, dtype=np.uint8)[None, None, :, None]) & 3
    q = (low | (high << 4)).view(np.int8) - np.int8(32)
    scale = _f16(blocks, 208) * blocks[:, 192:208].view(np.int8).astype(np.float32)  # one per 16 values
    np.multiply(scale[:, :, None], q.reshape(-1, 16, 16), out=out.reshape(-1, 16, 16))


DEQUANTIZERS = {0: _f32, 1: _f16_type, 30: _bf16, 8: _q8_0, 2: _q4_0, 3: _q4_1, 6: _q5_0, 7: _q5_1,
                12: _q4_k, 13: _q5_k, 14: _q6_k}
SUPPORTED_TYPES = tuple(GGML_TYPES[i].name for i in DEQUANTIZERS)

_CHUNK_VALUES = 1 << 20  # bounds the temporaries (a few MB) and keeps them in cache


def dequantize(raw, type_id, out=None):
    """Dequantise the bytes `raw` (1-D uint8, whole blocks) of ggml type `type_id` to a 1-D float32
    array (written into `out` when given). Raises KeyError for a type without a dequantiser."""
    kind = GGML_TYPES[type_id]
    fn = DEQUANTIZERS[type_id]
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, kind.type_size)
    if out is None:
        out = np.empty(blocks.shape[0] * kind.block_size, dtype=np.float32)
    out_blocks = out.reshape(-1, kind.block_size)
    step = max(1, _CHUNK_VALUES // kind.block_size)
    for start in range(0, blocks.shape[0], step):
        fn(blocks[start:start + step], out_blocks[start:start + step])
    return out
