"""BlinkDL .pth and HF pytorch_model.bin checkpoints load without torch, and safely.

References: HF transformers' logits stored with the HF fixtures (tests/fixtures/hf/*/expected),
the fixtures' own safetensors weights, and (when torch is installed) checkpoints torch.save writes
in the test itself. A hostile pickle must be refused before anything it names is called: the
proof is a file its payload would have created and that does not exist.
"""
import io
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest

from conftest import FIXTURES
from rwkv_np import ModelFileError, RwkvForCausalLM
from rwkv_np.convert import convert, load_checkpoint
from rwkv_np.formats.pth import read_torch_zip
from rwkv_np.formats.safetensors import read_safetensors
from rwkv_np.load import read
from rwkv_np.storage import as_float


def blinkdl_name(hf: str) -> str:
    """HF name -> BlinkDL's (the inverse map, written here independently of weights.hf_name)."""
    name = hf.removeprefix("rwkv.").replace("embeddings.", "emb.", 1).replace(".pre_ln.", ".ln0.")
    name = name.replace(".attention.", ".att.").replace(".feed_forward.", ".ffn.")
    for short, long in (("k", "key"), ("v", "value"), ("r", "receptance")):
        name = name.replace(f".time_mix_{long}", f".time_mix_{short}")
    return name


def hf_expected(name):
    return read_safetensors(FIXTURES / "hf" / name / "expected.safetensors")[0]


def assert_same_weights(tensors, fixture):
    want = read(FIXTURES / "hf" / fixture)[2]
    assert sorted(tensors) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(as_float(tensors[name], np.float32), as_float(want[name], np.float32),
                                      err_msg=name)


@pytest.mark.parametrize("name", ["tiny", "bf16"])
def test_committed_blinkdl_pth_converts_and_reproduces_hf_logits(tmp_path, name):
    """tests/fixtures/pth/{name}.pth was written by tools/make_pth_fixture.py from hf/{name}."""
    config, tensors = load_checkpoint(FIXTURES / "pth" / f"{name}.pth")
    assert_same_weights(tensors, name)
    convert(FIXTURES / "pth" / f"{name}.pth", tmp_path / "out")
    model = RwkvForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.num_hidden_layers == config.num_hidden_layers
    expected = hf_expected(name)
    logits = model(expected["input_ids"]).logits
    assert np.abs(logits - expected["logits"]).max() < 5e-5


def test_converted_bf16_pth_keeps_bfloat16_on_disk(tmp_path):
    convert(FIXTURES / "pth" / "bf16.pth", tmp_path / "out")
    header = read_safetensors(tmp_path / "out" / "model.safetensors")[0]
    assert type(header["head.weight"]).__name__ == "Bfloat16"


# ---------------------------------------------------------------- hostile pickles

class _Payload:
    """Pickles as a call of `func(*args)`: what an attacker puts in data.pkl."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def write_pth(path, obj):
    """A zip laid out like torch.save's, with `obj` pickled as data.pkl (no torch needed)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("func, args_of", [
    (os.system, lambda marker: (f"touch {marker}",)),
    (eval, lambda marker: (f"open({str(marker)!r}, 'w').close()",)),
    (open, lambda marker: (str(marker), "w")),
])
def test_pickle_naming_another_global_is_refused_and_nothing_runs(tmp_path, func, args_of):
    marker = tmp_path / "payload_ran"
    write_pth(tmp_path / "evil.pth", {"emb.weight": _Payload(func, *args_of(marker))})
    with pytest.raises(ModelFileError, match=r"evil\.pth: refusing to load: .*global (posix|os|builtins|__builtin__|io)\."
                                             rf"({func.__name__})"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    # the same pickle really would have run its payload under an unrestricted unpickler
    with zipfile.ZipFile(tmp_path / "evil.pth") as zf:
        pickle.loads(zf.read("archive/data.pkl"))
    assert marker.exists()


def test_refusal_names_the_global(tmp_path):
    write_pth(tmp_path / "evil.pth", {"x": _Payload(sys.exit, 3)})
    with pytest.raises(ModelFileError) as e:
        read_torch_zip(tmp_path / "evil.pth")
    assert "sys.exit" in str(e.value) and "\n" not in str(e.value)


def test_non_zip_and_missing_pickle_are_clear_errors(tmp_path):
    (tmp_path / "legacy.pth").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFileError, match=r"legacy\.pth: .*(zip|not an HF model)"):
        load_checkpoint(tmp_path / "legacy.pth")
    with zipfile.ZipFile(tmp_path / "empty.pth", "w") as zf:
        zf.writestr("archive/version", "3")
    with pytest.raises(ModelFileError, match=r"empty\.pth: expected one data.pkl"):
        read_torch_zip(tmp_path / "empty.pth")


def test_truncated_storage_is_refused(tmp_path):
    data = (FIXTURES / "pth" / "tiny.pth").read_bytes()
    zin = zipfile.ZipFile(io.BytesIO(data))
    with zipfile.ZipFile(tmp_path / "cut.pth", "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            blob = zin.read(info)
            zout.writestr(info.filename, blob[:8] if info.filename.endswith("/data/0") else blob)
    with pytest.raises(ModelFileError, match=r"cut\.pth: storage 0 holds 8 bytes"):
        read_torch_zip(tmp_path / "cut.pth")


# ---------------------------------------------------------------- made by torch in the test

@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_saved_blinkdl_pth_matches_the_original(tmp_path, dtype):
    """A state dict torch.save writes (BlinkDL names, non-contiguous views, a Parameter) reads
    back to the same values and, converted, gives HF's logits for the same weights."""
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    hf = safetensors_torch.load_file(FIXTURES / "hf" / "deep_rescale6" / "model.safetensors")
    sd = {}
    for name, x in hf.items():
        x = x.to(getattr(torch, dtype))
        if x.ndim == 2:
            x = x.t().contiguous().t()                           # column-major strides
        sd[blinkdl_name(name)] = x
    sd["ln_out.weight"] = torch.nn.Parameter(sd["ln_out.weight"], requires_grad=False)
    big = torch.zeros(sd["ln_out.bias"].numel() + 5, dtype=sd["ln_out.bias"].dtype)
    big[2:2 + sd["ln_out.bias"].numel()] = sd["ln_out.bias"]   # a view at a storage offset
    torch.save({**sd, "ln_out.bias": big[2:-3]}, tmp_path / "m.pth")
    config, tensors = load_checkpoint(tmp_path / "m.pth")
    for name, x in hf.items():
        want = x.to(getattr(torch, dtype)).float().numpy()
        np.testing.assert_array_equal(as_float(tensors[name], np.float32), want, err_msg=name)
    if dtype == "float32":
        expected = hf_expected("deep_rescale6")
        logits = RwkvForCausalLM(config, tensors)(expected["input_ids"]).logits
        assert np.abs(logits - expected["logits"]).max() < 5e-5


def test_torch_saved_hf_pytorch_model_bin_loads(tmp_path):
    """HF's older checkpoint format: torch.save(model.state_dict()) as pytorch_model.bin beside
    config.json (transformers 5 only writes safetensors, so the test writes the .bin itself)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.RwkvForCausalLM.from_pretrained(FIXTURES / "hf" / "tiny")
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_bytes((FIXTURES / "hf" / "tiny" / "config.json").read_bytes())
    config, tensors = load_checkpoint(tmp_path / "bin")
    assert_same_weights(tensors, "tiny")
    expected = hf_expected("tiny")
    logits = RwkvForCausalLM(config, tensors)(expected["input_ids"]).logits
    assert np.abs(logits - expected["logits"]).max() < 5e-5
