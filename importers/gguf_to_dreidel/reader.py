"""A GGUF (v2/v3) reader: header, metadata, tensor infos, memory-mapped lazy tensor data.

Layout (little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata count; metadata
as (string key, u32 value type, value); tensor infos as (string name, u32 n_dims, u64 ne[n_dims],
u32 ggml type, u64 offset); then, at the next multiple of `general.alignment` (default 32), the
data section the offsets point into. Strings are a u64 byte length and UTF-8 bytes; arrays a u32
element type, a u64 count and the elements. ne[0] is the fastest-varying axis, so the numpy shape
of a tensor is ne reversed.

Every count and length is checked against the bytes left in the file before anything is
allocated, so memory use stays in proportion to the file's size whatever a header claims.
"""
import math
import os
import struct
from typing import NamedTuple

import numpy as np

from importers.gguf_to_dreidel.errors import GGUFFormatError, GGUFUnsupportedError
from importers.gguf_to_dreidel.quants import DEQUANTIZERS, GGML_TYPES, SUPPORTED_TYPES, dequantize

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 32

# Metadata value types: id -> (name, numpy dtype of a scalar; None for string / array).
VALUE_TYPES = {
    0: ("UINT8", "<u1"), 1: ("INT8", "<i1"), 2: ("UINT16", "<u2"), 3: ("INT16", "<i2"),
    4: ("UINT32", "<u4"), 5: ("INT32", "<i4"), 6: ("FLOAT32", "<f4"), 7: ("BOOL", "<u1"),
    8: ("STRING", None), 9: ("ARRAY", None), 10: ("UINT64", "<u8"), 11: ("INT64", "<i8"),
    12: ("FLOAT64", "<f8"),
}
BOOL, STRING, ARRAY = 7, 8, 9
# Fewest bytes one value of each type occupies: bounds an array's count by the bytes left.
_MIN_SIZE = {t: (8 if t == STRING else 12 if t == ARRAY else np.dtype(dt).itemsize)
             for t, (_, dt) in VALUE_TYPES.items()}
_U64 = struct.Struct("<Q")
_MIN_KV_SIZE = 8 + 4 + 1          # empty key, type, one-byte value
_MIN_TENSOR_INFO_SIZE = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset


class TensorInfo(NamedTuple):
    """One tensor of a GGUF file. `shape` is numpy order (ne reversed); `offset` is absolute."""
    name: str
    shape: tuple
    type_id: int
    type_name: str
    offset: int
    nbytes: int

    @property
    def ne(self):
        """ggml's dims, fastest axis first."""
        return tuple(reversed(self.shape))


class _Cursor:
    """Bounds-checked little-endian reads from the mapped file."""

    def __init__(self, data, label):
        self.data = memoryview(data)  # slicing a memoryview is much cheaper than slicing a memmap
        self.label, self.pos, self.size = label, 0, len(data)

    def fail(self, message):
        raise GGUFFormatError(f"{self.label}: {message}")

    def left(self):
        return self.size - self.pos

    def take(self, n, what):
        if n > self.left():
            self.fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, only {self.left()} left "
                      f"(file size {self.size})")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt, what):
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, start)[0]

    def count(self, what, min_size):
        """A u64 count of items that each take at least `min_size` bytes; absurd counts fail here."""
        n = self.unpack("<Q", f"{what} count")
        if n * min_size > self.left():
            self.fail(f"{what} count {n} cannot fit in the {self.left()} bytes left at offset {self.pos}")
        return n

    def string(self, what):
        n = self.count(f"{what} length", 1)
        start = self.take(n, what)
        try:
            return str(self.data[start:start + n], "utf-8")
        except UnicodeDecodeError as exc:
            self.fail(f"{what} at offset {start} is not UTF-8 ({exc.reason})")

    def strings(self, n, what):
        """`n` strings (an array's elements): the fast path of `string` for vocabularies."""
        data, out, unpack = self.data, [], _U64.unpack_from
        for i in range(n):
            start = self.pos + 8
            end = start + unpack(data, self.pos)[0] if start <= self.size else None
            if end is None or end > self.size:
                self.string(f"{what}[{i}]")  # reports the error
            try:
                out.append(str(data[start:end], "utf-8"))
            except UnicodeDecodeError:
                self.string(f"{what}[{i}]")
            self.pos = end
        return out

    def value_type(self, what):
        t = self.unpack("<I", f"{what} type")
        if t not in VALUE_TYPES:
            self.fail(f"{what} has unknown value type {t} (at offset {self.pos - 4})")
        return t

    def scalar(self, t, what):
        dtype = np.dtype(VALUE_TYPES[t][1])
        start = self.take(dtype.itemsize, what)
        value = np.frombuffer(self.data, dtype=dtype, count=1, offset=start)[0]
        if t == BOOL:
            return self._bool(value, start, what)
        return float(value) if dtype.kind == "f" else int(value)

    def _bool(self, byte, start, what):
        if byte > 1:
            self.fail(f"{what} at offset {start} is a bool of value {int(byte)} (not 0 or 1)")
        return bool(byte)

    def value(self, t, what, depth=0):
        """A metadata value: Python scalar or str; arrays are numpy arrays (numbers, bools) or lists
        (strings, nested arrays)."""
        if t == STRING:
            return self.string(what)
        if t != ARRAY:
            return self.scalar(t, what)
        if depth >= MAX_NESTING:
            self.fail(f"{what}: arrays nested deeper than {MAX_NESTING}")
        item_type = self.value_type(f"{what} element")
        n = self.count(f"{what} element", _MIN_SIZE[item_type])
        if item_type == STRING:
            return self.strings(n, what)
        if item_type == ARRAY:
            return [self.value(item_type, f"{what}[{i}]", depth + 1) for i in range(n)]
        dtype = np.dtype(VALUE_TYPES[item_type][1])
        start = self.take(n * dtype.itemsize, what)
        items = np.frombuffer(self.data, dtype=dtype, count=n, offset=start).astype(dtype.newbyteorder("="))
        if item_type == BOOL:
            if n and items.max() > 1:
                self.fail(f"{what} holds bool values other than 0 and 1")
            return items.astype(bool)
        return items


class GGUFFile:
    """A GGUF file opened for reading: `version`, `metadata` (key -> value), `tensors` (name ->
    `TensorInfo`, file order), `alignment`, `data_offset`. Tensor data stays memory-mapped until
    `tensor(name)` dequantises it. Use as a context manager or call `close()` to unmap the file.

    Metadata values are Python int/float/bool/str; numeric and bool arrays are numpy arrays; arrays
    of strings or of arrays are lists.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.label = f"GGUF file {self.path!r}"
        size = os.path.getsize(self.path)
        if size < 4:
            raise GGUFFormatError(f"{self.label}: truncated: {size} bytes is too short for a GGUF header")
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        cursor = _Cursor(self._data, self.label)
        self._read_header(cursor)
        self.metadata = self._read_metadata(cursor)
        self.alignment = self._alignment()
        self.tensors = self._read_tensor_infos(cursor)

    # -- parsing ------------------------------------------------------------------------------
    def _read_header(self, cursor):
        magic = bytes(self._data[:4])
        if magic != MAGIC:
            cursor.fail(f"not a GGUF file (magic {magic!r}, expected {MAGIC!r})")
        cursor.pos = 4
        self.version = cursor.unpack("<I", "version")
        if self.version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(self.version.to_bytes(4, "little"), "big")
            hint = " (a big-endian file)" if swapped in SUPPORTED_VERSIONS else ""
            raise GGUFUnsupportedError(self.label, [f"GGUF version {self.version}{hint}; this reader "
                                                    f"supports versions {SUPPORTED_VERSIONS}"])
        self._n_tensors = cursor.count("tensor", _MIN_TENSOR_INFO_SIZE)
        self._n_kv = cursor.count("metadata entry", _MIN_KV_SIZE)

    def _read_metadata(self, cursor):
        metadata = {}
        for i in range(self._n_kv):
            key = cursor.string(f"metadata key #{i}")
            if key in metadata:
                cursor.fail(f"metadata key {key!r} appears twice")
            metadata[key] = cursor.value(cursor.value_type(f"metadata {key!r}"), f"metadata {key!r}")
        return metadata

    def _alignment(self):
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
                or alignment & (alignment - 1):
            raise GGUFFormatError(f"{self.label}: general.alignment {alignment!r} is not a positive power of two")
        return alignment

    def _read_tensor_infos(self, cursor):
        raw_infos, unknown = [], []
        for i in range(self._n_tensors):
            name = cursor.string(f"tensor #{i} name")
            n_dims = cursor.unpack("<I", f"tensor {name!r} n_dims")
            if n_dims > MAX_DIMS:
                cursor.fail(f"tensor {name!r} has {n_dims} dims (at most {MAX_DIMS})")
            ne = tuple(cursor.unpack("<Q", f"tensor {name!r} dims") for _ in range(n_dims))
            type_id = cursor.unpack("<I", f"tensor {name!r} type")
            offset = cursor.unpack("<Q", f"tensor {name!r} offset")
            if type_id not in GGML_TYPES:
                unknown.append(f"tensor {name!r}: unknown ggml type id {type_id}")
            raw_infos.append((name, ne, type_id, offset))
        if unknown:
            raise GGUFUnsupportedError(self.label, unknown)
        self.data_offset = -(-cursor.pos // self.alignment) * self.alignment
        tensors = {}
        for name, ne, type_id, offset in raw_infos:
            if name in tensors:
                cursor.fail(f"tensor {name!r} appears twice")
            tensors[name] = self._tensor_info(name, ne, type_id, offset)
        self._check_no_overlap(tensors.values())
        return tensors

    def _tensor_info(self, name, ne, type_id, offset):
        kind = GGML_TYPES[type_id]
        what = f"tensor {name!r} ({kind.name}, ne {list(ne)})"
        row = ne[0] if ne else 1
        if row % kind.block_size:
            raise GGUFFormatError(f"{self.label}: {what}: row length {row} is not a multiple of the "
                                  f"{kind.name} block size {kind.block_size}")
        n_values = math.prod(ne)
        nbytes = n_values // kind.block_size * kind.type_size
        if offset % self.alignment:
            raise GGUFFormatError(f"{self.label}: {what}: data offset {offset} is not a multiple of the "
                                  f"alignment {self.alignment}")
        start = self.data_offset + offset
        if start + nbytes > len(self._data):
            raise GGUFFormatError(f"{self.label}: {what}: data [{start}, {start + nbytes}) lies outside the "
                                  f"file ({len(self._data)} bytes; truncated or corrupt)")
        return TensorInfo(name, tuple(reversed(ne)), type_id, kind.name, start, nbytes)

    def _check_no_overlap(self, infos):
        previous = None
        for info in sorted((i for i in infos if i.nbytes), key=lambda i: i.offset):
            if previous is not None and info.offset < previous.offset + previous.nbytes:
                raise GGUFFormatError(f"{self.label}: tensors {previous.name!r} and {info.name!r} overlap "
                                      f"(bytes from {info.offset} to {previous.offset + previous.nbytes})")
            previous = info

    # -- access -------------------------------------------------------------------------------
    def raw(self, name):
        """The stored bytes of tensor `name`: a read-only uint8 view of the mapped file."""
        info = self._info(name)
        return self._data[info.offset:info.offset + info.nbytes]

    def tensor(self, name, out=None):
        """Tensor `name` dequantised to float32, in numpy shape (ne reversed). `out` (float32, that
        shape, C-contiguous) receives it when given."""
        info = self._info(name)
        if info.type_id not in DEQUANTIZERS:
            raise GGUFUnsupportedError(self.label, [f"tensor {name!r} has type {info.type_name}; "
                                                    f"supported: {', '.join(SUPPORTED_TYPES)}"])
        if out is None:
            out = np.empty(info.shape, dtype=np.float32)
        elif out.shape != info.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {info.shape}")
        dequantize(self.raw(name), info.type_id, out.reshape(-1))
        return out

    def _info(self, name):
        if self._data is None:
            raise ValueError(f"{self.label} is closed")
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.label} has no tensor {name!r}") from None

    def unsupported_tensor_types(self):
        """Tensor name -> type name for every tensor this package cannot dequantise."""
        return {n: i.type_name for n, i in self.tensors.items() if i.type_id not in DEQUANTIZERS}

    def close(self):
        """Drop the memory map (tensors already returned are copies and stay valid)."""
        self._data = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"GGUFFile({self.path!r}, version={self.version}, {len(self.metadata)} metadata keys, "
                f"{len(self.tensors)} tensors)")


def read_gguf(path):
    """Open a GGUF v2/v3 file: a `GGUFFile` (metadata, tensor infos, lazy `tensor(name)`)."""
    return GGUFFile(path)
