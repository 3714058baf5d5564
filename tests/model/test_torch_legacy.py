"""The legacy PyTorch reader: a round trip, and every bad input refused with the file's path.

The test files are written here in the legacy layout, with stand-ins for the two torch globals
registered under their real names only while pickling (torch itself is not installed).
"""

import hashlib
import io
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from melanoma.model.efficientnet_lite import read_weights
from melanoma.model.torch_legacy import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    WeightsFileError,
    read_state_dict,
)
from melanoma.params.lite_specs import LITE


class _Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array

    def __reduce__(self):
        strides = tuple(s // self.array.itemsize for s in self.array.strides)
        storage = _Storage(self.key, self.array)
        return (_rebuild, (storage, 0, self.array.shape, strides, False, OrderedDict()))


class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


def _rebuild(*args):  # never called: only its name goes into the pickle
    raise AssertionError


class _FloatStorage:
    pass


class _LongStorage:
    pass


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            kind = _FloatStorage if obj.array.dtype == np.float32 else _LongStorage
            return ("storage", kind, obj.key, "cpu", obj.array.size, None)
        return None


# The names the stand-ins pickle under (set once: they exist only for these tests).
_STAND_INS = [
    (_rebuild, "torch._utils", "_rebuild_tensor_v2"),
    (_FloatStorage, "torch", "FloatStorage"),
    (_LongStorage, "torch", "LongStorage"),
]
for _obj, _module, _name in _STAND_INS:
    _obj.__module__, _obj.__qualname__ = _module, _name


@pytest.fixture
def fake_torch(monkeypatch):
    """torch / torch._utils modules holding the stand-ins, while a test writes its file."""
    modules = {"torch": types.ModuleType("torch"), "torch._utils": types.ModuleType("torch._utils")}
    for obj, module, name in _STAND_INS:
        setattr(modules[module], name, obj)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def _legacy_bytes(state: dict, arrays: dict[str, np.ndarray]) -> bytes:
    chunks = []
    for obj in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
        chunks.append(pickle.dumps(obj, protocol=2))
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(state)
    chunks.append(buffer.getvalue())
    chunks.append(pickle.dumps(list(arrays), protocol=2))
    for array in arrays.values():
        chunks.append(np.int64(array.size).tobytes() + np.ascontiguousarray(array).tobytes())
    return b"".join(chunks)


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tensors() -> OrderedDict:
    rng = np.random.default_rng(0)
    return OrderedDict(
        conv=rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        bias=rng.normal(size=(4,)).astype(np.float32),
        steps=np.array(7, dtype=np.int64),
    )


@pytest.fixture
def legacy_file(tmp_path, fake_torch, tensors) -> tuple[Path, str]:
    state = OrderedDict((name, _Tensor(str(i), a)) for i, (name, a) in enumerate(tensors.items()))
    arrays = {str(i): a for i, a in enumerate(tensors.values())}
    path = tmp_path / "small.pth"
    return path, _write(path, _legacy_bytes(state, arrays))


def test_a_legacy_file_reads_back_its_tensors_in_order(legacy_file, tensors):
    path, sha = legacy_file
    read = read_state_dict(path, sha)
    assert list(read) == list(tensors)
    for name, array in tensors.items():
        assert read[name].dtype == array.dtype
        np.testing.assert_array_equal(read[name], array)


def test_the_packaged_weights_are_read_whole():
    state = read_weights("efficientnet_lite0")
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)


def test_a_pickle_asking_for_os_system_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    data = b"".join(pickle.dumps(o, protocol=2) for o in (MAGIC_NUMBER, PROTOCOL_VERSION, {}))
    data += pickle.dumps(OrderedDict(x=Exploit()), protocol=2)
    path = tmp_path / "evil.pth"
    sha = _write(path, data)
    with pytest.raises(WeightsFileError, match=rf"{path}: refused: .*global (posix|os)\.system"):
        read_state_dict(path, sha)
    assert not marker.exists()


def test_corrupt_bytes_are_reported_with_the_path(legacy_file):
    path, _ = legacy_file
    data = path.read_bytes()
    for broken in (data[: len(data) - 10], data[:40], b"\x00" * 64):  # truncated, cut, garbage
        sha = _write(path, broken)
        with pytest.raises(WeightsFileError, match=rf"{path}: corrupt legacy PyTorch file"):
            read_state_dict(path, sha)


def test_a_sha256_mismatch_is_refused_before_reading(legacy_file):
    path, sha = legacy_file
    with pytest.raises(WeightsFileError, match=rf"{path}: sha256 mismatch: expected {'0' * 64}"):
        read_state_dict(path, "0" * 64)
    # The packaged file's known value refuses any other file, however well-formed.
    with pytest.raises(WeightsFileError, match="sha256 mismatch"):
        read_weights("efficientnet_lite0", path)
    assert sha not in {spec.sha256 for spec in LITE.values()}


def test_a_missing_file_is_named(tmp_path):
    missing = tmp_path / "absent.pth"
    with pytest.raises(WeightsFileError, match=rf"{missing}: no such weights file"):
        read_state_dict(missing, LITE["efficientnet_lite0"].sha256)
