"""Checkpoints in safetensors format: no pickle, written atomically (temp file + rename).

`save`/`load` hold one flat dict of name → tensor (a model's `state_dict()`). A whole training state
(model, optimizer, scheduler, data order, step, the global random generator) goes through
`save_training_state`/`load_training_state`: its arrays are stored as tensors, everything else as
JSON in the file's metadata, so a resumed run continues bit-exactly.
"""
import json
import os
import tempfile
from collections import OrderedDict

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
        if isinstance(value, (dict, list, tuple)):
            raise TypeError(f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor: dreidel.save "
                            f"stores flat name -> tensor dicts (a model's state_dict()); for optimizer or "
                            f"scheduler state use dreidel.save_training_state(path, model=..., optimizer=..., "
                            f"scheduler=..., step=...)")
        array = value.data if isinstance(value, Tensor) else np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"state_dict entry {name!r} holds Python objects (dtype object), which a "
                            f"checkpoint cannot store as a tensor")
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


_VERSIONS_KEY = "dreidel.versions"  # {module prefix: state_dict version}, the versions other than 1


def save(state_dict, path, metadata=None):
    """Save a dict of name → Tensor/array to `path` (safetensors), atomically.

    `metadata` is an optional dict of strings stored in the file's header. The module versions of a
    `Module.state_dict()` (its `_metadata`) other than 1 go there too, so `load` can give them back.
    """
    metadata = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    versions = {prefix: entry["version"] for prefix, entry in (getattr(state_dict, "_metadata", None) or {}).items()
                if entry.get("version", 1) != 1}
    if versions:
        metadata = {**(metadata or {}), _VERSIONS_KEY: json.dumps(versions)}
    atomic_write_bytes(path, _safetensors_save(_as_arrays(state_dict), metadata=metadata))


def load(path):
    """Load a safetensors file into an OrderedDict of name → numpy array, with the module versions
    `save` recorded as its `_metadata` (for `Module.load_state_dict`); a bad file raises CheckpointError."""
    path, payload, header = _read_checked(path)
    try:
        state = OrderedDict(_safetensors_load(payload))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # safetensors raises its own types, and a Rust panic is a BaseException
        raise CheckpointError(f"checkpoint {path!r} is corrupt or not safetensors: {error}") from error
    state._metadata = OrderedDict()
    recorded = (header.get("__metadata__") or {}).get(_VERSIONS_KEY)
    if recorded is not None:
        try:
            state._metadata.update((prefix, {"version": version}) for prefix, version in json.loads(recorded).items())
        except (ValueError, AttributeError) as error:
            raise CheckpointError(f"checkpoint {path!r} has corrupt module versions: {error}") from error
    return state


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


_STATE_KEY = "dreidel.training_state"


def _encode(value, arrays, path):
    """JSON-able form of a nested state: arrays move to `arrays` (referenced by key), tuples and
    dicts with non-string keys are tagged so they come back as they were."""
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, np.ndarray):
        arrays[path] = value
        return {"__tensor__": path}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _encode(v, arrays, f"{path}/{k}") for k, v in value.items()}
        return {"__items__": [[_encode(k, arrays, f"{path}/key{i}"), _encode(v, arrays, f"{path}/{k}")]
                              for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{path}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, arrays, f"{path}/{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"training state entry {path!r} is a {type(value).__name__}, which is neither an array "
                    f"nor JSON-representable")


def _decode(value, arrays):
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return arrays[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(_decode(v, arrays) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in value["__items__"]}
    return {k: _decode(v, arrays) for k, v in value.items()}


def save_training_state(path, *, model=None, optimizer=None, scheduler=None, data=None, step=None,
                        extra=None, rng=True):
    """Save everything a training run needs to resume, atomically, in one safetensors file.

    `model`, `optimizer`, `scheduler`, `data` (e.g. a DataLoader) are anything with `state_dict()`;
    `step` an int; `extra` a dict of arrays and JSON values; `rng=True` also stores the state of
    dreidel's global random generator (initialisations, dropout). Restore with `load_training_state`.
    """
    from dreidel import random as _random
    state = {"format": 1, "step": step, "extra": extra}
    for name, owner in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler), ("data", data)):
        if owner is not None:
            if not hasattr(owner, "state_dict"):
                raise TypeError(f"{name}= needs an object with state_dict(), got {type(owner).__name__}")
            state[name] = owner.state_dict()
            if hasattr(state[name], "_metadata"):  # a model's module versions (see Module.state_dict)
                state[name + "_metadata"] = state[name]._metadata
    if rng:
        state["rng"] = _random.get_state()
    arrays = {}
    encoded = _encode(state, arrays, "state")
    save(arrays, path, metadata={_STATE_KEY: json.dumps(encoded)})


def load_training_state(path, *, model=None, optimizer=None, scheduler=None, data=None, rng=True):
    """Restore a state written by `save_training_state` into the objects given (each through its
    `load_state_dict`) and the global random generator (if it was saved and `rng`); returns the dict
    {"step", "extra", and the raw state of every part}."""
    from dreidel import random as _random
    metadata = load_metadata(path)
    if _STATE_KEY not in metadata:
        raise CheckpointError(f"{os.fspath(path)!r} is not a training state written by save_training_state "
                              f"(for a model's weights use dreidel.load)")
    try:
        encoded = json.loads(metadata[_STATE_KEY])
        state = _decode(encoded, load(path))
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"training state {os.fspath(path)!r} is corrupt: {error}") from error
    for name, owner in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler), ("data", data)):
        if owner is None:
            continue
        if name not in state:
            raise CheckpointError(f"training state {os.fspath(path)!r} holds no {name} state")
        part = state[name]
        if name + "_metadata" in state:
            part = OrderedDict(part)
            part._metadata = state[name + "_metadata"]
        owner.load_state_dict(part)
    if rng and "rng" in state:
        _random.set_state(state["rng"])
    return state
