"""rwkv_np against Hugging Face transformers run live (skipped unless torch and transformers import).

A small random RwkvForCausalLM (L=4, rescale_every=2, odd intermediate size, every parameter
drawn at random) is saved with HF's save_pretrained, loaded by both sides from that directory,
and run in eval mode. Checked: B=1 decoding one token per call with the state (prompt prefill
then steps), a B=3 multi-token prefill, and B=3 single-token steps — which HF itself gets wrong
(its B>1 single-token step broadcasts to (B, B, V) logits), so those are compared row by row
with HF run at B=1. Tolerance as in test_hf_fixtures.py: max|Δ| / max|HF| <= 1e-5.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rwkv_np import RwkvForCausalLM  # noqa: E402

TOL = 1e-5
VOCAB = 57


def randomize_(model, rng: np.random.Generator) -> None:
    """Every parameter drawn at random, at scales where a wrong formula shows (see
    tools/make_fixtures.py): time_decay U[-6, 3], time_first U[-3, 3], time_mix U[0, 1]."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape, leaf = tuple(p.shape), name.rsplit(".", 1)[-1]
            if leaf == "time_decay":
                value = rng.uniform(-6, 3, shape)
            elif leaf == "time_first":
                value = rng.uniform(-3, 3, shape)
            elif leaf.startswith("time_mix"):
                value = rng.uniform(0, 1, shape)
            elif "ln" in name.split(".")[-2]:  # pre_ln, ln1, ln2, ln_out
                value = rng.normal(1.0 if leaf == "weight" else 0.0, 0.3, shape)
            elif name.endswith("embeddings.weight"):
                value = rng.normal(0, 1, shape)
            else:  # Linear (out, in)
                value = rng.normal(0, 2.3 / np.sqrt(shape[1]), shape)
            p.copy_(torch.from_numpy(value.astype(np.float32)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = transformers.RwkvConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4,
                                     intermediate_size=45, rescale_every=2)
    torch.manual_seed(0)
    model = transformers.RwkvForCausalLM(config)
    randomize_(model, np.random.default_rng(1234))
    directory = tmp_path_factory.mktemp("hf_live")
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf(model_dir):
    return transformers.RwkvForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=["float32", "float64"])
def ours(model_dir, request):
    return RwkvForCausalLM.from_pretrained(model_dir, dtype=request.param)


def assert_close(got, ref, what: str) -> None:
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    got = np.asarray(got)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, HF has {ref.shape}"
    err = np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max()
    assert err <= TOL, f"{what}: max|Δ|/max|HF| = {err:.3g} > {TOL:g}"


def assert_state_close(got, ref, what: str) -> None:
    for i, name in enumerate(("ffn_x", "att_x", "num", "den", "max")):
        assert_close(got[i], ref[i], f"{what} state[{i}] ({name})")


def hf_decode(hf, ids: np.ndarray, prefill: int):
    """HF at B=1: ids[:, :prefill] in one call (if prefill > 0), then one token + state per call.
    Returns the logits of every position (1, T, V) and the final state."""
    logits, state = [], None
    with torch.inference_mode():
        chunks = ([ids[:, :prefill]] if prefill else []) + [ids[:, t:t + 1] for t in range(prefill, ids.shape[1])]
        for chunk in chunks:
            out = hf(torch.from_numpy(chunk), state=state, use_cache=True)
            logits.append(out.logits)
            state = out.state
    return torch.cat(logits, dim=1), [s.clone() for s in state]


def our_decode(model, ids: np.ndarray, prefill: int):
    logits, state = [], None
    chunks = ([ids[:, :prefill]] if prefill else []) + [ids[:, t:t + 1] for t in range(prefill, ids.shape[1])]
    for chunk in chunks:
        out = model(chunk, state=state, use_cache=True)
        logits.append(out.logits)
        state = out.state
    return np.concatenate(logits, axis=1), state


@pytest.mark.parametrize("prefill", [0, 6])
def test_b1_decode_with_state(hf, ours, prefill):
    """B=1, 16 tokens: all one at a time, or 6 in one call and then one at a time."""
    ids = np.random.default_rng(7).integers(0, VOCAB, size=(1, 16))
    ref_logits, ref_state = hf_decode(hf, ids, prefill)
    logits, state = our_decode(ours, ids, prefill)
    assert_close(logits, ref_logits, f"{ours.rwkv.dtype} B=1 decode logits (prefill {prefill})")
    assert_state_close(state, ref_state, f"{ours.rwkv.dtype} B=1 decode")


def test_batched_prefill(hf, ours):
    """B=3, T=11 in one call: logits, every hidden state and the returned state."""
    ids = np.random.default_rng(8).integers(0, VOCAB, size=(3, 11))
    with torch.inference_mode():
        ref = hf(torch.from_numpy(ids), use_cache=True, output_hidden_states=True)
    out = ours(ids, use_cache=True, output_hidden_states=True)
    what = f"{ours.rwkv.dtype} B=3 prefill"
    assert_close(out.logits, ref.logits, f"{what} logits")
    for i, (h, r) in enumerate(zip(out.hidden_states, ref.hidden_states, strict=True)):
        assert_close(h, r, f"{what} hidden_states[{i}]")
    assert_state_close(out.state, ref.state, what)


def test_batched_single_token_steps_match_hf_rows(hf, ours):
    """B=3: 4 tokens in one call, then 8 single-token steps with state. Row b must equal HF run
    on row b alone (B=1) — HF's own B=3 single-token step would return (3, 3, V) logits."""
    ids = np.random.default_rng(9).integers(0, VOCAB, size=(3, 12))
    logits, state = our_decode(ours, ids, prefill=4)
    for b in range(ids.shape[0]):
        ref_logits, ref_state = hf_decode(hf, ids[b:b + 1], prefill=4)
        what = f"{ours.rwkv.dtype} B=3 steps, row {b}"
        assert_close(logits[b:b + 1], ref_logits, f"{what} logits")
        assert_state_close([s[b:b + 1] for s in state], ref_state, what)
