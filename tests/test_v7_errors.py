"""Bad RWKV-7 files get the same treatment as bad RWKV-4 files (test_errors.py): a ValueError
subclass naming the file and the problem in one line from the API, one line on stderr and exit
status 2 from the CLI.

The bad files are written here from the format descriptions (test_errors.py's safetensors writer;
a walk over rwkv.cpp's records written from RWKV567_SPEC.md 7.1 / formats docs), never with
rwkv_np's own writers, from the random RWKV-7 weights of test_v7_model.py and rwkv.cpp's tiny file.
"""
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from test_errors import expect, safetensors_bytes, safetensors_parts
from test_v7_model import random_params
from rwkv_np import ConfigError, ModelFileError, RwkvForCausalLM
from rwkv_np.cli import main
from rwkv_np.v7.config import Rwkv7Config

CONFIG = dict(model_type="rwkv7", vocab_size=40, hidden_size=32, num_hidden_layers=2, head_dim=16,
              intermediate_size=64, decay_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=4,
              gate_low_rank_dim=8, attn=None, hidden_act="sqrelu", norm_bias=True)
PTH = Path(__file__).resolve().parent / "fixtures" / "v7" / "h2n32.pth"


def tensors() -> dict:
    return random_params(Rwkv7Config.from_dict(CONFIG), seed=5)


def write_dir(d: Path, weights: dict | None = None, config: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(CONFIG if config is None else config))
    header, body = safetensors_parts(tensors() if weights is None else weights)
    (d / "model.safetensors").write_bytes(safetensors_bytes(header, body))
    return d


def with_tensor(name, value=None):
    """The valid tensors with `name` replaced by `value` (None: removed)."""
    t = tensors()
    if value is None:
        del t[name]
    else:
        t[name] = value
    return t


def truncated(d: Path):
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-4])


def nan_in(name):
    t = tensors()
    t[name] = t[name].copy()
    t[name].reshape(-1)[7] = np.nan
    return t


DIR_CASES = {  # name: (weights, config, post-write corruption, error class, message fragment)
    "truncated": (None, None, truncated, ModelFileError, "do not fit its size or the file"),
    "missing_tensor": (with_tensor("model.layers.1.attn.r_k"), None, None, ModelFileError,
                       "missing tensor model.layers.1.attn.r_k"),
    "layer0_v_lora": (with_tensor("model.layers.0.attn.v_lora.lora.0.weight", np.zeros((4, 32), np.float32)),
                      None, None, ModelFileError, "unexpected tensor model.layers.0.attn.v_lora.lora.0.weight"),
    "wrong_shape": (with_tensor("model.layers.0.attn.r_k", np.zeros((4, 8), np.float32)), None, None,
                    ModelFileError, "model.layers.0.attn.r_k has shape (4, 8), the config implies (2, 16)"),
    "lora_rank_vs_config": (None, {**CONFIG, "decay_low_rank_dim": 9}, None, ModelFileError,
                            "w_lora.lora.0.weight has shape (8, 32), the config implies (9, 32)"),
    "nan_weight": (nan_in("model.layers.1.attn.w_lora.lora.2.weight"), None, None, ModelFileError,
                   "model.layers.1.attn.w_lora.lora.2.weight holds non-finite values (NaN or inf) at flat index 7"),
    "hybrid_attn": (None, {**CONFIG, "attn": {"layers": [1], "num_heads": 2}}, None, ConfigError,
                    "'attn' describes hybrid softmax-attention layers"),
    "other_activation": (None, {**CONFIG, "hidden_act": "swish"}, None, ConfigError,
                         "hidden_act = 'swish' is not computed by rwkv_np"),
    "heads_times_dim": (None, {**CONFIG, "num_heads": 3}, None, ConfigError,
                        "num_heads * head_dim = 3 * 16 is not hidden_size 32"),
    "value_dim": (None, {**CONFIG, "value_dim": 64}, None, ConfigError, "value_dim 64 differs from hidden_size 32"),
    "unknown_model_type": (None, {**CONFIG, "model_type": "rwkv9"}, None, ConfigError, "model_type is 'rwkv9'"),
}


@pytest.mark.parametrize("case", DIR_CASES)
def test_bad_fla_directory(tmp_path, case, capsys):
    weights, config, corrupt, cls, fragment = DIR_CASES[case]
    d = write_dir(tmp_path / "m", weights, config)
    if corrupt:
        corrupt(d)
    err = expect(cls, fragment, RwkvForCausalLM.from_pretrained, d)
    assert str(d) in str(err)
    for argv in (["info"], ["generate", "Hi", "--max-new-tokens", "1"]):
        if case == "nan_weight" and argv == ["info"]:
            continue  # info describes files with non-finite weights (it loads with allow_nonfinite)
        assert main([*argv, "--model", str(d)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and fragment in captured.err, captured.err


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    from test_errors import run_cli
    weights, config, _, _, fragment = DIR_CASES["missing_tensor"]
    result = run_cli("generate", "Hi", "--model", write_dir(tmp_path / "m", weights, config))
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and fragment in result.stderr


def test_the_valid_directory_loads(tmp_path):
    """So every failure above is its corruption's doing."""
    model = RwkvForCausalLM.from_pretrained(write_dir(tmp_path / "m"))
    assert model([[1, 2, 3]]).logits.shape == (1, 3, 40)


# -- rwkv.cpp .bin: records walked from the format description ------------------------------------

def records(data: bytes):
    """[(name, start, end, data start, dims, type)] of an rwkv.cpp file: after the 24-byte header,
    int32 n_dims, name length, type (0 F32, 1 F16), the sizes innermost first, the name, the data."""
    out, at = [], 24
    while at < len(data):
        n_dims, name_len, kind = struct.unpack_from("<3i", data, at)
        dims = struct.unpack_from(f"<{n_dims}i", data, at + 12)
        name_at = at + 12 + 4 * n_dims
        data_at = name_at + name_len
        end = data_at + int(np.prod(dims)) * {0: 4, 1: 2}[kind]
        out.append((data[name_at:data_at].decode(), at, end, data_at, dims, kind))
        at = end
    return out


def tiny_bytes(shared_data) -> bytes:
    return (shared_data / "rwkvcpp" / "tiny-rwkv-7v0-834K-FP32.bin").read_bytes()


def drop(data, name):
    rec = next(r for r in records(data) if r[0] == name)
    return data[:rec[1]] + data[rec[2]:]


def nan_at(data, name):
    rec = next(r for r in records(data) if r[0] == name)
    return data[:rec[3] + 12] + np.float32(np.nan).tobytes() + data[rec[3] + 16:]


def set_header(data, index, value):
    return data[:4 * index] + struct.pack("<i", value) + data[4 * index + 4:]


def reshape_r_k(data):
    """blocks.1.att.r_k (1, 64) declared (2, 32): the same bytes, a shape layer 0's r_k (which
    gives the heads) disagrees with."""
    rec = next(r for r in records(data) if r[0] == "blocks.1.att.r_k")
    return data[:rec[1] + 12] + struct.pack("<2i", 32, 2) + data[rec[1] + 20:]


BIN_CASES = {
    "truncated": (lambda d: d[:-3], "the file ends first"),
    "missing_tensor": (lambda d: drop(d, "blocks.5.att.k_a"), "missing tensor model.layers.5.attn.k_a"),
    "missing_lora": (lambda d: drop(d, "blocks.2.att.g2"), "missing tensor model.layers.2.attn.g_lora.lora.2.weight"),
    "nan_weight": (lambda d: nan_at(d, "blocks.3.att.key.weight"),
                   "model.layers.3.attn.k_proj.weight holds non-finite values (NaN or inf) at flat index 3"),
    "header_layers": (lambda d: set_header(d, 4, 13), "n_layer = 256, 64, 13; the tensors have (256, 64, 12)"),
    "header_vocab": (lambda d: set_header(d, 2, 300), "the tensors have (256, 64, 12)"),
    "r_k_shape": (reshape_r_k, "model.layers.1.attn.r_k has shape (2, 32), the config implies (1, 64)"),
}


@pytest.mark.parametrize("case", BIN_CASES)
def test_bad_rwkvcpp_file(shared_data, tmp_path, case, capsys):
    make, fragment = BIN_CASES[case]
    path = tmp_path / "tiny.bin"
    path.write_bytes(make(tiny_bytes(shared_data)))
    err = expect(ModelFileError, fragment, RwkvForCausalLM.from_pretrained, path)
    assert str(path) in str(err)
    assert main(["info", "--model", str(path)]) == (0 if case == "nan_weight" else 2)  # info shows NaN files
    captured = capsys.readouterr()
    if case != "nan_weight":
        assert captured.err.count("\n") == 1 and fragment in captured.err, captured.err


def test_the_record_walk_reads_the_valid_file(shared_data):
    recs = records(tiny_bytes(shared_data))
    assert len(recs) == 399 - 5 * 12 and recs[-1][2] == len(tiny_bytes(shared_data))  # x_rwkvag: 6 mixes in 1
    assert {r[0] for r in recs} >= {"emb.weight", "blocks.11.att.x_rwkvag", "head.weight"}


# -- BlinkDL .pth -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cut, fragment", [(0.5, "not a zip-format torch checkpoint, or a damaged one"),
                                           (1.0, None)])
def test_truncated_pth(tmp_path, cut, fragment):
    if not PTH.exists():
        pytest.skip(f"{PTH} is absent")
    data = PTH.read_bytes()
    path = tmp_path / "m.pth"
    path.write_bytes(data[:int(len(data) * cut)])
    if fragment is None:
        assert RwkvForCausalLM.from_pretrained(path).config.num_heads == 2
    else:
        expect(ModelFileError, fragment, RwkvForCausalLM.from_pretrained, path)
