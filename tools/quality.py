"""Quality of each weight storage against float32, on real text with the demo model (issue 7).

    python tools/quality.py [--text FILE] [--windows N] [--json]
    python tools/quality.py --shape 169m --rwkvcpp DIR   # a random 169M model, with rwkv.cpp's
                                                         # Q5_1 and Q8_0 of the same weights

Text: by default the held-out part of tinyshakespeare, the last 10% of
REPO/../shared/data/tinyshakespeare.txt (never trained on); --text takes any file. The demo
model is byte-level, so the ids are the bytes. N windows of 512 bytes, evenly spaced through the
text, each from an empty state, go through the model in one forward call (batch N) per storage;
every position's logits are compared (rwkv_np.compare.logit_agreement).

Rows: float32 storage against the float64 model (the floor: float32 arithmetic itself), then
float16, bfloat16 and int8 storage against float32 storage. The demo model is F16 on disk, so
"float16" keeps exactly the stored values: any difference from float32 storage comes from the
order of accumulation, not from the weights. bfloat16 keeps 8 significant bits of each weight
(F16 has 11); int8 keeps 255 levels per row (scale max|W[i]| / 127). A last row, "int8 decode",
runs the first two windows token by token (B = 1), where int8 also rounds the activations to
int16 (linear.activations), against float32 decoded the same way; "int4" and "int4 decode" the
same for 4-bit groups of 32 (storage_int4.py: embedding and head int8), "int5" / "int5 decode"
for 5-bit ones (6 bits a weight, as rwkv.cpp's Q5_1).

--shape 169m measures a random model of that shape (tools/bench.py's weights) instead, on the
text's GPT-NeoX tokens (--model DIR: any HF directory, its tokenizer). With --rwkvcpp DIR (a
tree built by build_rwkvcpp.sh, see tools/peer_rwkvcpp.py; needs torch for its converter) the
same weights also go through rwkv.cpp's converter and quantizer (FP16, then Q5_1 and Q8_0, as
its README does), and each quantized file is read back dequantized by rwkv_np's own reader
(rwkv_np.load.read) and run by rwkv_np in float32: rows "rwkv.cpp Q5_1" / "Q8_0", the error of
their weights alone (rwkv.cpp also rounds activations to 8 bits inside its products).

--int4-study (issue 19) asks where int4's error comes from instead: every layer matrix
dequantized to float32 in one of several roundings (embedding and head int8, as an int4 model
keeps them), run by rwkv_np in float32 against float32, one row each with its bits per layer
weight: min/max groups of 32 (no search), int4 as stored (storage_int4.quantize_int4), 5-bit
min/max groups of 32 (the rounding of rwkv.cpp's Q5_1, 6 bits a weight), int5 as stored (the
same 6 bits, storage_int4's search over 31 levels), then int4 with one
matrix kind (or a set of kinds) kept int8.
"""
import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import rwkv_np  # noqa: E402
from rwkv_np import RwkvForCausalLM  # noqa: E402
from rwkv_np.compare import logit_agreement  # noqa: E402

TINYSHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
STORAGES = ("float16", "bfloat16", "int8", "int4", "int5")  # each compared with weights="float32"
DECODED = ("int8", "int4", "int5")  # storages whose B = 1 steps round x to int16 too: a decode row each
WINDOW = 512


def held_out(text: bytes) -> bytes:
    """The last 10% of tinyshakespeare, split by position as the demo model's training did."""
    return text[int(0.9 * len(text)):]


def windows(text, n: int = 4, T: int = WINDOW) -> np.ndarray:  # bytes or ids -> (n, T) int64 ids
    """n windows of T bytes (or token ids) evenly spaced through the text, not overlapping
    (fewer, or one shorter window, when the text is too short)."""
    ids = np.frombuffer(text, np.uint8).astype(np.int64) if isinstance(text, bytes) else np.asarray(text, np.int64)
    T = min(T, len(ids))
    n = max(1, min(n, len(ids) // T))
    starts = np.linspace(0, len(ids) - T, n).astype(np.int64)
    return np.stack([ids[s:s + T] for s in starts])


def measure(ids: np.ndarray, model=rwkv_np.DEMO_MODEL, rwkvcpp=None) -> list[dict]:
    """One row per storage: logit_agreement of its logits with its reference on ids (B, T)."""
    logits = lambda **kw: RwkvForCausalLM.from_pretrained(model, **kw)(ids).logits
    ref = logits(weights="float32")
    rows = [{"storage": "float32", "reference": "float64", **logit_agreement(logits(dtype="float64"), ref)}]
    for storage in STORAGES:
        rows.append({"storage": storage, "reference": "float32",
                     **logit_agreement(ref, logits(weights=storage))})
    for name, got in rwkvcpp_logits(model, ids, rwkvcpp) if rwkvcpp else ():
        rows.append({"storage": f"rwkv.cpp {name}", "reference": "float32", **logit_agreement(ref, got)})
    # Decoding one sequence (B = 1, a token per call) rounds x to int16 before each int8 or int4
    # product (linear.activations), which a prompt does not: rows of their own, on two windows.
    steps = lambda **kw: token_by_token(RwkvForCausalLM.from_pretrained(model, **kw), ids[:2])
    ref_steps = steps(weights="float32")
    for storage in DECODED:
        rows.append({"storage": f"{storage} decode", "reference": "float32 decode",
                     **logit_agreement(ref_steps, steps(weights=storage))})
    return rows


KINDS = ("attention.key", "attention.value", "attention.receptance", "attention.output",
         "feed_forward.key", "feed_forward.receptance", "feed_forward.value")  # RWKV-4's layer matrices
KEPT_INT8 = [(kind,) for kind in KINDS] + [("feed_forward.key", "feed_forward.value"),
             ("feed_forward.key", "feed_forward.value", "attention.value", "attention.output")]


def minmax_groups(W: np.ndarray, levels: int) -> np.ndarray:  # (out, in) -> (out, in) float32
    """Plain asymmetric rounding in groups of 32: d = (max - min) / levels, m = min, both float16
    (ggml's Q4_1 with levels = 15, Q5_1 with 31), dequantized."""
    from rwkv_np.storage_int4 import GROUP
    w = W.reshape(W.shape[0], -1, GROUP)
    lo = w.min(-1, keepdims=True)
    d = ((w.max(-1, keepdims=True) - lo) / levels).astype(np.float16).astype(np.float32)
    m = lo.astype(np.float16).astype(np.float32)
    q = np.clip(np.rint((w - m) / np.where(d > 0, d, 1)), 0, levels)
    return (q * d + m).reshape(W.shape)


def int4_study(ids: np.ndarray, model=rwkv_np.DEMO_MODEL, labels=None) -> list[dict]:
    """KL to float32 of RWKV-4 `model` with its layer matrices rounded several ways (module
    docstring, --int4-study); rows also carry bits_per_weight, over the layer matrices. labels:
    only the rows of these labels (None: every row)."""
    from rwkv_np.load import read
    from rwkv_np.storage import as_float, prepare_weight
    from rwkv_np.storage_int4 import GROUP, quantize_int4
    _, config, tensors = read(model)
    tensors = {n: as_float(x, np.float32) if x.dtype.kind == "f" or hasattr(x, "to_float32") else x
               for n, x in tensors.items()}
    layer = sorted(n for n in tensors if any(n.endswith(f".{k}.weight") for k in KINDS))
    ref = RwkvForCausalLM(config, tensors, weights="float32")(ids).logits
    edges = {n: prepare_weight(tensors[n], "int8").to_float32() for n in ("rwkv.embeddings.weight", "head.weight")}
    int4 = functools.cache(lambda: {n: quantize_int4(tensors[n]).to_float32() for n in layer})  # once
    weights = sum(tensors[n].size for n in layer)

    def row(label, rounded, bits):  # rounded: () -> {name: float32 matrix}; bits: {name: bits a weight}
        got = RwkvForCausalLM(config, {**tensors, **edges, **rounded()}, weights="float32")(ids).logits
        return {"storage": label, "reference": "float32", **logit_agreement(ref, got),
                "bits_per_weight": sum(bits[n] * tensors[n].size for n in layer) / weights}

    int8_bits = lambda n: 8 + 32 / tensors[n].shape[1]  # a float32 scale per row
    cases = [("min/max 4-bit, groups of 32", lambda: {n: minmax_groups(tensors[n], 15) for n in layer},
              dict.fromkeys(layer, 4 + 32 / GROUP)),
             ("int4 (as stored)", int4, dict.fromkeys(layer, 4 + 32 / GROUP)),
             ("min/max 5-bit, groups of 32 (Q5_1's rounding)", lambda: {n: minmax_groups(tensors[n], 31) for n in layer},
              dict.fromkeys(layer, 5 + 32 / GROUP)),
             ("int5 (as stored)", lambda: {n: quantize_int4(tensors[n], 5).to_float32() for n in layer},
              dict.fromkeys(layer, 5 + 32 / GROUP))]
    for kinds in KEPT_INT8:
        kept = [n for n in layer if any(n.endswith(f".{k}.weight") for k in kinds)]
        cases.append((f"int4, {' + '.join(kinds)} int8",
                      lambda kept=kept: {**int4(), **{n: prepare_weight(tensors[n], "int8").to_float32() for n in kept}},
                      {**dict.fromkeys(layer, 4 + 32 / GROUP), **{n: int8_bits(n) for n in kept}}))
    return [row(*case) for case in cases if labels is None or case[0] in labels]


def rwkvcpp_logits(model, ids, tree, formats=("Q5_1", "Q8_0")):  # -> [(format, logits (B, T, V))]
    """rwkv.cpp's quantized files of `model`'s weights, read back by rwkv_np.load.read (dequantized
    to float32) and run by rwkv_np."""
    sys.path.insert(0, str(REPO / "tools"))
    from bench import write_pth
    from peer_rwkvcpp import locate, make_files
    from rwkv_np.load import read
    tree = locate(tree)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model"
        src.mkdir()
        for f in Path(model).iterdir():  # the model's files beside a .pth, not inside the model dir
            (src / f.name).symlink_to(f.resolve())
        for name, directory in make_files(write_pth(str(src)), tree, tmp, formats).items():
            _, config, tensors = read(Path(directory) / "model.bin")
            out.append((name, RwkvForCausalLM(config, tensors)(ids).logits))
    return out


def token_by_token(model, ids: np.ndarray) -> np.ndarray:  # ids (n, T) -> logits (n, T, V)
    """Each row decoded alone, one token per call from an empty state (B = 1 token mode)."""
    rows = []
    for row in ids:
        state, out = None, []
        for t in range(len(row)):
            step = model(row[None, t:t + 1], state=state)
            state = step.state
            out.append(step.logits[0])
        rows.append(np.concatenate(out))
    return np.stack(rows)


def table(rows: list[dict]) -> str:
    bits = any("bits_per_weight" in r for r in rows)
    lines = ["| storage | vs | positions | max rel logit err | top-1 agreement | mean KL (nats) | max KL (nats) |"
             + (" bits / layer weight |" if bits else ""), "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if bits else "")]
    for r in rows:
        lines.append(f"| {r['storage']} | {r['reference']} | {r['positions']:,} | {r['max_rel_err']:.2e} "
                     f"| {r['top1']:.4f} | {r['mean_kl']:.2e} | {r['max_kl']:.2e} |"
                     + (f" {r['bits_per_weight']:.2f} |" if bits else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--text", type=Path, help="any text file, used whole "
                   f"(default: the last 10%% of {TINYSHAKESPEARE})")
    p.add_argument("--windows", type=int, default=4, help=f"windows of {WINDOW} bytes (default 4)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON, not a table")
    p.add_argument("--shape", choices=["169m", "430m", "1b5"], help="a random model of this shape "
                   "(tools/bench.py's weights) instead of the demo model, on the text's GPT-NeoX tokens")
    p.add_argument("--model", type=Path, help="an HF model directory instead of the demo model (its tokenizer)")
    p.add_argument("--rwkvcpp", metavar="DIR", help="also rwkv.cpp's Q5_1 and Q8_0 of the same weights "
                   "(a tree built by build_rwkvcpp.sh; needs torch)")
    p.add_argument("--int4-study", action="store_true", help="where int4's error comes from: layer matrices "
                   "min/max 4-bit, int4, min/max 5-bit, and int4 with some kinds int8 (RWKV-4 models)")
    args = p.parse_args(argv)
    path = args.text or TINYSHAKESPEARE
    if not path.is_file():
        print(f"quality: {path} not found" + ("" if args.text else
              " (the default text lives in ../shared/data; pass --text FILE to use another)"),
              file=sys.stderr)
        return 2
    text = path.read_bytes() if args.text else held_out(TINYSHAKESPEARE.read_bytes())
    if len(text) < 2 or args.windows < 1:
        print("quality: need a text of 2 bytes or more and --windows >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or rwkv_np.DEMO_MODEL
        if args.shape:
            sys.path.insert(0, str(REPO / "tools"))
            from bench import random_model_dir
            model = tmp
            random_model_dir(args.shape, tmp)
        if model != rwkv_np.DEMO_MODEL:  # tokens, not bytes
            from rwkv_np.tokenizer import Tokenizer
            text = Tokenizer.from_pretrained(model).encode(text.decode("utf-8", errors="replace"))
        ids = windows(text, args.windows)
        rows = int4_study(ids, model) if args.int4_study else measure(ids, model, args.rwkvcpp)
    source = str(path) if args.text else f"held-out tinyshakespeare (last 10% of {path})"
    name = f"random {args.shape} model" if args.shape else str(args.model or "demo model")
    if args.json:
        print(json.dumps({"model": name, "text": source, "windows": ids.shape[0], "window": ids.shape[1],
                          "rows": rows}, indent=1))
    else:
        print(f"{name}, {source}: {ids.shape[0]} windows x {ids.shape[1]} "
              f"{'bytes' if model == rwkv_np.DEMO_MODEL else 'tokens'} = {ids.size:,} positions, "
              f"each window from an empty state\n")
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
