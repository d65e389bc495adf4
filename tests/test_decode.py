"""Token mode (decode.py, one compiled call per layer) against the float64 reference model, for
every weight storage and batch size: the same numbers the sequence path gives, within float32
rounding of the matrices the storage stands for."""
import numpy as np
import pytest
from conftest import random_state_dict

from rwkv_np import RwkvConfig, RwkvForCausalLM
from rwkv_np.v4 import decode, reference
from rwkv_np.storage import dequantize, prepare_weight

# Odd sizes so that no loop divides evenly; rescale_every=2 exercises HF's halving.
CONFIG = RwkvConfig(vocab_size=53, hidden_size=40, num_hidden_layers=4, intermediate_size=83,
                    rescale_every=2)
WEIGHTS = random_state_dict(CONFIG, seed=11)


def stored(storage):
    """The state dict of the matrices `storage` keeps (every 2-D tensor: the block matrices,
    embeddings, head), so that the float64 reference computes with exactly those numbers."""
    return {name: dequantize(prepare_weight(W, storage)).astype(np.float64) if W.ndim == 2 else W
            for name, W in WEIGHTS.items()}


def rel_err(x, ref):
    return np.abs(np.asarray(x, np.float64) - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16", "int8"])
@pytest.mark.parametrize("B", [1, 3, 8])
def test_token_steps_match_reference(storage, B):
    model = RwkvForCausalLM(CONFIG, WEIGHTS, "float32", weights=storage)
    assert model.rwkv.token_layers is not None  # the fused path is the one under test
    ids = np.random.default_rng(B).integers(0, CONFIG.vocab_size, (B, 9))
    ref = reference.forward(stored(storage), CONFIG, ids)
    state, logits = None, []
    for t in range(ids.shape[1]):
        out = model(ids[:, t:t + 1], state=state)
        state = out.state
        logits.append(out.logits)
    # Rows of x against int8 weights are rounded to int16 before each product (linear.activations,
    # whose bound tests/test_linear.py checks); that adds ~1e-4 here, and the worst of B sequences
    # more (measured: B = 1 1.8e-4; B = 3 / 8 3.2e-4 / 3.8e-4, 2.7e-4 / 2.9e-4 with the C
    # library's expf in the gates). All else: float32 rounding.
    tol = (3e-4 if B == 1 else 5e-4) if storage == "int8" else 1e-5
    assert rel_err(np.concatenate(logits, 1), ref["logits"]) < tol
    for got, want in zip(state, ref["state"]):
        assert rel_err(got, want) < tol


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("B", [1, 8])
def test_parallel_build_gives_the_same_bits(storage, B, monkeypatch):
    """A model this small runs its layers on one core (linear.PARALLEL_MIN_WEIGHTS), the build
    checked above. Larger models run the parallel build of the same body: the same bits.
    Storages: plain float rows, bfloat16 (rows widened in registers, by the batch tile for B = 8) and
    int8 (x rounded once per call, then integer products); the others share these code shapes, and
    each parallel build takes ~25 s to compile (CI time). The same for other job sizes."""
    ids = np.random.default_rng(B).integers(0, CONFIG.vocab_size, (B, 4))
    model = RwkvForCausalLM(CONFIG, WEIGHTS, "float32", weights=storage)
    state = model(ids[:, :3]).state
    serial = model(ids[:, 3:], state=[s.copy() for s in state])
    monkeypatch.setattr(decode, "PARALLEL_MIN_WEIGHTS", 0)  # the choice is made at load
    model = RwkvForCausalLM(CONFIG, WEIGHTS, "float32", weights=storage)
    assert model.rwkv.token_layers[0][0] is decode._layer_parallel
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


def test_token_mode_equals_sequence_path():
    """output_attentions=True takes the sequence path (model.run_block) for the same step."""
    model = RwkvForCausalLM(CONFIG, WEIGHTS, "float32")
    ids = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 5))
    state = model(ids).state
    fused = model(ids[:, :1], state=state)
    plain = model(ids[:, :1], state=state, output_attentions=True)
    assert rel_err(fused.logits, plain.logits.astype(np.float64)) < 1e-6
    for got, want in zip(fused.state, plain.state):
        assert rel_err(got, want.astype(np.float64)) < 1e-6
