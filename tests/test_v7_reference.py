"""The float64 RWKV-7 reference (rwkv_np/v7/reference.py) against references independent of it.

1. rwkv.cpp's own test (`tests/test_tiny_rwkv.c` at 4358e709): its tiny RWKV-7 model (C 64, L 12,
   one head of 64) fed the bytes `"in` (ids 34, 105, 110) from a zero state must give the logits in
   `expected-logits-7v0-834K.bin` (rwkv.cpp's own FP32 output, 256 little-endian float32).
2. BlinkDL's `rwkv` pip package (ChatRWKV's RWKV_x070, PyTorch, float32) on random weights with
   several heads, which the tiny model does not have; run in a subprocess so its import-time
   switches (RWKV_V7_ON...) cannot leak into other tests.
"""
import ast
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv_np.formats.rwkvcpp import read_records
from rwkv_np.load import check_tensors
from rwkv_np.v7 import names, reference

PROMPT = [34, 105, 110]  # the bytes '"', 'i', 'n' of rwkv.cpp's test


def tiny(shared_data, kind):
    header, tensors = read_records(shared_data / "rwkvcpp" / f"tiny-rwkv-7v0-834K-{kind}.bin")
    config, params = names.from_rwkvcpp(header, tensors)
    expected = np.fromfile(shared_data / "rwkvcpp" / "expected-logits-7v0-834K.bin", "<f4")
    return header, params, config, expected


def test_tiny_model_names_and_config(shared_data):
    header, params, config, _ = tiny(shared_data, "FP32")
    assert names.detect(params) and names.detect(read_records(
        shared_data / "rwkvcpp" / "tiny-rwkv-7v0-834K-FP32.bin")[1])
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == \
        (header["n_vocab"], header["n_embed"], header["n_layer"]) == (256, 64, 12)
    assert (config.num_heads, config.head_dim, config.intermediate_size) == (1, 64, 256)
    assert (config.decay_low_rank_dim, config.a_low_rank_dim, config.v_low_rank_dim,
            config.gate_low_rank_dim) == (32, 32, 32, 32)
    check_tensors(params, config, "tiny FP32")  # every name and shape, nothing left over


@pytest.mark.parametrize("kind, pinned", [("FP32", 1e-6), ("FP16", 1e-6)])
def test_tiny_model_logits_match_rwkvcpp(shared_data, kind, pinned):
    """Measured max |Δ|: FP32 3.70e-7, FP16 3.75e-7 (the reference runs the fp16 weights in float64;
    rwkv.cpp's expected file is its FP32 output). Pinned at 1e-6; rwkv.cpp's own criterion is a
    signed sum |Σ Δ| <= 1.05 * 0.001 (FP32) or 1.05 * 0.005766 (FP16), checked too."""
    _, params, config, expected = tiny(shared_data, kind)
    logits = reference.forward(params, config, [PROMPT])["logits"]
    assert logits.shape == (1, 3, 256)
    diff = logits[0, -1] - expected
    assert np.max(np.abs(diff)) < pinned
    assert abs(diff.sum()) <= 1.05 * {"FP32": 0.001, "FP16": 0.005766}[kind]


def test_tiny_model_token_by_token_equals_one_sequence(shared_data):
    """Feeding the prompt one token at a time, the state carried between calls, gives the same
    logits and state as one call: the state holds everything the next token needs."""
    _, params, config, expected = tiny(shared_data, "FP32")
    whole = reference.forward(params, config, [PROMPT])
    state = None
    for t, token in enumerate(PROMPT):
        out = reference.forward(params, config, [[token]], state)
        np.testing.assert_allclose(out["logits"][0, 0], whole["logits"][0, t], rtol=0, atol=1e-12)
        state = out["state"]
    assert np.max(np.abs(out["logits"][0, 0] - expected)) < 1e-6
    for got, want in zip(state, whole["state"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_outputs_shapes_and_the_callers_state_is_not_modified(shared_data):
    _, params, config, _ = tiny(shared_data, "FP32")
    state = reference.forward(params, config, [PROMPT[:1], PROMPT[1:2]])["state"]  # batch of 2
    before = [s.copy() for s in state]
    out = reference.forward(params, config, [PROMPT[1:], PROMPT[:2]], state)
    for s, b in zip(state, before):
        np.testing.assert_array_equal(s, b)
    L, C = config.num_hidden_layers, config.hidden_size
    assert [s.shape for s in out["state"]] == [(2, L, C), (2, L, C), (2, L, 1, 64, 64)]
    assert len(out["hidden_states"]) == L + 1 and len(out["attentions"]) == len(out["feed_forward"]) == L
    assert all(h.shape == (2, 2, C) for h in out["hidden_states"] + out["attentions"] + out["feed_forward"])
    # Each block's output is its input plus its two branches.
    np.testing.assert_allclose(out["hidden_states"][1], out["hidden_states"][0] + out["attentions"][1]
                               + out["feed_forward"][1], rtol=0, atol=1e-12)


def random_blinkdl(C=32, H=4, L=3, F=96, V=50, D=(16, 8, 8, 16), seed=0) -> dict:
    """A BlinkDL RWKV-7 `.pth` state dict (RWKV-LM `RWKV_Tmix_x070` names and shapes, written out
    from the spec, not from names.py), random in the ranges trained models have."""
    rng = np.random.default_rng(seed)
    N = C // H
    Dw, Da, Dv, Dg = D
    n = lambda *shape, s=1.0: rng.normal(0, s, shape)  # noqa: E731
    sd = {"emb.weight": n(V, C), "blocks.0.ln0.weight": 1 + n(C, s=0.1), "blocks.0.ln0.bias": n(C, s=0.1),
          "ln_out.weight": 1 + n(C, s=0.1), "ln_out.bias": n(C, s=0.1), "head.weight": n(V, C, s=C ** -0.5)}
    for i in range(L):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2", "att.ln_x"):
            sd[f"{b}{ln}.weight"], sd[f"{b}{ln}.bias"] = 1 + n(C, s=0.1), n(C, s=0.1)
        for m in "rwkvag":
            sd[f"{b}att.x_{m}"] = rng.uniform(0, 1, (1, 1, C))
        for kind, D_ in zip("wav", (Dw, Da, Dv)):
            sd[f"{b}att.{kind}0"] = n(1, 1, C)
            sd[f"{b}att.{kind}1"], sd[f"{b}att.{kind}2"] = n(C, D_, s=0.3), n(D_, C, s=0.3)
        sd[f"{b}att.g1"], sd[f"{b}att.g2"] = n(C, Dg, s=0.3), n(Dg, C, s=0.3)
        sd[f"{b}att.k_k"], sd[f"{b}att.k_a"] = rng.uniform(0.5, 1, (1, 1, C)), rng.uniform(0.5, 1.5, (1, 1, C))
        sd[f"{b}att.r_k"] = n(H, N, s=0.5)
        for proj in ("receptance", "key", "value", "output"):
            sd[f"{b}att.{proj}.weight"] = n(C, C, s=C ** -0.5)
        sd[f"{b}ffn.x_k"] = rng.uniform(0, 1, (1, 1, C))
        sd[f"{b}ffn.key.weight"], sd[f"{b}ffn.value.weight"] = n(F, C, s=C ** -0.5), n(C, F, s=F ** -0.5)
    return {k: v.astype(np.float32) for k, v in sd.items()}


CHATRWKV = """
import os, sys, json
os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="0", RWKV_CUDA_ON="0")
import numpy as np, torch
from rwkv.model import RWKV
model = RWKV(model=sys.argv[1], strategy="cpu fp32")
ids = json.loads(sys.argv[2])
out, state = model.forward(ids, None, full_output=True)       # one sequence (forward_seq)
last = None
for t in ids:                                                  # token by token (forward_one)
    last, state = model.forward([t], state if last is not None else None)
np.save(sys.argv[3], np.stack([out.numpy()[-1], last.numpy()]))
np.save(sys.argv[4], np.stack([s.numpy() for s in state[1::3]]))   # WKV state of each layer (H, N, N)
"""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("rwkv") is None,
                    reason="needs torch and BlinkDL's rwkv package (pip install rwkv)")
def test_multi_head_model_matches_blinkdl_rwkv_package(tmp_path):
    """4 heads of 8, 3 layers, random weights: rwkv_np's float64 reference against BlinkDL's own
    implementation (float32), logits after 7 tokens as one sequence and token by token, and the WKV
    state in the same [value][key] orientation. Measured max |Δ|: logits 8.7e-7 (sequence) and
    6.1e-7 (token by token) of max |logit| 2.6; WKV state 1.6e-6 of 3.8 (ChatRWKV runs float32 and
    the rounded e^{-1/2} = 0.606531). Bound: 1e-5 of the largest value."""
    import torch

    sd = random_blinkdl()
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "m.pth")
    ids = [3, 17, 0, 42, 42, 9, 31]
    subprocess.run([sys.executable, "-c", CHATRWKV, str(tmp_path / "m"), json.dumps(ids),
                    str(tmp_path / "logits.npy"), str(tmp_path / "wkv.npy")],
                   check=True, capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    theirs, their_wkv = np.load(tmp_path / "logits.npy"), np.load(tmp_path / "wkv.npy")

    params = names.from_blinkdl(sd)
    config = names.infer_config(params)
    assert (config.num_heads, config.head_dim, config.v_low_rank_dim) == (4, 8, 8)
    check_tensors(params, config, "random .pth")
    out = reference.forward(params, config, [ids])
    scale = np.max(np.abs(theirs))
    assert np.max(np.abs(out["logits"][0, -1] - theirs[0])) < 1e-5 * scale
    assert np.max(np.abs(out["logits"][0, -1] - theirs[1])) < 1e-5 * scale
    wkv = out["state"][2][0]                                      # (L, H, N, N)
    assert np.max(np.abs(wkv - their_wkv)) < 1e-5 * np.max(np.abs(their_wkv))


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v7"


@pytest.mark.parametrize("name", ["h2n32", "h2n64", "h4n32_ranks"])
def test_blinkdl_package_fixtures(name):
    """tests/fixtures/v7 (tools/make_v7_fixtures.py): BlinkDL's rwkv package on random float16 /
    bfloat16 .pth models with 2-4 heads of 32 or 64 and unequal LoRA ranks, its outputs saved. The
    package runs float32 with the rounded e^{-1/2}; its sequence and one-token modes differ by up to
    5.2e-6. Measured here: logits after the prompt within 9.9e-6, the state 5.4e-6, the logits of
    the five steps after it (from rwkv_np's own state) 6.9e-6. Bound 2e-5, as the fixtures' README."""
    if not (FIXTURES / f"{name}.pth").exists():
        pytest.skip(f"{FIXTURES / name}.pth is absent")
    from rwkv_np.formats.pth import read_torch_zip
    from rwkv_np.formats.safetensors import read_safetensors
    from rwkv_np.storage import as_float

    params = {k: as_float(v, np.float64) for k, v in names.from_blinkdl(read_torch_zip(FIXTURES / f"{name}.pth")).items()}
    config = names.infer_config(params)
    check_tensors(params, config, name)
    want, _ = read_safetensors(str(FIXTURES / f"{name}.expected.safetensors"))
    out = reference.forward(params, config, want["prompt.input_ids"][None])
    assert np.max(np.abs(out["logits"][0] - want["prompt.logits_full"])) < 2e-5
    att_x, ffn_x, wkv = out["state"]
    for i in range(config.num_hidden_layers):   # the package's state: [3i] att_x, [3i+1] wkv, [3i+2] ffn_x
        for ours, key in ((att_x[0, i], 3 * i), (wkv[0, i], 3 * i + 1), (ffn_x[0, i], 3 * i + 2)):
            assert np.max(np.abs(ours - want[f"prompt.state.{key}"])) < 2e-5
    state = out["state"]
    for t, token in enumerate(want["steps.input_ids"]):
        step = reference.forward(params, config, [[token]], state)
        assert np.max(np.abs(step["logits"][0, 0] - want["steps.logits"][t])) < 2e-5
        state = step["state"]


def test_reference_path_imports_numpy_only():
    """reference.py and the modules it reaches are readable without Numba: walk their imports."""
    root = Path(reference.__file__).resolve().parents[1]      # rwkv_np/
    seen, todo = set(), [root / "v7" / "reference.py"]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                mods = [(0, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [(node.level, node.module or "")]
            else:
                continue
            for level, mod in mods:
                if level == 0:
                    top = mod.split(".")[0]
                    assert top == "numpy" or top in sys.stdlib_module_names, f"{file.name} imports {mod}"
                else:
                    base = file.parent
                    for _ in range(level - 1):
                        base = base.parent
                    target = base.joinpath(*mod.split(".")) if mod else base
                    todo.append(target.with_suffix(".py") if target.with_suffix(".py").exists()
                                else target / "__init__.py")
    assert {f.name for f in seen} >= {"reference.py", "wkv.py", "state.py", "config.py"}


def test_lm_head_tied_to_the_embeddings(shared_data):
    """tie_word_embeddings: the logits are the final x times the embeddings (lm_head.weight unused)."""
    _, params, config, _ = tiny(shared_data, "FP32")
    tied = {k: v for k, v in params.items() if k != "lm_head.weight"}
    out = reference.forward(tied, dataclasses.replace(config, tie_word_embeddings=True), [PROMPT])
    x = out["hidden_states"][-1]
    np.testing.assert_allclose(out["logits"], x @ params["model.embeddings.weight"].astype(np.float64).T,
                               rtol=1e-12, atol=1e-12)


def test_reference_refuses_raw_bfloat16_bits(shared_data):
    from rwkv_np.errors import InputError

    _, params, config, _ = tiny(shared_data, "FP32")
    bits = {**params, "model.norm.weight": np.zeros(64, np.uint16)}
    with pytest.raises(InputError, match="model.norm.weight: the reference reads float arrays"):
        reference.forward(bits, config, [PROMPT])
