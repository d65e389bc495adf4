"""Write the Hugging Face fixtures that pin rwkv_np to transformers' RwkvForCausalLM / RwkvModel.

For each model in FIXTURES this builds a small random-config HF model (seeded NumPy draws copied
into the torch parameters, so the numbers do not depend on torch's RNG), saves it with HF's own
`save_pretrained` to tests/fixtures/hf/<name>/, reloads it from disk with HF in float32 and
eval mode (so `rescale_every` acts, as at inference), and stores HF's outputs in
tests/fixtures/hf/<name>/expected.safetensors:

    input_ids (B,T) int64, labels (B,T) int64 (some -100), loss ()
    logits (B,T,V)  -- or last_hidden_state (B,T,H) for a bare RwkvModel
    hidden_states.{0..L} (B,T,H), attentions.{0..L-1} (B,T,H), state.{0..4} (B,H,L)
    chunk.state.{0..4}  state after input_ids[:, :split]          (split in the metadata)
    chunk.logits        logits of input_ids[:, split:] run from that state
    chunk.final_state.{0..4}
    stepwise.logits (B,T,V), stepwise.state.{0..4}: each row fed one token at a time with state,
        as B=1 runs (HF's B>1 single-token step is broken: it returns (B,B,V) logits)
    generate.prompt_ids (1,P), generate.sequences (1,P+N): greedy HF `generate`
    f64.*  (one model) HF run after model.double(); HF's CPU WKV casts keys to float32, so this
        is only a float32-grade reference
Metadata: key "fixture", a JSON object with model_class, disk_dtype, chunk_split,
generate_min_margin, notes and the versions that made it.

Run from the repo root:  python tools/make_fixtures.py   (about 10 s; needs torch + transformers)
Running it again rewrites the same files (single-threaded torch, fixed seeds).
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import RwkvConfig, RwkvForCausalLM, RwkvModel

REPO = Path(__file__).resolve().parents[1]
BATCH, SEQ_LEN, CHUNK_SPLIT = 2, 13, 5
PROMPT_LEN, NEW_TOKENS = 5, 12


@dataclass
class Fixture:
    name: str
    seed: int
    config: dict                      # RwkvConfig keyword arguments
    bare: bool = False                # save an RwkvModel (no head, no `rwkv.` prefix)
    randomize_time: bool = True       # False: keep HF's own init of time_* and LayerNorms
    disk_dtype: str = "float32"       # dtype of the saved tensors
    max_shard_size: str | None = None
    float64: bool = False             # also store the HF float64 run (f64.*)
    notes: str = ""


FIXTURES = [
    Fixture("tiny", 1, dict(vocab_size=70, hidden_size=32, num_hidden_layers=2),
            randomize_time=False, float64=True,
            notes="default-shaped; HF's own init of time_decay/time_first/time_mix and LayerNorms"),
    Fixture("deep_rescale6", 2, dict(vocab_size=64, hidden_size=32, num_hidden_layers=8),
            notes="L=8 so the default rescale_every=6 halves x after block 5 and rescales blocks 6-7"),
    Fixture("rescale2_ffn37", 3, dict(vocab_size=50, hidden_size=32, num_hidden_layers=5,
                                      intermediate_size=37, rescale_every=2),
            notes="rescale_every=2 and an odd intermediate_size"),
    Fixture("wide_eps_norescale", 4, dict(vocab_size=90, hidden_size=40, num_hidden_layers=3,
                                          intermediate_size=100, layer_norm_epsilon=1e-2,
                                          rescale_every=0),
            notes="H=40, I=100, layer_norm_epsilon=1e-2 (ln_out keeps 1e-5), rescale disabled"),
    Fixture("tied", 5, dict(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                            tie_word_embeddings=True),
            notes="tie_word_embeddings=True: head.weight is rwkv.embeddings.weight"),
    Fixture("bare_model", 6, dict(vocab_size=50, hidden_size=32, num_hidden_layers=3), bare=True,
            notes="saved as a bare RwkvModel: keys without `rwkv.`, no head"),
    Fixture("sharded", 7, dict(vocab_size=80, hidden_size=32, num_hidden_layers=3),
            max_shard_size="60KB", notes="sharded: model.safetensors.index.json + shards"),
    Fixture("fp16", 8, dict(vocab_size=70, hidden_size=32, num_hidden_layers=3, rescale_every=2),
            disk_dtype="float16", notes="F16 on disk; expected computed in float32 from the rounded weights"),
    Fixture("bf16", 9, dict(vocab_size=70, hidden_size=32, num_hidden_layers=3),
            disk_dtype="bfloat16", notes="BF16 on disk; expected computed in float32 from the rounded weights"),
]


def randomize_(model: torch.nn.Module, rng: np.random.Generator, randomize_time: bool) -> None:
    """Overwrite every parameter with seeded draws large enough that a wrong formula shows.

    Matrices: normal, std 2.3/sqrt(fan_in) (0.4 at fan_in 32). time_decay ~ U[-6, 3] (so
    w = -exp(time_decay) spans -0.0025 .. -20), time_first ~ U[-3, 3], time_mix_* ~ U[0, 1],
    LayerNorm weight ~ N(1, 0.3), bias ~ N(0, 0.3). With randomize_time=False the time_* and
    LayerNorm parameters keep HF's own initialisation.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            leaf = name.rsplit(".", 1)[-1]
            is_ln = any(part in name for part in ("ln1.", "ln2.", "pre_ln.", "ln_out."))
            if name.endswith("embeddings.weight"):
                value = rng.normal(0.0, 1.0, shape)
            elif leaf == "time_decay":
                value = rng.uniform(-6.0, 3.0, shape) if randomize_time else None
            elif leaf == "time_first":
                value = rng.uniform(-3.0, 3.0, shape) if randomize_time else None
            elif leaf.startswith("time_mix"):
                value = rng.uniform(0.0, 1.0, shape) if randomize_time else None
            elif is_ln and leaf == "weight":
                value = rng.normal(1.0, 0.3, shape) if randomize_time else None
            elif is_ln and leaf == "bias":
                value = rng.normal(0.0, 0.3, shape) if randomize_time else None
            elif leaf == "weight" and len(shape) == 2:  # every nn.Linear, stored (out, in)
                value = rng.normal(0.0, 2.3 / np.sqrt(shape[1]), shape)
            else:
                raise RuntimeError(f"make_fixtures: no rule for parameter {name} {shape}")
            if value is not None:
                p.copy_(torch.from_numpy(value.astype(np.float32)))


def to_np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def clone_state(state: list[torch.Tensor]) -> list[torch.Tensor]:
    # HF writes into the state list in place, so keep a copy of every state we want to store.
    return [s.clone() for s in state]


def run_main(model, input_ids, labels, bare: bool, prefix: str = "") -> dict[str, np.ndarray]:
    """One full forward with every output HF offers."""
    kwargs = dict(use_cache=True, output_hidden_states=True, output_attentions=True)
    if not bare:
        kwargs["labels"] = labels
    out = model(input_ids, **kwargs)
    res = {}
    if bare:
        res["last_hidden_state"] = to_np(out.last_hidden_state)
    else:
        res["logits"] = to_np(out.logits)
        res["loss"] = to_np(out.loss).reshape(())  # a scalar
    for i, h in enumerate(out.hidden_states):
        res[f"hidden_states.{i}"] = to_np(h)
    for i, a in enumerate(out.attentions):
        res[f"attentions.{i}"] = to_np(a)
    for i, s in enumerate(out.state):
        res[f"state.{i}"] = to_np(s)
    return {prefix + k: v for k, v in res.items()}


def output_of(out, bare: bool) -> torch.Tensor:
    return out.last_hidden_state if bare else out.logits


def run_chunked(model, input_ids, bare: bool) -> dict[str, np.ndarray]:
    first = model(input_ids[:, :CHUNK_SPLIT], use_cache=True)
    state = clone_state(first.state)
    second = model(input_ids[:, CHUNK_SPLIT:], state=clone_state(state), use_cache=True)
    res = {f"chunk.state.{i}": to_np(s) for i, s in enumerate(state)}
    res["chunk.logits" if not bare else "chunk.last_hidden_state"] = to_np(output_of(second, bare))
    res.update({f"chunk.final_state.{i}": to_np(s) for i, s in enumerate(second.state)})
    return res


def run_stepwise(model, input_ids, bare: bool) -> dict[str, np.ndarray]:
    """Each row alone (B=1), one token per call with the state carried along."""
    rows, states = [], []
    for b in range(input_ids.shape[0]):
        state, steps = None, []
        for t in range(input_ids.shape[1]):
            out = model(input_ids[b:b + 1, t:t + 1], state=state, use_cache=True)
            steps.append(output_of(out, bare))
            state = out.state
        rows.append(torch.cat(steps, dim=1))
        states.append(clone_state(state))
    key = "stepwise.last_hidden_state" if bare else "stepwise.logits"
    res = {key: to_np(torch.cat(rows, dim=0))}
    for i in range(5):
        res[f"stepwise.state.{i}"] = to_np(torch.cat([s[i] for s in states], dim=0))
    return res


def run_generate(model, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], float]:
    """Greedy HF generate, checked against a hand-written greedy loop; the prompt is redrawn until
    every step's top-1 logit beats the runner-up by a margin a float32 engine cannot flip."""
    vocab = model.config.vocab_size
    for _ in range(50):
        prompt = torch.from_numpy(rng.integers(1, vocab, size=(1, PROMPT_LEN)).astype(np.int64))
        seq = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                             eos_token_id=None, pad_token_id=0, use_cache=True)
        # the same greedy loop by hand: prompt in one call, then one token + state per step
        out = model(prompt, use_cache=True)
        manual, margins = [], []
        for _ in range(NEW_TOKENS):
            last = out.logits[0, -1]
            top2 = torch.topk(last, 2).values
            margins.append(float((top2[0] - top2[1]) / last.abs().max()))
            token = int(torch.argmax(last))
            manual.append(token)
            out = model(torch.tensor([[token]]), state=out.state, use_cache=True)
        if seq.shape[1] != PROMPT_LEN + NEW_TOKENS or seq[0, PROMPT_LEN:].tolist() != manual:
            raise RuntimeError(f"HF generate {seq.tolist()} disagrees with the greedy loop {manual}")
        if min(margins) > 1e-3:
            return {"generate.prompt_ids": to_np(prompt), "generate.sequences": to_np(seq)}, min(margins)
    raise RuntimeError("make_fixtures: no prompt with a clear greedy margin in 50 tries")


def build(fx: Fixture, out_root: Path) -> None:
    rng = np.random.default_rng(fx.seed)
    config = RwkvConfig(**fx.config)
    torch.manual_seed(fx.seed)  # only HF's init of parameters randomize_ leaves alone
    model = (RwkvModel if fx.bare else RwkvForCausalLM)(config)
    randomize_(model, rng, fx.randomize_time)
    if fx.config.get("tie_word_embeddings"):
        assert model.head.weight.data_ptr() == model.rwkv.embeddings.weight.data_ptr()
    model = model.to(getattr(torch, fx.disk_dtype))

    directory = out_root / fx.name
    if directory.exists():
        shutil.rmtree(directory)
    save_kwargs = {"max_shard_size": fx.max_shard_size} if fx.max_shard_size else {}
    model.save_pretrained(directory, **save_kwargs)

    # Expected outputs come from what is on disk, reloaded by HF in float32 (eval mode).
    cls = RwkvModel if fx.bare else RwkvForCausalLM
    model = cls.from_pretrained(directory, dtype=torch.float32).eval()
    vocab = config.vocab_size
    input_ids = torch.from_numpy(rng.integers(0, vocab, size=(BATCH, SEQ_LEN)).astype(np.int64))
    labels = input_ids.clone()
    labels[0, 3] = -100
    labels[1, -2:] = -100
    expected = {"input_ids": to_np(input_ids), "labels": to_np(labels)}
    metadata = {
        "model_class": cls.__name__,
        "disk_dtype": fx.disk_dtype,
        "chunk_split": str(CHUNK_SPLIT),
        "notes": fx.notes,
        "made_by": f"tools/make_fixtures.py with transformers {transformers.__version__}, "
                   f"torch {torch.__version__}",
    }
    with torch.inference_mode():
        expected.update(run_main(model, input_ids, labels, fx.bare))
        expected.update(run_chunked(model, input_ids, fx.bare))
        expected.update(run_stepwise(model, input_ids, fx.bare))
        if not fx.bare:
            gen, margin = run_generate(model, rng)
            expected.update(gen)
            metadata["generate_min_margin"] = f"{margin:.3g}"
        if fx.float64:
            model64 = cls.from_pretrained(directory, dtype=torch.float32).double().eval()
            expected.update(run_main(model64, input_ids, labels, fx.bare, prefix="f64."))
    # One metadata key holding sorted JSON: safetensors writes several keys in hash order.
    save_file(expected, str(directory / "expected.safetensors"),
              metadata={"fixture": json.dumps(metadata, sort_keys=True)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "hf",
                        help="directory to (re)write (default: %(default)s)")
    parser.add_argument("--only", nargs="*", help="build only these fixtures")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread: reduction order, hence every bit, is reproducible
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for fx in FIXTURES:
        if args.only and fx.name not in args.only:
            continue
        build(fx, args.out)
        files = sorted(p.name for p in (args.out / fx.name).iterdir())
        size = sum(p.stat().st_size for p in (args.out / fx.name).iterdir())
        print(f"{fx.name:22s} {size / 1024:7.1f} KiB  {', '.join(files)}")
    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
