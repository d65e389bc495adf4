"""Rwkv5Config (the HF rwkv5 config.json fields) and the RWKV-5 name maps (names.py).

Expected names and shapes are written out from RWKV567_SPEC.md section 2.3 (BlinkDL's
RWKV_Tmix_x052 parameters, the HF rwkv5 module names, rwkv.cpp's convert_pytorch_to_ggml.py
transforms), not from names.py.
"""
import numpy as np
import pytest

from rwkv_np.convert import convert
from rwkv_np.errors import ConfigError, ModelFileError
from rwkv_np.load import check_tensors, load
from rwkv_np.v5 import names
from rwkv_np.v5.config import Rwkv5Config

# The keys HF's Rwkv5Config.__init__ takes (RWKV/rwkv-5-world-* remote code) plus PretrainedConfig's.
HF_CONFIG = {
    "architectures": ["Rwkv5ForCausalLM"], "attention_hidden_size": 2048, "bos_token_id": 0,
    "eos_token_id": 0, "head_size": 64, "hidden_size": 2048, "intermediate_size": None,
    "layer_norm_epsilon": 1e-05, "model_type": "rwkv5", "num_attention_heads": 64, "num_hidden_layers": 24,
    "rescale_every": 6, "tie_word_embeddings": False, "transformers_version": "4.33.1", "use_cache": True,
    "vocab_size": 65536,
}


def blinkdl_pth(C=16, H=2, L=2, F=48, V=20, variant="5.2", seed=0) -> dict:
    """A BlinkDL RWKV-5 `.pth` state dict, names and shapes as RWKV-LM saves them (spec 2.3a)."""
    rng = np.random.default_rng(seed)
    N = C // H
    sd = {"emb.weight": (V, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,),
          "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)}
    for i in range(L):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2", "att.ln_x"):
            sd[f"{b}{ln}.weight"] = sd[f"{b}{ln}.bias"] = (C,)
        for m in ("k", "v", "r") + (("g",) if variant != "5.0" else ()):
            sd[f"{b}att.time_mix_{m}"] = (1, 1, C)
        for proj in ("receptance", "key", "value", "output") + (("gate",) if variant != "5.0" else ()):
            sd[f"{b}att.{proj}.weight"] = (C, C)
        if variant == "5.2":
            sd[f"{b}att.time_decay"] = sd[f"{b}att.time_faaaa"] = (H, N)
        else:
            sd[f"{b}att.time_decay"] = sd[f"{b}att.time_first"] = (H, 1)
        sd[f"{b}ffn.time_mix_k"] = sd[f"{b}ffn.time_mix_r"] = (1, 1, C)
        sd[f"{b}ffn.key.weight"], sd[f"{b}ffn.receptance.weight"], sd[f"{b}ffn.value.weight"] = (F, C), (C, C), (C, F)
    return {k: rng.normal(0, 0.5, shape).astype(np.float32) for k, shape in sd.items()}


def test_hf_config_loads_and_writes_back(tmp_path):
    config = Rwkv5Config.from_dict(HF_CONFIG)
    assert (config.hidden_size, config.num_heads, config.head_size, config.intermediate_size) == (2048, 32, 64, 7168)
    assert config.variant == "5.2" and config.group_norm_eps == 64e-5        # BlinkDL's, not in HF's file
    assert config.extra["num_attention_heads"] == 64                        # kept, not believed
    d = config.to_dict()
    assert {k: d[k] for k in HF_CONFIG if k != "intermediate_size"} == \
        {k: v for k, v in HF_CONFIG.items() if k != "intermediate_size"}
    config.save_pretrained(tmp_path)
    assert Rwkv5Config.from_pretrained(tmp_path) == config


@pytest.mark.parametrize("given, eps", [({}, 64e-5), ({"head_size_divisor": 8}, 64e-5),
                                        ({"head_size_divisor": 1}, 1e-5), ({"group_norm_eps": 1e-5}, 1e-5),
                                        ({"group_norm_eps": 2e-4, "head_size_divisor": 8}, 2e-4)])
def test_group_norm_eps_default_per_source(given, eps):
    assert Rwkv5Config.from_dict({"hidden_size": 64, "head_size": 8, **given}).group_norm_eps == pytest.approx(eps)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "rwkv6"}, "model_type is 'rwkv6'"),
    ({"attention_hidden_size": 1024}, "attention_hidden_size 1024 differs"),
    ({"head_size": 48}, "not a multiple of head_size 48"),
    ({"variant": "5.3"}, "variant must be one of 5.0, 5.1, 5.2"),
    ({"group_norm_eps": True}, "group_norm_eps must be a number"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer"),
])
def test_bad_configs_say_which_key(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Rwkv5Config.from_dict({**HF_CONFIG, **change})


def spec_shapes(C, H, L, F, V, variant):
    """The HF rwkv5 names and shapes of spec 2.3c, with 5.0/5.1's per-head decay and bonus."""
    N = C // H
    s = {"rwkv.embeddings.weight": (V, C), "rwkv.blocks.0.pre_ln.weight": (C,), "rwkv.blocks.0.pre_ln.bias": (C,),
         "rwkv.ln_out.weight": (C,), "rwkv.ln_out.bias": (C,), "head.weight": (V, C)}
    gated = variant != "5.0"
    for i in range(L):
        a, f = f"rwkv.blocks.{i}.attention.", f"rwkv.blocks.{i}.feed_forward."
        s.update({f"rwkv.blocks.{i}.ln1.weight": (C,), f"rwkv.blocks.{i}.ln1.bias": (C,),
                  f"rwkv.blocks.{i}.ln2.weight": (C,), f"rwkv.blocks.{i}.ln2.bias": (C,),
                  a + "ln_x.weight": (C,), a + "ln_x.bias": (C,), a + "time_mix_key": (1, 1, C),
                  a + "time_mix_value": (1, 1, C), a + "time_mix_receptance": (1, 1, C),
                  a + "key.weight": (C, C), a + "value.weight": (C, C), a + "receptance.weight": (C, C),
                  a + "output.weight": (C, C), f + "time_mix_key": (1, 1, C), f + "time_mix_receptance": (1, 1, C),
                  f + "key.weight": (F, C), f + "receptance.weight": (C, C), f + "value.weight": (C, F)})
        if gated:
            s[a + "time_mix_gate"], s[a + "gate.weight"] = (1, 1, C), (C, C)
        if variant == "5.2":
            s[a + "time_decay"] = s[a + "time_faaaa"] = (H, N)
        else:
            s[a + "time_decay"] = s[a + "time_first"] = (H,)
    return s


@pytest.mark.parametrize("variant", ["5.0", "5.1", "5.2"])
def test_blinkdl_names_map_to_the_hf_layout(variant):
    sd = blinkdl_pth(variant=variant)
    hf = names.from_blinkdl(sd)
    assert {n: x.shape for n, x in hf.items()} == spec_shapes(16, 2, 2, 48, 20, variant)
    config = names.infer_config(hf)
    assert (config.variant, config.num_heads, config.head_size, config.intermediate_size) == (variant, 2, 8, 48)
    assert config.group_norm_eps == 64e-5
    assert names.expected_shapes(config) == spec_shapes(16, 2, 2, 48, 20, variant)
    np.testing.assert_array_equal(hf["rwkv.blocks.1.attention.time_mix_receptance"], sd["blocks.1.att.time_mix_r"])
    np.testing.assert_array_equal(hf["rwkv.blocks.0.attention.time_decay"].reshape(-1),
                                  sd["blocks.0.att.time_decay"].reshape(-1))
    check_tensors(hf, config, "random .pth")


def test_unknown_names_and_impossible_layouts_are_refused():
    with pytest.raises(ModelFileError, match="blocks.0.att.time_state: not an RWKV-5 tensor name"):
        names.from_blinkdl({**blinkdl_pth(), "blocks.0.att.time_state": np.zeros((2, 8, 8))})
    with pytest.raises(ModelFileError, match="blocks.0.ffn.time_mix_g: not an RWKV-5"):
        names.from_blinkdl({**blinkdl_pth(), "blocks.0.ffn.time_mix_g": np.zeros((1, 1, 16))})
    hf = names.from_blinkdl({k: v for k, v in blinkdl_pth().items() if ".gate." not in k})
    with pytest.raises(ModelFileError, match=r"value per channel \(2, 8\) but there is no attention.gate"):
        names.infer_config(hf, "nogate.pth")


def rwkvcpp_tensors(sd: dict) -> dict:
    """What rwkv.cpp's convert_pytorch_to_ggml.py writes for a BlinkDL state dict (spec 2.3b):
    .time_* squeezed, time_decay -> exp(-exp(td)) (5.2 (H, N, 1), else (H, 1, 1)), time_first ->
    exp(tf) (H, 1, 1), time_faaaa (H, N, 1)."""
    out = {}
    for name, x in sd.items():
        x = x.astype(np.float32)
        if ".time_" in name:
            x = np.squeeze(x)
        if name.endswith("time_decay"):
            x = np.exp(-np.exp(x)).reshape(x.shape[0], -1, 1)
        elif name.endswith("time_first"):
            x = np.exp(x).reshape(-1, 1, 1)
        elif name.endswith("time_faaaa"):
            x = x[..., None]
        out[name] = x
    return out


@pytest.mark.parametrize("variant", ["5.0", "5.2"])
def test_rwkvcpp_transforms_are_undone(variant):
    sd = blinkdl_pth(variant=variant, seed=3)
    header = {"version": 101, "n_vocab": 20, "n_embed": 16, "n_layer": 2}
    config, hf = names.from_rwkvcpp(header, rwkvcpp_tensors(sd), "x.bin")
    assert config.variant == variant and config.group_norm_eps == 1e-5      # rwkv.cpp's eps
    want = names.from_blinkdl(sd)
    assert hf.keys() == want.keys()
    for name, x in want.items():
        assert hf[name].shape == x.shape, name
        np.testing.assert_allclose(hf[name], x, rtol=2e-6, atol=1e-6, err_msg=name)  # float32 exp/log round trip
    with pytest.raises(ModelFileError, match="the header says n_vocab, n_embed, n_layer = 21"):
        names.from_rwkvcpp({**header, "n_vocab": 21}, rwkvcpp_tensors(sd), "x.bin")


def test_rwkvcpp_decays_of_exactly_one_and_zero_stay_finite():
    sd = rwkvcpp_tensors(blinkdl_pth(seed=4))
    sd["blocks.0.att.time_decay"][0, :2, 0] = [1.0, 0.0]
    _, hf = names.from_rwkvcpp({"version": 101, "n_vocab": 20, "n_embed": 16, "n_layer": 2}, sd)
    td = hf["rwkv.blocks.0.attention.time_decay"][0, :2]
    assert np.all(np.isfinite(td))
    np.testing.assert_array_equal(np.exp(-np.exp(td)), [1.0, 0.0])
    sd["blocks.0.att.time_decay"][0, 0, 0] = 1.5
    with pytest.raises(ModelFileError, match=r"time_decay holds values outside \[0, 1\]"):
        names.from_rwkvcpp({"version": 101, "n_vocab": 20, "n_embed": 16, "n_layer": 2}, sd, "y.bin")


@pytest.mark.parametrize("file, variant", [("tiny-rwkv-5v1-730K-FP32.bin", "5.0"), ("tiny-rwkv-5v2-730K-FP16.bin", "5.2")])
def test_tiny_files_convert_keeping_their_eps(shared_data, tmp_path, file, variant):
    """convert writes config.json with group_norm_eps 1e-5 and the variant, so the converted
    directory computes what the .bin does."""
    gen, config, tensors = load(shared_data / "rwkvcpp" / file)
    assert gen.name == "v5" and config.variant == variant and config.group_norm_eps == 1e-5
    assert (config.num_heads, config.head_size, config.intermediate_size) == (8, 8, 256)
    convert(shared_data / "rwkvcpp" / file, tmp_path)
    gen2, config2, tensors2 = load(tmp_path)
    assert config2.to_dict() == config.to_dict()
    for name, x in tensors.items():
        np.testing.assert_array_equal(np.asarray(tensors2[name]), np.asarray(x), err_msg=name)
