"""RWKV-7 token mode (v7/decode.py, one compiled call per layer) against the float64 reference,
for every weight storage and batch size: the numbers the sequence path gives, within float32
rounding of the matrices the storage stands for.

Measured on this file's model (9 steps from a zero state; errors relative to the largest value):
float32 / float16 / bfloat16 2.0e-7 .. 3.7e-6 (the sequence path on the same steps: 1.9e-7 ..
1.7e-6); int8 3.0e-5 .. 8.2e-5 at B = 1 and 6.6e-5 .. 3.7e-4 over the eight sequences of B = 8
(each the same bits as the sequence run alone), because rows of x against int8 weights are
rounded to int16 before each product (linear.activations; eleven products per layer here).
Bounds: 1e-5, and for int8 3e-4 at B = 1 and 1e-3 at B = 8.
"""
import numpy as np
import pytest

from rwkv_np.storage import dequantize, prepare_weight
from rwkv_np.v7 import decode, names, reference
from rwkv_np.v7.config import Rwkv7Config
from rwkv_np.v7.model import Rwkv7ForCausalLM

# Odd sizes: N = 20 leaves a tail after the 8-lane sums, C = 60 and F = 100 a part block of 16
# rows; D_g = 9 makes the gate's second matrix an odd-width one (bfloat16 in 16-bit elements, not
# pairs). Three layers: layer 0 sets v_first, the others mix it in.
CONFIG = Rwkv7Config(vocab_size=50, hidden_size=60, num_hidden_layers=3, head_dim=20, intermediate_size=100,
                     decay_low_rank_dim=8, a_low_rank_dim=12, v_low_rank_dim=6, gate_low_rank_dim=9)
STORAGES = ["float32", "float16", "bfloat16", "int8"]
BOUND = {("int8", 1): 3e-4, ("int8", 8): 1e-3}


def random_params(config: Rwkv7Config, seed=0) -> dict:
    """HF-named float32 weights in trained ranges (as tools/make_v7_fixtures.py draws them)."""
    rng = np.random.default_rng(seed)
    C = config.hidden_size
    params = {}
    for name, shape in names.expected_shapes(config).items():
        if ".x_" in name or name.endswith(("attn.k_k", "ffn.x_k")):
            x = rng.uniform(0, 1, shape)
        elif name.endswith(("norm.weight", "attn.k_a")):
            x = rng.uniform(0.7, 1.3, shape)
        elif name.endswith("w_lora.lora.2.bias"):
            x = rng.uniform(-6, 2, shape)                   # decays spread over (0.59, 0.9985)
        elif name.endswith("attn.r_k"):
            x = rng.normal(0, 0.2, shape)
        elif name in (names.EMBEDDINGS,):
            x = rng.normal(0, 0.5, shape)
        elif len(shape) == 2:
            x = rng.normal(0, shape[1] ** -0.5, shape)
        else:
            x = rng.normal(0, 0.3, shape)
        params[name] = x.astype(np.float32)
    assert params[names.EMBEDDINGS].shape[1] == C
    return params


WEIGHTS = random_params(CONFIG, seed=7)


def stored(storage):
    """The weights with every matrix as `storage` keeps it, widened back: what the float64
    reference must compute with to see only the engine's own rounding."""
    matrices = names.matrices(CONFIG)
    return {n: dequantize(prepare_weight(W, storage)) if n in matrices else W for n, W in WEIGHTS.items()}


def rel_err(x, ref):
    return np.abs(np.asarray(x, np.float64) - ref).max() / np.abs(ref).max()


def steps(model, ids, state=None):  # ids (B, T) fed one token at a time -> logits (B, T, V), state
    logits = []
    for t in range(ids.shape[1]):
        out = model(ids[:, t:t + 1], state=state)
        state = out.state
        logits.append(out.logits)
    return np.concatenate(logits, 1), state


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("B", [1, 8])
def test_token_steps_match_reference(storage, B):
    model = Rwkv7ForCausalLM(CONFIG, WEIGHTS, "float32", weights=storage)
    assert model.token_layers is not None  # the fused path is the one under test
    ids = np.random.default_rng(B).integers(0, CONFIG.vocab_size, (B, 9))
    ref = reference.forward(stored(storage), CONFIG, ids)
    logits, state = steps(model, ids)
    bound = BOUND.get((storage, B), 1e-5)
    assert rel_err(logits, ref["logits"]) < bound
    for got, want in zip(state, ref["state"]):
        assert got.dtype == np.float32 and rel_err(got, want) < bound


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("B", [1, 8])
def test_parallel_build_gives_the_same_bits(storage, B, monkeypatch):
    """A model this small runs its layers on one core (linear.PARALLEL_MIN_WEIGHTS), the build
    checked above. Larger models run the parallel build of the same body: the same bits.
    Storages: plain float rows, bfloat16 (rows widened into the per-call buffers for batches) and
    int8 (x rounded once per call, then integer products); the others share these code shapes, and
    each parallel build takes ~25 s to compile (CI time). The same for other job sizes."""
    ids = np.random.default_rng(B).integers(0, CONFIG.vocab_size, (B, 4))
    model = Rwkv7ForCausalLM(CONFIG, WEIGHTS, "float32", weights=storage)
    assert model.token_layers[0][0] is decode._layer
    state = model(ids[:, :3]).state
    serial = model(ids[:, 3:], state=[s.copy() for s in state])
    monkeypatch.setattr(decode, "PARALLEL_MIN_WEIGHTS", 0)  # the choice is made at load
    model = Rwkv7ForCausalLM(CONFIG, WEIGHTS, "float32", weights=storage)
    assert model.token_layers[0][0] is decode._layer_parallel
    parallel = model(ids[:, 3:], state=[s.copy() for s in state])
    np.testing.assert_array_equal(parallel.logits, serial.logits)
    for got, want in zip(parallel.state, serial.state):
        np.testing.assert_array_equal(got, want)
    # Jobs of other sizes (linear.job_rows: 24 rows for batches; 32 leaves a part job here): same
    # bits (part tiles of dot_tile: test_linear's test_a_rows_bits_do_not_depend_on_its_job)
    monkeypatch.setattr(decode, "job_rows", lambda B, width: 32)
    resized = model(ids[:, 3:], state=[s.copy() for s in state])
    np.testing.assert_array_equal(resized.logits, serial.logits)
    for got, want in zip(resized.state, serial.state):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("B", [1, 3])
def test_token_mode_equals_sequence_path(B):
    """output_attentions=True takes the sequence path (model.time_mix / channel_mix) for the same
    step: the same numbers up to float32 rounding (BLAS and the 8-lane sums add in other orders)."""
    model = Rwkv7ForCausalLM(CONFIG, WEIGHTS, "float32")
    ids = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (B, 6))
    state = model(ids[:, :5]).state
    fused = model(ids[:, 5:], state=state)
    plain = model(ids[:, 5:], state=state, output_attentions=True)
    assert rel_err(fused.logits, plain.logits.astype(np.float64)) < 1e-6
    for got, want in zip(fused.state, plain.state):
        assert rel_err(got, want.astype(np.float64)) < 1e-6


def test_token_mode_is_taken_only_where_it_applies():
    """float32 models with B <= 16 single-token steps; float64 models and int8 weights with
    column scales keep the sequence path."""
    assert Rwkv7ForCausalLM(CONFIG, WEIGHTS, "float64").token_layers is None
    from rwkv_np.storage import Int8Weight
    scaled = {n: prepare_weight(W, "int8", col_scales=True) if n in names.matrices(CONFIG) else W
              for n, W in WEIGHTS.items()}
    assert isinstance(scaled[names.HEAD], Int8Weight)
    assert Rwkv7ForCausalLM(CONFIG, scaled, "float32").token_layers is None


def test_callers_state_is_not_modified():
    model = Rwkv7ForCausalLM(CONFIG, WEIGHTS, "float32")
    state = model(np.array([[1, 2, 3]])).state
    kept = [s.copy() for s in state]
    model(np.array([[4]]), state=state)
    for got, want in zip(state, kept):
        np.testing.assert_array_equal(got, want)
