"""Write the RWKV-5 / RWKV-6 fixtures that pin rwkv_np to BlinkDL's `rwkv` pip package (class RWKV).

For each model in FIXTURES this draws a random state dict with BlinkDL's `.pth` names and shapes
(RWKV567_SPEC.md 2.3a for RWKV-5.1 / 5.2, 3.2a for RWKV-6: what RWKV-LM's RWKV_Tmix_x052 /
RWKV_Tmix_x060 and their channel mixes save), values in the ranges a trained model has (`draw`),
rounds it to float16 or bfloat16 and saves it with torch.save as tests/fixtures/<v5|v6>/<name>.pth.

The package then runs the same values with strategy "cpu fp32": it is handed a float32 copy of
that state dict (a temporary .pth), because its class RWKV applies ln0 to the embedding in the
file's own dtype before widening (a bfloat16 file would give it LN(emb) rounded to bfloat16, an
error of ~1e-3 that is the package's loading, not the model). Its outputs go to
tests/fixtures/<v5|v6>/<name>.expected.safetensors (float32; ids int64):

    prompt.input_ids (T,)         T random ids
    prompt.logits_last (V,)       forward(list of T ids, None): sequence mode, last position only
    prompt.logits_full (T, V)     the same call with full_output=True: every position
    prompt.state.{0..3L-1}        the state after the prompt, in the package's layout:
                                  [3i] att_x (C), [3i+1] wkv (H, N, N) [h][key][value], [3i+2] ffn_x (C)
    steps.input_ids (K,)          K random ids fed one at a time from prompt.state
    steps.logits (K, V)           forward([id], state) after each (one-token mode)
    steps.state.{0..3L-1}         the state after the last step
    tokenwise.logits_last (V,)    the prompt fed one id at a time from a zero state

Metadata key "fixture": a JSON object with the shapes, variant, disk dtype, how the package was
driven, versions, and the measured agreement of its sequence and one-token modes.

RWKV_V7_ON must not be "1" (the package then replaces class RWKV by RWKV_x070); RWKV_CUDA_ON=0
selects its pure-torch kernels; RWKV_JIT_ON=1 is its default.

Run from the repo root:  python tools/make_v56_fixtures.py   (seconds; needs torch + rwkv 0.8.32)
Running it again rewrites the same files (seeded NumPy draws, single-threaded torch).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROMPT_LEN, STEPS = 12, 5
STRATEGY = "cpu fp32"
PACKAGE_ENV = {"RWKV_V7_ON": "0", "RWKV_CUDA_ON": "0", "RWKV_JIT_ON": "1"}
AGREE_ATOL = 1e-4      # the package's sequence mode vs its one-token mode, both float32


@dataclass
class Fixture:
    name: str
    generation: str     # "v5" or "v6": the fixtures' folder
    variant: str        # "5.1", "5.2" or "6.0"
    seed: int
    heads: int          # H
    head_size: int      # N; C = H N
    layers: int         # L
    vocab: int          # V
    ffn: int            # F (ffn.key.weight is (F, C))
    disk_dtype: str     # "float16" or "bfloat16"
    ranks: tuple = ()   # RWKV-6: (D_mix, D_decay)
    notes: str = ""

    @property
    def embd(self) -> int:
        return self.heads * self.head_size


FIXTURES = [
    Fixture("v5_2_h2n32", "v5", "5.2", 1, heads=2, head_size=32, layers=3, vocab=1000, ffn=224, disk_dtype="float16",
            notes="RWKV-5.2 (every released Eagle model's layout); F = 3.5 C"),
    Fixture("v5_1_h4n16", "v5", "5.1", 2, heads=4, head_size=16, layers=3, vocab=500, ffn=128, disk_dtype="bfloat16",
            notes="RWKV-5.1: gate, decay and time_first per head (u = exp(time_first)); F = 2 C; V 500 "
                  "to keep the fixtures under 2 MB"),
    Fixture("v6_h2n32", "v6", "6.0", 3, heads=2, head_size=32, layers=3, vocab=1000, ffn=224, disk_dtype="bfloat16",
            ranks=(16, 48), notes="RWKV-6 with unequal LoRA ranks D_mix 16, D_decay 48; time_decay up to 3 "
                                  "so some decays underflow to 0 in float32"),
]


def draw(fx: Fixture, rng: np.random.Generator) -> collections.OrderedDict:
    """A BlinkDL-named state dict (float32 arrays, `.pth` shapes), keys in RWKV-LM's order. Ranges:
      LayerNorm (ln0, ln1, ln2, ln_out, att.ln_x) weight ~ N(1, 0.15), bias ~ N(0, 0.1)
      time_mix_* / time_maa_* ~ U[0, 1]
      5.2 time_decay (H, N) ~ U[-6, 1] (decays exp(-exp(.)) from 0.066 to 0.9975), time_faaaa ~ N(0, 0.5)
      5.1 time_decay (H,) ~ U[-6, 1], time_first (H,) ~ U[-1.5, 1] (u = exp(.) from 0.22 to 2.7)
      6.0 time_decay (1, 1, C) ~ U[-6, 3], time_faaaa (H, N) ~ N(0, 0.5); LoRA down matrices
          (time_maa_w1, time_decay_w1) ~ N(0, 1/sqrt(C)), up matrices ~ N(0, 0.5/sqrt(D))
      projections and FFN ~ N(0, 1/sqrt(fan_in)); emb ~ N(0, 0.5); head ~ N(0, 2/sqrt(C))
    """
    C, H, N, F = fx.embd, fx.heads, fx.head_size, fx.ffn
    sd = collections.OrderedDict()
    normal = lambda mean, std, *shape: rng.normal(mean, std, shape)  # noqa: E731
    uniform = lambda lo, hi, *shape: rng.uniform(lo, hi, shape)  # noqa: E731

    def layer_norm(prefix):
        sd[prefix + ".weight"], sd[prefix + ".bias"] = normal(1.0, 0.15, C), normal(0.0, 0.1, C)

    sd["emb.weight"] = normal(0.0, 0.5, fx.vocab, C)
    for i in range(fx.layers):
        b, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        if i == 0:
            layer_norm(b + "ln0")
        layer_norm(b + "ln1")
        layer_norm(b + "ln2")
        if fx.variant == "6.0":
            D_mix, D_decay = fx.ranks
            for m in "xwkvrg":
                sd[att + "time_maa_" + m] = uniform(0.0, 1.0, 1, 1, C)
            sd[att + "time_maa_w1"] = normal(0.0, C ** -0.5, C, 5 * D_mix)
            sd[att + "time_maa_w2"] = normal(0.0, 0.5 * D_mix ** -0.5, 5, D_mix, C)
            sd[att + "time_decay"] = uniform(-6.0, 3.0, 1, 1, C)
            sd[att + "time_decay_w1"] = normal(0.0, C ** -0.5, C, D_decay)
            sd[att + "time_decay_w2"] = normal(0.0, 0.5 * D_decay ** -0.5, D_decay, C)
            sd[att + "time_faaaa"] = normal(0.0, 0.5, H, N)
        else:
            for m in "kvrg":
                sd[att + "time_mix_" + m] = uniform(0.0, 1.0, 1, 1, C)
            if fx.variant == "5.2":
                sd[att + "time_decay"], sd[att + "time_faaaa"] = uniform(-6.0, 1.0, H, N), normal(0.0, 0.5, H, N)
            else:
                sd[att + "time_decay"], sd[att + "time_first"] = uniform(-6.0, 1.0, H), uniform(-1.5, 1.0, H)
        for proj in ("receptance", "key", "value", "output", "gate"):
            sd[att + proj + ".weight"] = normal(0.0, C ** -0.5, C, C)
        layer_norm(att + "ln_x")
        if fx.variant == "6.0":
            sd[ffn + "time_maa_k"], sd[ffn + "time_maa_r"] = uniform(0.0, 1.0, 1, 1, C), uniform(0.0, 1.0, 1, 1, C)
        else:
            sd[ffn + "time_mix_k"], sd[ffn + "time_mix_r"] = uniform(0.0, 1.0, 1, 1, C), uniform(0.0, 1.0, 1, 1, C)
        sd[ffn + "key.weight"] = normal(0.0, C ** -0.5, F, C)
        sd[ffn + "receptance.weight"] = normal(0.0, C ** -0.5, C, C)
        sd[ffn + "value.weight"] = normal(0.0, F ** -0.5, C, F)
    layer_norm("ln_out")
    sd["head.weight"] = normal(0.0, 2.0 * C ** -0.5, fx.vocab, C)
    return sd


def load_package():
    """Import the package's class RWKV under PACKAGE_ENV (it reads the variables at import)."""
    for key, value in PACKAGE_ENV.items():
        if os.environ.get(key, value) != value:
            raise SystemExit(f"make_v56_fixtures: {key}={os.environ[key]} is set; this tool needs {value}")
        os.environ[key] = value
    from rwkv.model import RWKV
    return RWKV


def to_np(t) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


def run_package(model, fx: Fixture, rng: np.random.Generator) -> tuple[dict, dict]:
    """Drive the package as its users do: forward(list of ids, state); every state handed back in
    is a fresh clone (the package writes into the list it is given)."""
    def clone(state):
        return [s.clone() for s in state]

    prompt = [int(t) for t in rng.integers(0, fx.vocab, PROMPT_LEN)]
    steps = [int(t) for t in rng.integers(0, fx.vocab, STEPS)]
    out = {"prompt.input_ids": np.array(prompt, np.int64), "steps.input_ids": np.array(steps, np.int64)}
    logits, state = model.forward(prompt, None)                           # sequence mode, last position
    out["prompt.logits_last"] = to_np(logits)
    prompt_state = clone(state)
    out.update({f"prompt.state.{i}": to_np(s) for i, s in enumerate(prompt_state)})
    full, full_state = model.forward(prompt, None, full_output=True)      # every position
    out["prompt.logits_full"] = to_np(full)
    state, rows = clone(prompt_state), []
    for token in steps:                                                   # one-token mode
        logits, state = model.forward([token], clone(state))
        rows.append(to_np(logits))
    out["steps.logits"] = np.stack(rows)
    out.update({f"steps.state.{i}": to_np(s) for i, s in enumerate(state)})
    state = None
    for token in prompt:                                                  # one-token mode from zero
        logits, state = model.forward([token], None if state is None else clone(state))
    out["tokenwise.logits_last"] = to_np(logits)

    def max_diff(a, b):
        return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    agreement = {
        "seq_vs_tokenwise_logits_last": max_diff(out["prompt.logits_last"], out["tokenwise.logits_last"]),
        "seq_vs_tokenwise_state": max(max_diff(to_np(a), to_np(b)) for a, b in zip(prompt_state, state)),
        "full_output_last_row_vs_logits_last": max_diff(out["prompt.logits_full"][-1], out["prompt.logits_last"]),
        "full_output_state_vs_state": max(max_diff(to_np(a), to_np(b)) for a, b in zip(prompt_state, full_state)),
    }
    return out, agreement


def check(fx: Fixture, out: dict, agreement: dict) -> None:
    """Worth committing: finite, spread-out logits, the layout the docstring states, and the
    package's two modes agreeing."""
    C, H, N = fx.embd, fx.heads, fx.head_size
    for name, value in out.items():
        assert np.all(np.isfinite(value)), name
        if "logits" in name:
            assert value.dtype == np.float32 and np.ptp(value, axis=-1).min() > 1.0, name
    for i in range(fx.layers):
        for prefix in ("prompt", "steps"):
            shapes = [out[f"{prefix}.state.{3 * i + j}"].shape for j in range(3)]
            assert shapes == [(C,), (H, N, N), (C,)], shapes
    bad = {k: v for k, v in agreement.items() if not v <= AGREE_ATOL}
    assert not bad, f"{fx.name}: the package's sequence and one-token modes disagree: {bad}"


def build(fx: Fixture, out_dir: Path, RWKV, versions: dict) -> dict:
    import torch
    from safetensors.numpy import save_file

    rng = np.random.default_rng(fx.seed)
    dtype = getattr(torch, fx.disk_dtype)
    state_dict = collections.OrderedDict(
        (k, torch.from_numpy(v.astype(np.float32)).to(dtype)) for k, v in draw(fx, rng).items())
    folder = out_dir / fx.generation
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, folder / f"{fx.name}.pth")
    with tempfile.TemporaryDirectory() as tmp:                             # the same values, float32
        torch.save(collections.OrderedDict((k, v.float()) for k, v in state_dict.items()), Path(tmp) / "m.pth")
        model = RWKV(str(Path(tmp) / "m"), STRATEGY, verbose=False)        # it appends ".pth" itself
    assert f"{model.version:.1f}" == fx.variant, (model.version, fx.variant)
    out, agreement = run_package(model, fx, rng)
    check(fx, out, agreement)
    metadata = {
        "H": fx.heads, "N": fx.head_size, "L": fx.layers, "C": fx.embd, "V": fx.vocab, "F": fx.ffn,
        "variant": fx.variant, "ranks_D_mix_D_decay": list(fx.ranks), "prompt_len": PROMPT_LEN, "steps": STEPS,
        "disk_dtype": fx.disk_dtype, "checkpoint": f"{fx.name}.pth", "strategy": STRATEGY, "package_env": PACKAGE_ENV,
        "calls": "RWKV(float32 copy of the checkpoint, strategy); prompt: forward(list_of_ids, None) and "
                 "forward(list_of_ids, None, full_output=True); steps and tokenwise: forward([id], state)",
        "state_layout": "list of 3L: [3i] att_x (C), [3i+1] wkv (H,N,N) [h][key][value] float32, [3i+2] ffn_x (C)",
        "group_norm_eps": "64e-5 (the package's, for every v5/v6 variant)",
        "agreement": {k: f"{v:.3g}" for k, v in agreement.items()}, "notes": fx.notes,
        "made_by": "tools/make_v56_fixtures.py with " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    }
    save_file(out, str(folder / f"{fx.name}.expected.safetensors"),
              metadata={"fixture": json.dumps(metadata, sort_keys=True)})
    return agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures",
                        help="directory holding v5/ and v6/ (default: %(default)s)")
    parser.add_argument("--only", nargs="*", help="build only these fixtures")
    args = parser.parse_args()

    RWKV = load_package()
    import importlib.metadata

    import torch
    torch.set_num_threads(1)  # one thread: reduction order, hence every bit, is reproducible
    versions = {"rwkv": importlib.metadata.version("rwkv"), "torch": torch.__version__, "numpy": np.__version__}
    for fx in FIXTURES:
        if args.only and fx.name not in args.only:
            continue
        agreement = build(fx, args.out, RWKV, versions)
        folder = args.out / fx.generation
        size = sum((folder / f).stat().st_size for f in (f"{fx.name}.pth", f"{fx.name}.expected.safetensors"))
        print(f"{fx.name:12s} {size / 1024:7.1f} KiB  " + "  ".join(f"{k} {v:.2g}" for k, v in agreement.items()))
    print(json.dumps(versions))


if __name__ == "__main__":
    main()
