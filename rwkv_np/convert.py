"""Checkpoints and states of the other RWKV engines -> rwkv_np's (HF's) layout, and back.

Weights: `load_checkpoint(src)` reads any of
    an HF model directory or .safetensors file     (weights.load_state_dict)
    a BlinkDL .pth / HF pytorch_model.bin           (pth.py: restricted unpickler, no torch)
    an rwkv.cpp .bin (F32, F16, Q5_0, Q5_1, Q8_0)   (rwkvcpp.py)
into (config, state dict with HF names); `convert(src, out_dir)` writes it as an HF safetensors
directory. Names follow weights.hf_name; values are unchanged (quantized rwkv.cpp tensors are
written dequantized, as float32). `quantize(src, out_dir)` writes rwkv_np's int8 directory instead:
every matrix quantized as `weights="int8"` would at load, loadable memory-mapped.
Both go through `save_pretrained`, the one safetensors writer (the readers are in weights.py).

States: one sequence's recurrent state in each engine's layout (L layers, H channels):
    HF / rwkv_np   list of 5 arrays (B, H, L): [ffn_x, att_x, num, den, max]      (state.py)
    rwkv pip       list of 5*L arrays (H,), per layer [att_x, num, den, max, ffn_x]
                   (BlinkDL's `rwkv` package, RWKV-4; its name for num/den/max is aa/bb/pp)
    rwkv.cpp       one float32 array (5*L*H,), per layer [ffn_x, att_x, num, den, max]
The values mean the same in all three (num and den scaled by e^-max, max = -1e38 or -1e30 for
"no token yet"), so conversion is a pure re-arrangement and round-trips exactly.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

from .config import RwkvConfig
from .errors import InputError, ModelFileError
from .pth import is_torch_zip, read_torch_zip
from .rwkvcpp import is_rwkvcpp, read_rwkvcpp
from .state import ATT_X, DEN, FFN_X, MAX, NUM
from .storage import Int8Weight, prepare_weight
from .tokenizer import TOKENIZER_FILE
from .weights import (SCALE, _Bf16, as_float, check_finite, check_state_dict, expected_shapes,
                      float32_to_bf16, hf_name, load_state_dict)

PIP_ORDER = (ATT_X, NUM, DEN, MAX, FFN_X)     # rwkv pip: state[5*i + j] is HF's PIP_ORDER[j]
RWKVCPP_ORDER = (FFN_X, ATT_X, NUM, DEN, MAX)  # rwkv.cpp: the same order as HF's list


# ---------------------------------------------------------------- weights

def load_checkpoint(src: str | os.PathLike) -> tuple[RwkvConfig, dict[str, np.ndarray]]:
    """(config, state dict with HF RwkvForCausalLM names) of any supported checkpoint."""
    src = os.fspath(src)
    if os.path.isdir(src):
        if not any(os.path.exists(os.path.join(src, f)) for f in
                   ("model.safetensors", "model.safetensors.index.json")) \
                and os.path.isfile(os.path.join(src, "pytorch_model.bin")):
            return load_checkpoint(os.path.join(src, "pytorch_model.bin"))
        config = RwkvConfig.from_pretrained(src)
        tensors = load_state_dict(src)
    elif not os.path.isfile(src):
        raise ModelFileError(f"{src}: no such file or directory")
    elif is_rwkvcpp(src):
        return read_rwkvcpp(src)
    elif is_torch_zip(src):
        tensors = _hf_names(read_torch_zip(src), src)
        config = _sibling_config(src) or infer_config(tensors, src)
    elif src.endswith(".safetensors"):
        tensors = load_state_dict(src)
        config = _sibling_config(src) or infer_config(tensors, src)
    else:
        raise ModelFileError(f"{src}: not an HF model directory, .safetensors, torch .pth/.bin or rwkv.cpp .bin")
    if config.tie_word_embeddings and "rwkv.embeddings.weight" in tensors:
        tensors.setdefault("head.weight", tensors["rwkv.embeddings.weight"])
    check_state_dict(tensors, config, src)
    return config, tensors


def _hf_names(state_dict: dict, source: str) -> dict:
    """BlinkDL names (`emb.weight`, `blocks.0.att.key.weight`...) or HF ones -> HF RwkvForCausalLM names."""
    if len(state_dict) == 1 and isinstance(next(iter(state_dict.values())), dict):
        state_dict = next(iter(state_dict.values()))  # {"state_dict": {...}} wrappers
    blinkdl = "emb.weight" in state_dict
    out = {}
    for name, x in state_dict.items():
        if not isinstance(x, np.ndarray):
            raise ModelFileError(f"{source}: entry {name!r} is a {type(x).__name__}, not a tensor")
        if blinkdl:
            out[hf_name(name)] = x
        else:  # HF's names; a bare RwkvModel's lack the `rwkv.` prefix
            out[name if name.startswith("rwkv.") or name == "head.weight" else "rwkv." + name] = x
    return out


def _sibling_config(file: str) -> RwkvConfig | None:
    config = os.path.join(os.path.dirname(os.path.abspath(file)), "config.json")
    return RwkvConfig.from_pretrained(config) if os.path.isfile(config) else None


def infer_config(tensors: dict, source: str) -> RwkvConfig:
    """The config a BlinkDL checkpoint implies: sizes from tensor shapes, HF's defaults
    otherwise (as HF's own conversion script does, so rescale_every is 6)."""
    try:
        V, H = tensors["rwkv.embeddings.weight"].shape
        layers = {int(m.group(1)) for n in tensors if (m := re.match(r"rwkv\.blocks\.(\d+)\.", n))}
        return RwkvConfig(vocab_size=int(V), hidden_size=int(H), num_hidden_layers=max(layers) + 1,
                          attention_hidden_size=int(tensors["rwkv.blocks.0.attention.key.weight"].shape[0]),
                          intermediate_size=int(tensors["rwkv.blocks.0.feed_forward.key.weight"].shape[0]))
    except (KeyError, ValueError) as e:
        raise ModelFileError(f"{source}: cannot infer the model's sizes (missing or odd tensor: {e})") from None


def convert(src: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | None = None) -> RwkvConfig:
    """Write `src` (any supported checkpoint) as an HF directory: config.json + model.safetensors
    (+ the tokenizer.json of a source directory, so that the result generates text)."""
    config, tensors = load_checkpoint(src)
    save_pretrained(out_dir, config, tensors, dtype)
    _copy_tokenizer(src, out_dir)
    return config


def _copy_tokenizer(src, out_dir) -> None:
    if os.path.isfile(os.path.join(src, TOKENIZER_FILE)):
        shutil.copyfile(os.path.join(src, TOKENIZER_FILE), os.path.join(out_dir, TOKENIZER_FILE))


def add_convert(subparsers, **parser_kwargs) -> None:
    """Register `rwkv-np convert`; parser_kwargs (parents, formatter_class...) go to add_parser."""
    p = subparsers.add_parser("convert", **parser_kwargs,
                              help="write a .pth / pytorch_model.bin / rwkv.cpp .bin as an HF safetensors "
                                   "directory (torch not needed)")
    p.add_argument("src", help="BlinkDL .pth, HF pytorch_model.bin (or its directory), rwkv.cpp .bin, "
                               "or an HF safetensors model")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="store every tensor in this dtype; unset keeps each tensor's own")
    p.set_defaults(run=run_convert)


def run_convert(args) -> int:
    try:
        config = convert(args.src, args.out, args.dtype)
    except OSError as e:  # --out is a file, disk full...: one line, exit 2
        raise ModelFileError(f"{args.out}: cannot write ({e.strerror or e})") from None
    print(f"wrote {args.out}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"vocab {config.vocab_size}")
    return 0


def quantize(src: str | os.PathLike, out_dir: str | os.PathLike) -> RwkvConfig:
    """Write `src` with every matrix int8 (per-row scales, the same numbers as loading it with
    weights="int8"): about a quarter of the float32 file, loaded memory-mapped. rwkv_np only:
    HF transformers cannot read it."""
    config, tensors = load_checkpoint(src)
    check_finite(tensors, os.fspath(src))  # a NaN would quantize to NaN row scales
    save_pretrained(out_dir, config, tensors, "int8")
    _copy_tokenizer(src, out_dir)
    return config


def add_quantize(subparsers, **parser_kwargs) -> None:
    """Register `rwkv-np quantize`; parser_kwargs as for add_convert."""
    p = subparsers.add_parser("quantize", **parser_kwargs,
                              help="write a model with int8 matrices (a quarter of float32, loads "
                                   "memory-mapped; rwkv_np only)")
    p.add_argument("src", help="anything `rwkv-np convert` reads")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    p.set_defaults(run=run_quantize)


def run_quantize(args) -> int:
    try:
        config = quantize(args.src, args.out)
    except OSError as e:
        raise ModelFileError(f"{args.out}: cannot write ({e.strerror or e})") from None
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(f"wrote {args.out}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"vocab {config.vocab_size}, int8 matrices, {size / 2**20:.2f} MiB")
    return 0


def save_pretrained(directory: str | os.PathLike, config: RwkvConfig, tensors: dict,
                    dtype: str | None = None) -> None:
    """Write config.json and model.safetensors (HF names; HF transformers reads it unless int8).

    dtype: "float32", "float16" or "bfloat16" for every tensor; "int8" quantizes every matrix
    exactly as storage.prepare_weight does at load (I8 + float32 row scales `name + SCALE`) and
    keeps the other tensors as they are; None keeps each tensor's own (int8 stays int8).
    Written by hand (the layout is the one `read_safetensors` parses) because the safetensors
    package's NumPy writer has no bfloat16."""
    check_state_dict(tensors, config, "save_pretrained", head=True)
    if config.tie_word_embeddings:
        tensors = {n: x for n, x in tensors.items() if n != "head.weight"}
    matrices = {n for n, shape in expected_shapes(config).items() if len(shape) == 2}
    out = {}  # name -> (safetensors dtype code, array)
    for name, x in tensors.items():
        if dtype == "int8" and name in matrices and not isinstance(x, Int8Weight):
            x = prepare_weight(as_float(x, np.float32), "int8")
        if isinstance(x, Int8Weight) and x.col_scale is None and dtype in (None, "int8"):
            out[name], out[name + SCALE] = ("I8", x.q), ("F32", x.row_scale)
        else:
            out[name] = _encoded(x, None if dtype == "int8" else dtype)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    if any(code == "I8" for code, _ in out.values()):
        header["__metadata__"]["rwkv_np.storage"] = "int8"
    names = sorted(out, key=lambda n: (-out[n][1].itemsize, n))  # wider items first: each tensor
    for name in names:                                            # aligned to its size, no holes
        code, data = out[name]
        out[name] = data = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": code, "shape": list(data.shape),
                        "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header so the data is 8-byte aligned
    file = os.path.join(directory, "model.safetensors")
    os.makedirs(directory, exist_ok=True)
    try:  # into a temporary name first, so that a failed write (disk full...) leaves no partial file
        with open(file + ".partial", "wb") as f:
            f.write(len(blob).to_bytes(8, "little") + blob)
            for name in names:
                f.write(out[name].data)
        os.replace(file + ".partial", file)
    finally:
        if os.path.exists(file + ".partial"):
            os.remove(file + ".partial")
    config.save_pretrained(directory)


def _encoded(x, dtype: str | None) -> tuple[str, np.ndarray]:  # -> (safetensors dtype code, data)
    """A tensor as `dtype` ("float32", "float16", "bfloat16"; None: its own float type)."""
    if dtype == "bfloat16" or (dtype is None and isinstance(x, _Bf16)):
        return "BF16", x.view(np.ndarray) if isinstance(x, _Bf16) else float32_to_bf16(as_float(x, np.float32))
    data = as_float(x, np.dtype(dtype or (np.float32 if isinstance(x, Int8Weight) else x.dtype)))
    return {np.float64: "F64", np.float32: "F32", np.float16: "F16"}[data.dtype.type], data


# ---------------------------------------------------------------- states

def _check_hf(state, index: int):
    if not isinstance(state, (list, tuple)) or len(state) != 5:
        raise InputError("state: expected HF's list of 5 arrays [ffn_x, att_x, num, den, max]")
    state = [np.asarray(s) for s in state]
    if any(s.ndim != 3 or s.shape != state[0].shape for s in state):
        raise InputError(f"state: expected 5 arrays of one shape (B, H, L), got {[s.shape for s in state]}")
    if not 0 <= index < state[0].shape[0]:
        raise InputError(f"index: {index} is outside the batch of {state[0].shape[0]}")
    return state


def hf_to_rwkv_pip(state, index: int = 0) -> list[np.ndarray]:  # 5 x (B, H, L) -> 5L x (H,)
    """Sequence `index` of an HF state as BlinkDL's `rwkv` package holds it (wrap each array in
    torch.from_numpy to pass it to rwkv.model.RWKV.forward)."""
    state = _check_hf(state, index)
    L = state[0].shape[2]
    return [np.array(state[j][index, :, i]) for i in range(L) for j in PIP_ORDER]


def rwkv_pip_to_hf(tensors) -> list[np.ndarray]:  # 5L x (H,) -> 5 x (1, H, L)
    """A BlinkDL `rwkv` package state (torch tensors or arrays) -> HF's list of five (1, H, L)."""
    arrays = [np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t) for t in tensors]
    if not arrays or len(arrays) % 5 or any(a.shape != arrays[0].shape or a.ndim != 1 for a in arrays):
        raise InputError(f"rwkv pip state: expected 5*L arrays of one shape (H,), got {len(arrays)} "
                         f"of shapes {sorted({a.shape for a in arrays})}")
    L = len(arrays) // 5
    state = [None] * 5
    for j, hf in enumerate(PIP_ORDER):
        state[hf] = np.stack([arrays[5 * i + j] for i in range(L)], axis=-1)[None]
    return state


def hf_to_rwkvcpp(state, index: int = 0) -> np.ndarray:  # 5 x (B, H, L) -> (5*L*H,) float32
    """Sequence `index` of an HF state as rwkv.cpp's flat float32 state buffer."""
    state = _check_hf(state, index)
    per_layer = np.stack([state[j][index] for j in RWKVCPP_ORDER])  # (5, H, L)
    return np.ascontiguousarray(per_layer.transpose(2, 0, 1), dtype=np.float32).reshape(-1)


def rwkvcpp_to_hf(flat, n_layer: int) -> list[np.ndarray]:  # (5*L*H,) -> 5 x (1, H, L)
    """rwkv.cpp's flat state buffer (or a file of it, read with np.fromfile) -> HF's list."""
    flat = np.asarray(flat).reshape(-1)
    if n_layer < 1 or flat.size % (5 * n_layer):
        raise InputError(f"rwkv.cpp state: {flat.size} values is not 5 x {n_layer} layers x H")
    per_layer = flat.reshape(n_layer, 5, -1)                         # (L, 5, H)
    state = [None] * 5
    for j, hf in enumerate(RWKVCPP_ORDER):
        state[hf] = np.ascontiguousarray(per_layer[:, j].T)[None]    # (1, H, L)
    return state
