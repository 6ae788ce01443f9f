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
        arrays[name] = np.ascontiguousarray(array)
    return arrays


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
        os.replace(temporary, path)
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
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            payload = f.read()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {error}") from error
    _check_header(payload, path)
    try:
        return dict(_safetensors_load(payload))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {path!r} is corrupt or not safetensors: {error}") from error


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
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path!r} has a corrupt header: {error}") from error
    end = max((entry["data_offsets"][1] for key, entry in header.items()
               if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry), default=0)
    if 8 + size + end > len(payload):
        raise CheckpointError(f"checkpoint {path!r} is truncated: tensors need {end} bytes of data, "
                              f"file has {len(payload) - 8 - size}")
