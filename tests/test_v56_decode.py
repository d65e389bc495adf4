"""RWKV-5 and RWKV-6 token mode (v5/decode.py, v6/decode.py: one compiled call per layer) against
the float64 references (v5/reference.py, v6/reference.py), for every weight storage and batch
size: the numbers the sequence path gives, within float32 rounding of the matrices the storage
stands for. The reference is computed on the stored matrices widened back (storage.dequantize),
so only the engine's own rounding is measured; every step of this file runs in token mode (the
sequence path's time_mix is made to fail).

Bounds (errors relative to the largest value, 9 steps from a zero state): 1e-5 as RWKV-4's and
RWKV-7's token-mode tests, 3e-5 for this RWKV-6 model at B = 8, whose float32 logits are less
well conditioned: measured over six draws of the tokens, token mode 1.1e-6 .. 5.3e-6 and the
sequence path run a token at a time 8.8e-7 .. 6.1e-5 (whole 9-token prompts 1.5e-6 .. 1.5e-5;
test_v6_model.py says why). Where rows of x are rounded before each product, against int8
weights at every B (linear.activations: int16; also an int4 model's head) and int4 ones at B = 1
(linear_int4: int8 with VNNI or AVX2, else int16): for int8 3e-4 at B = 1 and 5e-3 over the eight
sequences of B = 8, and 3e-4 x 32767 / LEVELS for int4, test_int4.py's bound for the same
rounding. Measured (logits, this file's draws): float32 / float64 / float16 / bfloat16
4.4e-7 .. 1.2e-5 (v6), 2.9e-7 .. 1.2e-6 (v5.2); int8 at B = 1 1.2e-4 / 6.3e-5, over the eight
sequences of B = 8, each run alone, 1.2e-4 .. 1.8e-3 / 7.1e-5 .. 9.2e-4; int4 at B = 1 4.4e-2 /
1.1e-2 (v6 / v5.2; the sequence path the same figures).
"""
import numpy as np
import pytest

from rwkv_np.linear_int4 import LEVELS
from rwkv_np.storage import EDGE_STORAGE, Int8Weight, dequantize, prepare_weight
from rwkv_np.v5 import decode as decode5
from rwkv_np.v5 import model as model5
from rwkv_np.v5 import names as names5
from rwkv_np.v5 import reference as reference5
from rwkv_np.v5.config import Rwkv5Config
from rwkv_np.v6 import decode as decode6
from rwkv_np.v6 import model as model6
from rwkv_np.v6 import names as names6
from rwkv_np.v6 import reference as reference6
from rwkv_np.v6.config import Rwkv6Config

# C = 96 and F = 160 are whole int4 groups of 32 (else int4 falls back to int8 rows); N = 24
# leaves a tail after 8 lanes; the LoRA ranks (5 x 5 = 25 and 9 columns) leave part blocks of 16.
SIZES = {"vocab_size": 50, "hidden_size": 96, "num_hidden_layers": 3, "head_size": 24, "intermediate_size": 160}
CONFIGS = {"6.0": Rwkv6Config(**SIZES, time_mix_extra_dim=5, time_decay_extra_dim=9),
           **{v: Rwkv5Config(**SIZES, variant=v) for v in ("5.2", "5.1", "5.0")}}
GENERATION = {"6.0": (names6, reference6, model6, decode6), "5.2": (names5, reference5, model5, decode5),
              "5.1": (names5, reference5, model5, decode5), "5.0": (names5, reference5, model5, decode5)}
STORAGES = ["float32", "float64", "float16", "bfloat16", "int8", "int4"]
BOUND = {("int8", 1): 3e-4, ("int8", 8): 5e-3, ("int4", 1): 3e-4 * 32767 / LEVELS}   # where x is rounded
FLOAT_BOUND = {"6.0": 3e-5, "5.2": 1e-5}                # every other case


def random_params(variant, seed=0, decay=None) -> dict:
    """HF-named float32 weights in trained ranges: v6's time_decay reaches 12 (λ = -exp(12 +
    LoRA) ~ -1e5, decays of exactly 0 in float32), v5's [-6, 1]; mixes in [0, 1], norms near 1,
    projections scaled by 1/sqrt(fan-in), LoRA matrices moderate."""
    names, config = GENERATION[variant][0], CONFIGS[variant]
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in names.expected_shapes(config).items():
        if name.endswith("time_decay"):
            x = rng.uniform(*(decay or ((-6.0, 12.0) if variant == "6.0" else (-6.0, 1.0))), shape)
        elif name.endswith(("time_faaaa", "time_first")):
            x = rng.uniform(-1, 1, shape)
        elif "time_maa_w" in name or "time_decay_w" in name:
            x = rng.normal(0, 0.3, shape)
        elif "time_maa" in name or "time_mix" in name:
            x = rng.uniform(0, 1, shape)
        elif name.endswith(("ln1.weight", "ln2.weight", "ln_x.weight", "ln_out.weight", "pre_ln.weight")):
            x = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 2:
            x = rng.normal(0, shape[1] ** -0.5, shape)
        else:
            x = rng.normal(0, 0.5, shape)
        params[name] = x.astype(np.float32)
    return params


WEIGHTS = {v: random_params(v, seed=i) for i, v in enumerate(CONFIGS)}


def stored(variant, storage):
    """The weights with every matrix as `storage` keeps it (the embedding and head as
    storage.EDGE_STORAGE says), widened back: what the float64 reference must compute with."""
    names = GENERATION[variant][0]
    edge = EDGE_STORAGE.get(storage, storage)
    return {n: dequantize(prepare_weight(W, edge if n in (names.EMBEDDINGS, names.HEAD) else storage))
            if n in names.matrices(CONFIGS[variant]) else W for n, W in WEIGHTS[variant].items()}


def model_of(variant, storage="float32", weights=None):
    return GENERATION[variant][2].CAUSAL_LM(CONFIGS[variant], weights or WEIGHTS[variant], "float32",
                                            weights=storage)


def rel_err(x, ref):
    return np.abs(np.asarray(x, np.float64) - ref).max() / np.abs(ref).max()


def steps(model, ids, state=None):  # ids (B, T) fed one token at a time -> logits (B, T, V), state
    logits = []
    for t in range(ids.shape[1]):
        out = model(ids[:, t:t + 1], state=state)
        state = out.state
        logits.append(out.logits)
    return np.concatenate(logits, 1), state


@pytest.fixture
def token_mode_only(monkeypatch):
    """The sequence path's time mix fails: what a test computes is token mode's."""
    def fail(*args, **kwargs):
        raise AssertionError("the sequence path ran")
    for module in (model5, model6):
        monkeypatch.setattr(module.Layer, "time_mix", fail)


@pytest.mark.parametrize("variant", ["6.0", "5.2"])
@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("B", [1, 8])
def test_token_steps_match_reference(variant, storage, B, token_mode_only):
    model = model_of(variant, storage)
    assert model.token_layers is not None
    ids = np.random.default_rng(B).integers(0, CONFIGS[variant].vocab_size, (B, 9))
    ref = GENERATION[variant][1].forward(stored(variant, storage), CONFIGS[variant], ids)
    logits, state = steps(model, ids)
    # at B > 1 int4's rounded x is the int8 head's alone (storage.EDGE_STORAGE)
    bound = BOUND.get((storage if B == 1 else EDGE_STORAGE.get(storage, storage), B), FLOAT_BOUND[variant])
    assert rel_err(logits, ref["logits"]) < bound
    for got, want in zip(state, ref["state"]):
        assert got.dtype == np.float32 and rel_err(got, want) < bound


@pytest.mark.parametrize("variant", ["5.1", "5.0"])
@pytest.mark.parametrize("B", [1, 3])
def test_older_v5_layouts_match_reference(variant, B, token_mode_only):
    """5.1 (per-head decay, exp(time_first)) and 5.0 (and no gate) run the same step."""
    model = model_of(variant)
    ids = np.random.default_rng(B).integers(0, CONFIGS[variant].vocab_size, (B, 9))
    ref = reference5.forward(WEIGHTS[variant], CONFIGS[variant], ids)
    logits, state = steps(model, ids)
    assert rel_err(logits, ref["logits"]) < 1e-5
    for got, want in zip(state, ref["state"]):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("variant", ["6.0", "5.2"])
@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int4"])
@pytest.mark.parametrize("B", [1, 8])
def test_parallel_build_gives_the_same_bits(variant, storage, B, monkeypatch):
    """A model this small runs its layers on one core (linear.PARALLEL_MIN_WEIGHTS), the build
    checked above. Larger models run the parallel build of the same body: the same bits.
    Storages: plain float rows, bfloat16 (rows widened into the per-call buffers for batches) and
    int4 (x rounded once per call, then integer products); the others share these code shapes, and
    each parallel build takes ~25 s to compile (CI time). The same for other job sizes."""
    decode = GENERATION[variant][3]
    ids = np.random.default_rng(B).integers(0, CONFIGS[variant].vocab_size, (B, 4))
    model = model_of(variant, storage)
    assert model.token_layers[0][0] is decode._layer
    state = model(ids[:, :3]).state
    serial = model(ids[:, 3:], state=[s.copy() for s in state])
    monkeypatch.setattr(decode5, "PARALLEL_MIN_WEIGHTS", 0)  # the choice is made at load
    model = model_of(variant, storage)
    assert model.token_layers[0][0] is decode._layer_parallel
    parallel = model(ids[:, 3:], state=[s.copy() for s in state])
    np.testing.assert_array_equal(parallel.logits, serial.logits)
    for got, want in zip(parallel.state, serial.state):
        np.testing.assert_array_equal(got, want)
    # Jobs of other sizes (linear.job_rows: 24 rows for batches; 32 leaves a part job here): same
    # bits (part tiles of dot_tile: test_linear's test_a_rows_bits_do_not_depend_on_its_job)
    monkeypatch.setattr(decode5, "job_rows", lambda B, width: 32)  # v5's decode runs both
    resized = model(ids[:, 3:], state=[s.copy() for s in state])
    np.testing.assert_array_equal(resized.logits, serial.logits)
    for got, want in zip(resized.state, serial.state):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("variant", ["6.0", "5.2", "5.1", "5.0"])
def test_token_mode_equals_sequence_path(variant):
    """output_attentions=True takes the sequence path for the same step (from a state a prompt
    left): the same numbers up to float32 rounding (BLAS and the kernels add in other orders)."""
    model = model_of(variant)
    ids = np.random.default_rng(0).integers(0, CONFIGS[variant].vocab_size, (3, 6))
    state = model(ids[:, :5]).state
    fused = model(ids[:, 5:], state=state)
    plain = model(ids[:, 5:], state=state, output_attentions=True)
    assert rel_err(fused.logits, plain.logits.astype(np.float64)) < 1e-6
    for got, want in zip(fused.state, plain.state):
        assert rel_err(got, want.astype(np.float64)) < 1e-6


def test_decays_beyond_float32_range_stay_finite(token_mode_only):
    """time_decay of 90-100: e^ww is inf in float32 and λ = -inf before the floor; token mode's
    outputs stay finite and equal the reference (λ ~ -1e43 there, floored the same way)."""
    params = random_params("6.0", seed=5, decay=(90.0, 100.0))
    ids = np.random.default_rng(4).integers(0, CONFIGS["6.0"].vocab_size, (2, 6))
    logits, state = steps(model_of("6.0", weights=params), ids)
    ref = reference6.forward(params, CONFIGS["6.0"], ids)
    assert np.all(np.isfinite(logits)) and all(np.all(np.isfinite(s)) for s in state)
    assert rel_err(logits, ref["logits"]) < 1e-5
    for got, want in zip(state, ref["state"]):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("variant", ["6.0", "5.2"])
def test_token_mode_is_taken_only_where_it_applies(variant):
    """float32 models with B <= 16 single-token steps; float64 models and int8 weights with
    column scales keep the sequence path, as do 17 rows at once (the same numbers)."""
    names, reference, model, _ = GENERATION[variant]
    config, weights = CONFIGS[variant], WEIGHTS[variant]
    assert model.CAUSAL_LM(config, weights, "float64").token_layers is None
    scaled = {n: prepare_weight(W, "int8", col_scales=True) if n in names.matrices(config) else W
              for n, W in weights.items()}
    assert isinstance(scaled[names.HEAD], Int8Weight)
    assert model.CAUSAL_LM(config, scaled, "float32").token_layers is None
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (17, 2))
    logits, _ = steps(model_of(variant), ids)
    assert rel_err(logits, reference.forward(weights, config, ids)["logits"]) < 1e-5


def test_callers_state_is_not_modified():
    model = model_of("6.0")
    state = model(np.array([[1, 2, 3]])).state
    kept = [s.copy() for s in state]
    model(np.array([[4]]), state=state)
    for got, want in zip(state, kept):
        np.testing.assert_array_equal(got, want)
