"""The Python API paths of rwkv_np on RWKV-7 models, entered the way users enter them
(RwkvForCausalLM / RwkvModel.from_pretrained on a path, rwkv_np.generate): several rows with a
state, hidden states and branch outputs, the loss, and the bare trunk.

Expected values come from the float64 reference (rwkv_np/v7/reference.py), which
test_v7_reference.py holds to rwkv.cpp and to BlinkDL's package. Models: test_v7_cli.py's random
fla-layout directory and rwkv.cpp's tiny 7v0 file.
"""
import json

import numpy as np
import pytest

from test_v7_cli import RANDOM, random_dir, reference_greedy, v7  # noqa: F401  (fixtures)
from rwkv_np import ModelFileError, RwkvForCausalLM, RwkvModel, generate
from rwkv_np.convert import save_pretrained
from rwkv_np.v7 import reference
from rwkv_np.v7.model import Rwkv7ForCausalLM, Rwkv7Model


def rel(got, want):
    return np.abs(got - want).max() / np.abs(want).max()


PREFIXES = [b"Once", b"Fair", b"Lord"]
PROMPTS = {"equal": [b" upon", b" is f", b" what"], "ragged": [b" upon a", b" is", b" what fools"]}


@pytest.mark.parametrize("lengths", PROMPTS)
def test_several_rows_continue_their_own_states(v7, lengths):
    """Three rows, each from its own prefix's state (a B=3 state), greedy: each row's tokens are the
    reference's argmax chain for prefix + prompt, and each row's returned state is the reference's
    after prefix + prompt + its new tokens."""
    model = RwkvForCausalLM.from_pretrained(v7.path)
    assert isinstance(model, Rwkv7ForCausalLM)
    state = model([list(p) for p in PREFIXES]).state
    prompts = PROMPTS[lengths]
    out = generate(model, [list(p) for p in prompts], max_new_tokens=6, state=state, suppress_tokens=[0],
                   eos_token_id=[], return_dict_in_generate=True)
    for b in range(3):
        ids = list(PREFIXES[b] + prompts[b])
        assert out.new_tokens[b] == reference_greedy(v7, ids, 6)[0]
        want = reference.forward(v7.params, v7.config, [ids + out.new_tokens[b]])["state"]
        for got, w in zip(out.state, want):
            assert rel(got[b], w[0]) < 1e-5


def test_sampled_rows_equal_single_row_runs(random_dir):  # noqa: F811
    """Per-row seeds: row b of a batch is the batch-of-one run with seed[b], from the same state."""
    model = RwkvForCausalLM.from_pretrained(random_dir.path)
    state = model([list(p) for p in PREFIXES]).state
    prompts = [list(p) for p in PROMPTS["ragged"]]
    kw = dict(max_new_tokens=8, do_sample=True, top_p=0.9, eos_token_id=[], return_dict_in_generate=True)
    batch = generate(model, prompts, state=state, seed=[1, 2, 3], **kw)
    for b in range(3):
        one = generate(model, [prompts[b]], state=[s[b:b + 1] for s in state], seed=[b + 1], **kw)
        assert one.new_tokens[0] == batch.new_tokens[b]


def test_hidden_states_branches_and_loss_match_the_reference(v7):
    model = RwkvForCausalLM.from_pretrained(v7.path)
    ids = np.array([list(b"Hello, world"), list(b"Good evening")])
    out = model(ids, output_hidden_states=True, output_attentions=True, labels=ids)
    ref = reference.forward(v7.params, v7.config, ids)
    L = v7.config.num_hidden_layers
    assert len(out.hidden_states) == L + 1 and len(out.attentions) == len(out.feed_forward) == L
    for key in ("hidden_states", "attentions", "feed_forward"):
        for got, want in zip(getattr(out, key), ref[key]):
            assert got.shape == want.shape and rel(got, want) < 1e-5, key
    assert rel(out.logits, ref["logits"]) < 1e-5
    for got, want in zip(out.state, ref["state"]):
        assert rel(got, want) < 1e-5
    z = ref["logits"][:, :-1] - ref["logits"][:, :-1].max(-1, keepdims=True)
    picked = np.take_along_axis(z, ids[:, 1:, None], -1)[..., 0]
    assert out.loss == pytest.approx(np.mean(np.log(np.exp(z).sum(-1)) - picked), rel=1e-5)


def test_trunk_gives_the_reference_last_hidden_state(v7):
    """RwkvModel.from_pretrained loads an RWKV-7 path as its trunk (fla's RWKV7Model); split with
    the state equals the whole, as in HF's RWKV example."""
    model = RwkvModel.from_pretrained(v7.path)
    assert isinstance(model, Rwkv7Model) and not hasattr(model, "head")
    ids = np.array([list(b"This is an example.")])
    whole = model(ids)
    want = reference.forward(v7.params, v7.config, ids)["hidden_states"][-1]
    assert whole.last_hidden_state.shape == want.shape and rel(whole.last_hidden_state, want) < 1e-5
    one = model(ids[:, :2])
    two = model(ids[:, 2:], state=one.state)
    split = np.concatenate([one.last_hidden_state, two.last_hidden_state], axis=1)
    assert rel(split, whole.last_hidden_state) < 1e-5


def test_a_headless_fla_directory_loads_as_a_trunk_only(random_dir, tmp_path):  # noqa: F811
    """A bare RWKV7Model checkpoint (no `model.` prefix, no lm_head): the trunk loads it, the causal
    LM names the missing head."""
    from safetensors.numpy import load_file, save_file
    tensors = load_file(f"{random_dir.path}/model.safetensors")
    bare = {k.removeprefix("model."): v for k, v in tensors.items() if k != "lm_head.weight"}
    (tmp_path / "bare").mkdir()
    save_file(bare, str(tmp_path / "bare" / "model.safetensors"))
    (tmp_path / "bare" / "config.json").write_text(json.dumps(RANDOM.to_dict()))
    ids = [list(b"abc")]
    got = RwkvModel.from_pretrained(tmp_path / "bare")(ids).last_hidden_state
    want = reference.forward(random_dir.params, RANDOM, ids)["hidden_states"][-1]
    assert rel(got, want) < 1e-5
    with pytest.raises(ModelFileError, match="missing tensor lm_head.weight"):
        RwkvForCausalLM.from_pretrained(tmp_path / "bare")


def test_tied_head_directory_round_trips(random_dir, tmp_path):  # noqa: F811
    """tie_word_embeddings: save_pretrained writes no lm_head; the loaded model's logits are the
    reference's with the embeddings as head."""
    import dataclasses
    config = dataclasses.replace(RANDOM, tie_word_embeddings=True)
    params = {k: v.astype(np.float32) for k, v in random_dir.params.items() if k != "lm_head.weight"}
    save_pretrained(tmp_path / "tied", config, {**params, "lm_head.weight": params["model.embeddings.weight"]})
    from safetensors import safe_open
    with safe_open(str(tmp_path / "tied" / "model.safetensors"), framework="numpy") as f:
        assert "lm_head.weight" not in f.keys() and "model.embeddings.weight" in f.keys()
    ids = [list(b"tied")]
    got = RwkvForCausalLM.from_pretrained(tmp_path / "tied")(ids).logits
    assert rel(got, reference.forward(params, config, ids)["logits"]) < 1e-5
