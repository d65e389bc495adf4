"""Rwkv6Config (the HF rwkv6 config.json fields) and the RWKV-6 name maps (names.py).

Expected names and shapes are written out from RWKV567_SPEC.md section 3.2 (BlinkDL's
RWKV_Tmix_x060 / RWKV_CMix_x060 parameters, the HF rwkv6 module names, rwkv.cpp's
convert_pytorch_to_ggml.py v6 branch), not from names.py.
"""
import numpy as np
import pytest

from rwkv_np.convert import convert
from rwkv_np.errors import ConfigError, ModelFileError
from rwkv_np.load import check_tensors, load
from rwkv_np.v6 import names
from rwkv_np.v6.config import Rwkv6Config

# The keys of an HF rwkv6 config.json (spec 3.2c) plus PretrainedConfig's.
HF_CONFIG = {
    "architectures": ["Rwkv6ForCausalLM"], "attention_hidden_size": 2048, "bos_token_id": 0, "eos_token_id": 0,
    "head_size": 64, "head_size_divisor": 8, "hidden_size": 2048, "intermediate_size": 7168,
    "layer_norm_epsilon": 1e-05, "model_type": "rwkv6", "num_hidden_layers": 24, "rescale_every": 6,
    "tie_word_embeddings": False, "transformers_version": "4.34.0", "use_cache": True, "vocab_size": 65536,
}


def blinkdl_pth(C=16, H=2, L=2, F=56, V=20, D_mix=4, D_decay=6, seed=0) -> dict:
    """A BlinkDL RWKV-6 `.pth` state dict, names and shapes as RWKV-LM saves them (spec 3.2a)."""
    rng = np.random.default_rng(seed)
    N = C // H
    sd = {"emb.weight": (V, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,),
          "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)}
    for i in range(L):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2", "att.ln_x"):
            sd[f"{b}{ln}.weight"] = sd[f"{b}{ln}.bias"] = (C,)
        for m in "xwkvrg":
            sd[f"{b}att.time_maa_{m}"] = (1, 1, C)
        sd[f"{b}att.time_maa_w1"], sd[f"{b}att.time_maa_w2"] = (C, 5 * D_mix), (5, D_mix, C)
        sd[f"{b}att.time_decay"] = (1, 1, C)
        sd[f"{b}att.time_decay_w1"], sd[f"{b}att.time_decay_w2"] = (C, D_decay), (D_decay, C)
        sd[f"{b}att.time_faaaa"] = (H, N)
        for proj in ("receptance", "key", "value", "gate", "output"):
            sd[f"{b}att.{proj}.weight"] = (C, C)
        sd[f"{b}ffn.time_maa_k"] = sd[f"{b}ffn.time_maa_r"] = (1, 1, C)
        sd[f"{b}ffn.key.weight"], sd[f"{b}ffn.receptance.weight"], sd[f"{b}ffn.value.weight"] = (F, C), (C, C), (C, F)
    return {k: rng.normal(0, 0.5, shape).astype(np.float32) for k, shape in sd.items()}


def rwkvcpp_tensors(sd: dict) -> dict:
    """What rwkv.cpp's converter writes for a BlinkDL v6 state dict (spec 3.2b): .time_* squeezed,
    time_faaaa (H, N, 1), time_decay reshaped (H, N, 1) raw, time_maa_w1 / time_decay_w1 / _w2
    transposed, time_maa_w2 transposed in its last two axes."""
    H, N = next(x.shape for n, x in sd.items() if n.endswith("time_faaaa"))
    out = {}
    for name, x in sd.items():
        if ".time_" in name:
            x = np.squeeze(x)
        if name.endswith(("time_maa_w1", "time_decay_w1", "time_decay_w2")):
            x = x.T
        elif name.endswith("time_maa_w2"):
            x = x.transpose(0, 2, 1)
        elif name.endswith(("time_faaaa", "time_decay")):
            x = x.reshape(H, N, 1)
        out[name] = np.ascontiguousarray(x)
    return out


def test_hf_config_loads_and_writes_back(tmp_path):
    config = Rwkv6Config.from_dict(HF_CONFIG)
    assert (config.num_heads, config.head_size, config.intermediate_size) == (32, 64, 7168)
    assert (config.time_mix_extra_dim, config.time_decay_extra_dim) == (32, 64)   # RWKV-LM's ranks below C 4096
    assert config.group_norm_eps == pytest.approx(64e-5)                          # 1e-5 * divisor 8 squared
    assert Rwkv6Config(hidden_size=4096).time_mix_extra_dim == 64
    d = config.to_dict()
    assert {k: d[k] for k in HF_CONFIG} == HF_CONFIG
    config.save_pretrained(tmp_path)
    assert Rwkv6Config.from_pretrained(tmp_path) == config


@pytest.mark.parametrize("change, message", [
    ({"model_type": "rwkv5"}, "model_type is 'rwkv5'"),
    ({"attention_hidden_size": 1024}, "attention_hidden_size 1024 differs"),
    ({"head_size": 48}, "not a multiple of head_size 48"),
    ({"time_mix_extra_dim": 0}, "time_mix_extra_dim must be a positive integer"),
    ({"group_norm_eps": "x"}, "group_norm_eps must be a number"),
])
def test_bad_configs_say_which_key(change, message):
    with pytest.raises(ConfigError, match=message):
        Rwkv6Config.from_dict({**HF_CONFIG, **change})


def test_blinkdl_names_map_to_the_hf_layout():
    sd = blinkdl_pth()
    hf = names.from_blinkdl(sd)
    assert len(hf) == len(sd)
    config = names.infer_config(hf)
    assert (config.num_heads, config.head_size, config.intermediate_size) == (2, 8, 56)
    assert (config.time_mix_extra_dim, config.time_decay_extra_dim) == (4, 6)
    shapes = names.expected_shapes(config)
    assert {n: x.shape for n, x in hf.items()} == shapes
    assert shapes["rwkv.blocks.1.attention.time_maa_w2"] == (5, 4, 16)
    assert shapes["rwkv.blocks.0.feed_forward.time_maa_r"] == (1, 1, 16)
    np.testing.assert_array_equal(hf["rwkv.blocks.1.attention.time_maa_g"], sd["blocks.1.att.time_maa_g"])
    np.testing.assert_array_equal(hf["rwkv.blocks.0.pre_ln.bias"], sd["blocks.0.ln0.bias"])
    check_tensors(hf, config, "random .pth")
    assert "rwkv.blocks.0.attention.time_maa_w1" not in names.matrices(config)
    assert "rwkv.blocks.0.attention.time_faaaa" not in names.matrices(config)
    assert "rwkv.blocks.0.attention.gate.weight" in names.matrices(config)


def test_unknown_names_are_refused():
    with pytest.raises(ModelFileError, match="blocks.0.att.time_mix_k: not an RWKV-6 tensor name"):
        names.from_blinkdl({**blinkdl_pth(), "blocks.0.att.time_mix_k": np.zeros((1, 1, 16))})
    sd = blinkdl_pth()
    sd["blocks.0.att.time_maa_w1"] = np.zeros((16, 21))
    with pytest.raises(ModelFileError, match="21 columns, not 5 LoRA ranks"):
        names.infer_config(names.from_blinkdl(sd), "odd.pth")


def test_rwkvcpp_layout_is_undone():
    sd = blinkdl_pth(seed=2)
    header = {"version": 101, "n_vocab": 20, "n_embed": 16, "n_layer": 2}
    config, hf = names.from_rwkvcpp(header, rwkvcpp_tensors(sd), "x.bin")
    want = names.from_blinkdl(sd)
    assert hf.keys() == want.keys() and config.group_norm_eps == 64e-5
    for name, x in want.items():
        np.testing.assert_array_equal(hf[name], x, err_msg=name)       # nothing exponentiated: exact


def test_tiny_file_and_convert(shared_data, tmp_path):
    """rwkv.cpp's only v6 file (Q5_0; spec 3.1: C 128, L 12, H 16, N 8, F 448, D_mix 32, D_decay 64,
    V 256) loads dequantized and converts to a directory that loads the same."""
    file = shared_data / "rwkvcpp" / "tiny-rwkv-6v0-3m-Q5_0.bin"
    gen, config, tensors = load(file)
    assert gen.name == "v6"
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_heads, config.head_size,
            config.intermediate_size, config.time_mix_extra_dim, config.time_decay_extra_dim) == \
        (256, 128, 12, 16, 8, 448, 32, 64)
    convert(file, tmp_path)
    _, config2, tensors2 = load(tmp_path)
    assert config2.to_dict() == config.to_dict()
    for name, x in tensors.items():
        np.testing.assert_array_equal(np.asarray(tensors2[name]), np.asarray(x), err_msg=name)
