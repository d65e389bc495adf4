"""The fast model (model.py) against the float64 reference model (reference.py), and the
properties a recurrent model must have: chunking with state changes nothing, batch rows are
independent, single-token steps with state work for any batch size."""
import numpy as np
import pytest
from conftest import random_state_dict
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_np import RwkvConfig, RwkvForCausalLM, RwkvModel
from rwkv_np.v4 import reference
from rwkv_np.storage import dequantize
from rwkv_np.load import read

CONFIG = RwkvConfig(vocab_size=61, hidden_size=16, num_hidden_layers=7, intermediate_size=37)
WEIGHTS = random_state_dict(CONFIG, seed=3)
MODEL32 = RwkvForCausalLM(CONFIG, WEIGHTS, "float32")
MODEL64 = RwkvForCausalLM(CONFIG, WEIGHTS, "float64")
IDS = np.random.default_rng(4).integers(0, CONFIG.vocab_size, (3, 12))


def rel_err(x, ref):
    """max |x - ref| relative to the scale of ref."""
    return np.abs(np.asarray(x, np.float64) - ref).max() / np.abs(ref).max()


def test_fast_paths_match_reference():
    ref = reference.forward(WEIGHTS, CONFIG, IDS)
    for model, tol in ((MODEL32, 1e-5), (MODEL64, 1e-12)):
        out = model(IDS, output_hidden_states=True, output_attentions=True)
        assert rel_err(out.logits, ref["logits"]) < tol
        assert len(out.hidden_states) == CONFIG.num_hidden_layers + 1
        for got, want in zip(out.hidden_states, ref["hidden_states"]):
            assert rel_err(got, want) < tol
        for got, want in zip(out.attentions, ref["attentions"]):
            assert rel_err(got, want) < tol
        for got, want in zip(out.state, ref["state"]):
            assert rel_err(got, want) < tol


def test_seed_example_split_with_state():
    """The issue's example: the whole sequence, or 2 tokens then the rest with the state."""
    whole = MODEL32(IDS)
    first = MODEL32(IDS[:, :2])
    rest = MODEL32(IDS[:, 2:], state=first.state)
    assert np.allclose(whole.logits[:, 2:], rest.logits, atol=1e-5)
    for x, y in zip(whole.state, rest.state):
        assert np.allclose(x, y, atol=1e-5)


@settings(max_examples=50)
@given(st.lists(st.integers(1, 11), max_size=5))
def test_any_split_with_state_equals_whole(cuts):
    bounds = [0] + sorted(set(cuts)) + [IDS.shape[1]]
    state, logits = None, []
    for t0, t1 in zip(bounds, bounds[1:]):
        out = MODEL64(IDS[:, t0:t1], state=state)
        state = out.state
        logits.append(out.logits)
    whole = MODEL64(IDS)
    np.testing.assert_allclose(np.concatenate(logits, axis=1), whole.logits, rtol=1e-12, atol=1e-12)
    for x, y in zip(state, whole.state):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_batched_single_token_steps_with_state():
    """B > 1, one token per call, with state: row b equals a B = 1 run of row b (HF gets this
    shape wrong; we must not)."""
    state, steps = None, []
    for t in range(IDS.shape[1]):
        out = MODEL32(IDS[:, t:t + 1], state=state)
        assert out.logits.shape == (IDS.shape[0], 1, CONFIG.vocab_size)
        state = out.state
        steps.append(out.logits)
    steps = np.concatenate(steps, axis=1)
    for b in range(IDS.shape[0]):
        alone = MODEL32(IDS[b:b + 1]).logits[0]
        np.testing.assert_allclose(steps[b], alone, rtol=1e-5, atol=1e-5)


def test_batch_rows_are_independent():
    out = MODEL64(IDS)
    for b in range(IDS.shape[0]):
        np.testing.assert_allclose(MODEL64(IDS[b]).logits[0], out.logits[b], rtol=1e-13, atol=1e-13)


def test_caller_state_is_not_modified():
    state = MODEL32(IDS[:, :3]).state
    before = [s.copy() for s in state]
    MODEL32(IDS[:, 3:], state=state)
    for s, b in zip(state, before):
        np.testing.assert_array_equal(s, b)


def test_loss_is_mean_next_token_cross_entropy():
    labels = IDS.copy()
    labels[0, 5] = -100  # ignored
    out = MODEL64(IDS, labels=labels)
    # Written out independently of model.cross_entropy: -log softmax(logits[t])[label[t+1]].
    logits = reference.forward(WEIGHTS, CONFIG, IDS)["logits"]
    terms = []
    for b in range(IDS.shape[0]):
        for t in range(IDS.shape[1] - 1):
            if labels[b, t + 1] != -100:
                z = logits[b, t]
                terms.append(np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[labels[b, t + 1]])
    assert out.loss == pytest.approx(np.mean(terms), rel=1e-10)


def test_use_cache_and_logits_to_keep():
    assert MODEL32(IDS, use_cache=False).state is None
    full = MODEL32(IDS).logits
    # Same numbers up to BLAS blocking (a GEMM of another shape may sum in another order).
    np.testing.assert_allclose(MODEL32(IDS, logits_to_keep=1).logits[:, 0], full[:, -1], rtol=1e-5, atol=1e-6)


def test_inputs_embeds_equal_input_ids():
    emb = WEIGHTS["rwkv.embeddings.weight"][IDS]
    np.testing.assert_array_equal(MODEL32(inputs_embeds=emb).logits, MODEL32(IDS).logits)


def test_bare_model_and_float32_weights_are_memory_mapped(tiny_model_dir):
    model = RwkvForCausalLM.from_pretrained(tiny_model_dir)
    trunk = RwkvModel.from_pretrained(tiny_model_dir)
    out = trunk(IDS, output_hidden_states=True)
    np.testing.assert_array_equal(out.last_hidden_state, out.hidden_states[-1])
    # Not copied: the arrays the model multiplies by are read-only views of the file's map.
    for w in (model.rwkv.blocks[0].att_key, model.rwkv.blocks[6].ffn_value, model.head):
        assert not w.flags.owndata and not w.flags.writeable


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_files_load_as_their_rounded_values(tmp_path, dtype):
    from rwkv_np.convert import save_pretrained

    save_pretrained(tmp_path, CONFIG, WEIGHTS, dtype=dtype)
    sd = read(tmp_path)[2]
    model = RwkvForCausalLM.from_pretrained(tmp_path)
    x = WEIGHTS["head.weight"]
    y = dequantize(model.head)
    # Both formats round to nearest: float16 keeps 11 significant bits, bfloat16 8.
    bits = 11 if dtype == "float16" else 8
    assert np.all(np.abs(y - x) <= np.abs(x) * 2.0 ** -bits + 2.0 ** -24)
    assert sd["head.weight"].dtype.itemsize == 2
    # Kept 16-bit in memory (weights=None: as on disk), for the matrices and the embeddings.
    for stored, name in ((model.head, "head.weight"), (model.rwkv.embeddings, "rwkv.embeddings.weight"),
                         (model.rwkv.blocks[0].ffn_key, "rwkv.blocks.0.feed_forward.key.weight")):
        assert stored.nbytes == WEIGHTS[name].size * 2


@pytest.mark.parametrize("weights, tol", [("float16", 3e-3), ("bfloat16", 3e-2), ("int8", 8e-2)])
def test_compact_weight_storage_stays_close_to_float32(weights, tol):
    """16-bit and int8 matrices (widened inside linear's kernels) against the float64 reference,
    in prefill and in single-token steps; the bounds are these formats' rounding on this model."""
    model = RwkvForCausalLM(CONFIG, WEIGHTS, "float32", weights)
    ref = reference.forward(WEIGHTS, CONFIG, IDS)["logits"]
    assert rel_err(model(IDS).logits, ref) < tol
    state = model(IDS[:, :5]).state
    assert rel_err(model(IDS[:, 5:6], state=state).logits[:, 0], ref[:, 5]) < tol


def test_feed_forward_branch_matches_reference():
    out = MODEL64(IDS, output_attentions=True)
    for got, want in zip(out.feed_forward, reference.forward(WEIGHTS, CONFIG, IDS)["feed_forward"]):
        assert rel_err(got, want) < 1e-12


def test_checkpoint_files_load_directly(shared_data):
    """from_pretrained takes an rwkv.cpp .bin (or .pth) file as well as an HF directory."""
    model = RwkvForCausalLM.from_pretrained(shared_data / "rwkvcpp" / "tiny-rwkv-4v0-660K-FP32.bin")
    expected = np.fromfile(shared_data / "rwkvcpp" / "expected-logits-4v0-660K.bin", "<f4")
    assert np.abs(model([34, 105, 110]).logits[0, -1] - expected).max() < 1e-5
