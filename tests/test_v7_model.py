"""The fast RWKV-7 model (rwkv_np/v7/model.py) against the float64 reference (reference.py).

The reference itself is held to rwkv.cpp's expected logits and BlinkDL's package in
test_v7_reference.py; here the fast path must compute the same numbers: float64 within 1e-12 and
float32 within 1e-5 of the largest value (relative), on rwkv.cpp's tiny model (one head of 64)
and on random weights with several heads. Measured on the random 3-head model: float32 3.1e-7
(logits) and 2.8e-7 (state), float64 1.3e-15 and 7.9e-16.
"""
import dataclasses

import numpy as np
import pytest

from rwkv_np.errors import InputError
from rwkv_np.formats.rwkvcpp import read_records
from rwkv_np.nn import cross_entropy
from rwkv_np.storage import Int8Weight, dequantize
from rwkv_np.storage_int4 import Int4Weight
from rwkv_np.v7 import names, reference
from rwkv_np.v7.config import Rwkv7Config
from rwkv_np.v7.model import Rwkv7ForCausalLM

PROMPT = [34, 105, 110]
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def rel(x, ref):
    return np.max(np.abs(x - ref)) / np.max(np.abs(ref))


def random_params(config: Rwkv7Config, seed=0) -> dict:
    """HF-named float32 weights in the ranges trained models have (mixes in [0, 1], norms near 1,
    matrices scaled by 1/sqrt(fan-in))."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in names.expected_shapes(config).items():
        if ".x_" in name or name.endswith("attn.k_k"):
            x = rng.uniform(0, 1, shape)
        elif name.endswith("norm.weight") or name.endswith("attn.k_a"):
            x = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 2 and "r_k" not in name:
            x = rng.normal(0, shape[1] ** -0.5, shape)
        else:
            x = rng.normal(0, 0.5, shape)
        params[name] = x.astype(np.float32)
    return params


MULTI = Rwkv7Config(vocab_size=70, hidden_size=48, num_hidden_layers=3, head_dim=16, intermediate_size=100,
                    decay_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=4, gate_low_rank_dim=12)


@pytest.fixture(scope="module")
def multi():
    return MULTI, random_params(MULTI)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_reference_on_random_multi_head_weights(multi, dtype):
    config, params = multi
    ids = np.random.default_rng(1).integers(0, config.vocab_size, (2, 9))
    ref = reference.forward(params, config, ids)
    out = Rwkv7ForCausalLM(config, params, dtype)(ids, output_hidden_states=True, output_attentions=True)
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
def test_split_with_state_and_token_by_token_equal_whole(multi, dtype):
    config, params = multi
    model = Rwkv7ForCausalLM(config, params, dtype)
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


@pytest.mark.parametrize("kind", ["FP32", "FP16"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiny_rwkvcpp_model(shared_data, kind, dtype):
    """rwkv.cpp's expected logits through the fast model. Measured max |Δ|: float32 4.8e-7,
    float64 3.7e-7 (the reference's), on both files; pinned at 2e-6."""
    header, tensors = read_records(shared_data / "rwkvcpp" / f"tiny-rwkv-7v0-834K-{kind}.bin")
    config, params = names.from_rwkvcpp(header, tensors)
    expected = np.fromfile(shared_data / "rwkvcpp" / "expected-logits-7v0-834K.bin", "<f4")
    out = Rwkv7ForCausalLM(config, params, dtype)([PROMPT])
    assert np.max(np.abs(out.logits[0, -1] - expected)) < 2e-6
    assert rel(out.logits, reference.forward(params, config, [PROMPT])["logits"]) < TOLERANCE[dtype]


def test_batch_rows_are_independent(multi):
    config, params = multi
    model = Rwkv7ForCausalLM(config, params, "float64")
    ids = np.random.default_rng(3).integers(0, config.vocab_size, (3, 6))
    batch = model(ids).logits
    for b in range(3):
        np.testing.assert_allclose(model(ids[b:b + 1]).logits[0], batch[b], rtol=1e-12, atol=1e-12)


def test_hf_style_options(multi):
    config, params = multi
    model = Rwkv7ForCausalLM(config, params, "float64")
    ids = np.random.default_rng(4).integers(0, config.vocab_size, (2, 7))
    full = model(ids, labels=ids)
    assert full.loss == pytest.approx(cross_entropy(full.logits, ids), rel=1e-12)
    last = model(ids, logits_to_keep=2, use_cache=False)
    np.testing.assert_allclose(last.logits, full.logits[:, -2:], rtol=1e-12, atol=1e-12)
    assert last.state is None and full.hidden_states is None and full.attentions is None
    embeds = params["model.embeddings.weight"].astype(np.float64)[ids]
    np.testing.assert_allclose(model(inputs_embeds=embeds).logits, full.logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(model(ids[0]).logits, model(ids[:1]).logits)  # (T,) is one sequence


def test_tied_head_uses_the_embeddings(multi):
    config, params = multi
    tied_config = dataclasses.replace(config, tie_word_embeddings=True)
    tied = {k: v for k, v in params.items() if k != "lm_head.weight"}
    ids = [[1, 2, 3]]
    out = Rwkv7ForCausalLM(tied_config, tied, "float64")(ids, output_hidden_states=True)
    np.testing.assert_allclose(out.logits, out.hidden_states[-1] @ tied["model.embeddings.weight"].astype(np.float64).T,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weights, tol", [("float16", 2e-3), ("bfloat16", 2e-2), ("int8", 5e-2)])
def test_other_weight_storages_run_close(multi, weights, tol):
    """16-bit and int8 matrices (rwkv_np.linear widens them in its kernels): the logits move by
    the rounding of the weights only. Bounds are relative to the largest logit; measured 4.7e-4,
    4.0e-3 and 1.5e-2."""
    config, params = multi
    ids = [[5, 6, 7, 8, 9]]
    want = Rwkv7ForCausalLM(config, params, "float32")(ids).logits
    got = Rwkv7ForCausalLM(config, params, "float32", weights=weights)(ids).logits
    assert rel(got, want) < tol


def test_bad_inputs_are_refused(multi):
    config, params = multi
    model = Rwkv7ForCausalLM(config, params)
    with pytest.raises(InputError, match="outside the vocabulary"):
        model([[config.vocab_size]])
    with pytest.raises(InputError, match="exactly one of input_ids and inputs_embeds"):
        model()
    with pytest.raises(InputError, match=r"state\[2\] \(wkv\): expected shape"):
        model([[1]], state=[np.zeros((1, 3, 48)), np.zeros((1, 3, 48)), np.zeros((1, 3, 3, 16, 15))])
    with pytest.raises(InputError, match="dtype"):
        Rwkv7ForCausalLM(config, params, "float16")


@pytest.mark.parametrize("name", ["h2n32", "h2n64", "h4n32_ranks"])
def test_from_pretrained_blinkdl_fixture(name):
    """tests/fixtures/v7: float16 / bfloat16 .pth files and BlinkDL's package's float32 outputs.
    Loaded by path (rwkv_np.load), matrices kept 16-bit as on disk, the LoRAs arriving as
    transposed views. Bound 5e-5, the fixtures' README's for a float32 engine."""
    from pathlib import Path

    from rwkv_np.formats.safetensors import read_safetensors

    fixtures = Path(__file__).resolve().parent / "fixtures" / "v7"
    if not (fixtures / f"{name}.pth").exists():
        pytest.skip(f"{fixtures / name}.pth is absent")
    model = Rwkv7ForCausalLM.from_pretrained(fixtures / f"{name}.pth")
    want, _ = read_safetensors(str(fixtures / f"{name}.expected.safetensors"))
    out = model(want["prompt.input_ids"])
    assert np.max(np.abs(out.logits[0] - want["prompt.logits_full"])) < 5e-5
    state = out.state
    for t, token in enumerate(want["steps.input_ids"]):
        step = model([[token]], state=state)
        assert np.max(np.abs(step.logits[0, 0] - want["steps.logits"][t])) < 5e-5
        state = step.state


def test_int4_runs_the_matrices_it_stores_with_int8_embedding_and_head():
    """weights="int4" (C a multiple of its groups of 32): every layer matrix Int4Weight, the
    embedding and the head int8 as an int4 file keeps them (storage.EDGE_STORAGE; not quantized
    a second time at load), and the prompt's logits are the float64 reference's on the matrices
    the model holds, within float32 rounding and the int8 products' rounding of x (7 rows: up to
    linear.SMALL_N, x is rounded to int16 as in token steps; measured 2.8e-5 of the largest
    logit, 3.6e-7 before x was rounded; 0.49 against the unquantized weights)."""
    config = dataclasses.replace(MULTI, hidden_size=64, num_heads=2, head_dim=32, intermediate_size=128)
    params = random_params(config)
    model = Rwkv7ForCausalLM(config, params, "float32", weights="int4")
    assert isinstance(model.embeddings, Int8Weight) and isinstance(model.head, Int8Weight)
    held = dict(params, **{"model.embeddings.weight": dequantize(model.embeddings),
                           "lm_head.weight": dequantize(model.head)})
    for i, lay in enumerate(model.layers):
        pre = f"model.layers.{i}."
        for field, name in (("r_proj", "attn.r_proj"), ("k_proj", "attn.k_proj"), ("v_proj", "attn.v_proj"),
                            ("o_proj", "attn.o_proj"), ("ffn_key", "ffn.key"), ("ffn_value", "ffn.value")):
            assert isinstance(getattr(lay, field), Int4Weight)
            held[pre + name + ".weight"] = dequantize(getattr(lay, field))
        for kind in "wagv":
            lora = getattr(lay, f"{kind}_lora")
            if lora is not None:
                held[pre + f"attn.{kind}_lora.lora.0.weight"] = dequantize(lora[0])
                held[pre + f"attn.{kind}_lora.lora.2.weight"] = dequantize(lora[1])
    ids = np.random.default_rng(2).integers(0, config.vocab_size, (1, 7))
    want = reference.forward({k: np.asarray(v, np.float64) for k, v in held.items()}, config, ids)["logits"]
    assert rel(model(ids).logits, want) < 3e-4
