"""Reader for rwkv.cpp's model files (RWKV-4), into rwkv_np's HF-named state dict.

Layout (little-endian): a header of six int32 — magic 0x67676d66 ("ggmf"), file version,
n_vocab, n_embed, n_layer, data type — then one record per tensor until the end of the file:
int32 n_dims, int32 name length, int32 tensor type (0 F32, 1 F16, others quantized), n_dims int32
sizes (innermost first, so reversed for NumPy), the name (BlinkDL's), then the raw data.
Two differences from a BlinkDL checkpoint: `att.time_decay` is stored already as -exp(decay)
(we take the log back, so the state dict holds HF's raw value), and time_mix_* / time_first
are stored flat (H,) rather than (1, 1, H).
"""
from __future__ import annotations

import mmap
import os

import numpy as np

from .config import RwkvConfig
from .errors import ModelFileError
from .weights import check_state_dict, hf_name

MAGIC = 0x67676D66
_TYPES = {0: np.float32, 1: np.float16}


def is_rwkvcpp(path) -> bool:
    try:
        with open(path, "rb") as f:
            return int.from_bytes(f.read(4), "little") == MAGIC
    except OSError:
        return False


def read_rwkvcpp(path: str | os.PathLike) -> tuple[RwkvConfig, dict[str, np.ndarray]]:
    """(config, state dict) of an rwkv.cpp RWKV-4 file; F32 tensors are memory-mapped."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: cannot read ({e})") from None
    if len(buf) < 24:
        raise ModelFileError(f"{path}: {len(buf)} bytes is too short for an rwkv.cpp model")
    magic, version, n_vocab, n_embed, n_layer, _ = np.frombuffer(buf, "<i4", 6)
    if magic != MAGIC:
        raise ModelFileError(f"{path}: not an rwkv.cpp model (magic {magic:#x}, expected {MAGIC:#x})")
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
        if kind not in _TYPES:
            raise ModelFileError(f"{path}: tensor {name!r} has type {kind}; rwkv_np reads F32 (0) and F16 (1)")
        if min(dims) < 1:
            raise ModelFileError(f"{path}: tensor {name!r} has impossible shape {dims}")
        count = int(np.prod(dims))
        nbytes = count * np.dtype(_TYPES[kind]).itemsize
        if off + nbytes > len(buf):
            raise ModelFileError(f"{path}: tensor {name!r} needs {nbytes} bytes, the file ends first")
        x = np.frombuffer(buf, np.dtype(_TYPES[kind]).newbyteorder("<"), count, off).reshape(dims)
        off += nbytes
        tensors[hf_name(name)] = x
    H = int(n_embed)
    for key in list(tensors):
        if "time_mix" in key:
            tensors[key] = tensors[key].reshape(1, 1, H)
        elif key.endswith("time_decay"):  # stored as w = -exp(decay); HF keeps the raw decay
            tensors[key] = np.log(-tensors[key].astype(np.float64)).astype(np.float32)
    ffn = tensors.get("rwkv.blocks.0.feed_forward.key.weight")
    try:
        config = RwkvConfig(vocab_size=int(n_vocab), hidden_size=H, num_hidden_layers=int(n_layer),
                            intermediate_size=ffn.shape[0] if ffn is not None else None,
                            context_length=1024, rescale_every=0, extra={"rwkvcpp_version": int(version)})
    except ValueError as e:
        raise ModelFileError(f"{path}: header describes an impossible model ({e})") from None
    check_state_dict(tensors, config, path)
    return config, tensors
