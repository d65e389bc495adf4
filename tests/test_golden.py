"""Golden bundles (rwkv_np.golden) and `compare` (rwkv_np.compare).

References independent of the code under test: HF transformers' outputs for the fixture models
(written as a candidate by tools/hf_candidate.py; skipped without transformers) and rwkv.cpp's
expected logits for its tiny model (../shared/data/rwkvcpp; skipped when absent). The golden's
own float64 numbers are checked against HF's stored fixture outputs too.
"""
import importlib.util
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import FIXTURES, REPO
from rwkv_np import InputError, ModelFileError, RwkvForCausalLM
from rwkv_np.compare import compare, format_report
from rwkv_np.golden import write_golden
from rwkv_np.load import load
from rwkv_np.formats.safetensors import read_safetensors

PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [3, 4, 5]]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A golden bundle of the 8-layer fixture (rescale_every 6 acts in it), two prompts, 6 new tokens."""
    out = tmp_path_factory.mktemp("golden") / "deep"
    manifest = write_golden(FIXTURES / "hf" / "deep_rescale6", PROMPTS, out, new_tokens=6, progress=False)
    return out, manifest


def golden_tensors(path):
    return {n: np.array(x) for n, x in read_safetensors(path / "golden.safetensors")[0].items()}


def test_bundle_layout_and_manifest(bundle):
    path, manifest = bundle
    assert sorted(p.name for p in path.iterdir()) == ["float32.safetensors", "golden.safetensors", "manifest.json"]
    assert json.loads((path / "manifest.json").read_text()) == manifest
    t = golden_tensors(path)
    L, H, V = 8, 32, 64
    assert t["prompt0.blocks.7.feed_forward"].shape == (11, H) and t["prompt0.blocks.7.output"].dtype == np.float64
    assert t["prompt1.logits"].shape == (3, V) and t["prompt1.state.max"].shape == (H, L)
    assert list(t["prompt0.input_ids"]) == PROMPTS[0] and len(t["prompt0.generated_ids"]) == 6
    assert manifest["model"]["files_sha256"].keys() >= {"config.json", "model.safetensors"}
    assert manifest["model"]["config"]["num_hidden_layers"] == L
    assert set(manifest["tolerances"]) == set(manifest["noise_floor"]) == {n for n in t if t[n].dtype.kind == "f"}
    noise = manifest["noise_floor"]["prompt0.logits"]
    assert 0 < noise["max_abs"] < manifest["tolerances"]["prompt0.logits"]["atol"] < 1e-3
    assert manifest["prompts"][0]["generated_ids"] == list(t["prompt0.generated_ids"])


def test_golden_blocks_sum_to_the_residual_stream(bundle):
    """x after block i = (x before + attention + feed_forward) / 2 at block 5 (rescale_every 6)."""
    t = golden_tensors(bundle[0])
    for i in range(1, 8):
        before = t[f"prompt0.blocks.{i - 1}.output"]
        total = before + t[f"prompt0.blocks.{i}.attention"] + t[f"prompt0.blocks.{i}.feed_forward"]
        np.testing.assert_allclose(t[f"prompt0.blocks.{i}.output"], total / (2 if i == 5 else 1), atol=1e-12)


def test_reference_run_in_chunks_equals_one_run():
    """write_golden feeds long prompts to the reference in chunks (state carried): same numbers."""
    from rwkv_np.convert import load_checkpoint
    from rwkv_np.golden import run_reference
    config, tensors = load_checkpoint(FIXTURES / "hf" / "rescale2_ffn37")
    params = {n: np.asarray(x, np.float64) for n, x in tensors.items()}
    whole, gen, _ = run_reference(params, config, PROMPTS[0], 3)
    chunked, gen4, _ = run_reference(params, config, PROMPTS[0], 3, chunk=4)
    assert gen == gen4 and whole.keys() == chunked.keys()
    for name in whole:
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_golden_matches_hf_stored_outputs(tmp_path):
    """The float64 golden equals transformers' stored float32 outputs for the fixture's first row."""
    expected = read_safetensors(FIXTURES / "hf" / "deep_rescale6" / "expected.safetensors")[0]
    ids = [int(i) for i in expected["input_ids"][0]]
    write_golden(FIXTURES / "hf" / "deep_rescale6", [ids], tmp_path, new_tokens=0, progress=False)
    t = golden_tensors(tmp_path)
    assert np.abs(t["prompt0.logits"] - expected["logits"][0]).max() < 1e-4
    assert np.abs(t["prompt0.blocks.3.output"] - expected["hidden_states.3"][0]).max() < 1e-4
    assert np.abs(t["prompt0.blocks.6.attention"] - expected["attentions.6"][0]).max() < 1e-4


def test_golden_compared_with_itself_passes(bundle):
    result = compare(bundle[0], bundle[0])
    assert result.passed and result.first_divergence is None
    assert all(r.max_abs == 0 for r in result.results) and not result.missing
    assert "PASS" in format_report(result)


@pytest.mark.parametrize("layer, position, branch", [(0, 0, "output"), (3, 5, "output"), (7, 10, "output"),
                                                      (5, 2, "attention"), (2, 7, "feed_forward")])
def test_perturbed_block_output_is_located(bundle, tmp_path, layer, position, branch):
    t = golden_tensors(bundle[0])
    name = f"prompt0.blocks.{layer}.{branch}"
    t[name][position, 7] += 1e-3 * np.abs(t[name]).max()
    save_file(t, str(tmp_path / "candidate.safetensors"))
    result = compare(bundle[0], tmp_path)
    assert not result.passed
    d = result.first_divergence
    assert (d["prompt"], d["layer"], d["position"], d["tensor"]) == ("prompt0", f"layer {layer}", position, name)
    assert [r.name for r in result.results if r.bad] == [name]
    assert f"first divergence: prompt0 layer {layer} position {position}" in format_report(result)


def test_first_divergence_is_the_earliest_layer_then_position(bundle, tmp_path):
    t = golden_tensors(bundle[0])
    for layer, pos in [(6, 1), (4, 9), (4, 3)]:
        t[f"prompt0.blocks.{layer}.output"][pos] += 1.0
    t["prompt1.blocks.0.output"][0] += 1.0  # a later prompt does not come first
    save_file(t, str(tmp_path / "candidate.safetensors"))
    d = compare(bundle[0], tmp_path).first_divergence
    assert (d["layer"], d["position"]) == ("layer 4", 3)


def test_state_error_and_nan_are_reported(bundle, tmp_path):
    t = {"prompt1.state.num": golden_tensors(bundle[0])["prompt1.state.num"]}
    t["prompt1.state.num"][4, 6] *= 1.01
    save_file(t, str(tmp_path / "candidate.safetensors"))
    d = compare(bundle[0], tmp_path).first_divergence
    assert (d["prompt"], d["layer"], d["position"]) == ("prompt1", "final state", None)
    logits = golden_tensors(bundle[0])["prompt0.logits"]
    logits[4, 0] = np.nan
    np.save(tmp_path / "nan.npy", logits)
    result = compare(bundle[0], tmp_path / "nan.npy")
    assert not result.passed and result.results[0].first_bad == (4, 0)


def test_changed_greedy_token_fails_unless_a_near_tie(bundle, tmp_path):
    path, manifest = bundle
    margins = manifest["prompts"][0]["generated_margins"]
    step = int(np.argmax(margins))
    t = {"prompt0.generated_ids": np.array(manifest["prompts"][0]["generated_ids"])}
    t["prompt0.generated_ids"][step] += 1
    save_file(t, str(tmp_path / "candidate.safetensors"))
    result = compare(path, tmp_path)
    assert not result.passed and f"first differs at step {step}" in format_report(result)


def test_bad_candidates_are_input_errors(bundle, tmp_path):
    save_file({"prompt0.blocks.99.output": np.zeros(3)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(InputError, match=r"a.safetensors: tensor 'prompt0.blocks.99.output' is not in"):
        compare(bundle[0], tmp_path / "a.safetensors")
    save_file({"prompt0.logits": np.zeros((2, 64), np.float32)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(InputError, match=r"b.safetensors: prompt0.logits has shape \(2, 64\), the golden's is"):
        compare(bundle[0], tmp_path / "b.safetensors")
    save_file({"prompt0.input_ids": np.arange(11)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(InputError, match="ran another input"):
        compare(bundle[0], tmp_path / "c.safetensors")
    (tmp_path / "raw.bin").write_bytes(b"\0" * 12)
    with pytest.raises(ModelFileError, match=r"raw.bin: 12 bytes is not a whole number"):
        compare(bundle[0], tmp_path / "raw.bin")
    with pytest.raises(ModelFileError, match=r"manifest.json: not a readable golden manifest"):
        compare(tmp_path, bundle[0])


def test_logits_as_npy_and_raw_float32(bundle, tmp_path):
    logits = golden_tensors(bundle[0])["prompt0.logits"].astype(np.float32)
    np.save(tmp_path / "all.npy", logits)
    logits[-1].tofile(tmp_path / "last.bin")
    assert compare(bundle[0], tmp_path / "all.npy").passed
    assert compare(bundle[0], tmp_path / "last.bin").passed
    logits[-1, 3] += 0.01
    logits[-1].tofile(tmp_path / "last.bin")
    result = compare(bundle[0], tmp_path / "last.bin")
    assert not result.passed and result.first_divergence["position"] == 10
    assert result.results[0].worst == (10, 3)


# ---------------------------------------------------------------- independent engines

def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fixture", ["tiny", "deep_rescale6", "rescale2_ffn37", "bf16"])
def test_hf_transformers_passes_compare(tmp_path, fixture):
    """Measured: HF's max |error| is at most 3.8x rwkv_np's own fp32-vs-fp64 difference on
    these fixtures; the recommended atol is 16x it."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    tool = load_tool("hf_candidate")
    model = FIXTURES / "hf" / fixture
    write_golden(model, PROMPTS, tmp_path / "golden", new_tokens=8, progress=False)
    tool.write_candidate(tmp_path / "golden", model, tmp_path / "hf")
    result = compare(tmp_path / "golden", tmp_path / "hf")
    assert result.passed, format_report(result)
    assert not result.missing and len(result.results) == 2 * (3 * json.loads(
        (model / "config.json").read_text())["num_hidden_layers"] + 7)
    assert all(r.max_abs > 0 for r in result.results if "generated" not in r.name)


def test_rwkvcpp_expected_logits_pass_compare(shared_data, tmp_path):
    d = shared_data / "rwkvcpp"
    write_golden(d / "tiny-rwkv-4v0-660K-FP32.bin", [[34, 105, 110]], tmp_path / "g", new_tokens=4, progress=False)
    result = compare(tmp_path / "g", d / "expected-logits-4v0-660K.bin")
    assert result.passed, format_report(result)
    assert result.results[0].max_abs < 5e-6  # measured 1.55e-6
    # the FP16 file's logits (max |d| 1.6e-3) are far outside the FP32 golden's tolerance
    np.save(tmp_path / "fp16.npy", RwkvForCausalLM(*load(d / "tiny-rwkv-4v0-660K-FP16.bin")[1:])(
        [[34, 105, 110]]).logits[0])
    result = compare(tmp_path / "g", tmp_path / "fp16.npy")
    assert not result.passed and 1e-3 < result.results[0].max_abs < 2.5e-3


# ---------------------------------------------------------------- command line

def test_cli_golden_and_compare_exit_status(shared_data, tmp_path, capsys):
    """rwkv-np golden / compare: exit 0 within tolerance, 1 outside, 2 on bad input."""
    from rwkv_np.cli import main
    d = shared_data / "rwkvcpp"
    assert main(["golden", "--model", str(d / "tiny-rwkv-4v0-660K-FP32.bin"), "--prompt", '"in',
                 "--new-tokens", "2", "--out", str(tmp_path / "g")]) == 0
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["prompts"][0]["input_ids"] == [34, 105, 110]
    assert main(["compare", str(tmp_path / "g"), str(d / "expected-logits-4v0-660K.bin")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("PASS")
    logits = np.fromfile(d / "expected-logits-4v0-660K.bin", "<f4")
    logits[200] += 0.5
    np.save(tmp_path / "off.npy", logits)
    assert main(["compare", str(tmp_path / "g"), str(tmp_path / "off.npy")]) == 1
    out = capsys.readouterr().out
    assert "first divergence: prompt0 head (logits) position 2" in out and out.rstrip().endswith("FAIL")
    assert main(["compare", str(tmp_path / "g"), str(tmp_path / "off.npy"), "--atol-scale", "1e5"]) == 0
    assert main(["compare", str(tmp_path / "g"), str(tmp_path / "missing.bin")]) == 2
    assert "missing.bin: no such file" in capsys.readouterr().err
    np.save(tmp_path / "short.npy", logits[:100])
    assert main(["compare", str(tmp_path / "g"), str(tmp_path / "short.npy")]) == 2
    assert main(["golden", "--model", str(d / "tiny-rwkv-4v0-660K-FP32.bin"), "--ids", "1 999",
                 "--out", str(tmp_path / "h")]) == 2
    assert "token id 999 is outside the vocabulary" in capsys.readouterr().err


def test_cli_golden_prompts_file(tmp_path):
    from rwkv_np.cli import main
    (tmp_path / "p.json").write_text(json.dumps([[1, 2, 3], [4, 5]]))
    assert main(["golden", "--model", str(FIXTURES / "hf" / "tiny"), "--prompts", str(tmp_path / "p.json"),
                 "--new-tokens", "1", "--out", str(tmp_path / "g")]) == 0
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert [p["input_ids"] for p in manifest["prompts"]] == [[1, 2, 3], [4, 5]]
