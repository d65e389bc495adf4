"""PyTorch checkpoints (BlinkDL `.pth`, HF `pytorch_model.bin`) read WITHOUT torch, and safely.

A torch.save file (zip format, torch >= 1.6) is a zip archive `<root>/...` holding
    data.pkl        a pickle of the state dict; every tensor in it is a call
                    torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
                    backward_hooks[, metadata]) whose `storage` is a persistent id
                    ("storage", torch.FloatStorage, key, location, numel)
    data/<key>      the raw little-endian bytes of each storage
    byteorder       "little" (absent in old files, which are little-endian too)

Unpickling runs whatever callables a pickle names, so a hostile .pth can execute code under
torch.load. Here `find_class` hands out only the globals a tensor state dict needs, each mapped to
a harmless stand-in of ours (the real torch objects are never imported); any other global -- e.g.
`os.system`, `builtins.eval` -- raises ModelFileError naming it before anything is called.
"""
from __future__ import annotations

import collections
import mmap
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

from ..errors import ModelFileError
from ..storage import Bfloat16  # uint16 array of bfloat16 bits (numpy has no bfloat16)

_STORAGE_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": np.uint16,
                   "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32,
                   "ByteStorage": np.uint8, "CharStorage": np.int8, "BoolStorage": np.bool_}



class _StorageType:
    """Stand-in for torch.FloatStorage & co: only remembers which dtype it names."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """Stand-in for torch._utils._rebuild_tensor_v2: a view (or copy) of the storage's array."""
    array, is_bf16 = storage
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if any(s < 0 for s in size + stride) or not isinstance(offset, int) or offset < 0:
        raise ModelFileError(f"tensor with impossible layout: offset {offset}, size {size}, stride {stride}")
    count = int(np.prod(size))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if count else offset - 1
    if last >= len(array):
        raise ModelFileError(f"tensor of size {size} (stride {stride}, offset {offset}) runs past its "
                             f"storage of {len(array)} elements")
    item = array.dtype.itemsize
    x = np.lib.stride_tricks.as_strided(array[offset:], size, tuple(s * item for s in stride), writeable=False)
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x.view(Bfloat16) if is_bf16 else x  # storage.as_float widens bfloat16 bits


def _rebuild_parameter(data, requires_grad, backward_hooks, *_ignored):
    """Stand-in for torch._utils._rebuild_parameter (an nn.Parameter is just its data here)."""
    return data


_DAMAGED = (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
            ValueError, struct.error, KeyError, IndexError, OverflowError)

# The complete list of globals a checkpoint may name, and what each becomes.
ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
           ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
           ("collections", "OrderedDict"): collections.OrderedDict}
ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, load_storage):
        super().__init__(file)
        self.source, self.load_storage = source, load_storage

    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise ModelFileError(f"{self.source}: refusing to load: the pickle references the global "
                                 f"{module}.{name}, which a tensor state dict never needs") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ModelFileError(f"{self.source}: unsupported persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType):
            raise ModelFileError(f"{self.source}: storage {key!r} has unsupported type {kind!r}")
        return self.load_storage(str(key), kind, int(numel))


def read_torch_zip(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict of a zip-format torch.save file, as NumPy arrays (read-only memory maps
    where the zip stores data uncompressed, which torch always does). Nested dicts, such as
    {"state_dict": {...}}, are returned as they are."""
    path = os.fspath(path)
    try:
        zf = zipfile.ZipFile(path)
    except _DAMAGED as e:
        if not os.path.isfile(path) or (isinstance(e, OSError) and not isinstance(e, zipfile.BadZipFile)):
            raise ModelFileError(f"{path}: cannot read ({e})") from None
        raise ModelFileError(f"{path}: not a zip-format torch checkpoint, or a damaged one (legacy "
                             "torch < 1.6 files are not supported; re-save with a recent torch)") from None
    try:
        with zf, open(path, "rb") as raw:
            obj = _unpickle(zf, raw, path)
    except ModelFileError:
        raise
    except _DAMAGED as e:  # a damaged archive: bad offsets, headers, compressed data...
        raise ModelFileError(f"{path}: damaged zip archive ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path}: expected a state dict, the pickle holds a {type(obj).__name__}")
    return dict(obj)


def _unpickle(zf: zipfile.ZipFile, raw, path: str):
    """Run the restricted unpickler over <root>/data.pkl, loading storages from <root>/data/."""
    names = zf.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise ModelFileError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
    root = pickles[0][:-len("data.pkl")]
    if root + "byteorder" in names and zf.read(root + "byteorder").strip() != b"little":
        raise ModelFileError(f"{path}: big-endian checkpoints are not supported")
    buf = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(path) else b""
    cache = {}

    def load_storage(key, kind, numel):
        if key not in cache:
            cache[key] = _storage_bytes(zf, buf, f"{root}data/{key}", path)
        data = cache[key]
        if len(data) < numel * kind.dtype.itemsize:
            raise ModelFileError(f"{path}: storage {key} holds {len(data)} bytes, "
                                 f"{numel} {kind.name} elements need {numel * kind.dtype.itemsize}")
        array = np.frombuffer(data, kind.dtype.newbyteorder("<"), numel)
        return array, kind.name == "BFloat16Storage"

    with zf.open(pickles[0]) as f:
        try:
            return _RestrictedUnpickler(f, path, load_storage).load()
        except ModelFileError:
            raise
        except Exception as e:  # malformed pickle bytes, wrong call signatures...
            raise ModelFileError(f"{path}: data.pkl is not a valid tensor state dict ({e!r:.200})") from None


def _storage_bytes(zf: zipfile.ZipFile, buf, member: str, path: str):
    """A storage's bytes: a zero-copy slice of the memory map when stored, else decompressed."""
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise ModelFileError(f"{path}: the pickle names storage {member}, which is not in the archive") from None
    if info.compress_type != zipfile.ZIP_STORED:
        return zf.read(member)
    # The local file header: 30 fixed bytes, then the name and an extra field of given lengths.
    start = info.header_offset
    if start < 0 or bytes(buf[start:start + 4]) != b"PK\x03\x04":
        raise ModelFileError(f"{path}: storage {member} has no valid local zip header")
    name_len, extra_len = struct.unpack("<HH", bytes(buf[start + 26:start + 30]))
    begin = start + 30 + name_len + extra_len
    if begin + info.file_size > len(buf):
        raise ModelFileError(f"{path}: storage {member} runs past the end of the file")
    return memoryview(buf)[begin:begin + info.file_size]


def is_torch_zip(path) -> bool:
    try:  # is_zipfile itself raises on some damaged archives ("span multiple disks")
        return os.path.isfile(path) and zipfile.is_zipfile(path)
    except zipfile.BadZipFile:
        return True  # a zip, but damaged: read_torch_zip reports it
