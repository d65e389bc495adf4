"""Write the RWKV-7 fixtures that pin rwkv_np to BlinkDL's `rwkv` pip package (class RWKV_x070).

For each model in FIXTURES this builds a random RWKV-7 state dict with BlinkDL's `.pth` names and
shapes (RWKV567_SPEC.md section 4.2a: what RWKV-LM's RWKV_Tmix_x070 / RWKV_CMix_x070 save), with
values in the ranges a trained model has (see `draw`), rounds it to float16 or bfloat16 and saves it
with torch.save as tests/fixtures/v7/<name>.pth (layer 0 keeps its unused v0/v1/v2, as BlinkDL's
checkpoints do). The package then loads that file with strategy "cpu fp32" -- it widens the rounded
values to float32 exactly, so the file alone determines the numbers -- and its outputs go to
tests/fixtures/v7/<name>.expected.safetensors (float32; ids int64):

    prompt.input_ids (T,)         T random ids
    prompt.logits_last (V,)       forward(list of T ids, None): sequence mode, last position only
    prompt.logits_full (T,V)      the same call with full_output=True: every position
    prompt.state.{0..3L-1}        the state after the prompt, in the package's layout:
                                  [3i] att_x_prev (C), [3i+1] wkv (H,N,N) [h][value][key], [3i+2] ffn_x_prev (C)
    steps.input_ids (K,)          K random ids fed one at a time from prompt.state
    steps.logits (K,V)            forward(id, state) after each of them (one-token mode)
    steps.state.{0..3L-1}         the state after the last step
    tokenwise.logits_last (V,)    the prompt fed one id at a time from a zero state (one-token mode)

Metadata: key "fixture", a JSON object with the shapes (H, N, L, C, V, F, D_w, D_a, D_v, D_g),
the disk dtype, how the package was driven (environment, strategy, calls), the versions, and the
measured agreement of sequence mode with one-token mode.

The package is driven through its public class only (no patching): RWKV_V7_ON=1 must be set before
`rwkv.model` is imported (it defines RWKV_x070 only then), RWKV_CUDA_ON=0 selects its pure-torch
sequence kernel, RWKV_JIT_ON=1 is its default (its v7 part is TorchScript either way). Its
HEAD_SIZE = 64 constant is read only by the CUDA kernel; on CPU the head size comes from
`blocks.0.att.r_k`'s shape, so N = 32 runs as it is.

Run from the repo root:  python tools/make_v7_fixtures.py   (a few seconds; needs torch + rwkv 0.8.32)
Running it again rewrites the same files (seeded NumPy draws, single-threaded torch).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROMPT_LEN, STEPS = 12, 5
STRATEGY = "cpu fp32"
# Set before rwkv.model is imported: v7 on, the CPU (pure torch) kernels, TorchScript on (default).
PACKAGE_ENV = {"RWKV_V7_ON": "1", "RWKV_CUDA_ON": "0", "RWKV_JIT_ON": "1"}
# Sequence mode vs one-token mode of the package, both float32: what "agree" means here.
AGREE_ATOL = 1e-4


@dataclass
class Fixture:
    name: str
    seed: int
    heads: int          # H
    head_size: int      # N; C = H * N
    layers: int         # L
    vocab: int          # V
    ffn: int            # F (ffn.key.weight is (F, C))
    ranks: tuple        # LoRA ranks (D_w, D_a, D_v, D_g)
    disk_dtype: str     # "float16" or "bfloat16"
    notes: str = ""

    @property
    def embd(self) -> int:
        return self.heads * self.head_size


FIXTURES = [
    Fixture("h2n32", 1, heads=2, head_size=32, layers=3, vocab=1000, ffn=256, ranks=(32, 32, 32, 32),
            disk_dtype="float16", notes="N=32 (not the official 64); F=4C; all LoRA ranks 32"),
    Fixture("h2n64", 2, heads=2, head_size=64, layers=3, vocab=1024, ffn=512, ranks=(32, 32, 32, 32),
            disk_dtype="bfloat16", notes="the official head size N=64; F=4C; all LoRA ranks 32; "
                                         "bfloat16 on disk like BlinkDL's released checkpoints"),
    Fixture("h4n32_ranks", 3, heads=4, head_size=32, layers=4, vocab=1000, ffn=200, ranks=(32, 16, 16, 48),
            disk_dtype="bfloat16", notes="unequal LoRA ranks D_w 32, D_a 16, D_v 16, D_g 48; "
                                         "F=200 (not 4C, not a multiple of 32)"),
]


def draw(fx: Fixture, rng: np.random.Generator) -> "collections.OrderedDict[str, np.ndarray]":
    """A BlinkDL-named RWKV-7 state dict (float32 arrays, `.pth` shapes), keys in the order
    RWKV-LM's model saves them. Value ranges, chosen to look like a trained model's:
      LayerNorm (ln0, ln1, ln2, ln_out, att.ln_x) weight ~ N(1, 0.15), bias ~ N(0, 0.1)
      att.x_{r,w,k,v,a,g}, ffn.x_k ~ U[0, 1]
      att.w0 ~ U[-6, 2]: w = exp(-e^-0.5 sigmoid(w0 + lora)) spreads over about (0.59, 0.9985)
      att.a0 ~ N(0, 0.8), att.v0 ~ N(0.3, 0.8)  (moderate: sigmoid(.) well inside (0, 1))
      LoRA down matrices (w1, a1, v1, g1; (C, D)) ~ N(0, 1/sqrt(C)),
      up matrices w2, a2, v2 ~ N(0, 0.5/sqrt(D)), g2 ~ N(0, 1/sqrt(D))  ((D, C))
      att.k_k ~ U[0.7, 1], att.k_a ~ U[0.8, 1.2], att.r_k (H, N) ~ N(0, 0.2)
      att.{receptance,key,value,output}.weight, ffn.key/value.weight ~ N(0, 1/sqrt(fan_in))
      emb ~ N(0, 0.5), head ~ N(0, 2/sqrt(C)) (logits spread over a few units)
    Layer 0 gets v0/v1/v2 too: BlinkDL's checkpoints carry them although the forward never reads them.
    """
    C, H, N, F = fx.embd, fx.heads, fx.head_size, fx.ffn
    d_w, d_a, d_v, d_g = fx.ranks
    sd: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()

    def normal(mean, std, *shape):
        return rng.normal(mean, std, shape)

    def uniform(lo, hi, *shape):
        return rng.uniform(lo, hi, shape)

    def layer_norm(prefix):
        sd[prefix + ".weight"] = normal(1.0, 0.15, C)
        sd[prefix + ".bias"] = normal(0.0, 0.1, C)

    sd["emb.weight"] = normal(0.0, 0.5, fx.vocab, C)
    for i in range(fx.layers):
        b = f"blocks.{i}."
        if i == 0:
            layer_norm(b + "ln0")
        layer_norm(b + "ln1")
        layer_norm(b + "ln2")
        att = b + "att."
        for m in "rwkvag":
            sd[att + "x_" + m] = uniform(0.0, 1.0, 1, 1, C)
        sd[att + "w0"] = uniform(-6.0, 2.0, 1, 1, C)
        sd[att + "w1"] = normal(0.0, C ** -0.5, C, d_w)
        sd[att + "w2"] = normal(0.0, 0.5 * d_w ** -0.5, d_w, C)
        sd[att + "a0"] = normal(0.0, 0.8, 1, 1, C)
        sd[att + "a1"] = normal(0.0, C ** -0.5, C, d_a)
        sd[att + "a2"] = normal(0.0, 0.5 * d_a ** -0.5, d_a, C)
        sd[att + "v0"] = normal(0.3, 0.8, 1, 1, C)
        sd[att + "v1"] = normal(0.0, C ** -0.5, C, d_v)
        sd[att + "v2"] = normal(0.0, 0.5 * d_v ** -0.5, d_v, C)
        sd[att + "g1"] = normal(0.0, C ** -0.5, C, d_g)
        sd[att + "g2"] = normal(0.0, d_g ** -0.5, d_g, C)
        sd[att + "k_k"] = uniform(0.7, 1.0, 1, 1, C)
        sd[att + "k_a"] = uniform(0.8, 1.2, 1, 1, C)
        sd[att + "r_k"] = normal(0.0, 0.2, H, N)
        for proj in ("receptance", "key", "value", "output"):
            sd[att + proj + ".weight"] = normal(0.0, C ** -0.5, C, C)  # (out, in)
        layer_norm(att + "ln_x")
        ffn = b + "ffn."
        sd[ffn + "x_k"] = uniform(0.0, 1.0, 1, 1, C)
        sd[ffn + "key.weight"] = normal(0.0, C ** -0.5, F, C)
        sd[ffn + "value.weight"] = normal(0.0, F ** -0.5, C, F)
    layer_norm("ln_out")
    sd["head.weight"] = normal(0.0, 2.0 * C ** -0.5, fx.vocab, C)
    return sd


def load_package():
    """Import the rwkv package's RWKV_x070 under PACKAGE_ENV (it reads the variables at import)."""
    for key, value in PACKAGE_ENV.items():
        if os.environ.get(key, value) != value:
            raise SystemExit(f"make_v7_fixtures: {key}={os.environ[key]} is set; this tool needs {value}")
        os.environ[key] = value
    from rwkv.model import RWKV_x070
    return RWKV_x070


def to_np(t) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


def run_package(model, fx: Fixture, rng: np.random.Generator) -> tuple[dict, dict]:
    """Drive the package as its users do: a list of ids is one sequence, an int is one token.
    Every state handed back in is a fresh clone, so nothing the package returns is aliased."""
    def clone(state):
        return [s.clone() for s in state]

    prompt = [int(t) for t in rng.integers(0, fx.vocab, PROMPT_LEN)]
    steps = [int(t) for t in rng.integers(0, fx.vocab, STEPS)]
    out: dict[str, np.ndarray] = {"prompt.input_ids": np.array(prompt, np.int64),
                                  "steps.input_ids": np.array(steps, np.int64)}

    logits, state = model.forward(prompt, None)                   # sequence mode, last position
    assert tuple(logits.shape) == (fx.vocab,), logits.shape
    out["prompt.logits_last"] = to_np(logits)
    prompt_state = clone(state)
    out.update({f"prompt.state.{i}": to_np(s) for i, s in enumerate(prompt_state)})
    full, full_state = model.forward(prompt, None, full_output=True)  # sequence mode, every position
    assert tuple(full.shape) == (PROMPT_LEN, fx.vocab), full.shape
    out["prompt.logits_full"] = to_np(full)

    state, rows = clone(prompt_state), []
    for token in steps:                                            # one-token mode from the prompt state
        logits, state = model.forward(token, clone(state))
        rows.append(to_np(logits))
    out["steps.logits"] = np.stack(rows)
    out.update({f"steps.state.{i}": to_np(s) for i, s in enumerate(state)})

    state = None
    for token in prompt:                                           # one-token mode from a zero state
        logits, state = model.forward(token, None if state is None else clone(state))
    out["tokenwise.logits_last"] = to_np(logits)

    def max_diff(a, b):
        return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    agreement = {
        "seq_vs_tokenwise_logits_last": max_diff(out["prompt.logits_last"], out["tokenwise.logits_last"]),
        "seq_vs_tokenwise_state": max(max_diff(to_np(a), to_np(b)) for a, b in zip(prompt_state, state)),
        "full_output_last_row_vs_logits_last": max_diff(out["prompt.logits_full"][-1], out["prompt.logits_last"]),
        "full_output_state_vs_state": max(max_diff(to_np(a), to_np(b))
                                          for a, b in zip(prompt_state, full_state)),
    }
    return out, agreement


def check(fx: Fixture, out: dict, agreement: dict) -> None:
    """The fixture is worth committing: finite, spread-out logits, the layout the README states,
    and the package's two modes agreeing."""
    C, H, N = fx.embd, fx.heads, fx.head_size
    for name, value in out.items():
        assert np.all(np.isfinite(value)), name
        if "logits" in name:
            assert value.dtype == np.float32 and np.ptp(value, axis=-1).min() > 1.0, name
    for i in range(fx.layers):
        for prefix in ("prompt", "steps"):
            assert out[f"{prefix}.state.{3 * i}"].shape == (C,)
            assert out[f"{prefix}.state.{3 * i + 1}"].shape == (H, N, N)
            assert out[f"{prefix}.state.{3 * i + 2}"].shape == (C,)
    assert len([k for k in out if k.startswith("prompt.state.")]) == 3 * fx.layers
    bad = {k: v for k, v in agreement.items() if not v <= AGREE_ATOL}
    assert not bad, f"{fx.name}: the package's sequence and one-token modes disagree: {bad}"


def build(fx: Fixture, out_dir: Path, RWKV_x070, versions: dict) -> dict:
    import torch
    from safetensors.numpy import save_file

    rng = np.random.default_rng(fx.seed)
    dtype = getattr(torch, fx.disk_dtype)
    state_dict = collections.OrderedDict(
        (k, torch.from_numpy(v.astype(np.float32)).to(dtype)) for k, v in draw(fx, rng).items())
    pth = out_dir / f"{fx.name}.pth"
    torch.save(state_dict, pth)

    model = RWKV_x070(str(pth.with_suffix("")), STRATEGY)           # it appends ".pth" itself
    assert (model.n_head, model.head_size, model.n_layer, model.n_embd) == \
        (fx.heads, fx.head_size, fx.layers, fx.embd)
    out, agreement = run_package(model, fx, rng)
    check(fx, out, agreement)

    d_w, d_a, d_v, d_g = fx.ranks
    metadata = {
        "H": fx.heads, "N": fx.head_size, "L": fx.layers, "C": fx.embd, "V": fx.vocab, "F": fx.ffn,
        "D_w": d_w, "D_a": d_a, "D_v": d_v, "D_g": d_g,
        "prompt_len": PROMPT_LEN, "steps": STEPS,
        "disk_dtype": fx.disk_dtype,
        "checkpoint": pth.name,
        "strategy": STRATEGY,
        "package_env": PACKAGE_ENV,
        "calls": "RWKV_x070(path_without_.pth, strategy); prompt: forward(list_of_ids, None) and "
                 "forward(list_of_ids, None, full_output=True); steps and tokenwise: forward(int_id, state)",
        "state_layout": "list of 3L: [3i] att_x_prev (C), [3i+1] wkv (H,N,N) [h][value][key] float32, "
                        "[3i+2] ffn_x_prev (C)",
        "agreement": {k: f"{v:.3g}" for k, v in agreement.items()},
        "notes": fx.notes,
        "made_by": "tools/make_v7_fixtures.py with " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    }
    # One metadata key holding sorted JSON: safetensors writes several keys in hash order.
    save_file(out, str(out_dir / f"{fx.name}.expected.safetensors"),
              metadata={"fixture": json.dumps(metadata, sort_keys=True)})
    return agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "v7",
                        help="directory to (re)write (default: %(default)s)")
    parser.add_argument("--only", nargs="*", help="build only these fixtures")
    args = parser.parse_args()

    RWKV_x070 = load_package()
    import importlib.metadata
    import torch
    torch.set_num_threads(1)  # one thread: reduction order, hence every bit, is reproducible
    versions = {"rwkv": importlib.metadata.version("rwkv"), "torch": torch.__version__,
                "numpy": np.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    for fx in FIXTURES:
        if args.only and fx.name not in args.only:
            continue
        agreement = build(fx, args.out, RWKV_x070, versions)
        size = sum((args.out / f).stat().st_size for f in (f"{fx.name}.pth", f"{fx.name}.expected.safetensors"))
        print(f"{fx.name:12s} {size / 1024:7.1f} KiB  " +
              "  ".join(f"{k} {v:.2g}" for k, v in agreement.items()))
    print(json.dumps(versions))


if __name__ == "__main__":
    main()
