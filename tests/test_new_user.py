"""From the demo to a real model (issue 17): the files a new user downloads load everywhere, get the
tokenizer they were trained with, and the problems they hit are named.

References: HF transformers' logits stored with tests/fixtures/hf/tiny (a pytorch_model.bin of its
weights must give them), GPT-NeoX-20B's published ids ("This is an example." -> [1552, 310, 271,
1650, 15]), and the same weights loaded from safetensors. pytorch_model.bin files are written here
without torch, from the zip + pickle layout torch.save uses (as tests/test_pth.py does), and once
with torch itself when it is installed.
"""
import collections
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, REPO, random_state_dict, shared_file
from rwkv_np import ModelFileError, RwkvConfig, RwkvForCausalLM, Tokenizer
from rwkv_np.cli import main
from rwkv_np.convert import save_pretrained
from rwkv_np.formats.safetensors import read_files, read_safetensors
from rwkv_np.tokenizer import BpeTokenizer, ByteTokenizer

NEOX_IDS = ("This is an example.", [1552, 310, 271, 1650, 15])
SHIPPED_NEOX = str(REPO / "rwkv_np" / "assets" / "gpt-neox-20b" / "tokenizer.json")


# -- a torch.save zip, written without torch -------------------------------------------------------

class _Global:
    """Pickles as the GLOBAL `module.name` (torch's names need no torch to be written)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self):  # pickle wants a callable in a reduce tuple
        raise AssertionError


class _Storage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, key, array):
        self.key, self.array = key, np.ascontiguousarray(array, np.float32)

    def __reduce__(self):  # torch._utils._rebuild_tensor_v2(storage, offset, size, stride, grad, hooks)
        strides = tuple(s // 4 for s in self.array.strides)
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (_Storage(self.key, self.array.size), 0, self.array.shape, strides, False, collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler, so that `save` can be extended
    def persistent_id(self, obj):  # a storage: ("storage", torch.FloatStorage, key, "cpu", numel)
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu", obj.numel)
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def write_torch_zip(path, tensors: dict) -> None:
    """{name: float32 array} as torch.save writes a state dict: archive/data.pkl + archive/data/<key>."""
    items = {name: _Tensor(str(k), x) for k, (name, x) in enumerate(tensors.items())}
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(collections.OrderedDict(items))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for t in items.values():
            zf.writestr(f"archive/data/{t.key}", t.array.tobytes())
        zf.writestr("archive/version", "3\n")


def hf_weights(fixture="tiny") -> dict:
    return {n: np.asarray(x, np.float32) for n, x in read_files([FIXTURES / "hf" / fixture / "model.safetensors"]).items()}


def hf_logits_ok(model_dir, fixture="tiny"):
    """max |logits - HF transformers' logits| of the model in model_dir, for the fixture's weights."""
    expected = read_safetensors(FIXTURES / "hf" / fixture / "expected.safetensors")[0]
    logits = RwkvForCausalLM.from_pretrained(model_dir)(expected["input_ids"]).logits
    return float(np.abs(logits - expected["logits"]).max())


# -- 1. an HF repository's layout ------------------------------------------------------------------

def test_pytorch_model_bin_directory_gives_transformers_logits(tmp_path):
    write_torch_zip(tmp_path / "pytorch_model.bin", hf_weights())
    (tmp_path / "config.json").write_bytes((FIXTURES / "hf" / "tiny" / "config.json").read_bytes())
    assert hf_logits_ok(tmp_path) < 5e-5


def test_sharded_pytorch_model_bin_gives_transformers_logits(tmp_path):
    weights = hf_weights()
    names = sorted(weights)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for file, part in shards.items():
        write_torch_zip(tmp_path / file, {n: weights[n] for n in part})
    index = {"metadata": {}, "weight_map": {n: f for f, part in shards.items() for n in part}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_bytes((FIXTURES / "hf" / "tiny" / "config.json").read_bytes())
    assert hf_logits_ok(tmp_path) < 5e-5


def test_torch_saved_sharded_pytorch_model_bin(tmp_path):
    torch = pytest.importorskip("torch")
    weights = hf_weights()
    names = sorted(weights)
    for k, part in enumerate((names[:5], names[5:])):
        torch.save({n: torch.tensor(weights[n]) for n in part}, tmp_path / f"pytorch_model-0000{k + 1}-of-00002.bin")
    index = {"weight_map": {n: f"pytorch_model-0000{1 + (i >= 5)}-of-00002.bin" for i, n in enumerate(names)}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_bytes((FIXTURES / "hf" / "tiny" / "config.json").read_bytes())
    assert hf_logits_ok(tmp_path) < 5e-5


@pytest.fixture(scope="module")
def byte_weights():
    config = RwkvConfig(vocab_size=256, hidden_size=16, num_hidden_layers=2)
    return config, random_state_dict(config, seed=11)


def test_generate_on_an_hf_repo_with_pytorch_model_bin(tmp_path, byte_weights, capsys):
    """The issue's command: `rwkv-np generate "Hello" --model hfdir/` on a pytorch_model.bin repo."""
    config, weights = byte_weights
    save_pretrained(tmp_path / "st", config, weights)
    (tmp_path / "hf").mkdir()
    write_torch_zip(tmp_path / "hf" / "pytorch_model.bin", weights)
    (tmp_path / "hf" / "config.json").write_bytes((tmp_path / "st" / "config.json").read_bytes())
    outputs = []
    for d in ("hf", "st"):
        assert main(["generate", "Hello", "--model", str(tmp_path / d), "--max-new-tokens", "8", "--temperature", "0"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and len(outputs[0]) > 1


def test_a_directory_with_nothing_loadable_lists_what_it_found(tmp_path):
    (tmp_path / "config.json").write_bytes((FIXTURES / "hf" / "tiny" / "config.json").read_bytes())
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(ModelFileError, match=r"found: README\.md, config\.json\); give an HF-style model directory"):
        RwkvForCausalLM.from_pretrained(tmp_path)


# -- 3. --model takes any loadable file, in every command -------------------------------------------

def blinkdl(hf: str) -> str:  # HF -> BlinkDL names, written independently of rwkv_np's map
    name = hf.removeprefix("rwkv.").replace("embeddings.", "emb.", 1).replace(".pre_ln.", ".ln0.")
    name = name.replace(".attention.", ".att.").replace(".feed_forward.", ".ffn.")
    for short, long in (("k", "key"), ("v", "value"), ("r", "receptance")):
        name = name.replace(f".time_mix_{long}", f".time_mix_{short}")
    return name


@pytest.mark.parametrize("verb", ["generate", "chat", "score", "info"])
def test_every_command_takes_a_blinkdl_pth_file(tmp_path, byte_weights, verb, capsys, monkeypatch):
    config, weights = byte_weights
    pth = tmp_path / "RWKV-4-test.pth"  # no config.json beside it: the shapes say what it is
    write_torch_zip(pth, {blinkdl(n): x for n, x in weights.items()})
    save_pretrained(tmp_path / "hf", config, weights)
    (tmp_path / "t.txt").write_text("Hello there, hello.")
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
    argv = {"generate": ["generate", "Hello", "--max-new-tokens", "6", "--temperature", "0"],
            "chat": ["chat", "--max-new-tokens", "6", "--temperature", "0"],
            "score": ["score", str(tmp_path / "t.txt")], "info": ["info"]}[verb]
    outputs = []
    for model in (pth, tmp_path / "hf"):
        monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
        assert main([*argv, "--model", str(model)]) == 0
        outputs.append(capsys.readouterr().out)
    if verb == "info":  # the same parameters and tokenizer, another file
        assert [o.splitlines()[k] for o in outputs for k in (1, 4)] == [outputs[1].splitlines()[k] for k in (1, 4)] * 2
    elif verb == "score":  # the same numbers, up to float32 rounding of another memory layout
        numbers = [[float(w) for w in o.split() if w[0].isdigit() and "." in w] for o in outputs]
        np.testing.assert_allclose(numbers[0], numbers[1], rtol=1e-5)
    else:
        assert outputs[0] == outputs[1]


# -- 2. and 7. the tokenizer a model was trained with ------------------------------------------------

@pytest.fixture(scope="module")
def pile_model(tmp_path_factory):
    """A random model with the RWKV-4 Pile vocabulary (50277) and no tokenizer.json."""
    d = tmp_path_factory.mktemp("pile")
    config = RwkvConfig(vocab_size=50277, hidden_size=8, num_hidden_layers=1, intermediate_size=16)
    save_pretrained(d, config, random_state_dict(config, seed=5))
    return d


def test_the_shipped_tokenizer_is_gpt_neox_20b_and_ships(pile_model):
    tok = Tokenizer.from_pretrained(pile_model)
    assert isinstance(tok, BpeTokenizer) and tok.vocab_size == 50277
    assert tok.encode(NEOX_IDS[0]) == NEOX_IDS[1]
    # setup.cfg's package_data pattern (relative to rwkv_np/) matches the file, so wheels carry it
    pattern = next(line.split("=", 1)[1].strip() for line in (REPO / "setup.cfg").read_text().splitlines()
                   if line.startswith("rwkv_np ="))
    assert (REPO / "rwkv_np" / "assets" / "gpt-neox-20b" / "tokenizer.json") in (REPO / "rwkv_np").glob(pattern)
    assert (REPO / "rwkv_np" / "assets" / "gpt-neox-20b" / "LICENSE").is_file()


def test_the_shipped_tokenizer_is_the_shared_data_file():
    assert Path(SHIPPED_NEOX).read_bytes() == shared_file("20B_tokenizer.json").read_bytes()


def test_a_converted_pile_pth_generates(tmp_path, pile_model, capsys):
    """`convert X.pth --out dir` then `generate --model dir`: the README's next line works."""
    weights = read_files([pile_model / "model.safetensors"])
    write_torch_zip(tmp_path / "RWKV-4-Pile-test.pth", {blinkdl(n): np.asarray(x) for n, x in weights.items()})
    assert main(["convert", str(tmp_path / "RWKV-4-Pile-test.pth"), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main(["generate", NEOX_IDS[0], "--model", str(tmp_path / "out"), "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    model = RwkvForCausalLM.from_pretrained(tmp_path / "out")
    ids = model.generate([NEOX_IDS[1]], 5, eos_token_id=[])[0, 5:]
    assert capsys.readouterr().out.startswith(BpeTokenizer.from_file(SHIPPED_NEOX).decode(ids[:1]))


def test_convert_tokenizer_option_copies_the_file(tmp_path, pile_model, byte_weights):
    config, weights = byte_weights
    save_pretrained(tmp_path / "src", config, weights)
    assert main(["convert", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--tokenizer", SHIPPED_NEOX]) == 0
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == Path(SHIPPED_NEOX).read_bytes()


def test_no_tokenizer_for_an_unknown_vocabulary_is_one_line_in_generate_and_golden(tmp_path, capsys):
    config = RwkvConfig(vocab_size=300, hidden_size=8, num_hidden_layers=1)
    save_pretrained(tmp_path / "m", config, random_state_dict(config))
    messages = []
    for argv in (["generate", "Hi"], ["golden", "--prompt", "Hi", "--out", str(tmp_path / "g")]):
        assert main([*argv, "--model", str(tmp_path / "m" / "model.safetensors")]) == 2
        messages.append(capsys.readouterr().err.split("error: ", 1)[1])
    assert messages[0] == messages[1] and "vocab_size 300" in messages[0] and "tokenizer.json" in messages[0]
    assert not (tmp_path / "g").exists()


def test_golden_on_a_pile_model_tokenizes_with_gpt_neox(tmp_path, pile_model):
    """Before: bytes ([84, 104, 105, ...]) for a model file without a tokenizer."""
    assert main(["golden", "--model", str(pile_model / "model.safetensors"), "--prompt", NEOX_IDS[0],
                 "--new-tokens", "1", "--out", str(tmp_path / "g")]) == 0
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["prompts"][0]["input_ids"] == NEOX_IDS[1]


def test_byte_models_still_tokenize_as_bytes(tmp_path, byte_weights):
    save_pretrained(tmp_path, *byte_weights)
    assert isinstance(Tokenizer.from_pretrained(tmp_path / "model.safetensors"), ByteTokenizer)
