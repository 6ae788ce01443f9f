"""Checkpoints in safetensors format: no pickle, written atomically (temp file + rename)."""
import json
import os
import tempfile

import numpy as np
from safetensors.numpy import load as _safetensors_load
from safetensors.numpy import save as _safetensors_save

from dreidel.tensor import Tensor


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated or not safetensors."""


def _as_arrays(state_dict):
    arrays = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"state_dict keys must be strings, got {name!r}")
        array = value.data if isinstance(value, Tensor) else np.asarray(value)
        # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
        arrays[name] = array if array.flags.c_contiguous else np.array(array, order="C")
    return arrays


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give; mkstemp's files are private (0600)


def _fsync_folder(folder):
    """Make the rename itself durable (best effort: not every platform can open a folder)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write_bytes(path, payload):
    """Write bytes to `path` so that a crash leaves either the old file or the new one, never half."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, path)
        _fsync_folder(folder)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def save(state_dict, path, metadata=None):
    """Save a dict of name → Tensor/array to `path` (safetensors), atomically.

    `metadata` is an optional dict of strings stored in the file's header.
    """
    metadata = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    atomic_write_bytes(path, _safetensors_save(_as_arrays(state_dict), metadata=metadata))


def load(path):
    """Load a safetensors file into a dict of name → numpy array; a bad file raises CheckpointError."""
    path, payload, _ = _read_checked(path)
    try:
        return dict(_safetensors_load(payload))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # safetensors raises its own types, and a Rust panic is a BaseException
        raise CheckpointError(f"checkpoint {path!r} is corrupt or not safetensors: {error}") from error


def load_metadata(path):
    """The string metadata dict stored by `save(..., metadata=...)` ({} when there is none)."""
    _, _, header = _read_checked(path)
    return dict(header.get("__metadata__") or {})


def _read_checked(path):
    """(path, file bytes, parsed header), the header validated against the file's length."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            payload = f.read()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {error}") from error
    return path, payload, _check_header(payload, path)


def _check_header(payload, path):
    """Validate the length-prefixed JSON header before handing the bytes over."""
    if len(payload) < 8:
        raise CheckpointError(f"checkpoint {path!r} is truncated ({len(payload)} bytes)")
    size = int.from_bytes(payload[:8], "little")
    if size > len(payload) - 8:
        raise CheckpointError(f"checkpoint {path!r} is truncated or not safetensors "
                              f"(header claims {size} bytes, file has {len(payload) - 8})")
    try:
        header = json.loads(payload[8:8 + size])
        if not isinstance(header, dict):
            raise ValueError(f"header is a JSON {type(header).__name__}, not an object")
        end = max((int(entry["data_offsets"][1]) for key, entry in header.items()
                   if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry), default=0)
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError) as error:
        raise CheckpointError(f"checkpoint {path!r} has a corrupt header: {error}") from error
    if 8 + size + end > len(payload):
        raise CheckpointError(f"checkpoint {path!r} is truncated: tensors need {end} bytes of data, "
                              f"file has {len(payload) - 8 - size}")
    return header
