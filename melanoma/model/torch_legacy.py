"""Read a legacy (pre-zip) PyTorch state dict with plain Python and numpy, safely.

A pickle can run any code when it is loaded, so this never calls `pickle.load`: a restricted
unpickler resolves only the few globals the format needs and refuses every other one. The file's
sha256 is checked against the expected value before a single byte is unpickled.

Layout of the legacy format (torch.save with `_use_new_zipfile_serialization=False`):
five pickles in a row (magic number, protocol version, system info, the state dict whose
storages are persistent ids, the list of storage keys), then each storage's raw bytes in the
order of that list: a little-endian int64 element count, then the elements.
"""

import hashlib
import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melanoma.errors import MelanomaError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# The storage types a state dict of float weights (and batch-norm step counters) uses.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
}


class WeightsFileError(MelanomaError, ValueError):
    """The weights file is missing, corrupt, not the expected file, or asks for a forbidden
    global. The message starts with the file's path."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored) -> _TensorRef:
    # Stands in for torch._utils._rebuild_tensor_v2: the tensor is built once the raw bytes of
    # its storage have been read (they come after the pickles).
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise WeightsFileError(
                f"{self._path}: refused: the pickle asks for the global {module}.{name}, "
                "which a PyTorch state dict does not need (only "
                f"{', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED))} are allowed)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        return _Storage(str(key), STORAGE_DTYPES[storage_type.name], int(numel))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path, expected_sha256: str) -> OrderedDict[str, np.ndarray]:
    """The tensors of a legacy PyTorch state dict, in the file's order, as numpy arrays.

    Raises WeightsFileError (message starting with the path) when the file is missing, its
    sha256 is not `expected_sha256`, it is corrupt, or its pickle asks for a forbidden global.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such weights file")
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise WeightsFileError(
            f"{path}: sha256 mismatch: expected {expected_sha256}, the file has {actual} "
            "(not the known weights file, or damaged)"
        )
    data = path.read_bytes()
    try:
        return _parse(io.BytesIO(data), path)
    except WeightsFileError:
        raise
    except Exception as error:  # any malformed byte: one clear error naming the file
        raise WeightsFileError(
            f"{path}: corrupt legacy PyTorch file: {type(error).__name__}: {error}"
        ) from error


def _parse(stream: io.BytesIO, path: Path) -> OrderedDict[str, np.ndarray]:
    def load():
        return _RestrictedUnpickler(stream, path).load()

    if load() != MAGIC_NUMBER:
        raise ValueError("not a legacy PyTorch file (wrong magic number)")
    if load() != PROTOCOL_VERSION:
        raise ValueError("unsupported legacy PyTorch protocol version")
    load()  # system info: endianness and type sizes; the storages below are little-endian
    state = load()
    keys = load()
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise ValueError("expected a state dict and a list of storage keys")
    storages = {ref.storage.key: ref.storage for ref in state.values() if _is_tensor(ref)}
    if sorted(storages) != sorted(str(k) for k in keys):
        raise ValueError("the storage keys do not match the tensors of the state dict")
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        storage = storages[str(key)]
        (numel,) = np.frombuffer(_read_exactly(stream, 8), "<i8")
        if numel != storage.numel:
            raise ValueError(f"storage {key}: {numel} elements, the pickle says {storage.numel}")
        raw = _read_exactly(stream, int(numel) * storage.dtype.itemsize)
        arrays[storage.key] = np.frombuffer(raw, storage.dtype)
    if stream.read(1):
        raise ValueError("unexpected bytes after the last storage")
    tensors: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, ref in state.items():
        if not _is_tensor(ref):
            raise ValueError(f"entry {name!r} is not a tensor")
        tensors[name] = _view(arrays[ref.storage.key], ref)
    return tensors


def _is_tensor(value) -> bool:
    return isinstance(value, _TensorRef)


def _read_exactly(stream: io.BytesIO, n: int) -> bytes:
    chunk = stream.read(n)
    if len(chunk) != n:
        raise ValueError(f"file ends early: wanted {n} bytes, got {len(chunk)}")
    return chunk


def _view(storage: np.ndarray, ref: _TensorRef) -> np.ndarray:
    """The tensor `ref` as a fresh array, after checking it lies inside its storage."""
    if len(ref.size) != len(ref.stride) or any(s < 0 for s in ref.size + ref.stride):
        raise ValueError(f"bad tensor geometry {ref.size} / {ref.stride}")
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if ref.offset < 0 or (0 not in ref.size and last >= len(storage)):
        raise ValueError(f"tensor {ref.size} at offset {ref.offset} overruns its storage")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :], ref.size, tuple(s * item for s in ref.stride), writeable=False
    )
    return np.array(view)
