"""safetensors files <-> dicts of NumPy arrays, read through one memory map, written by hand.

Layout: 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data.
We parse that header ourselves and view the data through one read-only memory map, because the
safetensors package's NumPy API copies every tensor into memory and cannot represent BF16
(here: storage.Bfloat16, uint16 bits). Names are returned as they are in the file; what they
mean is the business of a generation's names.py.

rwkv_np's quantized files (`rwkv-np quantize`) hold each quantized matrix as two tensors,
which `read_files` pairs into one storage object of two views of the map:
  int8 (--bits 8)  `name` I8 (out, in) and `name + SCALE` F32 (out,) row scales:
                   W[i, j] ~= q[i, j] * scale[i]                              -> Int8Weight
  int4 (--bits 4)  `name` U8 (out, in/2), two 4-bit values a byte, and `name + SCALE` F16
                   (out, in/32, 2), each group's [d, m]: W[i, 32 g + j] ~= d q + m with q the
                   low nibble of byte 16 g + j for j < 16, the high nibble of byte 16 g + j - 16
                   after (storage_int4.py)                                   -> Int4Weight
  int5 (--bits 5)  `name` U8 (out, 5 in/8): each row its in/2 int4-layout bytes of the low 4 bits,
                   then in/8 bytes of fifth bits (group g's 4 bytes a little-endian uint32, bit j
                   of value j), and the same `name + SCALE`; which of the two a U8 tensor is
                   follows from its width against its scales'             -> Int4Weight
An int4 (int5) file keeps its embedding and head (and any matrix whose rows are not whole groups
of 32) int8. The metadata says "rwkv_np.storage": "int8", "int4" or "int5".
"""
from __future__ import annotations

import json
import math
import mmap
import os

import numpy as np

from ..errors import ModelFileError
from ..storage import Bfloat16, Int8Weight
from ..storage_int4 import GROUP, Int4Weight

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8}
_CODES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
          np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int8): "I8",
          np.dtype(np.uint8): "U8"}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit on the JSON header
HUGE_PAGE = 2 << 20  # bytes in an x86-64 / arm64 (4 KB base page) transparent huge page
SCALE = "_scale"  # suffix of an int8 matrix's row scales; no RWKV tensor name ends in it


def read_safetensors(file: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Memory-map one .safetensors file: ({name: read-only array}, metadata).

    BF16 tensors come back as storage.Bfloat16 (uint16 bits); `storage.as_float` widens them."""
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise ModelFileError(f"{file}: {size} bytes is too short for a safetensors file")
            n = int.from_bytes(f.read(8), "little")
            if n > min(_MAX_HEADER, size - 8):
                raise ModelFileError(f"{file}: header length {n} exceeds the file ({size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                raise ModelFileError(f"{file}: header is not valid JSON ({e})") from None
            if not isinstance(header, dict):
                raise ModelFileError(f"{file}: header is not a JSON object")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 8 + n else b""
            _ask_for_huge_pages(buf)
    except OSError as e:
        raise ModelFileError(f"{file}: cannot read ({e.strerror})") from None
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise ModelFileError(f"{file}: __metadata__ is not a JSON object")
    body = size - 8 - n
    tensors, spans = {}, []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise ModelFileError(f"{file}: tensor {name!r} has a malformed header entry {info!r}")
        code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(code, str) or code not in _DTYPES:
            raise ModelFileError(f"{file}: tensor {name!r} has unsupported dtype {code!r} "
                                 f"(rwkv_np reads {', '.join(_DTYPES)})")
        if not isinstance(shape, list) or not all(_is_index(s) for s in shape):
            raise ModelFileError(f"{file}: tensor {name!r} has malformed shape {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_index(o) for o in offsets):
            raise ModelFileError(f"{file}: tensor {name!r} has malformed data_offsets {offsets!r}")
        dtype, shape, (begin, end) = _DTYPES[code], tuple(shape), offsets
        count = math.prod(shape)  # a Python int: cannot overflow, unlike np.prod
        if not begin <= end <= body or end - begin != count * np.dtype(dtype).itemsize:
            raise ModelFileError(f"{file}: tensor {name!r} (shape {shape}, {code}) has data "
                                 f"offsets [{begin}, {end}] that do not fit its size or the file")
        spans.append((begin, end, name))
        tensors[name] = np.frombuffer(buf, dtype, count, 8 + n + begin).reshape(shape) if count \
            else np.zeros(shape, dtype)
        if code == "BF16":
            tensors[name] = tensors[name].view(Bfloat16)
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ModelFileError(f"{file}: tensors {n0!r} and {n1!r} overlap")
    return tensors, meta


def _ask_for_huge_pages(buf) -> None:
    """madvise(MADV_HUGEPAGE) on a file's map, where the OS has it (Linux; not macOS, Windows).

    With transparent huge pages in "madvise" mode, the page faults of an advised file map read the
    file into 2 MB page-cache folios and map each with one TLB entry (on kernels whose file
    system caches large folios: Linux 6.18 ext4 does). Decode streams every matrix once a token,
    and with 4 KB pages it misses the TLB every 4 KB: 169M float32 decode, 2 threads, same process
    state, file cached in 4 KB vs 2 MB folios: 21.5 / 23.2 / 20.2 -> 19.7 / 21.6 / 18.7 ms a token.
    Unadvised, this VM's fault readahead mostly made 2 MB folios too (the 169M file evicted, then
    loaded: FilePmdMapped 657408 of 661504 kB either way); the advice makes them the rule. Folios
    the page cache already holds stay as they are (the file was written or read earlier: hence
    write_safetensors' aligned writes); still memory-mapped, nothing copied."""
    if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel built without transparent huge pages: EINVAL
            pass


def _is_index(x) -> bool:
    """A JSON value usable as a size or offset: a non-negative integer (not a bool, not 2.0)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_files(files: list[str]) -> dict[str, np.ndarray]:
    """The tensors of one model's safetensors files (one, or the shards of an index), with each
    I8 matrix and its row scales paired into an Int8Weight. A name in two files is an error."""
    tensors, where = {}, {}
    for file in files:
        for name, x in read_safetensors(file)[0].items():
            if name in tensors:
                raise ModelFileError(f"{file}: tensor {name} appears in more than one shard")
            tensors[name], where[name] = x, file
    return _quantized_matrices(tensors, where)


def _quantized_matrices(tensors: dict, where: dict) -> dict:
    """Each I8 (U8) tensor and its scales -> one Int8Weight (Int4Weight) of the same (uncopied)
    views."""
    for name in [n for n, x in tensors.items() if x.dtype == np.uint8]:
        tensors[name] = _int4(name, tensors[name], tensors.pop(name + SCALE, None), where)
    for name in [n for n, x in tensors.items() if x.dtype == np.int8]:
        q, s, file = tensors[name], tensors.pop(name + SCALE, None), where[name]
        if q.ndim != 2:
            raise ModelFileError(f"{file}: tensor {name} is I8 with shape {q.shape}; "
                                 f"only matrices may be int8")
        if s is None:
            raise ModelFileError(f"{file}: I8 tensor {name} has no row scales {name + SCALE}")
        if s.dtype != np.float32 or s.shape != q.shape[:1]:
            got = "bfloat16" if isinstance(s, Bfloat16) else s.dtype
            raise ModelFileError(f"{where[name + SCALE]}: row scales {name + SCALE} are {got} {s.shape}, "
                                 f"expected float32 ({q.shape[0]},)")
        bad = np.flatnonzero(~(np.isfinite(s) & (s > 0)))
        if bad.size:
            raise ModelFileError(f"{where[name + SCALE]}: row scales {name + SCALE} hold {s[bad[0]]} at "
                                 f"index {bad[0]}; a scale must be finite and > 0")
        tensors[name] = Int8Weight(q, s)
    for name in (n for n in tensors if n.endswith(SCALE)):
        raise ModelFileError(f"{where[name]}: tensor {name} looks like row scales, "
                             f"but {name[:-len(SCALE)]} is not I8 or U8")
    return tensors


def _int4(name, q, dm, where) -> Int4Weight:  # U8 values and their F16 [d, m] -> Int4Weight
    file = where[name]
    if q.ndim != 2 or q.shape[1] % (GROUP // 2) and q.shape[1] % (5 * GROUP // 8):
        raise ModelFileError(f"{file}: tensor {name} is U8 with shape {q.shape}; only int4 matrices (out, in/2) "
                             f"and int5 ones (out, 5 in/8) with in a multiple of {GROUP} may be U8")
    if dm is None:
        raise ModelFileError(f"{file}: int4 tensor {name} has no scales {name + SCALE}")
    groups = dm.shape[1] if dm.ndim == 3 and q.shape[1] == 5 * GROUP * dm.shape[1] // 8 else 2 * q.shape[1] // GROUP
    want = (q.shape[0], groups, 2)  # int5 when q is 5/8 of the scales' columns wide, else int4
    if dm.dtype != np.float16 or dm.shape != want:
        got = "bfloat16" if isinstance(dm, Bfloat16) else dm.dtype
        raise ModelFileError(f"{where[name + SCALE]}: scales {name + SCALE} are {got} {dm.shape}, "
                             f"expected float16 {want} (each group's scale and minimum)")
    bad = np.flatnonzero(~np.isfinite(dm) | (dm[..., :1] < 0).repeat(2, -1))
    if bad.size:
        g, k = divmod(int(bad[0]), 2)
        raise ModelFileError(f"{where[name + SCALE]}: {('scale', 'minimum')[k]} of group {g} of {name} is "
                             f"{dm.reshape(-1)[bad[0]]}; scales must be finite and >= 0, minimums finite")
    return Int4Weight(q, dm)


def shard_files(index: str) -> list[str]:  # a model.safetensors.index.json -> its shard files
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError,
            AttributeError) as e:
        raise ModelFileError(f"{index}: not a valid safetensors index ({e!r})") from None
    if not all(isinstance(n, str) for n in names):
        raise ModelFileError(f"{index}: weight_map values must be shard file names (strings)")
    files = [os.path.join(os.path.dirname(index), n) for n in names]
    for file, name in zip(files, names):
        if os.path.basename(name) != name or not os.path.isfile(file):
            raise ModelFileError(f"{index}: names shard {name!r}, which is not in the directory")
    return files


def write_safetensors(file: str, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write {name: ndarray or Bfloat16} as one .safetensors file, atomically: into a temporary
    name first, so that a failed write (disk full...) leaves no partial file. Written by hand
    because the safetensors package's NumPy writer has no bfloat16."""
    header, offset = {"__metadata__": dict(metadata or {"format": "pt"})}, 0
    names = sorted(tensors, key=lambda n: (-tensors[n].itemsize, n))  # wider items first: each
    data = {}                                                         # aligned to its size
    for name in names:
        x = tensors[name]
        code = "BF16" if isinstance(x, Bfloat16) else _CODES[np.dtype(x.dtype)]
        data[name] = d = np.ascontiguousarray(x.view(np.ndarray)).astype(x.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": code, "shape": list(d.shape), "data_offsets": [offset, offset + d.nbytes]}
        offset += d.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header so the data is 8-byte aligned
    try:
        with open(file + ".partial", "wb") as f:
            _write_in_huge_pages(f, [len(blob).to_bytes(8, "little") + blob]
                                 + [data[name].reshape(-1).view(np.uint8) for name in names])
        os.replace(file + ".partial", file)
    finally:
        if os.path.exists(file + ".partial"):
            os.remove(file + ".partial")


def _write_in_huge_pages(f, pieces) -> None:
    """Write the byte strings `pieces` back to back, every write() call a whole number of 2 MB
    spans of the file that start on a 2 MB boundary (the last call may end short of one).

    Why: the page cache keeps what write() put in it, in folios sized by each call -- on Linux
    6.18 ext4, a call covering whole aligned 2 MB spans fills them with 2 MB folios, which a read's
    memory map then maps with one TLB entry each (PMD mappings, /proc/self/smaps FilePmdMapped);
    a 3 KB vector written between two matrices left 4 KB..1 MB folios around it. A random 169M
    float32 file written tensor by tensor: 235 of 323 2 MB spans were one folio; so written: all.
    At most one 2 MB chunk is copied at a time."""
    pending = bytearray()  # the file's bytes since the last 2 MB boundary
    for piece in pieces:
        view, i = memoryview(piece).cast("B"), 0
        while i < len(view):
            if not pending and len(view) - i >= HUGE_PAGE:  # whole aligned spans straight from the array
                n = min((len(view) - i) // HUGE_PAGE, 256) * HUGE_PAGE  # 512 MB a call: under
                f.write(view[i:i + n])                                  # Linux's 2 GB write limit
            else:
                n = min(len(view) - i, HUGE_PAGE - len(pending))
                pending += view[i:i + n]
                if len(pending) == HUGE_PAGE:
                    f.write(pending)
                    pending.clear()
            i += n
    f.write(pending)
