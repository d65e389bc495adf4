"""`compare`: judge another engine's outputs (a candidate) against a golden bundle (golden.py).

Per tensor: max |candidate - golden|, that over max |golden| ("rel"), the worst index, and the
elements beyond the manifest's atol for that tensor. The first divergence is the earliest place,
in the order the model computes -- prompt, then layer (attention branch, feed-forward branch,
block output), then position -- where any element leaves tolerance: with an RNN, an error at
layer k, position t spreads to later layers and later positions, so this is where to look.
Greedy continuations must match, except at a step where the golden's top-2 logits are within
tolerance of each other (a near-tie that rounding may flip).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError, ModelFileError
from .golden import BRANCHES, CANDIDATE, FORMAT, GOLDEN, MANIFEST

# ---------------------------------------------------------------- reading bundles and candidates

def read_bundle(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(manifest, golden float64 tensors) of a bundle directory."""
    from .formats.safetensors import read_safetensors
    path = os.fspath(path)
    file = os.path.join(path, MANIFEST)
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{file}: not a readable golden manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFileError(f"{file}: not an {FORMAT} manifest")
    return manifest, read_safetensors(os.path.join(path, GOLDEN))[0]


def read_candidate(path, vocab_size: int) -> dict[str, np.ndarray]:
    """A candidate's tensors by golden name (see the module docstring for the accepted forms)."""
    from .formats.safetensors import read_safetensors
    from .storage import Bfloat16, as_float
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (CANDIDATE, GOLDEN):
            if os.path.isfile(os.path.join(path, name)):
                return read_safetensors(os.path.join(path, name))[0]
        raise ModelFileError(f"{path}: a candidate directory needs {CANDIDATE} (or {GOLDEN})")
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such file or directory")
    if path.endswith(".safetensors"):
        return {n: as_float(x, np.float64) if isinstance(x, Bfloat16) else x  # bfloat16 bits
                for n, x in read_safetensors(path)[0].items()}
    if path.endswith(".npy"):
        try:
            return {"prompt0.logits": np.load(path, allow_pickle=False)}
        except (OSError, ValueError) as e:
            raise ModelFileError(f"{path}: not a readable .npy file ({e})") from None
    size = os.path.getsize(path)
    if size == 0 or size % (4 * vocab_size):
        raise ModelFileError(f"{path}: {size} bytes is not a whole number of float32 logit rows "
                             f"of the golden's vocab_size {vocab_size}")
    logits = np.fromfile(path, "<f4").reshape(-1, vocab_size)
    return {"prompt0.logits": logits[0] if len(logits) == 1 else logits}


# ---------------------------------------------------------------- comparing

@dataclass
class TensorResult:
    name: str
    shape: tuple
    max_abs: float           # max |candidate - golden|
    max_rel: float           # max_abs / max |golden|
    worst: tuple             # index of max_abs, position first
    atol: float
    bad: int                 # elements beyond atol
    first_bad: tuple | None  # first such index in (position, channel) order


@dataclass
class Comparison:
    results: list[TensorResult]
    missing: list[str]                       # golden tensors the candidate did not provide
    messages: list[str] = field(default_factory=list)
    generated_ok: bool = True
    first_divergence: dict | None = None     # {"prompt", "layer", "position", "tensor", ...}

    @property
    def passed(self) -> bool:
        return self.generated_ok and all(r.bad == 0 for r in self.results)


def _place(name: str, L: int, state_names: list):
    """(prompt, layer order, layer label, branch order) of a golden tensor name."""
    prompt, rest = name.split(".", 1)
    if rest.startswith("blocks."):
        _, i, branch = rest.split(".")
        return prompt, int(i), f"layer {i}", BRANCHES.index(branch)
    if rest == "ln_out":
        return prompt, L, "ln_out", 0
    if rest == "logits":
        return prompt, L + 1, "head (logits)", 0
    return prompt, L + 2, "final state", state_names.index(rest.split(".")[1])


def compare(golden_dir, candidate, atol_scale: float = 1.0) -> Comparison:
    """Judge a candidate against a golden bundle with the manifest's per-tensor atol (times atol_scale)."""
    manifest, golden = read_bundle(golden_dir)
    config = manifest["model"]["config"]
    # bundles of version 0.1 name no state arrays: theirs are RWKV-4's
    state_names = manifest["model"].get("state_names", ["ffn_x", "att_x", "num", "den", "max"])
    L = config["num_hidden_layers"]
    cand = read_candidate(candidate, config["vocab_size"])
    unknown = sorted(set(cand) - set(golden))
    if unknown:
        raise InputError(f"{candidate}: tensor {unknown[0]!r} is not in the golden bundle"
                         + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))

    def order(name):  # prompt, then the order the model computes: block 2 before block 10
        prompt, layer, _, branch = _place(name, L, state_names)
        return int(prompt.removeprefix("prompt")), layer, branch
    result = Comparison([], sorted((n for n in golden if n not in cand and golden[n].dtype.kind == "f"), key=order))
    firsts = []
    for name in sorted((n for n in cand if golden[n].dtype.kind == "f"), key=order):
        g, c = golden[name], np.asarray(cand[name])
        offset = 0
        positional = g.ndim == 2 and ".state." not in name                 # (T, H) or (T, V)
        if c.shape != g.shape and c.shape == g.shape[1:] and positional:
            g, offset = g[-1:], g.shape[0] - 1           # only the last position was given
            c = c[None]
        if c.shape != g.shape:
            raise InputError(f"{candidate}: {name} has shape {c.shape}, the golden's is {g.shape}")
        if c.dtype.kind != "f":
            raise InputError(f"{candidate}: {name} has dtype {c.dtype}, expected floating point")
        diff = np.abs(c.astype(np.float64) - g)
        diff[np.isnan(diff)] = np.inf
        atol = manifest["tolerances"][name]["atol"] * atol_scale
        worst = np.unravel_index(np.argmax(diff), diff.shape)
        bad = np.argwhere(diff > atol)
        first = tuple(int(i) for i in bad[0]) if len(bad) else None  # argwhere is row-major: position first
        shift = lambda idx: (idx[0] + offset, *idx[1:]) if positional else tuple(idx)
        scale = float(np.abs(g).max())
        r = TensorResult(name, tuple(cand[name].shape), float(diff.max()),
                         float(diff.max() / scale) if scale else (np.inf if diff.max() > 0 else 0.0),
                         shift(tuple(int(i) for i in worst)), atol, len(bad), first and shift(first))
        result.results.append(r)
        if first is not None:
            prompt, order, label, branch = _place(name, L, state_names)
            position = r.first_bad[0] if positional else None
            firsts.append(((int(prompt[6:]), order, -1 if position is None else position, branch),
                           {"prompt": prompt, "layer": label, "position": position, "tensor": name,
                            "abs_error": float(diff[first]), "atol": atol}))
    if firsts:
        result.first_divergence = min(firsts, key=lambda f: f[0])[1]
    for name in sorted(n for n in cand if n.endswith(".input_ids")):
        if not np.array_equal(np.asarray(cand[name]).reshape(-1), golden[name]):
            raise InputError(f"{candidate}: {name} differs from the golden's: the candidate ran another input")
    for info in manifest["prompts"]:
        name = f"{info['name']}.generated_ids"
        if name in cand:
            _check_generated(result, name, np.asarray(cand[name]).reshape(-1), info,
                             manifest["tolerances"][f"{info['name']}.logits"]["atol"] * atol_scale)
    return result


def _check_generated(result: Comparison, name, got, info, logits_atol):
    want = info["generated_ids"]
    if len(got) != len(want):
        result.generated_ok = False
        result.messages.append(f"{name}: {len(got)} tokens, the golden has {len(want)}")
        return
    mismatch = [k for k in range(len(want)) if got[k] != want[k]]
    if not mismatch:
        result.messages.append(f"{name}: all {len(want)} greedy tokens match")
        return
    k, margin = mismatch[0], info["generated_margins"][mismatch[0]]
    tie = margin <= 2 * logits_atol
    result.generated_ok &= tie
    result.messages.append(f"{name}: first differs at step {k} ({got[k]} vs golden {want[k]}); golden's "
                           f"top-2 logit margin there is {margin:.3g}" +
                           (", a near-tie within tolerance (not a failure)" if tie else " (FAIL)"))


# ---------------------------------------------------------------- report and command line

def format_report(result: Comparison, verbose: bool = False) -> str:
    """A table of the compared tensors (all with verbose, else failing ones and the worst few)."""
    rows = result.results if verbose else [r for r in result.results if r.bad] or \
        sorted(result.results, key=lambda r: -r.max_abs / r.atol)[:5]
    lines = [f"{'tensor':34s} {'shape':>12s} {'max|d|':>9s} {'rel':>9s} {'atol':>9s} {'worst at':>12s} bad"]
    for r in rows:
        lines.append(f"{r.name:34s} {str(r.shape):>12s} {r.max_abs:9.2e} {r.max_rel:9.2e} {r.atol:9.2e} "
                     f"{str(r.worst):>12s} {r.bad}")
    shown = "" if verbose or len(rows) == len(result.results) else f" ({len(rows)} shown; --verbose for all)"
    lines.append(f"{len(result.results)} tensors compared{shown}, {sum(r.bad > 0 for r in result.results)} "
                 f"out of tolerance; {len(result.missing)} golden tensors not in the candidate")
    lines += result.messages
    d = result.first_divergence
    if d:
        where = f"position {d['position']}" if d["position"] is not None else "after the prompt"
        lines.append(f"first divergence: {d['prompt']} {d['layer']} {where} "
                     f"({d['tensor']}: |d| {d['abs_error']:.3g} > atol {d['atol']:.3g})")
    lines.append("PASS" if result.passed else "FAIL")
    return "\n".join(lines)


def add_compare(subparsers, **parser_kwargs) -> None:
    """Register `rwkv-np compare`; parser_kwargs (parents, formatter_class...) go to add_parser."""
    p = subparsers.add_parser(
        "compare", **parser_kwargs, help="compare another engine's outputs with a golden bundle",
        description="Exit status 0 when every tensor is within the golden's recommended tolerance, "
                    "1 when not, 2 on bad input.")
    p.add_argument("golden", help="golden bundle directory (from `rwkv-np golden`)")
    p.add_argument("candidate", help="candidate bundle directory, .safetensors, .npy of logits, or a raw "
                                     "float32 logits file (rwkv.cpp's expected-logits layout)")
    p.add_argument("--atol-scale", type=float, default=1.0, metavar="X", help="multiply every recommended atol by this")
    p.add_argument("--verbose", action="store_true", help="list every compared tensor")
    p.set_defaults(run=run_compare)


def run_compare(args) -> int:
    if not args.atol_scale > 0:
        raise InputError(f"--atol-scale: must be positive, got {args.atol_scale}")
    result = compare(args.golden, args.candidate, args.atol_scale)
    print(format_report(result, args.verbose))
    return 0 if result.passed else 1


# ---------------------------------------------------------------- logits of two runs of a model

def logit_agreement(ref_logits, logits) -> dict:
    """How closely `logits` follow `ref_logits`, both (..., V), over all the (...) positions.

      max_rel_err  = max |logits - ref| / max |ref|, over every element (the project's rel error)
      top1         = fraction of positions where argmax logits == argmax ref
      mean_kl, max_kl over positions of KL(p || q) = sum_v p_v (log p_v - log q_v), in nats,
                     p = softmax(ref), q = softmax(logits), computed in float64 with
                     log softmax(z) = z - max z - log sum exp(z - max z)
      positions    = the number of positions compared
    """
    ref = np.asarray(ref_logits, np.float64)
    got = np.asarray(logits, np.float64)
    if ref.shape != got.shape or ref.ndim < 1 or ref.size == 0:
        raise InputError(f"logit_agreement: shapes {ref.shape} and {got.shape} must be equal and non-empty")
    ref, got = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    logp, logq = log_softmax(ref), log_softmax(got)
    kl = (np.exp(logp) * (logp - logq)).sum(-1)
    scale = np.abs(ref).max()
    return {"positions": len(ref),
            "max_rel_err": float(np.abs(got - ref).max() / scale) if scale else float("nan"),
            "top1": float(np.mean(ref.argmax(-1) == got.argmax(-1))),
            "mean_kl": float(kl.mean()), "max_kl": float(kl.max())}
