"""The fast RWKV-5 model (rwkv_np/v5/model.py) against the float64 reference (reference.py), and
the state converters (state.py).

The reference itself is held to rwkv.cpp's expected logits in test_v5_reference.py; here the fast
path must compute the same numbers: float64 within 1e-12 and float32 within 1e-5 of the largest
value (relative), for every variant, on random weights with several heads and on rwkv.cpp's tiny
files. Measured (random 3-head models, logits and state): float32 at most 2.0e-6 relative (5.0
logits; 5.1, 5.2 under 1e-6), float64 at most 5.9e-15.
"""
import numpy as np
import pytest

from rwkv_np.errors import InputError
from rwkv_np.formats.rwkvcpp import read_records
from rwkv_np.v5 import names, reference, state as v5_state
from rwkv_np.v5.config import Rwkv5Config
from rwkv_np.v5.model import Rwkv5ForCausalLM, Rwkv5Model

PROMPT = [34, 105, 110]
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def rel(x, ref):
    return np.max(np.abs(x - ref)) / np.max(np.abs(ref))


def random_params(config: Rwkv5Config, seed=0) -> dict:
    """HF-named float32 weights in the ranges trained models have: time_decay in [-6, 1] (decays
    exp(-exp(.)) from 0.07 to 0.998), bonuses moderate, mixes in [0, 1], norms near 1, matrices
    scaled by 1/sqrt(fan-in)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in names.expected_shapes(config).items():
        if name.endswith("time_decay"):
            x = rng.uniform(-6, 1, shape)
        elif name.endswith(("time_faaaa", "time_first")):
            x = rng.uniform(-1, 1, shape)
        elif "time_mix" in name:
            x = rng.uniform(0, 1, shape)
        elif name.endswith("norm.weight") or name.endswith(("ln1.weight", "ln2.weight", "ln_x.weight", "ln_out.weight")):
            x = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 2:
            x = rng.normal(0, shape[1] ** -0.5, shape)
        else:
            x = rng.normal(0, 0.5, shape)
        params[name] = x.astype(np.float32)
    return params


def multi(variant):
    config = Rwkv5Config(vocab_size=70, hidden_size=48, num_hidden_layers=3, head_size=16, intermediate_size=100,
                         variant=variant)
    return config, random_params(config, seed=int(variant[-1]))


@pytest.mark.parametrize("variant", ["5.0", "5.1", "5.2"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_reference_on_random_multi_head_weights(variant, dtype):
    config, params = multi(variant)
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (2, 9))
    ref = reference.forward(params, config, ids)
    out = Rwkv5ForCausalLM(config, params, dtype)(ids, output_hidden_states=True, output_attentions=True)
    assert out.logits.dtype == np.dtype(dtype)
    tol = TOLERANCE[dtype]
    assert rel(out.logits, ref["logits"]) < tol
    for got, want in zip(out.state, ref["state"]):
        assert got.dtype == np.dtype(dtype) and rel(got, want) < tol
    for key, got in (("hidden_states", out.hidden_states), ("attentions", out.attentions),
                     ("feed_forward", out.feed_forward)):
        assert len(got) == len(ref[key])
        for g, w in zip(got, ref[key]):
            assert rel(g, w) < tol, key


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_with_state_and_token_by_token_equal_whole(dtype):
    config, params = multi("5.2")
    model = Rwkv5ForCausalLM(config, params, dtype)
    ids = np.random.default_rng(2).integers(0, config.vocab_size, (3, 20))
    whole = model(ids)
    first = model(ids[:, :13])
    second = model(ids[:, 13:], state=first.state)
    tol = TOLERANCE[dtype]
    assert rel(np.concatenate([first.logits, second.logits], axis=1), whole.logits) < tol
    state = None
    for t in range(ids.shape[1]):                          # one token per call: the decode path
        step = model(ids[:, t:t + 1], state=state)
        assert rel(step.logits[:, 0], whole.logits[:, t]) < tol
        state = step.state
    for got, want in zip(state, whole.state):
        assert rel(got, want) < tol
    for got, want in zip(second.state, whole.state):
        assert rel(got, want) < tol


@pytest.mark.parametrize("file, expected", [("tiny-rwkv-5v1-730K-FP32.bin", "5v1"),
                                            ("tiny-rwkv-5v2-730K-FP32.bin", "5v2")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiny_rwkvcpp_models(shared_data, file, expected, dtype):
    """rwkv.cpp's expected logits through the fast model, as one sequence and token by token.
    Measured max |Δ|: float32 2.3e-6 (5v1) and 1.8e-6 (5v2), float64 1.6e-6 and 3.1e-6 (the
    reference's); the issue's bound is 1e-5."""
    model = Rwkv5ForCausalLM.from_pretrained(shared_data / "rwkvcpp" / file, dtype)
    want = np.fromfile(shared_data / "rwkvcpp" / f"expected-logits-{expected}-730K.bin", "<f4")
    assert np.max(np.abs(model([PROMPT]).logits[0, -1] - want)) < 1e-5
    state = None
    for token in PROMPT:
        out = model([[token]], state=state)
        state = out.state
    assert np.max(np.abs(out.logits[0, -1] - want)) < 1e-5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiny_fp16_file(shared_data, dtype):
    """The 5v2 FP16 file: max |Δ| 2.52e-3 (both dtypes), signed sum +0.103 within rwkv.cpp's
    1.05 * 0.455912."""
    model = Rwkv5ForCausalLM.from_pretrained(shared_data / "rwkvcpp" / "tiny-rwkv-5v2-730K-FP16.bin", dtype)
    diff = model([PROMPT]).logits[0, -1] - np.fromfile(shared_data / "rwkvcpp" / "expected-logits-5v2-730K.bin", "<f4")
    assert abs(diff.sum()) <= 1.05 * 0.455912 and np.max(np.abs(diff)) < 4e-3


def test_batch_rows_are_independent():
    config, params = multi("5.2")
    model = Rwkv5ForCausalLM(config, params, "float64")
    ids = np.random.default_rng(3).integers(0, config.vocab_size, (3, 6))
    batch = model(ids).logits
    for b in range(3):
        np.testing.assert_allclose(model(ids[b:b + 1]).logits[0], batch[b], rtol=1e-12, atol=1e-12)


def test_trunk_int8_weights_and_hf_options():
    config, params = multi("5.1")
    ids = np.random.default_rng(4).integers(0, config.vocab_size, (2, 7))
    full = Rwkv5ForCausalLM(config, params, "float64")
    trunk = Rwkv5Model(config, params, "float64")(ids).last_hidden_state
    out = full(ids, logits_to_keep=2)
    np.testing.assert_allclose(trunk @ params["head.weight"].T.astype(np.float64), full(ids).logits, rtol=1e-12)
    assert out.logits.shape == (2, 2, 70) and np.isfinite(full(ids, labels=ids).loss)
    np.testing.assert_allclose(full(inputs_embeds=full.embed(ids)).logits, full(ids).logits, rtol=1e-12)
    int8 = Rwkv5ForCausalLM(config, params, "float32", weights="int8")(ids).logits
    assert rel(int8, full(ids).logits) < 0.3   # measured 0.14: int8 rows through 3 random layers of 48
    with pytest.raises(InputError, match="state"):
        full(ids, state=[np.zeros(3)])


def test_state_converters_round_trip_and_layouts():
    """rwkv pip: per layer [att_x, wkv (H, N, N), ffn_x]; rwkv.cpp: per layer [ffn_x, att_x, wkv
    flattened]; labelled values show the order, round trips are exact."""
    L, C, H, N = 2, 6, 2, 3
    att_x = np.arange(L * C, dtype=np.float32).reshape(1, L, C)
    ffn_x = 100 + att_x
    wkv = 1000 + np.arange(L * H * N * N, dtype=np.float32).reshape(1, L, H, N, N)
    state = [att_x, ffn_x, wkv]
    pip = v5_state.to_rwkv_pip(state)
    assert [p.shape for p in pip] == [(C,), (H, N, N), (C,)] * L
    np.testing.assert_array_equal(pip[3], att_x[0, 1])
    np.testing.assert_array_equal(pip[4], wkv[0, 1])
    for got, want in zip(v5_state.from_rwkv_pip(pip), state):
        np.testing.assert_array_equal(got, want)
    flat = v5_state.to_rwkvcpp(state)
    assert flat.shape == (L * (2 + N) * C,) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat[:C], ffn_x[0, 0])
    np.testing.assert_array_equal(flat[C:2 * C], att_x[0, 0])
    np.testing.assert_array_equal(flat[2 * C:2 * C + H * N * N], wkv[0, 0].reshape(-1))
    for got, want in zip(v5_state.from_rwkvcpp(flat, L, head_dim=N), state):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError, match="is not 2 layers x"):
        v5_state.from_rwkvcpp(flat[:-1], L, head_dim=N)
    with pytest.raises(InputError, match="outside the batch"):
        v5_state.to_rwkvcpp(state, index=1)


def test_tiny_state_continues_in_rwkvcpp_layout(shared_data):
    """A state taken through rwkv.cpp's flat layout and back continues the prompt unchanged."""
    header, tensors = read_records(shared_data / "rwkvcpp" / "tiny-rwkv-5v2-730K-FP32.bin")
    model = Rwkv5ForCausalLM(*names.from_rwkvcpp(header, tensors), "float32")
    first = model([PROMPT[:2]])
    again = v5_state.from_rwkvcpp(v5_state.to_rwkvcpp(first.state), 12, head_dim=8)
    np.testing.assert_array_equal(model([PROMPT[2:]], state=again).logits, model([PROMPT[2:]], state=first.state).logits)
