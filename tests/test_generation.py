"""Generation: greedy equals HF transformers' `generate`; sampling is reproducible by seed; rows of a
batch equal batch-of-one runs; stops cut where they should; states saved mid-way continue exactly.

Two kinds of model: the committed HF fixtures and tiny random models (real RWKV-4 numbers), and
`ScriptedModel`, a stand-in with the model's call signature whose next token is a fixed function
of the last one, so that where a stop must land is known in advance."""
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES
from rwkv_np import RwkvConfig, RwkvForCausalLM
from rwkv_np.errors import InputError, ModelFileError
from rwkv_np.generation import TextStream, generate, prefill
from rwkv_np.state_file import load_state, save_state
from rwkv_np.tokenizer import Tokenizer
from rwkv_np.convert import save_pretrained

HF_GENERATE_FIXTURES = ["tiny", "deep_rescale6", "rescale2_ffn37", "wide_eps_norescale", "tied",
                        "sharded", "fp16", "bf16"]


class ScriptedModel:
    """Next token = successor[last token], with logit 10 (all others 0). Its state counts the
    tokens fed (state[0]) and remembers the last one (state[1]), so tests can see what it saw."""

    def __init__(self, successor, eos_token_id=None):
        self.successor = np.asarray(successor)
        self.config = SimpleNamespace(vocab_size=len(successor), eos_token_id=eos_token_id)
        self.calls = []  # the (B, T) shape of every call

    def __call__(self, input_ids, state=None, use_cache=True, logits_to_keep=0):
        ids = np.asarray(input_ids)
        self.calls.append(ids.shape)
        B, T = ids.shape
        state = [np.zeros((B, 1, 1)) for _ in range(5)] if state is None else [s.copy() for s in state]
        state[0][:, 0, 0] += T
        state[1][:, 0, 0] = ids[:, -1]
        logits = np.zeros((B, T, len(self.successor)), dtype=np.float32)
        np.put_along_axis(logits, self.successor[ids][..., None], 10.0, axis=-1)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits, state=state)


class PieceTokenizer(Tokenizer):
    """Token i stands for PIECES[i]: ASCII words, "\\n", and the two bytes of "é" as two tokens."""
    PIECES = [b"<eos>", b"a", b"b", b"c", b"ab", b"ca", b"\n", b"\n\n", b"xyz", b"\xc3", b"\xa9", b" "]
    vocab_size, eos_token_id, pad_token_id = len(PIECES), 0, 0

    def encode(self, text):
        raise NotImplementedError  # tests feed ids

    def token_bytes(self, token_id):
        return self.PIECES[token_id]


def hf_fixture(name):
    directory = FIXTURES / "hf" / name
    return RwkvForCausalLM.from_pretrained(directory), load_file(directory / "expected.safetensors")


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """A random RWKV-4 (V=97, H=24, L=3), for batch, seed and state tests."""
    from conftest import random_state_dict
    directory = tmp_path_factory.mktemp("random_model")
    config = RwkvConfig(vocab_size=97, hidden_size=24, num_hidden_layers=3)
    save_pretrained(directory, config, random_state_dict(config, seed=11, scale=0.6))
    return RwkvForCausalLM.from_pretrained(directory)


# --- 1. greedy = HF ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", HF_GENERATE_FIXTURES)
def test_greedy_equals_hf_generate(name):
    model, expected = hf_fixture(name)
    prompt, want = expected["generate.prompt_ids"], expected["generate.sequences"]
    got = generate(model, prompt, max_new_tokens=want.shape[1] - prompt.shape[1], eos_token_id=[])
    np.testing.assert_array_equal(got, want)


def test_greedy_equals_an_argmax_chain_and_top_k_1_and_tiny_top_p():
    model, expected = hf_fixture("deep_rescale6")
    prompt = expected["generate.prompt_ids"]
    out = model(prompt)
    chain = []
    for _ in range(12):
        chain.append(int(np.argmax(out.logits[0, -1])))
        out = model(np.array([[chain[-1]]]), state=out.state)
    kw = dict(max_new_tokens=12, eos_token_id=[], return_dict_in_generate=True)
    assert generate(model, prompt, **kw).new_tokens[0] == chain
    assert generate(model, prompt, do_sample=True, top_k=1, seed=0, **kw).new_tokens[0] == chain
    assert generate(model, prompt, do_sample=True, top_p=1e-6, seed=0, **kw).new_tokens[0] == chain


# --- 2. seeds ---------------------------------------------------------------------------------

def test_same_seed_same_text_other_seed_other_text(random_model):
    kw = dict(max_new_tokens=20, do_sample=True, temperature=1.5, eos_token_id=[])
    a = generate(random_model, [5, 6, 7], seed=1, **kw)
    np.testing.assert_array_equal(a, generate(random_model, [5, 6, 7], seed=1, **kw))
    np.testing.assert_array_equal(a, generate(random_model, [5, 6, 7], seed=np.random.default_rng(1), **kw))
    assert (a != generate(random_model, [5, 6, 7], seed=2, **kw)).any()


# --- 4. batches -------------------------------------------------------------------------------

@pytest.mark.parametrize("prompts", [
    [[3, 1, 4, 1], [5, 9, 2, 6], [5, 3, 5, 8], [9, 7, 9, 3]],          # equal lengths: one batched prefill
    [[3], [1, 4, 1, 5, 9, 2, 6], [5, 3], [5, 8, 9, 7, 9]],              # ragged: row by row
])
@pytest.mark.parametrize("sampling", [dict(), dict(do_sample=True, temperature=1.3, top_p=0.9)])
def test_batch_of_four_equals_four_single_runs(random_model, prompts, sampling):
    seeds = [10, 11, 12, 13]
    kw = dict(max_new_tokens=10, eos_token_id=[73], return_dict_in_generate=True, **sampling)
    batch = generate(random_model, prompts, seed=seeds, **kw)
    assert "eos" in batch.stop_reasons  # rows stop at different steps (checked on this model)
    for b, prompt in enumerate(prompts):
        single = generate(random_model, [prompt], seed=[seeds[b]], **kw)
        assert batch.new_tokens[b] == single.new_tokens[0]
        assert batch.stop_reasons[b] == single.stop_reasons[0]
        for k in range(5):
            np.testing.assert_allclose(batch.state[k][b], single.state[k][0], rtol=1e-4, atol=1e-5)  # float32, other kernels


def test_padded_batch_from_attention_mask_equals_ragged_lists(random_model):
    ids = np.array([[0, 0, 3, 4], [7, 8, 9, 10]])
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    kw = dict(max_new_tokens=6, eos_token_id=[])
    got = generate(random_model, ids, attention_mask=mask, **kw)
    want = generate(random_model, [[3, 4], [7, 8, 9, 10]], **kw)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (2, 10) and (got[0, :2] == 0).all()  # left padding kept in the output


# --- 3. stops ---------------------------------------------------------------------------------

# successor table over PieceTokenizer ids: 1 a -> 4 ab -> 5 ca -> 6 \n -> 7 \n\n -> 8 xyz -> 3 c -> 2 b -> 9 -> 10 (é) -> 11 ' ' -> 1 ...
SUCCESSOR = [1, 4, 9, 2, 5, 6, 7, 8, 3, 10, 11, 1]
TEXT_FROM_1 = "abca\n\n\nxyzcbé aab"  # the 12 tokens after prompt [1]


def test_scripted_model_gives_the_expected_text():
    out = generate(ScriptedModel(SUCCESSOR), [1], max_new_tokens=12, eos_token_id=[], return_dict_in_generate=True)
    assert PieceTokenizer().decode(out.new_tokens[0]) == TEXT_FROM_1


@pytest.mark.parametrize("stop, tokens_kept, text", [
    ("ca", 2, "ab"),          # within one token
    ("bc", 2, "a"),           # spans two tokens ("ab" + "ca") and ends inside the second
    ("a\n\n", 4, "abc"),      # spans three tokens ("ca", "\n", "\n\n")
    ("é", 9, "abca\n\n\nxyzcb"),  # a character split over two tokens
    ("not there", 12, TEXT_FROM_1),
])
def test_stop_strings_cut_text_and_tokens(stop, tokens_kept, text):
    model, tok = ScriptedModel(SUCCESSOR), PieceTokenizer()
    stream = TextStream(model, tok, [1], max_new_tokens=12, eos_token_id=[], stop_strings=[stop])
    assert "".join(stream) == text == stream.text
    assert len(stream.output.new_tokens[0]) == tokens_kept
    assert stream.output.state[0][0, 0, 0] == 1 + tokens_kept  # the state covers every kept token


def test_stop_strings_and_sequences_act_per_row():
    model, tok = ScriptedModel(SUCCESSOR), PieceTokenizer()
    # rows start at different places of the cycle; "\n\n" and "cb" are the stops
    out = generate(model, [[1], [7], [3]], max_new_tokens=12, eos_token_id=[], stop_strings=["\n\n", "cb"],
                   tokenizer=tok, return_dict_in_generate=True)
    # row 1: the token "\n\n" completes the stop and is kept; row 3: its prompt "c" is not part of
    # the generated text, so "c" + "b" does not stop it
    assert [tok.decode(t) for t in out.new_tokens] == ["abca\n\n\n", "xyzcb", "bé aabca\n\n\n"]
    assert out.stop_reasons == ["stop_string"] * 3
    out = generate(model, [[1], [7], [3]], max_new_tokens=12, eos_token_id=[], stop_sequences=[[8, 3], [4]],
                   return_dict_in_generate=True)
    assert out.new_tokens == [[4], [8, 3], [2, 9, 10, 11, 1, 4]]
    assert out.sequences.shape == (3, 1 + 6) and (out.sequences[0, 2:] == 0).all()  # padded after stop


def test_eos_stops_a_row_and_is_kept():
    out = generate(ScriptedModel(SUCCESSOR, eos_token_id=6), [1], max_new_tokens=12, return_dict_in_generate=True)
    assert out.new_tokens == [[4, 5, 6]] and out.stop_reasons == ["eos"]


class RwkvStoppingCriteria:
    """The seed's example (a transformers StoppingCriteria), ported to numpy: stop when the last
    tokens are "\\n\\n", i.e. [187, 187] or the single token 535 of the 20B tokenizer."""

    def __init__(self, eos_sequence=(187, 187), eos_token_id=535):
        self.eos_sequence, self.eos_token_id = list(eos_sequence), eos_token_id

    def __call__(self, input_ids, scores, **kwargs):
        return np.array([row[-2:].tolist() == self.eos_sequence or row[-1] == self.eos_token_id
                         for row in input_ids])


def test_rwkv_stopping_criteria_protocol():
    successor = np.arange(600) + 1
    successor[[40, 41, 187, 300]] = [187, 10, 187, 535]   # 40 -> 187 -> 187 ; 300 -> 535
    criteria = RwkvStoppingCriteria()
    out = generate(ScriptedModel(successor), [[39], [299], [50]], max_new_tokens=5, eos_token_id=[],
                   stopping_criteria=[criteria], return_dict_in_generate=True)
    assert out.new_tokens == [[40, 187, 187], [300, 535], [51, 52, 53, 54, 55]]
    assert out.stop_reasons == ["stopping_criteria", "stopping_criteria", "length"]
    # a criterion may also answer with one bool for the whole batch
    seen = []
    out = generate(ScriptedModel(successor), [[1, 2]], max_new_tokens=9, eos_token_id=[],
                   stopping_criteria=lambda ids, scores: seen.append((ids.shape, scores.shape)) or ids.shape[1] >= 5,
                   return_dict_in_generate=True)
    assert out.new_tokens == [[3, 4, 5]] and seen == [((1, 3), (1, 600)), ((1, 4), (1, 600)), ((1, 5), (1, 600))]


def test_stream_never_splits_a_character():
    stream = TextStream(ScriptedModel(SUCCESSOR), PieceTokenizer(), [1], max_new_tokens=12, eos_token_id=[])
    pieces = list(stream)
    assert "".join(pieces) == TEXT_FROM_1 and "é" in pieces and "\ufffd" not in "".join(pieces)


# --- prefill and states -----------------------------------------------------------------------

def test_prefill_runs_in_chunks_and_matches_one_pass(random_model):
    prompt = np.random.default_rng(0).integers(0, 97, (1, 50))
    one_logits, one_state = prefill(random_model, prompt, chunk_size=1000)
    calls = []
    spy = lambda ids, **kw: calls.append(np.shape(ids)) or random_model(ids, **kw)
    spy.config = random_model.config
    logits, state = prefill(spy, prompt, chunk_size=16)
    assert calls == [(1, 16), (1, 16), (1, 16), (1, 2)]
    np.testing.assert_allclose(logits, one_logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(state, one_state):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    kw = dict(max_new_tokens=8, eos_token_id=[])
    np.testing.assert_array_equal(generate(spy, prompt, prefill_chunk_size=7, **kw), generate(random_model, prompt, **kw))


def test_continuing_from_a_saved_state_equals_an_uninterrupted_run(random_model, tmp_path):
    P, Q = [4, 8, 15, 16, 23, 42], [7, 7, 1]
    kw = dict(eos_token_id=[], return_dict_in_generate=True)
    # a prompt's state, saved and loaded, then more prompt
    after_p = generate(random_model, [P], max_new_tokens=0, **kw)
    save_state(tmp_path / "p.safetensors", after_p.state, random_model)
    resumed = generate(random_model, [Q], max_new_tokens=15, state=load_state(tmp_path / "p.safetensors", random_model), **kw)
    assert resumed.new_tokens == generate(random_model, [P + Q], max_new_tokens=15, **kw).new_tokens
    # a generated turn, saved and loaded, then the next turn
    turn1 = generate(random_model, [P], max_new_tokens=10, **kw)
    save_state(tmp_path / "t.safetensors", turn1.state, random_model)
    turn2 = generate(random_model, [Q], max_new_tokens=10, state=load_state(tmp_path / "t.safetensors", random_model), **kw)
    whole = generate(random_model, [P + turn1.new_tokens[0] + Q], max_new_tokens=10, **kw)
    assert turn2.new_tokens == whole.new_tokens


def test_state_file_rejects_another_model(random_model, tmp_path):
    from conftest import random_state_dict
    state = generate(random_model, [[1, 2]], max_new_tokens=0, return_dict_in_generate=True).state
    save_state(tmp_path / "s.safetensors", state, random_model)
    other_cfg = RwkvConfig(vocab_size=97, hidden_size=32, num_hidden_layers=3)
    save_pretrained(tmp_path / "other", other_cfg, random_state_dict(other_cfg))
    with pytest.raises(ModelFileError, match="different model.*hidden_size"):
        load_state(tmp_path / "s.safetensors", RwkvForCausalLM.from_pretrained(tmp_path / "other"))
    save_pretrained(tmp_path / "same_shape", random_model.config, random_state_dict(random_model.config, seed=99))
    with pytest.raises(ModelFileError, match="other weights"):
        load_state(tmp_path / "s.safetensors", RwkvForCausalLM.from_pretrained(tmp_path / "same_shape"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a state")
    with pytest.raises(ModelFileError, match="junk.safetensors"):
        load_state(tmp_path / "junk.safetensors", random_model)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(do_sample=True, temperature=0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=1.5), "top_p"),
    (dict(seed=[1, 2]), "seed"),
    (dict(stop_strings=["x"]), "tokenizer"),
    (dict(suppress_tokens=list(range(12))), "suppress_tokens"),
])
def test_bad_arguments_are_input_errors(kwargs, message):
    kwargs.setdefault("max_new_tokens", 3)
    with pytest.raises(InputError, match=message):
        generate(ScriptedModel(SUCCESSOR), [[1]], **kwargs)


def test_empty_prompt_row_is_an_input_error():
    with pytest.raises(InputError, match="row 1"):
        generate(ScriptedModel(SUCCESSOR), [[1], []], max_new_tokens=2)
