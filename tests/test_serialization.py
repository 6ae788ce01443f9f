"""dreidel.save / dreidel.load: round trips, atomic writes, and clear errors on damaged files."""
import os
import stat

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.numpy import load_file

import dreidel
from dreidel import nn, serialization

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def sample_state(rng):
    return {
        "weight": rng.standard_normal((3, 4)).astype(np.float32),
        "double": rng.standard_normal(5),
        "indices": rng.integers(-5, 5, size=(2, 2)).astype(np.int64),
        "scalar": np.array(1.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "flag": np.array([True, False]),
    }


def test_round_trip_keeps_values_dtypes_shapes_and_metadata(tmp_path, rng):
    state = sample_state(rng)
    path = tmp_path / "model.safetensors"
    dreidel.save(state, path, metadata={"step": 12, "note": "ok"})
    loaded = dreidel.load(path)
    assert set(loaded) == set(state)
    for name, value in state.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape, name
        np.testing.assert_array_equal(loaded[name], value)
    assert serialization.load_metadata(path) == {"step": "12", "note": "ok"}
    assert load_file(str(path)).keys() == state.keys()  # a standard safetensors file


def test_save_accepts_tensors_and_non_contiguous_arrays(tmp_path):
    base = np.arange(12.0).reshape(3, 4)
    dreidel.save({"t": dreidel.Tensor(base), "view": base.T, "strided": base[:, ::2]}, tmp_path / "x")
    loaded = dreidel.load(tmp_path / "x")
    np.testing.assert_array_equal(loaded["view"], base.T)
    np.testing.assert_array_equal(loaded["strided"], base[:, ::2])
    np.testing.assert_array_equal(loaded["t"], base)


def test_save_rejects_non_string_keys(tmp_path):
    with pytest.raises(TypeError, match="strings"):
        dreidel.save({1: np.zeros(2)}, tmp_path / "x")


def test_saved_file_gets_normal_permissions(tmp_path):
    path = tmp_path / "model.safetensors"
    dreidel.save({"a": np.zeros(2)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # not the temp file's private 0600


def test_module_load_path(tmp_path):
    rng = np.random.default_rng(3)
    source = nn.Sequential(nn.Linear(3, 5, rng=rng), nn.LayerNorm(5), nn.Linear(5, 2, rng=rng))
    target = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Linear(5, 2))
    path = tmp_path / "ckpt.safetensors"
    dreidel.save(source.state_dict(), path)
    target.load_state_dict(dreidel.load(path))
    x = dreidel.Tensor(rng.standard_normal((4, 3)).astype(np.float32))
    np.testing.assert_array_equal(source(x).data, target(x).data)
    state = dreidel.load(path)
    state["0.weight"] += 1  # loaded arrays are ordinary, writable arrays
    with pytest.raises(ValueError, match="0.bias"):
        target.load_state_dict({**state, "0.bias": np.zeros(4, np.float32)})


# -- crash safety ------------------------------------------------------------------------------------
def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


@pytest.mark.parametrize("failing", ["replace", "write", "fsync"])
def test_a_crash_mid_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "model.safetensors"
    old = {"w": np.arange(4, dtype=np.float32)}
    dreidel.save(old, path)
    old_bytes = path.read_bytes()

    class Crash(Exception):
        pass

    def crash(*args, **kwargs):
        raise Crash(failing)

    if failing == "replace":
        monkeypatch.setattr(serialization.os, "replace", crash)
    elif failing == "fsync":
        monkeypatch.setattr(serialization.os, "fsync", crash)
    else:  # the write dies half way: some bytes reach the temp file, then the error
        real_fdopen = serialization.os.fdopen

        class HalfWriter:
            def __init__(self, handle):
                self.file = handle

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

            def write(self, payload):
                self.file.write(payload[: len(payload) // 2])
                raise Crash("disk full")

        monkeypatch.setattr(serialization.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))

    with pytest.raises(Crash):
        dreidel.save({"w": np.ones(1000, dtype=np.float32)}, path)
    assert path.read_bytes() == old_bytes
    assert _leftovers(tmp_path, path.name) == []
    np.testing.assert_array_equal(dreidel.load(path)["w"], old["w"])


def test_save_creates_missing_folders_and_overwrites(tmp_path):
    path = tmp_path / "a" / "b" / "m.safetensors"
    dreidel.save({"x": np.zeros(1)}, path)
    dreidel.save({"x": np.ones(1)}, path)
    assert dreidel.load(path)["x"][0] == 1
    assert _leftovers(path.parent, path.name) == []


# -- damaged files -----------------------------------------------------------------------------------
def _assert_clear_error(path):
    with pytest.raises(dreidel.CheckpointError) as error:
        dreidel.load(path)
    assert str(path) in str(error.value)


def test_missing_empty_and_directory_paths(tmp_path):
    _assert_clear_error(tmp_path / "nope.safetensors")
    (tmp_path / "empty").write_bytes(b"")
    _assert_clear_error(tmp_path / "empty")
    _assert_clear_error(tmp_path)
    with pytest.raises(dreidel.CheckpointError):
        serialization.load_metadata(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("header", [b"[1, 2]", b'"text"', b'{"a": 1}', b'{"a": {"data_offsets": "xy"}}',
                                    b'{"a": {"data_offsets": [0]}}', b'{"a": {"dtype": "F32", "shape": [9], '
                                    b'"data_offsets": [0, 4]}}', b"\xff\xfe{"])
def test_well_framed_but_wrong_headers(tmp_path, header):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    _assert_clear_error(path)


@pytest.fixture
def good_bytes(tmp_path_factory, ):
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    dreidel.save(sample_state(np.random.default_rng(0)), path, metadata={"k": "v"})
    return path.read_bytes()


def test_truncated_at_every_length_fails_clearly(tmp_path, good_bytes):
    path = tmp_path / "cut.safetensors"
    for length in range(len(good_bytes)):
        path.write_bytes(good_bytes[:length])
        _assert_clear_error(path)


@FUZZ
@given(data=st.data())
def test_flipped_bytes_fail_clearly_or_load_arrays(tmp_path, good_bytes, data):
    """Damage anywhere: either a CheckpointError naming the file, or (damage inside tensor data, which
    safetensors has no checksum for) a dict of arrays of the saved shapes — never another exception."""
    damaged = bytearray(good_bytes)
    header_end = 8 + int.from_bytes(good_bytes[:8], "little")
    positions = data.draw(st.lists(st.integers(0, header_end - 1), min_size=1, max_size=4))
    for position in positions:
        damaged[position] ^= data.draw(st.integers(1, 255))
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(damaged))
    try:
        loaded = dreidel.load(path)
    except dreidel.CheckpointError as error:
        assert str(path) in str(error)
    else:
        assert all(isinstance(v, np.ndarray) for v in loaded.values())


@FUZZ
@given(payload=st.binary(max_size=200))
def test_random_bytes_fail_clearly(tmp_path, payload):
    path = tmp_path / "random.safetensors"
    path.write_bytes(payload)
    _assert_clear_error(path)
