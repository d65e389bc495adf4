"""Golden outputs for other RWKV engines, and the comparison that finds where one diverges.

A bundle is a directory:
    manifest.json         what was run and how to judge it (see `write_golden`)
    golden.safetensors    float64 outputs of the reference path (reference.py)
    float32.safetensors   the same tensors from rwkv_np's float32 fast path (model.py)
Tensor names, for prompt n (T tokens, H hidden, V vocab, L layers, N new tokens), batch 1:
    prompt{n}.input_ids                  (T,) int64
    prompt{n}.blocks.{i}.attention       (T, H)  block i's attention-branch output (added to x)
    prompt{n}.blocks.{i}.feed_forward    (T, H)  its feed-forward-branch output (added to x)
    prompt{n}.blocks.{i}.output          (T, H)  x after block i (HF's hidden_states[i])
    prompt{n}.ln_out                     (T, H)  after ln_out (HF's hidden_states[L])
    prompt{n}.logits                     (T, V)
    prompt{n}.state.{name}               the state after the prompt, one tensor per name of the
                                         manifest's state_names (the generation's state.py), without
                                         the batch axis: RWKV-4 ffn_x, att_x, num, den, max (H, L);
                                         RWKV-7 att_x, ffn_x (L, C), wkv (L, heads, N, N) [value][key]
    prompt{n}.generated_ids              (N,) int64  greedy continuation
Branch outputs include HF's rescale_every factor (RWKV-4). RWKV-7 uses the same names: a layer's
"attention" is its time-mix branch, "feed_forward" its channel-mix branch, "ln_out" the final norm.

A candidate (what another engine computed) is a directory holding candidate.safetensors (or a
golden bundle), a .safetensors file with any subset of these names, a .npy of logits, or a raw
little-endian float32 file of logits (rwkv.cpp's expected-logits layout). Logits of shape (V,)
are the last position of prompt 0; a tensor of shape (H,)/(V,) where (T, H)/(T, V) is expected
is compared with the last position. compare.py does the comparing.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys

import numpy as np

from .errors import InputError, ModelFileError
from .generations import of_config
from .storage import Bfloat16

FORMAT, FORMAT_VERSION = "rwkv_np-golden", 1
MANIFEST, GOLDEN, FAST, CANDIDATE = "manifest.json", "golden.safetensors", "float32.safetensors", "candidate.safetensors"
BRANCHES = ("attention", "feed_forward", "output")  # order within a block: how x is built
TOL_FACTOR = 16       # recommended atol = TOL_FACTOR x the fp64-vs-fp32 max |diff| of that tensor,
TOL_FLOOR = 2 ** -20  # but at least TOL_FLOOR x max |golden| (one float32 ulp is 2**-23 relative)


# ---------------------------------------------------------------- computing the outputs

def _greedy(step, logits, n):  # logits (V,) of the last prompt token; step(token) -> next logits
    ids, margins = [], []
    for k in range(n):
        top2 = np.sort(logits)[-2:] if len(logits) > 1 else np.array([0.0, logits[0]])
        ids.append(int(np.argmax(logits)))
        margins.append(float(top2[1] - top2[0]))
        if k + 1 < n:
            logits = step(ids[-1])
    return ids, margins


def run_reference(params, config, ids, new_tokens, chunk=128, tick=lambda n: None):  # ids (T,)
    """{name: float64 array} for one prompt (ids (T,)) by the generation's reference.forward
    (chunks of `chunk` tokens, state carried), plus the greedy ids and top-1 minus top-2 logit
    margins."""
    gen = of_config(config)
    forward, state_names = gen.module("reference").forward, gen.module("state").NAMES
    parts, state = [], None
    for start in range(0, len(ids), chunk):
        out = forward(params, config, np.asarray(ids[start:start + chunk])[None], state)
        parts.append(out)
        state = out["state"]
        tick(min(chunk, len(ids) - start))
    cat = lambda get: np.concatenate([get(p)[0] for p in parts])  # along T
    L = config.num_hidden_layers
    t = {"logits": cat(lambda p: p["logits"]), "ln_out": cat(lambda p: p["hidden_states"][L])}
    for i in range(L):
        t[f"blocks.{i}.attention"] = cat(lambda p: p["attentions"][i])
        t[f"blocks.{i}.feed_forward"] = cat(lambda p: p["feed_forward"][i])
        t[f"blocks.{i}.output"] = cat(lambda p: p["hidden_states"][i])
    for name, s in zip(state_names, state):
        t[f"state.{name}"] = s[0]

    def step(token):
        nonlocal state
        out = forward(params, config, np.array([[token]]), state)
        state = out["state"]
        tick(1)
        return out["logits"][0, -1]
    generated, margins = _greedy(step, t["logits"][-1], new_tokens)
    return t, generated, margins


def run_fast(model, ids, new_tokens, tick=lambda n: None):  # ids (T,)
    """The same tensors from the fast model (RwkvForCausalLM), in its dtype."""
    L = model.config.num_hidden_layers
    out = model(np.asarray(ids)[None], output_hidden_states=True, output_attentions=True)
    tick(len(ids))
    t = {"logits": out.logits[0], "ln_out": out.hidden_states[L][0]}
    for i in range(L):
        t[f"blocks.{i}.attention"] = out.attentions[i][0]
        t[f"blocks.{i}.feed_forward"] = out.feed_forward[i][0]
        t[f"blocks.{i}.output"] = out.hidden_states[i][0]
    for name, s in zip(model.state_names, out.state):
        t[f"state.{name}"] = s[0]
    state = out.state

    def step(token):
        nonlocal state
        o = model(np.array([[token]]), state=state)
        state = o.state
        tick(1)
        return o.logits[0, -1]
    generated, _ = _greedy(step, t["logits"][-1], new_tokens)
    return t, generated


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_files(path: str) -> dict[str, str]:
    """{file name: sha256} of the model's files (config, weights, tokenizer)."""
    path = os.fspath(path)
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))
             if f.endswith((".json", ".safetensors", ".bin", ".pth"))] if os.path.isdir(path) else [path]
    return {os.path.basename(f): _sha256(f) for f in files if os.path.isfile(f)}


def _dtype_name(x) -> str:
    return "bfloat16" if isinstance(x, Bfloat16) else str(x.dtype)


def write_golden(model_path, prompts: list[list[int]], out_dir, new_tokens: int = 16,
                 texts: list[str] | None = None, progress: bool = True) -> dict:
    """Run every prompt (a list of token ids) through both paths, write the bundle, return the manifest."""
    from tqdm import tqdm

    from . import __version__
    from .files import check_writable
    from .formats.safetensors import write_safetensors
    from .load import load
    from .storage import as_float

    check_writable(out_dir, "out_dir", directory=True)  # before the run, not after it

    gen, config, tensors = load(model_path)
    for n, ids in enumerate(prompts):
        if len(ids) == 0:
            raise InputError(f"prompt {n}: no tokens")
        bad = [i for i in ids if not 0 <= i < config.vocab_size]
        if bad:
            raise InputError(f"prompt {n}: token id {bad[0]} is outside the vocabulary [0, {config.vocab_size})")
    fast = gen.module("model").CAUSAL_LM(config, tensors, "float32")
    params = {name: as_float(x, np.float64) for name, x in tensors.items()}  # once, not per call
    golden, float32, prompt_info = {}, {}, []
    total = 2 * sum(len(p) + max(new_tokens - 1, 0) for p in prompts)
    with tqdm(total=total, unit="tok", desc="golden", disable=not progress) as bar:
        for n, ids in enumerate(prompts):
            ref, greedy, margins = run_reference(params, config, ids, new_tokens, tick=bar.update)
            f32, gen32 = run_fast(fast, ids, new_tokens, tick=bar.update)
            for name in ref:
                golden[f"prompt{n}.{name}"] = np.ascontiguousarray(ref[name], np.float64)
                float32[f"prompt{n}.{name}"] = np.ascontiguousarray(f32[name], np.float32)
            for store, g in ((golden, greedy), (float32, gen32)):
                store[f"prompt{n}.input_ids"] = np.asarray(ids, np.int64)
                store[f"prompt{n}.generated_ids"] = np.asarray(g, np.int64)
            prompt_info.append({"name": f"prompt{n}", "input_ids": [int(i) for i in ids],
                                "text": texts[n] if texts else None, "generated_ids": greedy,
                                "generated_ids_float32": gen32, "generated_margins": margins})
    noise, tolerances = {}, {}
    for name, g in golden.items():
        if g.dtype.kind != "f":
            continue
        diff = np.abs(float32[name].astype(np.float64) - g)
        scale = float(np.abs(g).max())
        noise[name] = {"max_abs": float(diff.max()), "max_rel": float(diff.max() / scale) if scale else 0.0}
        tolerances[name] = {"atol": max(TOL_FACTOR * noise[name]["max_abs"], TOL_FLOOR * scale, 1e-30)}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "rwkv_np_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": os.path.abspath(model_path), "files_sha256": model_files(model_path),
                  "generation": gen.title, "state_names": list(fast.state_names),
                  "config": config.to_dict(), "dtypes_on_disk": sorted({_dtype_name(x) for x in tensors.values()})},
        "files": {GOLDEN: "reference path (reference.py), float64",
                  FAST: "fast path (model.py), float32"},
        "new_tokens": new_tokens, "prompts": prompt_info,
        "noise_floor": noise, "tolerances": tolerances,
        "tolerance_rule": f"|candidate - golden| <= atol per element; atol = max({TOL_FACTOR} x noise_floor "
                          f"max_abs, 2^-20 x max|golden|) of that tensor",
    }
    try:
        os.makedirs(out_dir, exist_ok=True)
        write_safetensors(os.path.join(out_dir, GOLDEN), golden, {"format": FORMAT})
        write_safetensors(os.path.join(out_dir, FAST), float32, {"format": FORMAT})
        with open(os.path.join(out_dir, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
    except OSError as e:
        raise ModelFileError(f"{os.fspath(out_dir)}: cannot write the bundle ({e.strerror or e})") from None
    return manifest




# ---------------------------------------------------------------- command line

def read_prompts(args) -> tuple[list[list[int]], list[str] | None]:
    """Token ids of --ids, or of --prompt / --prompts text through the model's tokenizer.
    --prompts FILE: one prompt per line, or a .json list of strings or of lists of ids."""
    if args.ids is not None:
        try:
            return [[int(t) for t in args.ids.replace(",", " ").split()]], None
        except ValueError:
            raise InputError(f"--ids: expected integers separated by spaces, got {args.ids!r}") from None
    if args.prompt is not None:
        texts = [args.prompt]
    else:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                texts = json.load(f) if args.prompts.endswith(".json") else [l for l in f.read().splitlines() if l]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"--prompts: cannot read {args.prompts} ({e.strerror if isinstance(e, OSError) else e})") from None
        if not isinstance(texts, list) or not texts:
            raise InputError(f"--prompts: {args.prompts} holds no prompts")
        if all(isinstance(t, list) for t in texts):
            return [[int(i) for i in t] for t in texts], None
    from .tokenizer import Tokenizer
    # the model's own, else the one rwkv_np ships for its vocab_size, else refused (as generate does)
    tokenizer = Tokenizer.from_pretrained(args.tokenizer or args.model)
    return [tokenizer.encode(str(t)) for t in texts], [str(t) for t in texts]


def add_golden(subparsers, **parser_kwargs) -> None:
    """Register `rwkv-np golden`; parser_kwargs (parents, formatter_class...) go to add_parser."""
    p = subparsers.add_parser(
        "golden", **parser_kwargs, help="write reference outputs (every layer) for other engines",
        description="Run prompts through the float64 reference path and the float32 fast path and write "
                    "a golden bundle: BUNDLE/manifest.json, golden.safetensors, float32.safetensors.")
    from .cli_options import demo_model_dir
    p.add_argument("--model", default=demo_model_dir(), metavar="PATH",
                   help="HF model directory, .safetensors, .pth, pytorch_model.bin or rwkv.cpp .bin; the "
                        "default is the demo model in rwkv_np/assets/")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="prompt text (tokenized with the model's tokenizer)")
    src.add_argument("--ids", metavar="IDS", help='token ids, e.g. "34 105 110"')
    src.add_argument("--prompts", metavar="FILE", help="one prompt per line, or a .json list of "
                                                        "strings or of id lists")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json; unset: the model's (its directory's), "
                                                       "else the one rwkv_np ships for its vocab_size")
    p.add_argument("--new-tokens", type=int, metavar="N", default=16, help="greedy tokens to generate after each prompt")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="output directory")
    p.set_defaults(run=run_golden)


def run_golden(args) -> int:
    from .cli_options import check_model_path
    from .files import check_writable

    if args.new_tokens < 0:
        raise InputError(f"--new-tokens: must be >= 0, got {args.new_tokens}")
    check_model_path(args.model)
    check_writable(args.out, "--out", directory=True)
    prompts, texts = read_prompts(args)
    manifest = write_golden(args.model, prompts, args.out, args.new_tokens, texts,
                            progress=sys.stderr.isatty())
    # A branch can be ~0 (its relative noise then means little): summarize block outputs and logits.
    worst = max(((n, v) for n, v in manifest["noise_floor"].items() if n.endswith((".output", ".logits"))),
                key=lambda kv: kv[1]["max_rel"])
    print(f"wrote {args.out}: {len(prompts)} prompt(s), {sum(map(len, prompts))} tokens, "
          f"{len(manifest['tolerances'])} tensors; largest fp32-vs-fp64 difference of a block output or "
          f"logits: {worst[1]['max_rel']:.2e} of its max |value| ({worst[0]})")
    return 0
