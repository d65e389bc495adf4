"""Writing models: `convert` (any loadable checkpoint -> an HF-style safetensors directory) and
`quantize` (the same with int8 or int4 matrices), both through `save_pretrained`, the one writer.

`convert(src, out_dir)` reads anything load.py reads (a BlinkDL .pth, an HF pytorch_model.bin,
an rwkv.cpp .bin, an HF-style directory...) and writes config.json + model.safetensors in the
generation's HF-style layout (RWKV-4: transformers' RwkvForCausalLM; RWKV-7: fla's
RWKV7ForCausalLM): names as the generation's names.py maps them, values unchanged (quantized
rwkv.cpp tensors are written dequantized, as float32). `quantize(src, out_dir)` writes rwkv_np's
int8 directory instead: every matrix quantized as `weights="int8"` would at load, loadable
memory-mapped. State converters live with each generation's state layout (vN/state.py).
"""
from __future__ import annotations

import os
import shutil

import numpy as np

from .errors import ModelFileError
from .formats.safetensors import SCALE, write_safetensors
from .generations import of_config
from .load import check_tensors, load
from .storage import EDGE_STORAGE, Bfloat16, Int4Weight, Int8Weight, as_float, float32_to_bf16, prepare_weight
from .tokenizer import TOKENIZER_FILE


def load_checkpoint(src: str | os.PathLike) -> tuple[object, dict[str, np.ndarray]]:
    """(config, tensors by HF-style name) of any loadable checkpoint, shapes checked."""
    _, config, tensors = load(src, head=True, allow_nonfinite=True)
    return config, tensors


def convert(src: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | None = None,
            tokenizer: str | os.PathLike | None = None):
    """Write `src` (any supported checkpoint) as an HF directory: config.json + model.safetensors
    + a tokenizer, so that the result generates text: `tokenizer` (a tokenizer.json or World
    vocabulary file) if given, else the one beside `src` (in its directory). Without either, the
    model later gets the tokenizer rwkv_np ships for its vocab_size (tokenizer.py)."""
    if tokenizer is not None:
        _check_tokenizer(tokenizer)
    config, tensors = load_checkpoint(src)
    save_pretrained(out_dir, config, tensors, dtype)
    _copy_tokenizer(src, out_dir, tokenizer)
    return config


def _check_tokenizer(file) -> None:
    """Refuse a tokenizer file that cannot be read, before any work is done."""
    from .tokenizer import Tokenizer
    if not os.path.isfile(file):
        raise ModelFileError(f"--tokenizer: {os.fspath(file)}: no such file")
    Tokenizer.from_pretrained(file)


def _copy_tokenizer(src, out_dir, tokenizer=None) -> None:
    """Copy `tokenizer`, else the tokenizer.json / World vocabulary beside `src`, into out_dir."""
    from .world_vocab import WORLD_VOCAB_FILE
    if tokenizer is not None:
        name = WORLD_VOCAB_FILE if os.fspath(tokenizer).endswith(".txt") else TOKENIZER_FILE
        shutil.copyfile(tokenizer, os.path.join(out_dir, name))
        return
    directory = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    for name in (TOKENIZER_FILE, WORLD_VOCAB_FILE):
        if os.path.isfile(os.path.join(directory, name)) and \
                os.path.abspath(directory) != os.path.abspath(out_dir):
            shutil.copyfile(os.path.join(directory, name), os.path.join(out_dir, name))
            return


def add_convert(subparsers, **parser_kwargs) -> None:
    """Register `rwkv-np convert`; parser_kwargs (parents, formatter_class...) go to add_parser."""
    p = subparsers.add_parser("convert", **parser_kwargs,
                              help="write a .pth / pytorch_model.bin / rwkv.cpp .bin as an HF safetensors "
                                   "directory (torch not needed)",
                              description="Read SRC (any checkpoint rwkv_np loads; torch is not needed) and write "
                                          "DIR/config.json and DIR/model.safetensors in the generation's HF layout "
                                          "(values unchanged unless --dtype), plus a tokenizer, so that "
                                          "`rwkv-np generate --model DIR` runs.")
    p.add_argument("src", help="BlinkDL .pth, HF pytorch_model.bin (or its directory), rwkv.cpp .bin, "
                               "or an HF safetensors model")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="store every tensor in this dtype; unset keeps each tensor's own")
    p.add_argument("--tokenizer", metavar="FILE", default=None,
                   help="tokenizer.json (or World vocabulary .txt) to copy into DIR; unset: the one beside"
                        " SRC, else none is needed for vocab 256, 50277 (GPT-NeoX-20B, shipped) and 65536"
                        " (World, shipped)")
    p.set_defaults(run=run_convert)


def run_convert(args) -> int:
    from .files import check_writable
    check_writable(args.out, "--out", directory=True)  # before the reading and converting
    try:
        config = convert(args.src, args.out, args.dtype, args.tokenizer)
    except OSError as e:  # --out is a file, disk full...: one line, exit 2
        raise ModelFileError(f"{args.out}: cannot write ({e.strerror or e})") from None
    print(f"wrote {args.out}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"vocab {config.vocab_size}")
    return 0


def quantize(src: str | os.PathLike, out_dir: str | os.PathLike, bits: int = 8):
    """Write `src` with every matrix int8 (bits=8: per-row scales, the same numbers as loading it
    with weights="int8"; about a quarter of the float32 file) or int4 (bits=4: groups of 32 with
    float16 scales and minimums, embedding and head int8, the numbers of weights="int4"; 0.20x
    of the float32 file for the 169M shape) or int5 (bits=5: the same with 5-bit values, the
    numbers of weights="int5"), loaded memory-mapped. rwkv_np only: HF transformers
    cannot read it."""
    if bits not in (4, 5, 8):
        raise ValueError(f"bits: expected 4, 5 or 8, got {bits!r}")
    _, config, tensors = load(src, head=True)  # finite: a NaN would quantize to NaN row scales
    save_pretrained(out_dir, config, tensors, f"int{bits}")
    _copy_tokenizer(src, out_dir)
    return config


def add_quantize(subparsers, **parser_kwargs) -> None:
    """Register `rwkv-np quantize`; parser_kwargs as for add_convert."""
    p = subparsers.add_parser("quantize", **parser_kwargs,
                              help="write a model with int8 (or int4) matrices (a quarter of float32, "
                                   "loads memory-mapped; rwkv_np only)",
                              description="Read SRC and write DIR with every matrix quantized to int8 with "
                                          "per-row scales (the numbers `--weights int8` gives at load), about a "
                                          "quarter of the float32 size; --bits 4: 4-bit groups of 32 with float16 "
                                          "scales and minimums, embedding and head int8 (`--weights int4`); "
                                          "--bits 5: the same with 5-bit values (`--weights int5`). Only "
                                          "rwkv_np reads the result.")
    p.add_argument("src", help="anything `rwkv-np convert` reads")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--bits", type=int, choices=[8, 5, 4], default=8,
                   help="8: int8 matrices; 4: int4 layers; 5: int5 layers")
    p.set_defaults(run=run_quantize)


def run_quantize(args) -> int:
    from .files import check_writable
    check_writable(args.out, "--out", directory=True)
    try:
        config = quantize(args.src, args.out, args.bits)
    except OSError as e:
        raise ModelFileError(f"{args.out}: cannot write ({e.strerror or e})") from None
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(f"wrote {args.out}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"vocab {config.vocab_size}, int{args.bits} matrices, {size / 2**20:.2f} MiB")
    return 0


def save_pretrained(directory: str | os.PathLike, config, tensors: dict, dtype: str | None = None) -> None:
    """Write config.json and model.safetensors (HF-style names; HF transformers reads a v4 one
    unless int8).

    dtype: "float32", "float16" or "bfloat16" for every tensor; "int8" quantizes every matrix
    exactly as storage.prepare_weight does at load (I8 + float32 row scales `name + SCALE`) and
    keeps the other tensors as they are; "int4" / "int5" likewise (U8 + float16 [d, m] `name + SCALE`,
    embedding and head int8: storage.EDGE_STORAGE); None keeps each tensor's own (int8 stays
    int8, int4 int4)."""
    names = of_config(config).module("names")
    check_tensors(tensors, config, "save_pretrained")
    if getattr(config, "tie_word_embeddings", False):
        tensors = {n: x for n, x in tensors.items() if n != names.HEAD}
    matrices = names.matrices(config)  # (not every 2-D tensor: RWKV-7's r_k (H, N) stays float)
    out = {}
    quantized = dtype in ("int8", "int4", "int5")
    for name, x in tensors.items():
        if quantized and name in matrices:
            storage = EDGE_STORAGE.get(dtype, dtype) if name in (names.EMBEDDINGS, names.HEAD) else dtype
            if not (isinstance(x, (Int8Weight, Int4Weight)) and x.storage == storage):
                x = prepare_weight(as_float(x, np.float32), storage)
        if isinstance(x, Int8Weight) and x.col_scale is None and (dtype is None or quantized):
            out[name], out[name + SCALE] = x.q, x.row_scale
        elif isinstance(x, Int4Weight) and (dtype is None or quantized):
            out[name], out[name + SCALE] = x.q, x.scales
        else:
            out[name] = _encoded(x, None if quantized else dtype)
    metadata = {"format": "pt"}
    if any(x.dtype == np.uint8 for x in out.values()):
        five = any(isinstance(x, Int4Weight) and x.bits == 5 for x in tensors.values()) if dtype is None else dtype == "int5"
        metadata["rwkv_np.storage"] = "int5" if five else "int4"
    elif any(x.dtype == np.int8 for x in out.values()):
        metadata["rwkv_np.storage"] = "int8"
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, "model.safetensors"), out, metadata)
    config.save_pretrained(directory)


def _encoded(x, dtype: str | None) -> np.ndarray:  # -> ndarray or Bfloat16
    """A tensor as `dtype` ("float32", "float16", "bfloat16"; None: its own float type)."""
    if dtype == "bfloat16" or (dtype is None and isinstance(x, Bfloat16)):
        return x if isinstance(x, Bfloat16) else Bfloat16(float32_to_bf16(as_float(x, np.float32)))
    return as_float(x, np.dtype(dtype or (np.float32 if isinstance(x, (Int8Weight, Int4Weight)) else x.dtype)))
