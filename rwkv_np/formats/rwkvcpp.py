"""Reader for rwkv.cpp's model files: the header and the tensors under their BlinkDL names.

Layout (little-endian): a header of six int32 — magic 0x67676d66 ("ggmf"), file version,
n_vocab, n_embed, n_layer, data type — then one record per tensor until the end of the file:
int32 n_dims, int32 name length, int32 tensor type (0 F32, 1 F16, others quantized), n_dims int32
sizes (innermost first, so reversed for NumPy), the name (BlinkDL's), then the raw data.
Each generation stores some tensors transformed or reshaped relative to a BlinkDL checkpoint
(v4: time_decay as -exp(decay), time_mix flat); the generation's `names.from_rwkvcpp` undoes that.

Quantized matrices (file version 101, ggml's layout since 2023-05) are dequantized to float32 at
load, exactly as ggml does before a matrix product. Values run in blocks of 32 along the
innermost dimension; each block stores a float16 scale d (and an offset m for the _1 kinds):
    Q5_0 (type 7, 22 bytes):  d, qh uint32, qs[16]  ->  x_j = (q_j - 16) * d
    Q5_1 (type 8, 24 bytes):  d, m, qh uint32, qs[16] ->  x_j = q_j * d + m
    Q8_0 (type 9, 34 bytes):  d, qs int8[32]        ->  x_j = qs_j * d
where for the 5-bit kinds q_j = low nibble of qs[j] (j < 16) or high nibble of qs[j-16]
(j >= 16), plus bit j of qh as its fifth bit (value 16). Version 100 files used an older,
incompatible quantized layout and are refused.
"""
from __future__ import annotations

import math
import mmap
import os

import numpy as np

from ..errors import ModelFileError

MAGIC = 0x67676D66
_TYPES = {0: np.float32, 1: np.float16}
QUANTIZED = {7: ("Q5_0", 22), 8: ("Q5_1", 24), 9: ("Q8_0", 34)}  # type -> (name, bytes per 32 values)
QK = 32


def dequantize(raw: np.ndarray, kind: int) -> np.ndarray:  # raw (n_blocks * block bytes,) uint8 -> (n_blocks * 32,)
    """ggml's blocks of 32 quantized values -> float32 (see the module docstring for the layouts)."""
    name, size = QUANTIZED[kind]
    blocks = raw.reshape(-1, size)
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)                     # (n, 1)
    if name == "Q8_0":
        return (blocks[:, 2:].view(np.int8).astype(np.float32) * d).reshape(-1)
    start = 4 if name == "Q5_1" else 2
    qh = blocks[:, start:start + 4].copy().view("<u4")                            # (n, 1)
    qs = blocks[:, start + 4:]                                                    # (n, 16)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int32)             # (n, 32)
    q |= ((qh >> np.arange(QK, dtype=np.uint32)) & 1).astype(np.int32) << 4
    if name == "Q5_0":
        return ((q - 16).astype(np.float32) * d).reshape(-1)
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)
    return (q.astype(np.float32) * d + m).reshape(-1)


def is_rwkvcpp(path) -> bool:
    try:
        with open(path, "rb") as f:
            return int.from_bytes(f.read(4), "little") == MAGIC
    except OSError:
        return False


def read_records(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, tensors) of an rwkv.cpp file, any RWKV generation: the header's fields (version,
    n_vocab, n_embed, n_layer, data_type) and every tensor under its BlinkDL name in NumPy's
    dimension order. F32 and F16 tensors are read-only views of the memory-mapped file,
    quantized ones are dequantized to float32. What a generation stores transformed (v4's
    -exp(time_decay), v7's concatenated x_rwkvag...) is undone by its names.from_rwkvcpp."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: cannot read ({e})") from None
    if len(buf) < 24:
        raise ModelFileError(f"{path}: {len(buf)} bytes is too short for an rwkv.cpp model")
    magic, version, n_vocab, n_embed, n_layer, data_type = (int(x) for x in np.frombuffer(buf, "<i4", 6))
    if magic != MAGIC:
        raise ModelFileError(f"{path}: not an rwkv.cpp model (magic {magic:#x}, expected {MAGIC:#x})")
    header = dict(version=version, n_vocab=n_vocab, n_embed=n_embed, n_layer=n_layer, data_type=data_type)
    tensors, off = {}, 24
    while off < len(buf):
        if off + 12 > len(buf):
            raise ModelFileError(f"{path}: truncated tensor record at byte {off}")
        n_dims, name_len, kind = (int(x) for x in np.frombuffer(buf, "<i4", 3, off))
        if not 1 <= n_dims <= 4 or not 0 < name_len <= 256 or off + 12 + 4 * n_dims + name_len > len(buf):
            raise ModelFileError(f"{path}: malformed tensor record at byte {off}")
        dims = tuple(int(d) for d in np.frombuffer(buf, "<i4", n_dims, off + 12))[::-1]
        off += 12 + 4 * n_dims
        name = bytes(buf[off:off + name_len]).decode("utf-8", "replace")
        off += name_len
        if kind not in _TYPES and kind not in QUANTIZED:
            raise ModelFileError(f"{path}: tensor {name!r} has type {kind}; rwkv_np reads F32 (0), F16 (1), "
                                 "Q5_0 (7), Q5_1 (8) and Q8_0 (9)")
        if kind in QUANTIZED and version < 101:
            raise ModelFileError(f"{path}: tensor {name!r} is {QUANTIZED[kind][0]} in file version {version}, "
                                 "whose old quantized layout rwkv_np does not read (re-quantize with rwkv.cpp)")
        if min(dims) < 1 or (kind in QUANTIZED and dims[-1] % QK):
            raise ModelFileError(f"{path}: tensor {name!r} has impossible shape {dims}")
        count = math.prod(dims)  # a Python int: np.prod would wrap around on lying sizes
        nbytes = count * np.dtype(_TYPES[kind]).itemsize if kind in _TYPES else count // QK * QUANTIZED[kind][1]
        if off + nbytes > len(buf):
            raise ModelFileError(f"{path}: tensor {name!r} needs {nbytes} bytes, the file ends first")
        if kind in _TYPES:
            x = np.frombuffer(buf, np.dtype(_TYPES[kind]).newbyteorder("<"), count, off).reshape(dims)
        else:
            x = dequantize(np.frombuffer(buf, np.uint8, nbytes, off), kind).reshape(dims)
        off += nbytes
        tensors[name] = x
    return header, tensors
