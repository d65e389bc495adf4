"""Every rwkv-np verb on RWKV-5 and RWKV-6 models: small random byte-level directories (vocab 256,
so the shipped byte tokenizer applies) and rwkv.cpp's tiny files; bad files give one line and
exit status 2. The verbs are generation-agnostic (cli.py); this checks they reach v5 and v6."""
import json
import struct

import numpy as np
import pytest
from test_v5_model import random_params as random_v5
from test_v6_model import random_params as random_v6

from rwkv_np.cli import main
from rwkv_np.convert import save_pretrained
from rwkv_np.generation import generate
from rwkv_np.load import load
from rwkv_np.v5.config import Rwkv5Config
from rwkv_np.v6.config import Rwkv6Config

TINY = {"5v1": "tiny-rwkv-5v1-730K-FP32.bin", "5v2-fp16": "tiny-rwkv-5v2-730K-FP16.bin",
        "6v0": "tiny-rwkv-6v0-3m-Q5_0.bin"}


@pytest.fixture(scope="module")
def random_dirs(tmp_path_factory):
    c5 = Rwkv5Config(vocab_size=256, hidden_size=32, num_hidden_layers=2, head_size=16, intermediate_size=64)
    c6 = Rwkv6Config(vocab_size=256, hidden_size=32, num_hidden_layers=2, head_size=16, intermediate_size=64,
                     time_mix_extra_dim=4, time_decay_extra_dim=8)
    dirs = {"v5": tmp_path_factory.mktemp("v5"), "v6": tmp_path_factory.mktemp("v6")}
    save_pretrained(dirs["v5"], c5, random_v5(c5, seed=7))
    save_pretrained(dirs["v6"], c6, random_v6(c6, seed=7, decay=(-6.0, 3.0)))
    return {k: str(v) for k, v in dirs.items()}


def model_path(which, random_dirs, request):
    if which in random_dirs:
        return random_dirs[which]
    return str(request.getfixturevalue("shared_data") / "rwkvcpp" / TINY[which])


@pytest.mark.parametrize("which", ["v5", "v6", "5v1", "5v2-fp16", "6v0"])
def test_generate_with_states_score_info(which, random_dirs, request, tmp_path, capsys):
    path = model_path(which, random_dirs, request)
    gen, config, tensors = load(path)
    model = gen.module("model").CAUSAL_LM(config, tensors, "float32")
    assert main(["info", "--model", path]) == 0
    assert f"({gen.title})" in capsys.readouterr().out
    # greedy generate prints what the API generates (up to the config's eos, byte 0)
    want = generate(model, [list(b"Hello")], max_new_tokens=6, eos_token_id=[], return_dict_in_generate=True)
    new = want.new_tokens[0]
    new = new[:new.index(0) + 1] if 0 in new else new
    state_file = str(tmp_path / "s.safetensors")
    assert main(["generate", "Hello", "--model", path, "--max-new-tokens", "6", "--temperature", "0",
                 "--save-state", state_file]) == 0
    assert capsys.readouterr().out == bytes(new).decode("utf-8", errors="replace") + "\n"
    # the saved state loads back into the same model and continues
    assert main(["generate", " world", "--model", path, "--max-new-tokens", "3", "--temperature", "0",
                 "--load-state", state_file]) == 0
    capsys.readouterr()
    text = tmp_path / "t.txt"
    text.write_bytes(b"The quick brown fox jumps over the lazy dog, again and again.")
    assert main(["score", str(text), "--model", path]) == 0
    assert "bits/byte" in capsys.readouterr().out


@pytest.mark.parametrize("which", ["v5", "v6", "5v1", "6v0"])
def test_golden_compare_convert_quantize(which, random_dirs, request, tmp_path, capsys):
    path = model_path(which, random_dirs, request)
    _, config, _ = load(path)
    bundle = tmp_path / "golden"
    assert main(["golden", "--model", path, "--prompt", "in", "--new-tokens", "3", "--out", str(bundle)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["config"]["group_norm_eps"] == config.group_norm_eps   # which eps the bundle used
    assert main(["compare", str(bundle), str(bundle / "float32.safetensors")]) == 0
    assert main(["convert", path, "--out", str(tmp_path / "c")]) == 0
    assert main(["quantize", path, "--out", str(tmp_path / "q")]) == 0
    assert main(["generate", "Hi", "--model", str(tmp_path / "q"), "--max-new-tokens", "3", "--temperature", "0"]) == 0
    capsys.readouterr()
    assert load(tmp_path / "c")[1].to_dict() == config.to_dict()


def test_bad_files_are_one_line(random_dirs, shared_data, tmp_path, capsys):
    data = bytearray((shared_data / "rwkvcpp" / TINY["5v1"]).read_bytes())
    (tmp_path / "cut.bin").write_bytes(bytes(data[:100_000]))
    off = 24                                                        # a decay of 1.5 in a v5 .bin
    while True:
        n_dims, name_len, _ = struct.unpack_from("<3i", data, off)
        dims = struct.unpack_from(f"<{n_dims}i", data, off + 12)
        start = off + 12 + 4 * n_dims + name_len
        if data[start - name_len:start] == b"blocks.2.att.time_decay":
            struct.pack_into("<f", data, start, 1.5)
            break
        off = start + 4 * int(np.prod(dims))
    (tmp_path / "decay.bin").write_bytes(bytes(data))
    bad = tmp_path / "variant"
    bad.mkdir()
    config = json.loads((tmp_path.parent / random_dirs["v5"] / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "variant": "5.3"}))
    messages = {"cut.bin": "the file ends first", "decay.bin": "time_decay holds values outside [0, 1]",
                "variant": "variant must be one of 5.0, 5.1, 5.2"}
    for name, message in messages.items():
        assert main(["generate", "x", "--model", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
