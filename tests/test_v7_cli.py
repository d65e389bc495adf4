"""Every rwkv-np verb on RWKV-7 models: a random fla-layout directory (3 heads of 16, byte vocab)
and rwkv.cpp's tiny 7v0 file (one head of 64; skipped without ../shared/data).

References independent of the fast path: the float64 reference (rwkv_np/v7/reference.py, held to
rwkv.cpp and BlinkDL's package in test_v7_reference.py) gives the greedy continuations, the loss,
the states and the parameter counts are written out from RWKV567_SPEC.md section 4.2; rwkv.cpp's
expected logits judge golden bundles and converted files.
"""
import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from safetensors import safe_open

from test_v7_model import random_params
from rwkv_np import RwkvForCausalLM
from rwkv_np.cli import main
from rwkv_np.formats.rwkvcpp import read_records
from rwkv_np.storage import as_float
from rwkv_np.v7 import names, reference
from rwkv_np.v7.config import Rwkv7Config

RANDOM = Rwkv7Config(vocab_size=256, hidden_size=48, num_hidden_layers=3, head_dim=16, intermediate_size=100,
                     decay_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=4, gate_low_rank_dim=12)
GREEDY = ["--temperature", "0", "--ban", "0"]  # argmax over every byte but 0 (the eos)


class V7(NamedTuple):
    path: str
    config: Rwkv7Config
    params: dict          # HF-named float64, for the reference


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory):
    from rwkv_np.convert import save_pretrained
    directory = tmp_path_factory.mktemp("v7") / "random"
    params = random_params(RANDOM, seed=3)
    save_pretrained(directory, RANDOM, params)
    return V7(str(directory), RANDOM, {k: v.astype(np.float64) for k, v in params.items()})


def tiny_bin(shared_data) -> V7:
    path = shared_data / "rwkvcpp" / "tiny-rwkv-7v0-834K-FP32.bin"
    config, params = names.from_rwkvcpp(*read_records(path), str(path))
    return V7(str(path), config, {k: as_float(v, np.float64) for k, v in params.items()})


@pytest.fixture(params=["random_dir", "tiny_bin"])
def v7(request):
    if request.param == "random_dir":
        return request.getfixturevalue("random_dir")
    return tiny_bin(request.getfixturevalue("shared_data"))


def reference_greedy(m: V7, ids, n, state=None):
    """n argmax tokens (byte 0 excluded) after ids, by the float64 reference; and the state after ids."""
    out = reference.forward(m.params, m.config, [list(ids)], state)
    after_prompt, new = out["state"], []
    for _ in range(n):
        z = out["logits"][0, -1].copy()
        z[0] = -np.inf
        new.append(int(np.argmax(z)))
        out = reference.forward(m.params, m.config, [[new[-1]]], out["state"])
    return new, after_prompt


def text(tokens) -> str:
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


def test_generate_prints_the_reference_greedy_continuation(v7, capsys):
    assert main(["generate", "Once upon a time", "--model", v7.path, "--max-new-tokens", "12", *GREEDY]) == 0
    assert capsys.readouterr().out == text(reference_greedy(v7, b"Once upon a time", 12)[0]) + "\n"


def test_saved_state_holds_the_reference_state_and_continues_the_text(v7, tmp_path, capsys):
    file = str(tmp_path / "s.safetensors")
    assert main(["generate", "Once upon", "--model", v7.path, "--max-new-tokens", "0", "--save-state", file,
                 *GREEDY]) == 0
    _, want = reference_greedy(v7, b"Once upon", 0)
    with safe_open(file, framework="numpy") as f:
        assert sorted(f.keys()) == ["att_x", "ffn_x", "wkv"]
        for name, w in zip(("att_x", "ffn_x", "wkv"), want):   # reference.forward's state order
            got = f.get_tensor(name)
            assert got.shape == w.shape and np.abs(got - w).max() < 1e-5 * np.abs(w).max()
    capsys.readouterr()
    assert main(["generate", " a time", "--model", v7.path, "--max-new-tokens", "12", "--load-state", file,
                 *GREEDY]) == 0
    assert capsys.readouterr().out == text(reference_greedy(v7, b"Once upon a time", 12)[0]) + "\n"


def test_a_state_of_another_model_is_refused(random_dir, shared_data, tmp_path, capsys):
    file = str(tmp_path / "s.safetensors")
    assert main(["generate", "Hi", "--model", random_dir.path, "--max-new-tokens", "1", "--save-state", file]) == 0
    capsys.readouterr()
    tiny = tiny_bin(shared_data).path
    assert main(["generate", "Hi", "--model", tiny, "--max-new-tokens", "1", "--load-state", file]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "state was saved for a different model" in err


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-6)])  # (6 printed digits)
def test_score_equals_the_reference_loss(v7, tmp_path, capsys, dtype, tol):
    sample = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    (tmp_path / "t.txt").write_text(sample, encoding="utf-8")
    assert main(["score", str(tmp_path / "t.txt"), "--model", v7.path, "--chunk-size", "17", "--dtype", dtype]) == 0
    out = capsys.readouterr().out
    ids = list(sample.encode())
    logits = reference.forward(v7.params, v7.config, [ids])["logits"][0, :-1]
    z = logits - logits.max(-1, keepdims=True)
    nll = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(ids) - 1), ids[1:]])
    assert float(re.search(r"^(\S+) nats/char$", out, flags=re.M).group(1)) == pytest.approx(nll, rel=tol)
    assert float(re.search(r"^(\S+) bits/byte$", out, flags=re.M).group(1)) == pytest.approx(nll / np.log(2), rel=tol)


def spec_parameters(c: Rwkv7Config) -> tuple[int, int]:
    """(values, tensors) of an RWKV-7 model with a head, counted from RWKV567_SPEC.md 4.2(c)."""
    V, C, F, L = c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers
    lora = lambda D, bias: 2 * D * C + (C if bias else 0)  # noqa: E731
    layer = (2 * C + 2 * C + 6 * C + 4 * C * C + lora(c.decay_low_rank_dim, True) + lora(c.a_low_rank_dim, True)
             + lora(c.gate_low_rank_dim, False) + 2 * C + C + 2 * C + C + 2 * F * C)   # norms .. ffn
    values = V * C + 2 * C + L * layer + (L - 1) * lora(c.v_low_rank_dim, True) + 2 * C + V * C
    tensors = 1 + 2 + L * 30 + (L - 1) * 3 + 2 + 1
    return values, tensors


def test_info_describes_the_model(v7, capsys):
    assert main(["info", "--model", v7.path]) == 0
    out = capsys.readouterr().out
    values, tensors = spec_parameters(v7.config)
    assert "(RWKV-7)" in out and f"parameters  {values:,} in {tensors} tensors" in out
    assert "bytes (vocab 256)" in out and f"float32 x{tensors}" in out
    config = json.loads(out.split("config.json ", 1)[1])
    assert config["model_type"] == "rwkv7" and config["num_heads"] == v7.config.num_heads


def test_golden_bundle_carries_the_v7_state_and_compares(v7, tmp_path, capsys):
    bundle = tmp_path / "g"
    assert main(["golden", "--model", v7.path, "--ids", "34 105 110 5", "--new-tokens", "3", "--out", str(bundle)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["generation"] == "RWKV-7"
    assert manifest["model"]["state_names"] == ["att_x", "ffn_x", "wkv"]
    c = v7.config
    want_new, want_state = reference_greedy(v7, [34, 105, 110, 5], 3)
    with safe_open(str(bundle / "golden.safetensors"), framework="numpy") as f:
        assert f.get_tensor("prompt0.state.wkv").shape == (c.num_hidden_layers, c.num_heads, c.head_dim, c.head_dim)
        for name, w in zip(("att_x", "ffn_x", "wkv"), want_state):
            np.testing.assert_allclose(f.get_tensor(f"prompt0.state.{name}"), w[0], rtol=0, atol=1e-12)
    if 0 not in manifest["prompts"][0]["generated_ids"]:
        assert manifest["prompts"][0]["generated_ids"] == want_new
    capsys.readouterr()
    assert main(["compare", str(bundle), str(bundle / "float32.safetensors")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("PASS")
    with safe_open(str(bundle / "float32.safetensors"), framework="numpy") as f:
        wkv = f.get_tensor("prompt0.state.wkv")
    wkv[-1, 0, 1, 2] += 0.01 * np.abs(wkv).max()
    from safetensors.numpy import save_file
    save_file({"prompt0.state.wkv": wkv}, str(tmp_path / "off.safetensors"))
    assert main(["compare", str(bundle), str(tmp_path / "off.safetensors")]) == 1
    out = capsys.readouterr().out
    assert "first divergence: prompt0 final state after the prompt (prompt0.state.wkv" in out


def test_golden_of_the_tiny_file_holds_rwkvcpp_logits(shared_data, tmp_path, capsys):
    """rwkv.cpp's own expected logits for '"in' pass `compare` against rwkv_np's bundle."""
    d = shared_data / "rwkvcpp"
    assert main(["golden", "--model", str(d / "tiny-rwkv-7v0-834K-FP32.bin"), "--prompt", '"in',
                 "--new-tokens", "2", "--out", str(tmp_path / "g")]) == 0
    assert main(["compare", str(tmp_path / "g"), str(d / "expected-logits-7v0-834K.bin")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("PASS")


def test_convert_writes_fla_layout_that_loads_back(shared_data, tmp_path, capsys):
    """rwkv.cpp .bin -> fla's RWKV7ForCausalLM directory: names and config.json keys as fla's
    convert_from_rwkv7.py writes them; it loads back to rwkv.cpp's expected logits."""
    d = shared_data / "rwkvcpp"
    out = tmp_path / "hf"
    assert main(["convert", str(d / "tiny-rwkv-7v0-834K-FP32.bin"), "--out", str(out)]) == 0
    assert "12 layers, hidden 64, vocab 256" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "rwkv7" and config["architectures"] == ["RWKV7ForCausalLM"]
    assert {k: config[k] for k in ("hidden_size", "head_dim", "num_heads", "num_hidden_layers", "vocab_size",
                                   "decay_low_rank_dim", "a_low_rank_dim", "v_low_rank_dim",
                                   "gate_low_rank_dim", "intermediate_size")} == \
        dict(hidden_size=64, head_dim=64, num_heads=1, num_hidden_layers=12, vocab_size=256, decay_low_rank_dim=32,
             a_low_rank_dim=32, v_low_rank_dim=32, gate_low_rank_dim=32, intermediate_size=256)
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert shapes["model.embeddings.weight"] == [256, 64] and shapes["lm_head.weight"] == [256, 64]
    assert shapes["model.layers.0.attn.w_lora.lora.0.weight"] == [32, 64]
    assert shapes["model.layers.1.attn.v_lora.lora.2.bias"] == [64]
    assert shapes["model.layers.3.attn.x_g"] == [1, 1, 64] and shapes["model.layers.3.attn.r_k"] == [1, 64]
    assert "model.layers.0.attn.v_lora.lora.0.weight" not in shapes
    logits = RwkvForCausalLM.from_pretrained(out)([[34, 105, 110]]).logits[0, -1]
    assert np.abs(logits - np.fromfile(d / "expected-logits-7v0-834K.bin", "<f4")).max() < 2e-6


@pytest.mark.parametrize("name", ["h2n32", "h4n32_ranks"])
def test_convert_of_a_blinkdl_pth_gives_the_rwkv_package_logits(tmp_path, name):
    """tests/fixtures/v7 .pth (float16 / bfloat16, BlinkDL's names and (C, D) LoRAs) -> fla
    directory: the logits are those BlinkDL's package computed (within 5e-5, the fixtures' bound)."""
    from rwkv_np.formats.safetensors import read_safetensors
    fixtures = Path(__file__).resolve().parent / "fixtures" / "v7"
    if not (fixtures / f"{name}.pth").exists():
        pytest.skip(f"{fixtures / name}.pth is absent")
    assert main(["convert", str(fixtures / f"{name}.pth"), "--out", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "rwkv7"
    want, _ = read_safetensors(str(fixtures / f"{name}.expected.safetensors"))
    logits = RwkvForCausalLM.from_pretrained(tmp_path / "hf")(want["prompt.input_ids"]).logits[0]
    assert np.abs(logits - want["prompt.logits_full"]).max() < 5e-5


def test_convert_keeps_every_value(random_dir, tmp_path):
    assert main(["convert", random_dir.path, "--out", str(tmp_path / "c")]) == 0
    ids = [[5, 60, 200, 17, 99]]
    np.testing.assert_array_equal(RwkvForCausalLM.from_pretrained(tmp_path / "c")(ids).logits,
                                  RwkvForCausalLM.from_pretrained(random_dir.path)(ids).logits)


@pytest.mark.parametrize("dtype, tol", [("float16", 1e-2), ("bfloat16", 3e-2)])
def test_convert_to_16_bit_runs_close_to_the_reference(random_dir, tmp_path, dtype, tol):
    """--dtype rounds every tensor (mixes, norms, decay biases too), so the logits move more than
    with 16-bit matrices alone: measured 4.6e-3 (float16) and 1.4e-2 (bfloat16) of max |logit|."""
    assert main(["convert", random_dir.path, "--out", str(tmp_path / "c"), "--dtype", dtype]) == 0
    ids = [[5, 60, 200, 17, 99]]
    got = RwkvForCausalLM.from_pretrained(tmp_path / "c")(ids).logits
    want = reference.forward(random_dir.params, RANDOM, ids)["logits"]
    assert np.abs(got - want).max() < tol * np.abs(want).max()


def test_quantize_writes_int8_matrices_and_keeps_r_k_float(v7, tmp_path, capsys):
    """The file's logits equal loading the source with weights="int8" (the same rounding) and stay
    within 5e-2 of the reference's max |logit|; r_k (H, N), a per-head vector, is not quantized."""
    out = tmp_path / "q"
    assert main(["quantize", v7.path, "--out", str(out)]) == 0
    assert "int8 matrices" in capsys.readouterr().out
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        assert f.get_tensor("model.layers.1.attn.r_k").dtype == np.float32
        assert f.get_tensor("model.layers.1.attn.k_proj.weight").dtype == np.int8
        assert f.get_tensor("model.layers.1.attn.a_lora.lora.2.weight").dtype == np.int8
    ids = [[72, 101, 108, 108, 111]]
    got = RwkvForCausalLM.from_pretrained(out)(ids).logits
    np.testing.assert_array_equal(got, RwkvForCausalLM.from_pretrained(v7.path, weights="int8")(ids).logits)
    want = reference.forward(v7.params, v7.config, ids)["logits"]
    assert np.abs(got - want).max() < 5e-2 * np.abs(want).max()
    assert main(["generate", "Hi", "--model", str(out), "--max-new-tokens", "4"]) == 0


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_weights_option_generates_with_that_storage(v7, weights, capsys):
    assert main(["generate", "Hello", "--model", v7.path, "--max-new-tokens", "8", "--weights", weights,
                 *GREEDY]) == 0
    model = RwkvForCausalLM.from_pretrained(v7.path, weights=weights)
    new = model.generate([list(b"Hello")], max_new_tokens=8, suppress_tokens=[0], eos_token_id=[])[0, 5:]
    assert capsys.readouterr().out == text(new) + "\n"


def test_chat_keeps_a_v7_state_and_saves_it(random_dir, tmp_path, capsys, monkeypatch):
    """`chat` through a pipe: two turns, /save writes the conversation's RWKV-7 state, which
    load_state gives back for the model (and the state after both turns is not the empty one)."""
    import io
    from rwkv_np import load_state
    file = tmp_path / "chat.safetensors"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"Hello there\nAnd then?\n/save {file}\n"))
    assert main(["chat", "--model", random_dir.path, "--max-new-tokens", "6", *GREEDY]) == 0
    out = capsys.readouterr().out
    assert out.count("Bot:") == 2 and f"[saved to {file}]" in out
    model = RwkvForCausalLM.from_pretrained(random_dir.path)
    state = load_state(file, model)
    assert [s.shape for s in state] == [(1, 3, 48), (1, 3, 48), (1, 3, 3, 16, 16)]
    assert all(np.abs(s).max() > 0 for s in state)
