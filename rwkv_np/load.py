"""The one loader: any model path -> (generation, config, tensors by HF-style name), checked.

    a directory      config.json (its model_type names the generation) + model.safetensors, a
                     sharded model.safetensors.index.json, pytorch_model.bin or its shards
    .safetensors     HF-style or BlinkDL names; config.json beside it, else inferred from shapes
    .pth / .bin      a torch.save zip (BlinkDL .pth, HF pytorch_model.bin), read without torch
    rwkv.cpp .bin    header + tensors (formats/rwkvcpp.py)

Files are read by formats/; the generation (generations.py: from model_type, else from the
tensor names) says what the names mean (its names.py), and its expected shapes are the contract
every tensor is checked against.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from .errors import ModelFileError
from .formats.pth import is_torch_zip, read_torch_zip
from .formats.rwkvcpp import is_rwkvcpp, read_records
from .formats.safetensors import read_files, shard_files
from .generations import Generation, by_model_type, detect, of_config
from .storage import Bfloat16, Int4Weight, Int8Weight

LOADABLE = "an HF-style model directory, .safetensors, BlinkDL .pth, pytorch_model.bin or rwkv.cpp .bin"


def read(path: str | os.PathLike) -> tuple[Generation, object, dict]:
    """(generation, config, tensors with the generation's HF-style names) of `path`, unchecked."""
    path = os.fspath(path)
    if os.path.isdir(path):
        gen, config = read_config(path)
        return gen, config, gen.module("names").from_hf(_directory_tensors(path))
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file or directory")
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: not a regular file")
    if is_rwkvcpp(path) or (path.endswith(".bin") and not is_torch_zip(path)):  # (it says why not)
        header, raw = read_records(path)
        gen = detect(raw, path)
        config, tensors = gen.module("names").from_rwkvcpp(header, raw, path)
        return gen, config, tensors
    if is_torch_zip(path) or path.endswith((".pth", ".pt")):  # (read_torch_zip says why not)
        raw = _unwrap(read_torch_zip(path), path)
    elif path.endswith(".safetensors"):
        raw = read_files([path])
    else:
        raise ModelFileError(f"{path}: not {LOADABLE}")
    gen = detect(raw, path)
    names = gen.module("names")
    tensors = names.from_blinkdl(raw) if "emb.weight" in raw else names.from_hf(raw)
    sibling = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if os.path.isfile(sibling):
        config = names.CONFIG.from_pretrained(sibling)
    else:
        config = names.infer_config(tensors, path)
    return gen, config, tensors


def read_config(directory: str) -> tuple[Generation, object]:
    """(generation, config) of a model directory's config.json, whose model_type names the
    generation (HF's RWKV-4 configs may omit it: "rwkv")."""
    file = os.path.join(directory, "config.json")
    d = _read_json(file)
    gen = by_model_type(d.get("model_type", "rwkv") if isinstance(d, dict) else "rwkv", file)
    return gen, gen.module("names").CONFIG.from_pretrained(directory)


def load(path: str | os.PathLike, head: bool = True, allow_nonfinite: bool = False):
    """read(path), then checked: every tensor the config implies, with its shape, none other, all
    finite (unless allow_nonfinite). A tied head is filled in from the embeddings; `head` False
    (a bare trunk model) drops it."""
    gen, config, tensors = read(path)
    names = gen.module("names")
    if getattr(config, "tie_word_embeddings", False):
        emb, lm = names.EMBEDDINGS, names.HEAD
        if emb in tensors:
            tensors.setdefault(lm, tensors[emb])
    if not head:
        tensors.pop(names.HEAD, None)
    check_tensors(tensors, config, os.fspath(path), head)
    if not allow_nonfinite:
        check_finite(tensors, os.fspath(path))
    return gen, config, tensors


def check_tensors(tensors: dict, config, source: str, head: bool = True) -> None:
    """Raise ModelFileError naming the first tensor that is missing, unexpected, mis-shaped or
    not floating-point, against the shapes the config implies (the generation's names.py)."""
    layers = config.num_hidden_layers
    present = {(m.group(1), int(m.group(2))) for n in tensors if (m := re.match(r"(.*?\.(?:blocks|layers)\.)(\d+)\.", n))}
    if layers > len(present):  # a lying layer count (10**9 from a damaged header): refuse it
        prefix = min(p for p, _ in present) if present else "blocks."  # before listing its names
        i = next(i for i in range(layers) if (prefix, i) not in present)
        raise ModelFileError(f"{source}: missing tensors {prefix}{i}.* (the config says {layers} layers, "
                             f"there are {len(tensors)} tensors in all)")
    want = of_config(config).module("names").expected_shapes(config, head)
    missing = [n for n in want if n not in tensors]
    extra = [n for n in tensors if n not in want]
    for problem, found in (("missing", missing), ("unexpected", extra)):
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise ModelFileError(f"{source}: {problem} tensor {found[0]}{more}")
    for name, shape in want.items():
        x = tensors[name]
        if tuple(x.shape) != shape:
            raise ModelFileError(f"{source}: {name} has shape {tuple(x.shape)}, the config implies {shape}")
        if not (isinstance(x, (Bfloat16, Int8Weight, Int4Weight)) or np.issubdtype(x.dtype, np.floating)):
            raise ModelFileError(f"{source}: {name} has dtype {x.dtype}, expected a floating-point type")


def check_finite(tensors: dict, source: str) -> None:
    """Raise ModelFileError naming the first tensor that holds a NaN or an infinity.

    Scans in slices of 2**22 values so that a large memory-mapped tensor needs no big temporary."""
    for name, x in tensors.items():
        if isinstance(x, (Int8Weight, Int4Weight)):  # finite values; the reader checked the scales
            continue
        flat = x.reshape(-1)
        for start in range(0, flat.size, 1 << 22):
            part = flat[start:start + (1 << 22)]
            if isinstance(x, Bfloat16):  # bfloat16 bits: non-finite iff the 8 exponent bits are all 1
                bad = (part.view(np.ndarray) & 0x7F80) == 0x7F80
            else:
                bad = ~np.isfinite(part)
            if bad.any():
                raise ModelFileError(f"{source}: tensor {name} holds non-finite values (NaN or inf) "
                                     f"at flat index {start + int(np.argmax(bad))}; "
                                     f"pass allow_nonfinite=True to load it anyway")


def _read_json(file: str):
    """config.json as parsed JSON, or None when it cannot be read (the config class then reports
    the problem in its own words)."""
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, RecursionError):
        return None


def _directory_tensors(path: str) -> dict:
    """The tensors of a model directory, as named in its files."""
    files = sorted(os.listdir(path))
    if "model.safetensors.index.json" in files:
        return read_files(shard_files(os.path.join(path, "model.safetensors.index.json")))
    if "model.safetensors" in files:
        return read_files([os.path.join(path, "model.safetensors")])
    if "pytorch_model.bin.index.json" in files:
        tensors = {}
        for file in shard_files(os.path.join(path, "pytorch_model.bin.index.json")):
            tensors.update(_unwrap(read_torch_zip(file), file))
        return tensors
    if "pytorch_model.bin" in files:
        return _unwrap(read_torch_zip(os.path.join(path, "pytorch_model.bin")), path)
    found = ", ".join(files[:8]) + (", ..." if len(files) > 8 else "") if files else "nothing"
    raise ModelFileError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin "
                         f"(found: {found}); give {LOADABLE}")


def _unwrap(state_dict: dict, source: str) -> dict:
    """A torch state dict's tensors: {"state_dict": {...}} wrappers opened, non-tensors refused."""
    if len(state_dict) == 1 and isinstance(next(iter(state_dict.values())), dict):
        state_dict = next(iter(state_dict.values()))
    for name, x in state_dict.items():
        if not isinstance(x, np.ndarray):
            raise ModelFileError(f"{source}: entry {name!r} is a {type(x).__name__}, not a tensor")
    return dict(state_dict)
