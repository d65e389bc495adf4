"""The float64 RWKV-5 reference (rwkv_np/v5/reference.py) against references independent of it.

1. rwkv.cpp's own test (`tests/test_tiny_rwkv.c` at 4358e709): its tiny RWKV-5.0 ("5v1") and
   RWKV-5.2 ("5v2") models (C 64, L 12, 8 heads of 8, F 256) fed the bytes `"in` (ids 34, 105,
   110) from a zero state must give the logits in `expected-logits-5v1-730K.bin` /
   `expected-logits-5v2-730K.bin` (rwkv.cpp's own FP32 outputs, 256 little-endian float32). Those
   files follow rwkv.cpp's group-norm eps 1e-5 (names.from_rwkvcpp sets it; spec section 2.5).
2. BlinkDL's `rwkv` pip package on random 5.2 weights: tests/test_v56_blinkdl.py.
"""
import ast
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv_np.errors import InputError
from rwkv_np.formats.rwkvcpp import read_records
from rwkv_np.load import check_tensors
from rwkv_np.v5 import names, reference

PROMPT = [34, 105, 110]  # the bytes '"', 'i', 'n' of rwkv.cpp's test
FILES = {"5v1": "tiny-rwkv-5v1-730K-{}.bin", "5v2": "tiny-rwkv-5v2-730K-{}.bin"}


def tiny(shared_data, version, kind="FP32"):
    header, tensors = read_records(shared_data / "rwkvcpp" / FILES[version].format(kind))
    config, params = names.from_rwkvcpp(header, tensors)
    expected = np.fromfile(shared_data / "rwkvcpp" / f"expected-logits-{version}-730K.bin", "<f4")
    return header, params, config, expected


@pytest.mark.parametrize("version, variant", [("5v1", "5.0"), ("5v2", "5.2")])
def test_tiny_model_names_and_config(shared_data, version, variant):
    header, params, config, _ = tiny(shared_data, version)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == \
        (header["n_vocab"], header["n_embed"], header["n_layer"]) == (256, 64, 12)
    assert (config.variant, config.num_heads, config.head_size, config.intermediate_size) == (variant, 8, 8, 256)
    assert config.group_norm_eps == 1e-5
    check_tensors(params, config, version)  # every name and shape, nothing left over


@pytest.mark.parametrize("version", ["5v1", "5v2"])
def test_tiny_model_logits_match_rwkvcpp(shared_data, version):
    """Measured max |Δ|: 5v1 1.62e-6, 5v2 3.06e-6 (signed sums +4.6e-6, +2.4e-5); the bound the
    issue sets is 1e-5, and rwkv.cpp's own criterion |Σ Δ| <= 1.05 * 0.001 holds too. With
    BlinkDL's eps 64e-5 instead of rwkv.cpp's 1e-5 the same files miss by about 1 (checked below):
    the eps is not a detail on these small-variance tiny models."""
    _, params, config, expected = tiny(shared_data, version)
    logits = reference.forward(params, config, [PROMPT])["logits"]
    assert logits.shape == (1, 3, 256)
    diff = logits[0, -1] - expected
    assert np.max(np.abs(diff)) < 1e-5
    assert abs(diff.sum()) <= 1.05 * 0.001
    blinkdl_eps = reference.forward(params, dataclasses.replace(config, group_norm_eps=64e-5), [PROMPT])
    assert np.max(np.abs(blinkdl_eps["logits"][0, -1] - expected)) > 0.5


def test_tiny_fp16_model_within_rwkvcpp_bound(shared_data):
    """The 5v2 FP16 file (matrices float16, vectors float32) run in float64 against rwkv.cpp's FP32
    logits: measured max |Δ| 2.52e-3, signed sum +0.103. rwkv.cpp's bound for this file
    (test_tiny_rwkv.c, spec 7.2) is |Σ Δ| <= 1.05 * 0.455912; the max |Δ| is pinned at 4e-3."""
    _, params, config, expected = tiny(shared_data, "5v2", "FP16")
    diff = reference.forward(params, config, [PROMPT])["logits"][0, -1] - expected
    assert abs(diff.sum()) <= 1.05 * 0.455912
    assert 1e-3 < np.max(np.abs(diff)) < 4e-3


@pytest.mark.parametrize("version", ["5v1", "5v2"])
def test_tiny_model_token_by_token_equals_one_sequence(shared_data, version):
    """Feeding the prompt one token at a time, the state carried between calls, gives the same
    logits and state as one call: the state holds everything the next token needs."""
    _, params, config, expected = tiny(shared_data, version)
    whole = reference.forward(params, config, [PROMPT])
    state = None
    for t, token in enumerate(PROMPT):
        out = reference.forward(params, config, [[token]], state)
        np.testing.assert_allclose(out["logits"][0, 0], whole["logits"][0, t], rtol=0, atol=1e-12)
        state = out["state"]
    assert np.max(np.abs(out["logits"][0, 0] - expected)) < 1e-5
    for got, want in zip(state, whole["state"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_outputs_shapes_and_the_callers_state_is_not_modified(shared_data):
    _, params, config, _ = tiny(shared_data, "5v2")
    state = reference.forward(params, config, [PROMPT[:1], PROMPT[1:2]])["state"]  # batch of 2
    before = [s.copy() for s in state]
    out = reference.forward(params, config, [PROMPT[1:], PROMPT[:2]], state)
    for s, b in zip(state, before):
        np.testing.assert_array_equal(s, b)
    L, C = config.num_hidden_layers, config.hidden_size
    assert [s.shape for s in out["state"]] == [(2, L, C), (2, L, C), (2, L, 8, 8, 8)]
    assert len(out["hidden_states"]) == L + 1 and len(out["attentions"]) == len(out["feed_forward"]) == L
    np.testing.assert_allclose(out["hidden_states"][1], out["hidden_states"][0] + out["attentions"][1]
                               + out["feed_forward"][1], rtol=0, atol=1e-12)


def test_one_head_by_hand():
    """5.2 time mix of one token from a zero state, N = 1: y = r u k v (S is 0), normed per head of
    one channel to its bias, so the output is the ln_x bias times silu(g) through W_o."""
    one = lambda x: np.full((1, 1), x)  # noqa: E731
    x = np.full((1, 1, 1), 0.5)
    out, last, S = reference.time_mix(
        x, np.zeros((1, 1)), np.zeros((1, 1, 1, 1)), eps=1e-5, time_mix_key=one(1.0)[None],
        time_mix_value=one(1.0)[None], time_mix_receptance=one(1.0)[None], time_mix_gate=one(1.0)[None],
        time_decay=one(0.0), time_faaaa=one(3.0), key={"weight": one(2.0)}, value={"weight": one(4.0)},
        receptance={"weight": one(6.0)}, gate={"weight": one(2.0)}, output={"weight": one(10.0)},
        ln_x={"weight": np.ones(1), "bias": np.full(1, 0.25)})
    # k = 1, v = 2, S' = w*0 + k v = 2; g = silu(1) = 1/(1+e^-1); out = 10 * 0.25 * silu(1)
    assert S[0, 0, 0, 0] == pytest.approx(2.0)
    assert out[0, 0, 0] == pytest.approx(10 * 0.25 / (1 + np.exp(-1.0)))
    np.testing.assert_array_equal(last, x[:, -1])


def test_reference_path_imports_numpy_only():
    """reference.py and the modules it reaches are readable without Numba: walk their imports."""
    root = Path(reference.__file__).resolve().parents[1]      # rwkv_np/
    seen, todo = set(), [root / "v5" / "reference.py"]
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
    assert {f.name for f in seen} >= {"reference.py", "wkv.py", "state.py", "config.py", "nn.py"}


def test_reference_refuses_raw_bfloat16_bits(shared_data):
    _, params, config, _ = tiny(shared_data, "5v1")
    bits = {**params, "rwkv.ln_out.weight": np.zeros(64, np.uint16)}
    with pytest.raises(InputError, match="rwkv.ln_out.weight: the reference reads float arrays"):
        reference.forward(bits, config, [PROMPT])


def test_lm_head_tied_to_the_embeddings(shared_data):
    _, params, config, _ = tiny(shared_data, "5v2")
    tied = {k: v for k, v in params.items() if k != "head.weight"}
    out = reference.forward(tied, dataclasses.replace(config, tie_word_embeddings=True), [PROMPT])
    np.testing.assert_allclose(out["logits"], out["hidden_states"][-1] @ params[names.EMBEDDINGS].astype(np.float64).T,
                               rtol=1e-12, atol=1e-12)
