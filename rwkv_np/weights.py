"""Weights on disk <-> a dict of NumPy arrays keyed by HF's RwkvForCausalLM names.

Everything rwkv_np loads ends up as one such dict (the "state dict"), checked against the config
by `check_state_dict`: the explicit name -> shape map below is the contract of every reader.

safetensors layout: 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data.
We parse that header ourselves and view the data through one read-only memory map, because the
safetensors package's NumPy API copies every tensor into memory and cannot represent BF16.

rwkv_np's int8 files (convert.save_pretrained(..., dtype="int8"), `rwkv-np quantize`) hold each matrix
as an I8 tensor `name` plus its float32 row scales `name + SCALE` (W[i, j] ~= q[i, j] * scale[i]);
the reader pairs them into a storage.Int8Weight of two views of the map.
"""
from __future__ import annotations

import json
import math
import mmap
import os

import numpy as np

from .config import RwkvConfig
from .errors import ModelFileError
from .storage import Int8Weight

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit on the JSON header
SCALE = "_scale"  # suffix of an int8 matrix's row scales; no RWKV-4 tensor name ends in it


def expected_shapes(config: RwkvConfig, head: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor of an RwkvForCausalLM checkpoint (HF names) and its shape."""
    V, H, A, I = (config.vocab_size, config.hidden_size,
                  config.attention_hidden_size, config.intermediate_size)
    shapes = {"rwkv.embeddings.weight": (V, H),
              "rwkv.blocks.0.pre_ln.weight": (H,), "rwkv.blocks.0.pre_ln.bias": (H,)}
    for i in range(config.num_hidden_layers):
        blk = f"rwkv.blocks.{i}"
        for ln in ("ln1", "ln2"):
            shapes[f"{blk}.{ln}.weight"] = shapes[f"{blk}.{ln}.bias"] = (H,)
        shapes[f"{blk}.attention.time_decay"] = shapes[f"{blk}.attention.time_first"] = (A,)
        for mix in ("key", "value", "receptance"):
            shapes[f"{blk}.attention.time_mix_{mix}"] = (1, 1, H)
            shapes[f"{blk}.attention.{mix}.weight"] = (A, H)
        shapes[f"{blk}.attention.output.weight"] = (H, A)
        shapes[f"{blk}.feed_forward.time_mix_key"] = (1, 1, H)
        shapes[f"{blk}.feed_forward.time_mix_receptance"] = (1, 1, H)
        shapes[f"{blk}.feed_forward.key.weight"] = (I, H)
        shapes[f"{blk}.feed_forward.receptance.weight"] = (H, H)
        shapes[f"{blk}.feed_forward.value.weight"] = (H, I)
    shapes["rwkv.ln_out.weight"] = shapes["rwkv.ln_out.bias"] = (H,)
    if head:
        shapes["head.weight"] = (V, H)
    return shapes


def check_state_dict(tensors: dict, config: RwkvConfig, source: str, head: bool = True) -> None:
    """Raise ModelFileError naming the first missing, unexpected or mis-shaped tensor."""
    L = config.num_hidden_layers
    if 18 * L > len(tensors):  # each layer has 18 tensors; refuse a lying layer count (10**9 from
        # a damaged header) before listing all its names exhausts memory
        i = next(i for i in range(L) if sum(n.startswith(f"rwkv.blocks.{i}.") for n in tensors) < 18)
        raise ModelFileError(f"{source}: missing tensors rwkv.blocks.{i}.* (the config's {L} layers "
                             f"need {18 * L} block tensors, there are {len(tensors)} tensors in all)")
    want = expected_shapes(config, head)
    missing = [n for n in want if n not in tensors]
    extra = [n for n in tensors if n not in want]
    if missing:
        raise ModelFileError(f"{source}: missing tensor {missing[0]}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        raise ModelFileError(f"{source}: unexpected tensor {extra[0]}"
                             + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for name, shape in want.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise ModelFileError(f"{source}: {name} has shape {got}, the config implies {shape}")
        if not (isinstance(tensors[name], (_Bf16, Int8Weight))  # int8: only 2-D, see _int8_matrices
                or np.issubdtype(tensors[name].dtype, np.floating)):
            raise ModelFileError(f"{source}: {name} has dtype {tensors[name].dtype}, "
                                 f"expected a floating-point type")


def check_finite(tensors: dict, source: str) -> None:
    """Raise ModelFileError naming the first tensor that holds a NaN or an infinity.

    Scans in slices of 2**22 values so that a large memory-mapped tensor needs no big temporary."""
    for name, x in tensors.items():
        if isinstance(x, Int8Weight):  # int8 values are finite; load_state_dict checked the scales
            continue
        flat = x.reshape(-1)
        for start in range(0, flat.size, 1 << 22):
            part = flat[start:start + (1 << 22)]
            if isinstance(x, _Bf16):  # bfloat16 bits: non-finite iff the 8 exponent bits are all 1
                bad = (part.view(np.ndarray) & 0x7F80) == 0x7F80
            else:
                bad = ~np.isfinite(part)
            if bad.any():
                raise ModelFileError(f"{source}: tensor {name} holds non-finite values (NaN or inf) "
                                     f"at flat index {start + int(np.argmax(bad))}; "
                                     f"pass allow_nonfinite=True to load it anyway")


def bf16_to_float32(raw: np.ndarray) -> np.ndarray:
    """BF16 stored as uint16 -> float32: a bfloat16 is the top half of a float32's bits."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> BF16 bits (uint16), rounding to nearest even like torch's .to(bfloat16)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).astype(np.uint16)


def hf_name(blinkdl: str) -> str:
    """BlinkDL checkpoint name (.pth, rwkv.cpp) -> HF RwkvForCausalLM name; values are unchanged."""
    name = (blinkdl.replace("emb.", "embeddings.", 1).replace(".ln0.", ".pre_ln.")
            .replace(".att.", ".attention.").replace(".ffn.", ".feed_forward."))
    for short, long in (("k", "key"), ("v", "value"), ("r", "receptance")):
        if name.endswith(f".time_mix_{short}"):
            name = name[:-len(short)] + long
    return name if name == "head.weight" else "rwkv." + name


def read_safetensors(file: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Memory-map one .safetensors file: ({name: read-only array}, metadata).

    BF16 tensors come back as uint16 arrays (their raw bits); `as_float` widens them."""
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
            tensors[name] = tensors[name].view(_Bf16)
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ModelFileError(f"{file}: tensors {n0!r} and {n1!r} overlap")
    return tensors, meta


def _is_index(x) -> bool:
    """A JSON value usable as a size or offset: a non-negative integer (not a bool, not 2.0)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class _Bf16(np.ndarray):
    """A uint16 array holding bfloat16 bits, so `as_float` knows to widen it (numpy has no bf16)."""


def is_bf16(x) -> bool:
    """True for a tensor read from a BF16 file (uint16 bits that `as_float` widens)."""
    return isinstance(x, _Bf16)


def as_float(x: np.ndarray, dtype) -> np.ndarray:
    """A tensor as `dtype` (float32 or float64); float32 data asked as float32 is not copied."""
    if isinstance(x, Int8Weight):
        x = x.to_float32()
    if isinstance(x, _Bf16):
        x = bf16_to_float32(x.view(np.ndarray))
    if not np.issubdtype(x.dtype, np.floating):
        raise ModelFileError(f"tensor of dtype {x.dtype} where a floating-point weight is expected")
    return x if x.dtype == dtype else x.astype(dtype)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a model directory (model.safetensors or a sharded index) or one file,
    renamed to RwkvForCausalLM names (a bare RwkvModel's keys gain the `rwkv.` prefix)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            files = _shards(index)
        elif os.path.exists(os.path.join(path, "model.safetensors")):
            files = [os.path.join(path, "model.safetensors")]
        else:
            raise ModelFileError(f"{path}: no model.safetensors or model.safetensors.index.json")
    elif os.path.exists(path):
        files = [path]
    else:
        raise ModelFileError(f"{path}: no such file or directory")
    tensors, where = {}, {}
    for file in files:
        for name, x in read_safetensors(file)[0].items():
            if not name.startswith(("rwkv.", "head.weight")):  # (head.weight_scale too)
                name = "rwkv." + name
            if name in tensors:
                raise ModelFileError(f"{file}: tensor {name} appears in more than one shard")
            tensors[name], where[name] = x, file
    return _int8_matrices(tensors, where)


def _int8_matrices(tensors: dict, where: dict) -> dict:
    """Each I8 tensor and its row scales -> one Int8Weight of the same (uncopied) views."""
    for name in [n for n, x in tensors.items() if x.dtype == np.int8]:
        q, s, file = tensors[name], tensors.pop(name + SCALE, None), where[name]
        if q.ndim != 2:
            raise ModelFileError(f"{file}: tensor {name} is I8 with shape {q.shape}; "
                                 f"only matrices may be int8")
        if s is None:
            raise ModelFileError(f"{file}: I8 tensor {name} has no row scales {name + SCALE}")
        if s.dtype != np.float32 or s.shape != q.shape[:1]:
            got = "bfloat16" if isinstance(s, _Bf16) else s.dtype
            raise ModelFileError(f"{where[name + SCALE]}: row scales {name + SCALE} are {got} {s.shape}, "
                                 f"expected float32 ({q.shape[0]},)")
        bad = np.flatnonzero(~(np.isfinite(s) & (s > 0)))
        if bad.size:
            raise ModelFileError(f"{where[name + SCALE]}: row scales {name + SCALE} hold {s[bad[0]]} at "
                                 f"index {bad[0]}; a scale must be finite and > 0")
        tensors[name] = Int8Weight(q, s)
    for name in (n for n in tensors if n.endswith(SCALE)):
        raise ModelFileError(f"{where[name]}: tensor {name} looks like row scales, "
                             f"but {name[:-len(SCALE)]} is not I8")
    return tensors


def _shards(index: str) -> list[str]:
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


def load_pretrained(path, head: bool, allow_nonfinite: bool = False) -> tuple[RwkvConfig, dict]:
    """Config and checked state dict of a model directory or checkpoint file; `head` False for a
    bare RwkvModel."""
    if os.path.isdir(path):
        config = RwkvConfig.from_pretrained(path)
        tensors = load_state_dict(path)
    else:
        from .convert import load_checkpoint  # .pth, pytorch_model.bin, rwkv.cpp .bin, .safetensors
        config, tensors = load_checkpoint(path)
    if config.tie_word_embeddings and "rwkv.embeddings.weight" in tensors:
        tensors.setdefault("head.weight", tensors["rwkv.embeddings.weight"])
    if not head:
        tensors.pop("head.weight", None)
    check_state_dict(tensors, config, os.fspath(path), head=head)
    if not allow_nonfinite:
        check_finite(tensors, os.fspath(path))
    return config, tensors
