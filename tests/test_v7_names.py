"""Rwkv7Config (fla's config.json fields) and the RWKV-7 name maps (names.py).

The expected names and shapes below are written out from flash-linear-attention's RWKV-7 layer
(`fla/layers/rwkv7.py`, `fla/models/rwkv7/modeling_rwkv7.py`: nn.Parameter shapes, LoRA as
nn.Sequential(Linear(C, D), act, Linear(D, C))) and BlinkDL's RWKV_Tmix_x070, not from names.py.
"""
import dataclasses

import numpy as np
import pytest

from rwkv_np.errors import ConfigError, ModelFileError
from rwkv_np.load import check_tensors
from rwkv_np.v7 import names
from rwkv_np.v7.config import Rwkv7Config

# What fla's RWKV7Config.to_dict() writes for a converted RWKV-7 0.1B (keys of its __init__, plus
# PretrainedConfig's), values as utils/convert_from_rwkv7.py sets them.
FLA_CONFIG = {
    "a_low_rank_dim": 64, "architectures": ["RWKV7ForCausalLM"], "attn": None, "attn_mode": "chunk",
    "bos_token_id": 0, "decay_low_rank_dim": 64, "eos_token_id": 0, "fuse_cross_entropy": True,
    "fuse_linear_cross_entropy": False, "fuse_norm": True, "gate_low_rank_dim": 128, "head_dim": 64,
    "hidden_act": "sqrelu", "hidden_ratio": 4.0, "hidden_size": 768, "initializer_range": 0.006,
    "intermediate_size": 3072, "max_position_embeddings": 2048, "model_type": "rwkv7", "norm_bias": True,
    "norm_eps": 1e-05, "norm_first": True, "num_heads": 12, "num_hidden_layers": 12,
    "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.48.0",
    "use_cache": True, "use_l2warp": True, "v_low_rank_dim": 32, "value_dim": [768] * 12, "vocab_size": 65536,
}


def test_fla_config_loads_and_writes_back(tmp_path):
    config = Rwkv7Config.from_dict(FLA_CONFIG)
    assert (config.hidden_size, config.num_heads, config.head_dim, config.intermediate_size) == (768, 12, 64, 3072)
    assert config.group_norm_eps == 64e-5  # BlinkDL's, not in fla's file
    assert config.extra["fuse_norm"] is True and config.extra["value_dim"] == [768] * 12
    d = config.to_dict()
    assert d["model_type"] == "rwkv7" and d["architectures"] == ["RWKV7ForCausalLM"]
    assert {k: d[k] for k in FLA_CONFIG} == FLA_CONFIG  # every key written back as it came
    config.save_pretrained(tmp_path)
    assert Rwkv7Config.from_pretrained(tmp_path) == config
    assert Rwkv7Config.from_pretrained(tmp_path / "config.json") == config


def test_defaults_derive_heads_and_ffn_width():
    c = Rwkv7Config(hidden_size=96, head_dim=32)
    assert c.num_heads == 3 and c.intermediate_size == 384
    c = Rwkv7Config(hidden_size=100, head_dim=None, num_heads=4)
    assert c.head_dim == 25 and c.intermediate_size == 416  # 4C rounded up to a multiple of 32, as fla
    assert Rwkv7Config.from_dict({"hidden_size": 64, "hidden_ratio": 3.5}).intermediate_size == 224


@pytest.mark.parametrize("change, message", [
    ({"model_type": "rwkv6"}, "model_type is 'rwkv6'"),
    ({"attn": {"layers": [1], "num_heads": 8}}, "hybrid softmax-attention"),
    ({"hidden_act": "gelu"}, "hidden_act = 'gelu'"),
    ({"norm_bias": False}, "norm_bias = False"),
    ({"value_dim": 1536}, "value_dim 1536 differs"),
    ({"num_heads": 10}, "num_heads * head_dim = 10 * 64"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    ({"norm_eps": 2}, "norm_eps must be a number in (0, 1)"),
    ({"group_norm_eps": True}, "group_norm_eps must be a number"),
    ({"use_cache": "yes"}, "use_cache must be true or false"),
])
def test_config_refusals_name_the_problem(change, message):
    with pytest.raises(ConfigError) as e:
        Rwkv7Config.from_dict({**FLA_CONFIG, **change})
    assert message in str(e.value)


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Rwkv7Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        Rwkv7Config.from_pretrained(tmp_path)


def fla_shapes(C, H, L, F, V, Dw, Da, Dv, Dg):
    """fla's RWKV7ForCausalLM parameters, written out from its modules."""
    s = {"model.embeddings.weight": (V, C), "model.norm.weight": (C,), "model.norm.bias": (C,), "lm_head.weight": (V, C)}
    for i in range(L):
        p = f"model.layers.{i}."
        for norm in (["pre_norm"] if i == 0 else []) + ["attn_norm", "ffn_norm", "attn.g_norm"]:
            s[p + norm + ".weight"] = s[p + norm + ".bias"] = (C,)
        s.update({p + f"attn.x_{m}": (1, 1, C) for m in "rwkvag"})
        s.update({p + "attn.k_k": (C,), p + "attn.k_a": (C,), p + "attn.r_k": (H, C // H)})
        s.update({p + f"attn.{n}.weight": (C, C) for n in ("r_proj", "k_proj", "v_proj", "o_proj")})
        for lora, D, bias in (("w", Dw, True), ("a", Da, True), ("v", Dv, True), ("g", Dg, False)):
            if lora == "v" and i == 0:
                continue
            s[p + f"attn.{lora}_lora.lora.0.weight"] = (D, C)
            s[p + f"attn.{lora}_lora.lora.2.weight"] = (C, D)
            if bias:
                s[p + f"attn.{lora}_lora.lora.2.bias"] = (C,)
        s.update({p + "ffn.x_k": (C,), p + "ffn.key.weight": (F, C), p + "ffn.value.weight": (C, F)})
    return s


def test_expected_shapes_are_flas():
    config = Rwkv7Config(vocab_size=50, hidden_size=32, num_hidden_layers=3, head_dim=8, intermediate_size=96,
                         decay_low_rank_dim=16, a_low_rank_dim=8, v_low_rank_dim=4, gate_low_rank_dim=12)
    assert names.expected_shapes(config) == fla_shapes(32, 4, 3, 96, 50, 16, 8, 4, 12)
    assert "lm_head.weight" not in names.expected_shapes(config, head=False)


def blinkdl(C=32, H=4, L=2, F=96, V=50, D=(16, 8, 4, 12)):
    """A BlinkDL .pth state dict (RWKV_Tmix_x070 shapes); each value is distinct so maps can be traced."""
    Dw, Da, Dv, Dg = D
    shapes = {"emb.weight": (V, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,),
              "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)}
    for i in range(L):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2", "att.ln_x"):
            shapes[f"{b}{ln}.weight"] = shapes[f"{b}{ln}.bias"] = (C,)
        shapes.update({f"{b}att.x_{m}": (1, 1, C) for m in "rwkvag"})
        for kind, D_ in zip("wav", (Dw, Da, Dv)):
            shapes.update({f"{b}att.{kind}0": (1, 1, C), f"{b}att.{kind}1": (C, D_), f"{b}att.{kind}2": (D_, C)})
        shapes.update({f"{b}att.g1": (C, Dg), f"{b}att.g2": (Dg, C), f"{b}att.k_k": (1, 1, C),
                       f"{b}att.k_a": (1, 1, C), f"{b}att.r_k": (H, C // H), f"{b}ffn.x_k": (1, 1, C),
                       f"{b}ffn.key.weight": (F, C), f"{b}ffn.value.weight": (C, F)})
        shapes.update({f"{b}att.{p}.weight": (C, C) for p in ("receptance", "key", "value", "output")})
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_from_blinkdl_maps_every_tensor():
    sd = blinkdl()
    hf = names.from_blinkdl(sd)
    config = names.infer_config(hf)
    assert (config.num_heads, config.head_dim, config.intermediate_size, config.decay_low_rank_dim,
            config.a_low_rank_dim, config.v_low_rank_dim, config.gate_low_rank_dim) == (4, 8, 96, 16, 8, 4, 12)
    assert hf.keys() == fla_shapes(32, 4, 2, 96, 50, 16, 8, 4, 12).keys()
    check_tensors(hf, config, "test")
    L1 = "model.layers.1."
    np.testing.assert_array_equal(hf[L1 + "attn.w_lora.lora.0.weight"], sd["blocks.1.att.w1"].T)
    np.testing.assert_array_equal(hf[L1 + "attn.w_lora.lora.2.weight"], sd["blocks.1.att.w2"].T)
    np.testing.assert_array_equal(hf[L1 + "attn.v_lora.lora.2.bias"], sd["blocks.1.att.v0"].reshape(-1))
    np.testing.assert_array_equal(hf[L1 + "attn.o_proj.weight"], sd["blocks.1.att.output.weight"])
    np.testing.assert_array_equal(hf[L1 + "attn.g_norm.bias"], sd["blocks.1.att.ln_x.bias"])
    np.testing.assert_array_equal(hf[L1 + "ffn.x_k"], sd["blocks.1.ffn.x_k"].reshape(-1))
    np.testing.assert_array_equal(hf["model.layers.0.pre_norm.weight"], sd["blocks.0.ln0.weight"])
    assert not any("layers.0.attn.v_lora" in n for n in hf)  # layer 0's v0/v1/v2 are dropped
    assert names.detect(sd) and names.detect(hf) and not names.detect(["blocks.0.att.time_maa_x"])


def test_from_rwkvcpp_undoes_the_bin_layout():
    """A .bin as rwkv.cpp's converter writes it (x_r..x_g stacked in x_rwkvag, LoRAs transposed,
    layer 0 without v0/v1/v2) maps to the same tensors as the .pth it came from."""
    sd = blinkdl()
    binary = {}
    for name, x in sd.items():
        if name in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"):
            continue
        if name.endswith("att.x_r"):
            binary[name[:-1] + "rwkvag"] = np.concatenate([sd[name[:-1] + m] for m in "rwkvag"])
        elif ".att.x_" not in name:
            binary[name] = x.T if name.split(".")[-1] in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2") else x
    assert binary["blocks.1.att.x_rwkvag"].shape == (6, 1, 32)
    assert names.detect(binary)
    header = {"version": 101, "n_vocab": 50, "n_embed": 32, "n_layer": 2, "data_type": 0}
    config, got = names.from_rwkvcpp(header, binary)
    want = names.from_blinkdl(sd)
    assert config == dataclasses.replace(names.infer_config(want), extra={"rwkvcpp_version": 101})
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_unknown_names_are_refused():
    with pytest.raises(ModelFileError, match="DeepEmbed"):
        names.from_blinkdl({"blocks.0.ffn.s_emb.weight": np.zeros((4, 4))})
    with pytest.raises(ModelFileError, match="not an RWKV-7 tensor name"):
        names.from_blinkdl({"rwkv.blocks.0.attention.key.weight": np.zeros((4, 4))})
    hf = names.from_blinkdl(blinkdl())
    config = names.infer_config(hf)
    del hf["model.layers.1.attn.r_k"]
    with pytest.raises(ModelFileError, match="missing tensor model.layers.1.attn.r_k"):
        check_tensors(hf, config, "test")


def test_rwkvcpp_header_must_agree_with_the_tensors():
    sd = {k: v for k, v in blinkdl().items() if k not in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")}
    header = {"version": 101, "n_vocab": 50, "n_embed": 32, "n_layer": 3, "data_type": 0}
    with pytest.raises(ModelFileError, match="header says n_vocab, n_embed, n_layer = 50, 32, 3"):
        names.from_rwkvcpp(header, {k: v for k, v in sd.items()}, "m.bin")


def test_from_hf_adds_the_model_prefix_of_a_bare_trunk():
    assert names.from_hf({"embeddings.weight": 1, "layers.0.attn.r_k": 2, "lm_head.weight": 3}) == \
        {"model.embeddings.weight": 1, "model.layers.0.attn.r_k": 2, "lm_head.weight": 3}
